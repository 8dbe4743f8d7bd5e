from django.urls import path

from . import apis

urlpatterns = [
    path("webhooks/", apis.WebhookListApi.as_view(), name="api-webhooks"),
    path("webhooks/deliveries/", apis.WebhookDeliveryListApi.as_view(), name="api-webhook-deliveries"),
    path("webhooks/<int:endpoint_id>/", apis.WebhookDetailApi.as_view(), name="api-webhook"),
]
