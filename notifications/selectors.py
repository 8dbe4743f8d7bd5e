"""Reads of the customer's webhook endpoints and deliveries, always scoped to their owner."""

from django.db.models import QuerySet
from django.http import Http404

from .models import WebhookDelivery, WebhookEndpoint


def endpoints_for_customer(*, user) -> QuerySet:
    return WebhookEndpoint.objects.filter(customer=user)


def endpoint_get_for_customer(*, user, endpoint_id: int) -> WebhookEndpoint:
    """The customer's endpoint `endpoint_id`; another customer's is a 404."""
    try:
        return endpoints_for_customer(user=user).get(pk=endpoint_id)
    except WebhookEndpoint.DoesNotExist:
        raise Http404("No such webhook endpoint.") from None


def deliveries_for_customer(*, user) -> QuerySet:
    """The deliveries to the customer's endpoints, newest first."""
    return (
        WebhookDelivery.objects.filter(endpoint__customer=user)
        .select_related("endpoint")
        .defer("payload")
        .order_by("-created_at", "-pk")
    )
