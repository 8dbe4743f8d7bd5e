"""Money's units and bounds, and how an amount reads (pure: no Django).

The ledger meters in nano-cents (n¢): 1 ¢ = 10⁹ n¢, so $1 = 10¹¹ n¢. A document embedded by MiniLM costs about
1.4e-8 CH, which at $0.015 per CH is 2.1e-10 $ = 21 n¢: no validated item rounds to zero, for the customer or for
the car's owner, at any price above 0.007 ¢ per CH. A signed 64-bit column holds ±9.2e18 n¢ (±$92 million) per entry,
far above the largest amount that comes in (MAX_AUTHORIZATION_CENTS); sums are taken by the database as numeric
(PostgreSQL) and by Python as unbounded integers.

Stripe deals in whole cents, so cents appear only at its boundary (a top-up, a card capture, a refund, a transfer):
`nc_from_cents` on the way in, `cents_floor`/`cents_ceil` on the way out, and the sub-cent remainder stays in the
account it came from (carried to the next payout, or kept on the customer's balance).

Prices stay in milli-cents per CH (m¢/CH, an integer: a tick of $0.00001 per CH); a price × CH is exact in
Decimal and is rounded to the n¢ once per job.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

# Stripe's largest amount in USD (8 digits: $999,999.99). Every amount of money that comes in is bounded by it, so no
# sum of them overflows a report (a bid of 2^63 - 1 ¢ once broke the finance pages for good: the ledger is append-only).
MAX_AUTHORIZATION_CENTS = 99_999_999

NC_PER_CENT = 10**9
NC_PER_MCENT = 10**6
NC_PER_DOLLAR = 100 * NC_PER_CENT


def nc_from_cents(cents: int) -> int:
    return int(cents) * NC_PER_CENT


def nc_from_mcents(mcents: Decimal | int) -> int:
    """An exact amount in milli-cents (a price × CH) to the nearest n¢, half up."""
    return int((Decimal(mcents) * NC_PER_MCENT).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def cents_floor(nc: int) -> int:
    """The whole cents in `nc` (what a payout or a refund of a balance can send); the rest is carried."""
    return int(nc) // NC_PER_CENT


def cents_ceil(nc: int) -> int:
    """The fewest whole cents covering `nc` (what a card capture must take)."""
    return -(-int(nc) // NC_PER_CENT)


# --- How money reads --------------------------------------------------------------------------------------------------

SYMBOLS = {"usd": "$", "eur": "€", "gbp": "£"}
MINUS = "−"


def _plain(value: Decimal) -> str:
    """A Decimal as plain digits, never with an exponent, with thousands separators in the whole part."""
    text = f"{value:f}"
    whole, _, part = text.partition(".")
    return f"{int(whole):,}" + (f".{part}" if part else "")


def dollars_text(dollars: Decimal, *, significant: int = 3) -> str:
    """An amount of dollars as people read it: whole cents from a cent up ("12.34", "1,234.56", "0.05"), and below a
    cent the digits it needs: `significant` significant digits, trailing zeros dropped ("0.0042", "0.00000021").
    Never an exponent. Half up. (No sign and no symbol: see `usd`.)"""
    amount = abs(Decimal(dollars))
    if amount == 0:
        return "0.00"
    if amount >= Decimal("0.01"):
        cents = amount.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
        if cents == amount or amount >= 1:
            return _plain(cents)
        # Under a dollar and not whole cents: show the sub-cent digits it has, up to `significant`.
    exponent = amount.adjusted() - significant + 1
    rounded = amount.quantize(Decimal(1).scaleb(exponent), rounding=ROUND_HALF_UP)
    text = _plain(rounded)
    if "." in text:
        text = text.rstrip("0").rstrip(".")
        whole, _, part = text.partition(".")
        text = f"{whole}.{part.ljust(2, '0')}"
    else:
        text = f"{text}.00"
    return text


def plain_significant(value: float, significant: int = 3) -> str:
    """A number with `significant` significant digits as plain decimals, never an exponent: 1.4e-8 → "0.000000014"
    (for the small quantities a page shows beside money: CH per item, CH of a job)."""
    if value == 0:
        return "0"
    exact = Decimal(repr(float(value)))
    exponent = exact.adjusted() - significant + 1
    text = f"{exact.quantize(Decimal(1).scaleb(exponent), rounding=ROUND_HALF_UP):f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def usd(nc: int | None, currency: str = "usd") -> str:
    """An amount in n¢ as dollars: 1234 × 10⁹ → "$12.34"; 21 → "$0.00000000021"; −5 × 10⁹ → "−$0.05"."""
    if nc is None or nc == "":
        return "—"
    nc = int(nc)
    symbol = SYMBOLS.get(str(currency).lower(), "")
    text = dollars_text(Decimal(abs(nc)) / NC_PER_DOLLAR)
    sign = MINUS if nc < 0 else ""
    return f"{sign}{symbol}{text}" if symbol else f"{sign}{text} {str(currency).upper()}"


def usd_cents(cents: int | None, currency: str = "usd") -> str:
    """Whole cents (Stripe's amounts: a top-up, a capture, a payout) as dollars: 1234 → "$12.34"."""
    if cents is None or cents == "":
        return "—"
    return usd(nc_from_cents(int(cents)), currency)


def price_per_ch(mcents_per_ch: int | None) -> str:
    """A price in m¢ per CH as dollars per CH: 1500 → "$0.015/CH"; 1 → "$0.00001/CH"."""
    if mcents_per_ch is None or mcents_per_ch == "":
        return "—"
    return f"${dollars_text(Decimal(int(mcents_per_ch)) / 100_000, significant=4)}/CH"


def price_per_kwh(cents_per_kwh: Decimal | int | None) -> str:
    """An electricity price in ¢ per kWh (a car's, to 0.01 ¢) as dollars per kWh, every digit it has: 16 →
    "$0.16/kWh"; 31.5 → "$0.315/kWh"; 123.45 → "$1.2345/kWh"."""
    if cents_per_kwh is None or cents_per_kwh == "":
        return "—"
    whole, _, part = f"{Decimal(str(cents_per_kwh)) / 100:f}".partition(".")
    return f"${int(whole):,}.{part.rstrip('0').ljust(2, '0')}/kWh"


def per_million_nc(mcents_per_ch: int, ch_per_item: float) -> int:
    """What 1,000,000 items cost at a price (m¢ per CH) and a cost per item (CH), in n¢."""
    return nc_from_mcents(Decimal(repr(float(ch_per_item))) * 1_000_000 * int(mcents_per_ch))


def price_per_million(mcents_per_ch: int | None, ch_per_item: float | None) -> str:
    """The price of 1M items, as inference APIs quote theirs: 1500 m¢/CH at 1.4e-8 CH per item → "$0.00021 per 1M
    items"."""
    if mcents_per_ch in (None, "") or not ch_per_item:
        return "—"
    return f"{usd(per_million_nc(int(mcents_per_ch), ch_per_item))} per 1M items"


def usd_text_from_mcents(mcents: int | None) -> str | None:
    """A price in m¢ as an exact decimal string of dollars, for the API: 1500 → "0.015" (None stays None)."""
    if mcents is None:
        return None
    text = f"{(Decimal(int(mcents)) / 100_000).normalize():f}"
    return text if "." in text else f"{text}.00"


def usd_text_from_cents(cents: int | None) -> str | None:
    """Whole cents as an exact decimal string of dollars, for the API: 500 → "5.00"."""
    if cents is None:
        return None
    return f"{Decimal(int(cents)) / 100:.2f}"


def usd_text_from_nc(nc: int | None) -> str | None:
    """n¢ as an exact decimal string of dollars, for the API: 21 → "0.00000000021", 5 × 10¹¹ → "5.00"."""
    if nc is None:
        return None
    text = f"{(Decimal(int(nc)) / NC_PER_DOLLAR):f}"
    whole, _, part = text.partition(".")
    part = part.rstrip("0").ljust(2, "0")
    return f"{whole}.{part}"


def dollars_to_mcents(dollars: Decimal) -> int:
    """A price typed in dollars per CH to m¢ per CH, half up ($0.015 → 1500)."""
    return int((Decimal(dollars) * 100_000).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def dollars_to_cents(dollars: Decimal) -> int:
    """An amount typed in dollars to whole cents, half up ($5 → 500)."""
    return int((Decimal(dollars) * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))
