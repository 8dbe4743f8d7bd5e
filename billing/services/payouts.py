"""Owners' money out: earnings move from pending to available once their hold period has passed, and each owner's
available earnings go to their Connect account once per period (the payout rules in force: billing.selectors).

Earnings accrue to the n¢ (a car's share of each job, however small); a transfer sends whole cents, and the sub-cent
rest stays available, carried to the next payout."""

from __future__ import annotations

import logging
from datetime import date, datetime, timedelta

from django.db import transaction
from django.db.models import CharField, Exists, OuterRef, Sum, Value
from django.db.models.functions import Cast, Concat
from django.utils import timezone

from core.money import cents_floor, nc_from_cents
from marketplace.models import ResultAudit

from .. import ledger, stripe_gateway
from ..ledger import Leg
from ..models import AccountKind, ConnectAccount, LedgerEntry, LedgerTransaction, Payout, PayoutSchedule
from ..selectors import payout_policy_current
from .keys import stripe_key

log = logging.getLogger(__name__)
Kind = LedgerTransaction.Kind


def earnings_release_due(*, now: datetime | None = None) -> int:
    """Move owners' earnings whose hold period has passed from pending to available: one posting per capture, of
    the earnings the job's capture and its corrections left pending. A job with an audit still open stays held: a
    caught car's wrong results in it are not paid out before other cars have judged them (corrections.py)."""
    now = now or timezone.now()
    hold = timedelta(hours=payout_policy_current().earnings_hold_hours)
    released_already = LedgerTransaction.objects.filter(
        idempotency_key=Concat(Value("hold_over:"), Cast(OuterRef("pk"), CharField()))
    )
    audit_open = ResultAudit.objects.filter(bid_id=OuterRef("bid_id"), closed_at__isnull=True)
    captures = (
        LedgerTransaction.objects.filter(kind=Kind.CAPTURE, created_at__lte=now - hold)
        .exclude(Exists(released_already))
        .exclude(Exists(audit_open))[:500]
    )
    captures = list(captures)
    # What each job's capture and corrections left pending, per owner and car: one query for every capture due.
    pending: dict[int, list[tuple]] = {}
    for bid_id, owner, vehicle, currency, amount in (
        LedgerEntry.objects.filter(
            transaction__bid_id__in=[capture.bid_id for capture in captures],
            transaction__kind__in=(Kind.CAPTURE, Kind.CORRECTION), account__kind=AccountKind.OWNER_PENDING,
        )
        .values_list("transaction__bid_id", "account__user_id", "vehicle_id", "currency")
        .annotate(amount=Sum("amount_nc"))
        .order_by("transaction__bid_id", "account__user_id", "vehicle_id")
    ):  # fmt: skip
        pending.setdefault(bid_id, []).append((owner, vehicle, currency, amount))
    count = 0
    for capture in captures:
        rows = pending.get(capture.bid_id, [])
        legs = []
        for owner, vehicle, _, amount in rows:
            if amount:
                legs += [
                    Leg(AccountKind.OWNER_PENDING, -amount, user_id=owner, vehicle_id=vehicle),
                    Leg(AccountKind.OWNER_AVAILABLE, amount, user_id=owner, vehicle_id=vehicle),
                ]
        if legs:
            currency = min(currency for _, _, currency, _ in rows)
            ledger.post(kind=Kind.EARNINGS_RELEASE, key=f"hold_over:{capture.pk}", legs=legs, currency=currency,
                        bid_id=capture.bid_id, description=f"Bid {capture.bid_id}: earnings out of hold")  # fmt: skip
            count += 1
    return count


def payout_period(*, today: date, schedule: str) -> date | None:
    """The period a payout run on `today` belongs to: every day, or weekly on Mondays (None on other days)."""
    if schedule == PayoutSchedule.DAILY:
        return today
    return today if today.weekday() == 0 else None


def payouts_run(*, now: datetime | None = None, force: bool = False) -> list[Payout]:
    """Transfer each owner's available earnings, in whole cents, to their connected account once per period when they
    reach the minimum; the sub-cent rest stays available for the next payout.

    `force` runs outside the schedule (staff's "pay out now"); it still makes at most one payout per owner per day.
    """
    now = now or timezone.now()
    policy = payout_policy_current()
    today = timezone.localdate(now)
    period = today if force else payout_period(today=today, schedule=policy.payout_schedule)
    sent: list[Payout] = []
    for payout in Payout.objects.filter(status=Payout.Status.PENDING):  # a crash left these half-done
        sent.append(payout_send(payout_id=payout.pk))
    if period is None:
        return sent
    accounts = list(ConnectAccount.objects.filter(payouts_enabled=True).exclude(stripe_account_id=""))
    availability = ledger.balances_by_user(kind=AccountKind.OWNER_AVAILABLE, user_ids=[a.user_id for a in accounts])
    for account in accounts:
        cents = cents_floor(availability.get(account.user_id, 0))
        if cents < max(policy.min_payout_cents, 1):
            continue
        with transaction.atomic():
            payout, created = Payout.objects.get_or_create(
                owner_id=account.user_id, period=period, currency="usd",
                defaults={"amount_cents": cents, "destination": account.stripe_account_id,
                          "idempotency_key": stripe_key("payout", f"{account.user_id}:{period.isoformat()}")},
            )  # fmt: skip
        if created:
            sent.append(payout_send(payout_id=payout.pk))
    return sent


def payout_send(*, payout_id: int) -> Payout:
    payout = Payout.objects.get(pk=payout_id)
    if payout.status != Payout.Status.PENDING:
        return payout
    try:
        transfer = stripe_gateway.transfer_create(
            amount_cents=payout.amount_cents, currency=payout.currency, destination=payout.destination,
            key=payout.idempotency_key, metadata={"payout_id": str(payout.pk), "owner_id": str(payout.owner_id)},
        )  # fmt: skip
    except stripe_gateway.GatewayError as error:
        Payout.objects.filter(pk=payout.pk, status=Payout.Status.PENDING).update(
            status=Payout.Status.FAILED, failure_message=error.message[:255]
        )
        log.warning("payout %s to %s failed: %s", payout.pk, payout.destination, error.code)
        payout.refresh_from_db()
        return payout
    return payout_book(payout_id=payout.pk, transfer_id=transfer.id)


def payout_book(*, payout_id: int, transfer_id: str) -> Payout:
    with transaction.atomic():
        payout = Payout.objects.select_for_update().get(pk=payout_id)
        if payout.status != Payout.Status.PENDING:
            return payout
        ledger.post(
            kind=Kind.PAYOUT, key=f"payout:{payout.pk}", currency=payout.currency, payout_id=payout.pk,
            stripe_object_id=transfer_id, description=f"Payout {payout.pk} to {payout.destination}",
            legs=[
                Leg(AccountKind.OWNER_AVAILABLE, nc_from_cents(payout.amount_cents), user_id=payout.owner_id),
                Leg(AccountKind.OWNER_PAID_OUT, -nc_from_cents(payout.amount_cents), user_id=payout.owner_id),
            ],
        )  # fmt: skip
        payout.status, payout.stripe_transfer_id, payout.paid_at = Payout.Status.PAID, transfer_id, timezone.now()
        payout.save(update_fields=["status", "stripe_transfer_id", "paid_at"])
    return payout
