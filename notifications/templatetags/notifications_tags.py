"""The customer's webhook deliveries on pages other than the webhooks page (the account page's recent log)."""

from django import template

from ..selectors import deliveries_for_customer

register = template.Library()


@register.simple_tag
def recent_deliveries(user, count: int = 5) -> list:
    """The customer's `count` newest webhook deliveries, newest first (none for anyone else)."""
    if not getattr(user, "is_customer", False):
        return []
    return list(deliveries_for_customer(user=user)[:count])
