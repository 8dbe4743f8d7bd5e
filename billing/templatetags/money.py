"""Money in templates, one way everywhere (core/money.py): dollars with the digits the amount needs, never an
exponent; prices per CH and per 1M items."""

from django import template

from core import money

register = template.Library()


@register.filter
def usd(value, currency: str = "usd") -> str:
    """An amount in n¢ (the ledger's unit): 1234 × 10⁹ → "$12.34", 21 → "$0.00000000021"."""
    return money.usd(value, currency)


@register.filter
def usd_cents(value, currency: str = "usd") -> str:
    """Whole cents (Stripe's amounts, a budget): 1234 → "$12.34"."""
    return money.usd_cents(value, currency)


@register.filter
def per_ch(mcents) -> str:
    """A price in m¢ per CH: 1500 → "$0.015/CH"."""
    return money.price_per_ch(mcents)


@register.filter
def per_kwh(cents) -> str:
    """An electricity price in ¢ per kWh: 16 → "$0.16/kWh"."""
    return money.price_per_kwh(cents)


@register.filter
def per_million(mcents, ch_per_item) -> str:
    """A price in m¢ per CH for 1M items of `ch_per_item` CH: "$0.00021 per 1M items"."""
    return money.price_per_million(mcents, ch_per_item)
