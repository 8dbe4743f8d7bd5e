"""Billing's part of other apps' pages: the marketplace's bid form shows the card a bid's budget will be held on, and
reads it from here, since the marketplace never imports billing."""

from django import template

from ..models import BillingProfile

register = template.Library()


@register.simple_tag
def card_on_file(user) -> BillingProfile | None:
    """The customer's saved card (brand and last four digits), or None when there is none to hold a budget on:
    `{% card_on_file user as card %}`."""
    return BillingProfile.objects.filter(user=user).exclude(payment_method_id="").first()
