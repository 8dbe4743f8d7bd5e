from django.urls import path

from . import views

app_name = "notifications"
urlpatterns = [
    path("account/webhooks/", views.webhooks, name="webhooks"),
    path("account/webhooks/<int:endpoint_id>/enable/", views.webhook_enable, name="webhook-enable"),
    path("account/webhooks/<int:endpoint_id>/delete/", views.webhook_delete, name="webhook-delete"),
    path("account/webhooks/<int:endpoint_id>/test/", views.webhook_test, name="webhook-test"),
]
