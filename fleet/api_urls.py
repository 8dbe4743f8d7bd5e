from django.urls import path

from . import apis

urlpatterns = [
    path("agent/heartbeat/", apis.HeartbeatApi.as_view(), name="agent-heartbeat"),
    path("agent/departure/", apis.DepartureApi.as_view(), name="agent-departure"),
    path("agent/hardware/", apis.HardwareApi.as_view(), name="agent-hardware"),
    path("agent/me/", apis.AgentMeApi.as_view(), name="agent-me"),
    path("vehicles/", apis.VehicleListApi.as_view(), name="api-vehicles"),
    path("vehicles/<int:vehicle_id>/", apis.VehicleDetailApi.as_view(), name="api-vehicle"),
    path("vehicles/<int:vehicle_id>/policy/", apis.VehiclePolicyApi.as_view(), name="api-vehicle-policy"),
    path("vehicles/<int:vehicle_id>/credential/", apis.VehicleCredentialApi.as_view(), name="api-vehicle-credential"),
]
