"""Billing's part of other apps' pages: the marketplace's bid form and bid page show the prepaid balance and the card
a bid's budget comes from, and why a bid is paused, and read them from here, since the marketplace never imports
billing."""

from django import template

from ..models import BillingProfile
from ..services.authorizations import balance_available_nc, funds_needed_message

register = template.Library()


@register.simple_tag
def card_on_file(user) -> BillingProfile | None:
    """The customer's saved card (brand and last four digits), or None when there is none to hold a budget on:
    `{% card_on_file user as card %}`."""
    return BillingProfile.objects.filter(user=user).exclude(payment_method_id="").first()


@register.simple_tag
def prepaid_balance(user) -> int:
    """The customer's prepaid balance free to reserve, in n¢: `{% prepaid_balance user as balance %}`."""
    return balance_available_nc(customer_id=user.pk)


@register.simple_tag
def funds_needed(bid) -> str:
    """Why a bid is paused for want of funds and what to do ("" when it is not): `{% funds_needed bid as why %}`."""
    return funds_needed_message(bid=bid)
