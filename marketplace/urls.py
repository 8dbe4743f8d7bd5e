from django.urls import path

from . import views

app_name = "marketplace"
urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("models/", views.model_list, name="models"),
    path("models/new/", views.model_upload, name="model-new"),
    path("models/<int:model_id>/", views.model_detail, name="model"),
    path("models/<int:model_id>/variants/", views.model_variants, name="model-variants"),
    path("models/<int:model_id>/datasets/", views.dataset_upload, name="dataset-new"),
    path("models/<int:model_id>/tolerance/", views.model_tolerance, name="model-tolerance"),
    path("models/<int:model_id>/bid/", views.bid_new, name="bid-new"),
    path("models/<int:model_id>/bid/estimate/", views.bid_estimate, name="bid-estimate"),
    path("bids/", views.dashboard, name="bids"),  # the job list, as on My jobs
    path("bids/<int:bid_id>/", views.bid_detail, name="bid"),
    path("bids/<int:bid_id>/cancel/", views.bid_cancel, name="bid-cancel"),
    path("bids/<int:bid_id>/price/", views.bid_price, name="bid-price"),
    path("bids/<int:bid_id>/result/", views.bid_result, name="bid-result"),
]
