from django.urls import path

from . import apis

urlpatterns = [
    path("agent/artifacts/<str:sha256>/", apis.AgentArtifactApi.as_view(), name="agent-artifact"),
    path("models/", apis.InferenceModelListApi.as_view(), name="api-models"),
    path("models/<int:model_id>/", apis.InferenceModelDetailApi.as_view(), name="api-model"),
    path("models/<int:model_id>/datasets/", apis.DatasetListApi.as_view(), name="api-model-datasets"),
]
