from django.urls import path

from . import views

app_name = "fleet"
urlpatterns = [
    path("owner/", views.dashboard, name="dashboard"),
    path("owner/live/", views.fleet_live, name="fleet-live"),
    path("owner/vehicles/new/", views.vehicle_register, name="vehicle-new"),
    path("owner/vehicles/<int:vehicle_id>/", views.vehicle_detail, name="vehicle"),
    path("owner/vehicles/<int:vehicle_id>/live/", views.vehicle_live, name="vehicle-live"),
    path("owner/vehicles/<int:vehicle_id>/policy/", views.policy_edit, name="policy"),
    path("owner/vehicles/<int:vehicle_id>/pause/", views.vehicle_pause, name="vehicle-pause"),
    path("owner/vehicles/<int:vehicle_id>/credential/", views.credential_new, name="credential-new"),
    path(
        "owner/vehicles/<int:vehicle_id>/credential/<int:credential_id>/revoke/",
        views.credential_revoke,
        name="credential-revoke",
    ),
    path("agent/download/", views.agent_download, name="agent-download"),
    path("agent/download/<str:filename>", views.agent_download, name="agent-download-file"),
    path("staff/fleet/", views.staff_fleet, name="staff-fleet"),
    path("staff/fleet/live/", views.staff_fleet_live, name="staff-fleet-live"),
]
