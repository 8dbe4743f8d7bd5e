from django.urls import path

from . import apis

urlpatterns = [
    path("agent/artifacts/<str:sha256>/", apis.AgentArtifactApi.as_view(), name="agent-artifact"),
    path("agent/lease/", apis.AgentLeaseApi.as_view(), name="agent-lease"),
    path("agent/lease/renew/", apis.AgentLeaseRenewApi.as_view(), name="agent-lease-renew"),
    path("agent/result/", apis.AgentResultApi.as_view(), name="agent-result"),
    path("agent/failure/", apis.AgentFailureApi.as_view(), name="agent-failure"),
    path("models/", apis.InferenceModelListApi.as_view(), name="api-models"),
    path("models/<int:model_id>/", apis.InferenceModelDetailApi.as_view(), name="api-model"),
    path("models/<int:model_id>/datasets/", apis.DatasetListApi.as_view(), name="api-model-datasets"),
    path("models/<int:model_id>/estimate/", apis.BidEstimateApi.as_view(), name="api-model-estimate"),
    path("bids/", apis.BidListApi.as_view(), name="api-bids"),
    path("bids/<int:bid_id>/", apis.BidDetailApi.as_view(), name="api-bid"),
    path("bids/<int:bid_id>/cancel/", apis.BidCancelApi.as_view(), name="api-bid-cancel"),
    path("bids/<int:bid_id>/result/", apis.BidResultApi.as_view(), name="api-bid-result"),
    path("market/", apis.MarketApi.as_view(), name="api-market"),
    path("market/history/", apis.MarketHistoryApi.as_view(), name="api-market-history"),
]
