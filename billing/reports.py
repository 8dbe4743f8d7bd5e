"""Reads for a car owner's earnings: the earnings dashboard and its CSV export.

An owner's earnings are what their cars earned: the owner_pending credits of CAPTURE transactions, less the ones a
REVERSAL of a capture voided, and changed by the CORRECTIONs of an audit. Moves between the owner's own accounts (out
of hold, paid out) are not earnings and are left out. Money is integer n¢ (core/money.py), shown positive for an
earning (it is −amount_nc of a credit); work is in CH; energy in Wh as booked, kWh as shown. Days, weeks (from Monday)
and months are the site's time zone.

Every query starts from `_earning_entries`, which reaches entries only through the owner's own ledger accounts.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import TypedDict

from django.db.models import Count, Q, QuerySet, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from accounts.models import User
from core.money import NC_PER_CENT, NC_PER_DOLLAR, NC_PER_MCENT

from . import ledger
from .models import AccountKind, LedgerEntry, LedgerTransaction
from .selectors import payout_policy_current

Kind = LedgerTransaction.Kind


def _earning_entries(owner: User, currency: str) -> QuerySet[LedgerEntry]:
    # A reversal counts only when it voids a capture: reversing an earnings release also credits owner_pending, but
    # that only moves money back between the owner's own accounts.
    # A correction after an audit changes earnings in the account they are in by then (pending, or available).
    return LedgerEntry.objects.filter(
        Q(transaction__kind=Kind.CAPTURE, account__kind=AccountKind.OWNER_PENDING)
        | Q(transaction__kind=Kind.REVERSAL, transaction__reverses__kind=Kind.CAPTURE,
            account__kind=AccountKind.OWNER_PENDING)
        | Q(transaction__kind=Kind.CORRECTION, account__kind__in=(AccountKind.OWNER_PENDING,
                                                                  AccountKind.OWNER_AVAILABLE)),
        account__user=owner,
        currency=currency,
    )  # fmt: skip


def _local_midnight(day: date) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.min))


def _half_up(value: Decimal) -> int:
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def energy_cost_nc(*, energy_wh: float, price_cents_per_kwh: Decimal) -> int:
    """Energy (Wh) at a price (¢/kWh) in n¢, half up. Wh are first rounded to the mWh so that the noise of summing
    floats in the database cannot tip the result."""
    return _half_up(Decimal(str(round(energy_wh, 3))) / 1000 * price_cents_per_kwh * NC_PER_CENT)


def nc_as_dollars(nc: int) -> str:
    """Integer n¢ as a plain, exact decimal dollar amount for spreadsheets: −1234 × 10⁹ → "-12.34", 21 →
    "0.00000000021" (no float on the way, no exponent)."""
    text = f"{(Decimal(abs(nc)) / NC_PER_DOLLAR):f}"
    if "." in text:
        whole, part = text.split(".")
        part = part.rstrip("0").ljust(2, "0")
        text = f"{whole}.{part}"
    else:
        text = f"{text}.00"
    return f"{'-' if nc < 0 else ''}{text}"


# --- The dashboard's figures ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VehicleEarnings:
    """One car's earnings over all time: n¢, CH, kWh, and its energy at the car's own price (¢/kWh)."""

    vehicle_id: int | None
    name: str
    earned_nc: int
    ch: float
    energy_kwh: float
    energy_price_cents_per_kwh: Decimal | None
    energy_cost_nc: int

    @property
    def net_profit_nc(self) -> int:
        return self.earned_nc - self.energy_cost_nc


@dataclass(frozen=True)
class EarningsSummary:
    """An owner's earnings by period (n¢), what their cars sold (CH) and used (kWh), and their balances (n¢)."""

    today_nc: int
    week_nc: int  # since Monday
    month_nc: int
    all_time_nc: int
    ch_sold: float
    avg_mcents_per_ch: int | None  # all-time earnings ÷ CH sold, in milli-cents per CH; None before any CH
    energy_kwh: float
    energy_cost_nc: int  # each car's energy at its own price, summed over cars
    net_profit_nc: int  # all-time earnings − energy cost
    pending_nc: int
    available_nc: int
    paid_out_nc: int
    hold_hours: int  # how long pending earnings wait before they become available
    vehicles: tuple[VehicleEarnings, ...]
    has_earnings: bool


def owner_earnings_summary(*, owner: User, now: datetime | None = None, currency: str = "usd") -> EarningsSummary:
    """The dashboard's headline figures for `owner` as of `now` (default: now). Three queries: earnings per car with
    the periods summed conditionally, the balances, and the payout policy's hold."""
    today = timezone.localdate(now)
    day_start = _local_midnight(today)
    week_start = _local_midnight(today - timedelta(days=today.weekday()))
    month_start = _local_midnight(today.replace(day=1))
    per_car = (
        _earning_entries(owner, currency)
        .values("vehicle_id", "vehicle__display_name", "vehicle__energy_price_cents_per_kwh")
        .annotate(
            credits=Sum("amount_nc"),
            day_credits=Sum("amount_nc", filter=Q(created_at__gte=day_start), default=0),
            week_credits=Sum("amount_nc", filter=Q(created_at__gte=week_start), default=0),
            month_credits=Sum("amount_nc", filter=Q(created_at__gte=month_start), default=0),
            ch_total=Sum("ch", default=0.0),
            wh_total=Sum("energy_wh", default=0.0),
            entries=Count("pk"),
        )
        .order_by("vehicle__display_name", "vehicle_id")
    )
    vehicles = []
    day = week = month = entries = 0
    for row in per_car:
        price = row["vehicle__energy_price_cents_per_kwh"]
        day, week, month = day - row["day_credits"], week - row["week_credits"], month - row["month_credits"]
        entries += row["entries"]
        vehicles.append(
            VehicleEarnings(
                vehicle_id=row["vehicle_id"],
                name=row["vehicle__display_name"] or "Unknown car",
                earned_nc=-row["credits"],
                ch=row["ch_total"],
                energy_kwh=row["wh_total"] / 1000,
                energy_price_cents_per_kwh=price,
                energy_cost_nc=(
                    energy_cost_nc(energy_wh=row["wh_total"], price_cents_per_kwh=price) if price is not None else 0
                ),
            )
        )
    all_time = sum(v.earned_nc for v in vehicles)
    ch_sold = sum(v.ch for v in vehicles)
    energy_cost = sum(v.energy_cost_nc for v in vehicles)
    balances = ledger.balances(user_id=owner.pk, currency=currency)
    return EarningsSummary(
        today_nc=day,
        week_nc=week,
        month_nc=month,
        all_time_nc=all_time,
        ch_sold=ch_sold,
        # A CH count this small is what is left of earnings voided in full; a price over it means nothing.
        avg_mcents_per_ch=(
            _half_up(Decimal(all_time) / NC_PER_MCENT / Decimal(str(ch_sold))) if ch_sold > 1e-9 else None
        ),
        energy_kwh=sum(v.energy_kwh for v in vehicles),
        energy_cost_nc=energy_cost,
        net_profit_nc=all_time - energy_cost,
        pending_nc=balances.get(AccountKind.OWNER_PENDING, 0),
        available_nc=balances.get(AccountKind.OWNER_AVAILABLE, 0),
        paid_out_nc=balances.get(AccountKind.OWNER_PAID_OUT, 0),
        hold_hours=payout_policy_current().earnings_hold_hours,
        vehicles=tuple(vehicles),
        has_earnings=entries > 0,
    )


# --- The daily chart ------------------------------------------------------------------------------------------------


class DailySeries(TypedDict):
    label: str  # the car's name
    vehicle_id: int | None
    data: list[int]  # n¢ earned per day, aligned with the chart's labels


class DailyEarnings(TypedDict):
    labels: list[str]  # ISO dates, oldest first, every day present
    datasets: list[DailySeries]  # one per car that earned (or had earnings voided) in the window


def owner_daily_earnings(
    *, owner: User, days: int = 30, now: datetime | None = None, currency: str = "usd"
) -> DailyEarnings:
    """n¢ earned per car per day over the last `days` days up to today (site time zone), zeros included: the data
    of a stacked bar chart (JSON-ready). One query."""
    today = timezone.localdate(now)
    first = today - timedelta(days=days - 1)
    day_list = [first + timedelta(days=n) for n in range(days)]
    index = {day: n for n, day in enumerate(day_list)}
    rows = (
        _earning_entries(owner, currency)
        .filter(created_at__gte=_local_midnight(first), created_at__lt=_local_midnight(today + timedelta(days=1)))
        .annotate(day=TruncDate("created_at"))
        .values("day", "vehicle_id", "vehicle__display_name")
        .annotate(credits=Sum("amount_nc"))
        .order_by("vehicle__display_name", "vehicle_id", "day")
    )
    series: dict[int | None, DailySeries] = {}
    for row in rows:
        car = series.setdefault(
            row["vehicle_id"],
            {"label": row["vehicle__display_name"] or "Unknown car", "vehicle_id": row["vehicle_id"],
             "data": [0] * days},
        )  # fmt: skip
        car["data"][index[row["day"]]] -= row["credits"]
    return {"labels": [day.isoformat() for day in day_list], "datasets": list(series.values())}


@dataclass(frozen=True)
class DailyRow:
    day: date
    amounts: list[int]  # n¢ per car, in the order of the chart's datasets
    total_nc: int


def daily_rows(chart: DailyEarnings) -> list[DailyRow]:
    """The chart's numbers as table rows (newest day first): the page's text alternative to the chart."""
    rows = [
        DailyRow(day=date.fromisoformat(label), amounts=amounts, total_nc=sum(amounts))
        for label, *amounts in zip(chart["labels"], *(s["data"] for s in chart["datasets"]), strict=True)
    ]
    return rows[::-1]


# --- The CSV export -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EarningRow:
    """One earning entry: `amount_nc` is positive when earned, negative when a reversal or a correction took it."""

    created_at: datetime  # site time zone
    transaction_id: int
    bid_id: int | None
    vehicle: str
    ch: float | None
    energy_kwh: float | None
    amount_nc: int
    kind: str  # "earned" or "voided"

    @property
    def amount_dollars(self) -> str:
        return nc_as_dollars(self.amount_nc)


_ROW_FIELDS = (
    "created_at", "transaction_id", "transaction__bid_id", "transaction__kind", "vehicle__display_name", "ch",
    "energy_wh", "amount_nc",
)  # fmt: skip


def owner_earnings_rows(*, owner: User, currency: str = "usd") -> Iterator[EarningRow]:
    """Every earning entry of `owner`, oldest first, read in chunks (one query per 2000 rows)."""
    entries = _earning_entries(owner, currency).values(*_ROW_FIELDS).order_by("created_at", "pk")
    for entry in entries.iterator(chunk_size=2000):
        yield EarningRow(
            created_at=timezone.localtime(entry["created_at"]),
            transaction_id=entry["transaction_id"],
            bid_id=entry["transaction__bid_id"],
            vehicle=entry["vehicle__display_name"] or "",
            ch=entry["ch"],
            energy_kwh=entry["energy_wh"] / 1000 if entry["energy_wh"] is not None else None,
            amount_nc=-entry["amount_nc"],
            kind={Kind.CAPTURE: "earned", Kind.CORRECTION: "corrected"}.get(entry["transaction__kind"], "voided"),
        )


CSV_HEADER = (
    "date_time", "transaction_id", "bid_id", "vehicle", "ch", "energy_kwh", "amount_nc", "amount_usd", "kind",
)  # fmt: skip


def _spreadsheet_safe(text: str) -> str:
    # A car's name is the owner's own text; a leading = + - @ would run as a formula when the file is opened.
    return f"'{text}" if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def owner_earnings_csv_lines(*, owner: User, currency: str = "usd") -> Iterator[str]:
    """The CSV export, a line at a time (header first), so that a long history streams instead of piling up."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)

    def line(values: Iterable) -> str:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow(values)
        return buffer.getvalue()

    yield line(CSV_HEADER)
    for row in owner_earnings_rows(owner=owner, currency=currency):
        yield line(
            (
                row.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                row.transaction_id,
                row.bid_id if row.bid_id is not None else "",
                _spreadsheet_safe(row.vehicle),
                f"{row.ch:.6f}" if row.ch is not None else "",
                f"{row.energy_kwh:.6f}" if row.energy_kwh is not None else "",
                row.amount_nc,
                row.amount_dollars,
                row.kind,
            )
        )
