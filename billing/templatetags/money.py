"""Money in templates: integer cents with a currency, shown the way people read it."""

from decimal import Decimal

from django import template

register = template.Library()

SYMBOLS = {"usd": "$", "eur": "€", "gbp": "£"}


@register.filter
def cents(value, currency: str = "usd") -> str:
    """1234 → "$12.34"; −5 → "−$0.05"."""
    if value is None or value == "":
        return "—"
    amount = int(value)
    sign = "−" if amount < 0 else ""
    symbol = SYMBOLS.get(str(currency).lower(), "")
    whole, part = divmod(abs(amount), 100)
    text = f"{symbol}{whole:,}.{part:02d}"
    return f"{sign}{text}" if symbol else f"{sign}{text} {str(currency).upper()}"


@register.filter
def mcents(value) -> str:
    """Exact sub-cent amounts (milli-cents) as cents: 1.5 → "0.0015 ¢"."""
    if value is None or value == "":
        return "—"
    amount = Decimal(value) / 1000
    return f"{amount.normalize():f} ¢" if amount else "0 ¢"
