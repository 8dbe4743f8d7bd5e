"""Money in and out: cards, authorizations at bid time, capture when a job ends, earnings out of hold, payouts,
refunds, and what Stripe's webhooks tell us.

The pattern for every Stripe call (RELIABILITY.md, "Money"): decide and store the amount and the idempotency key in
one transaction, commit, call Stripe with that key, then book the result in a second transaction whose ledger posting
has its own idempotency key. A crash anywhere is repaired by running the same function again: the stored key makes
Stripe answer with the first object, the posting key makes the ledger post once.
"""

from __future__ import annotations

import logging
import uuid
from datetime import date, datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import CharField, Exists, OuterRef, Sum, Value
from django.db.models.functions import Cast, Concat
from django.utils import timezone

from accounts.models import Role, User
from core.exceptions import ApplicationError

from . import ledger, settlement, stripe_gateway
from .ledger import Leg
from .models import (
    AccountKind,
    BillingProfile,
    ConnectAccount,
    LedgerTransaction,
    PaymentAuthorization,
    Payout,
    PricingPolicy,
    Refund,
)
from .selectors import payout_policy_current

log = logging.getLogger(__name__)
Kind = LedgerTransaction.Kind

# Stripe's smallest card charge in USD; an authorization below it is refused by Stripe.
MIN_AUTHORIZATION_CENTS = 50
# Stripe's largest amount in USD (8 digits: $999,999.99). Every amount of money that comes in is bounded by it, so no
# sum of them overflows a report (a bid of 2^63 - 1 ¢ once broke the finance pages for good: the ledger is append-only).
MAX_AUTHORIZATION_CENTS = 99_999_999
# Authorizations whose money is held on a card, or about to be: what counts against a customer's exposure cap.
HELD_STATUSES = (PaymentAuthorization.Status.PENDING, PaymentAuthorization.Status.AUTHORIZED,
                 PaymentAuthorization.Status.SETTLING)  # fmt: skip
# Test payment methods a customer may pick in test mode (and the demo): https://docs.stripe.com/testing
TEST_CARDS = {
    "pm_card_visa": "Visa, succeeds",
    "pm_card_chargeCustomerFail": "Visa, saved, then every payment declined",
    "pm_card_chargeDeclined": "Visa, declined when saved",
}


def _stripe_key(action: str, subject) -> str:
    """An idempotency key for one intended Stripe call, stored with its row before the call. Unique for ever (not
    only per row id): Stripe keeps keys for 24 h, and a key reused with other parameters is an error."""
    return f"{action}:{subject}:{uuid.uuid4().hex}"


_field_error = ApplicationError.for_field


# --- Cards ---------------------------------------------------------------------------------------------------------


def card_save(*, user: User, payment_method: str) -> BillingProfile:
    """Save a card for the customer's bids: their Stripe customer is created on first use."""
    if user.role != Role.CUSTOMER:
        raise ApplicationError("Only customers add cards.", code="permission_denied", status=403)
    profile, _ = BillingProfile.objects.get_or_create(user=user)
    try:
        if not profile.stripe_customer_id:
            if not profile.customer_key:
                profile.customer_key = _stripe_key("customer", user.pk)
                profile.save(update_fields=["customer_key", "updated_at"])
            profile.stripe_customer_id = stripe_gateway.customer_create(
                email=user.email, name=user.get_full_name() or user.username, user_id=user.pk, key=profile.customer_key
            )
            profile.save(update_fields=["stripe_customer_id", "updated_at"])
        card = stripe_gateway.card_attach(
            customer_id=profile.stripe_customer_id, payment_method=payment_method,
            key=f"card:{user.pk}:{uuid.uuid4()}",
        )  # fmt: skip
    except stripe_gateway.GatewayError as error:
        raise _field_error("payment_method", error.message) from error
    profile.payment_method_id, profile.card_brand, profile.card_last4 = card.payment_method_id, card.brand, card.last4
    profile.save(update_fields=["payment_method_id", "card_brand", "card_last4", "updated_at"])
    return profile


# --- Authorizing a bid ---------------------------------------------------------------------------------------------


def authorization_prepare(*, bid) -> PaymentAuthorization:
    """Inside the bid's transaction: check the customer can pay and store the authorization with its key."""
    profile = BillingProfile.objects.filter(user_id=bid.customer_id).first()
    if profile is None or not profile.has_card:
        raise _field_error("payment_method", "Add a card on your billing page before placing a bid.",
                           code="payment_method_missing")  # fmt: skip
    if bid.budget_cents < MIN_AUTHORIZATION_CENTS:
        raise _field_error("budget_cents", f"At least {MIN_AUTHORIZATION_CENTS} ¢: the smallest card payment.")
    if bid.budget_cents > MAX_AUTHORIZATION_CENTS:
        raise _field_error("budget_cents", f"At most {MAX_AUTHORIZATION_CENTS:,} ¢: the largest card payment.")
    exposure_check(customer_id=bid.customer_id, amount_cents=bid.budget_cents)
    return PaymentAuthorization.objects.create(
        bid=bid, customer_id=bid.customer_id, amount_cents=bid.budget_cents, currency=bid.currency,
        create_key=_stripe_key("authorize", bid.pk),
    )  # fmt: skip


def exposure_check(*, customer_id: int, amount_cents: int) -> None:
    """Refuse to hold `amount_cents` more for a customer whose held money (cents: bids authorizing, waiting, running
    or being captured) would pass their exposure cap: their own if staff set one (accounts.User), else
    CUSTOMER_EXPOSURE_CAP_CENTS.

    Inside the transaction that stores the new authorization: the customer's row stays locked until it commits, so
    bids placed at the same moment are counted one after the other, never each against the same old total. (NO KEY
    UPDATE: the bid just inserted holds a KEY SHARE lock on that row, which a plain FOR UPDATE would wait on.)
    """
    cap = User.objects.select_for_update(no_key=True).values_list("exposure_cap_cents", flat=True).get(pk=customer_id)
    if cap is None:
        cap = settings.CUSTOMER_EXPOSURE_CAP_CENTS
    held_now = PaymentAuthorization.objects.filter(customer_id=customer_id, status__in=HELD_STATUSES)
    held = held_now.aggregate(total=Sum("amount_cents"))["total"] or 0
    if held + amount_cents > cap:
        room = max(cap - held, 0)
        raise _field_error(
            "budget_cents",
            f"You have ${held / 100:,.2f} held in open bids and may hold up to ${cap / 100:,.2f} at once: this bid "
            f"can hold at most ${room / 100:,.2f}. Ask support to raise your limit.",
            code="exposure_cap",
        )


def authorization_confirm(*, authorization_id: int) -> PaymentAuthorization:
    """Hold the bid's budget on the card. On success the bid enters the next round; on a decline it never does,
    and the customer sees why. Safe to run again (the key is the bid's)."""
    from marketplace.models import Bid

    auth = PaymentAuthorization.objects.select_related("bid").get(pk=authorization_id)
    if auth.status != PaymentAuthorization.Status.PENDING:
        return auth
    profile = BillingProfile.objects.get(user_id=auth.customer_id)
    try:
        intent = stripe_gateway.payment_authorize(
            amount_cents=auth.amount_cents, currency=auth.currency, customer_id=profile.stripe_customer_id,
            payment_method_id=profile.payment_method_id, key=auth.create_key,
            metadata={"bid_id": str(auth.bid_id), "authorization_id": str(auth.pk)},
        )  # fmt: skip
    except stripe_gateway.GatewayError as error:
        with transaction.atomic():
            auth = PaymentAuthorization.objects.select_for_update().get(pk=authorization_id)
            if auth.status == PaymentAuthorization.Status.PENDING:
                auth.status = PaymentAuthorization.Status.DECLINED
                auth.failure_code, auth.failure_message = error.code[:60], error.message[:255]
                auth.save(update_fields=["status", "failure_code", "failure_message", "updated_at"])
                Bid.objects.filter(pk=auth.bid_id, status=Bid.Status.AUTHORIZING).update(
                    status=Bid.Status.DECLINED, closed_at=timezone.now()
                )
        return auth
    with transaction.atomic():
        auth = PaymentAuthorization.objects.select_for_update().get(pk=authorization_id)
        if auth.status != PaymentAuthorization.Status.PENDING:
            return auth
        auth.stripe_payment_intent_id, auth.status = intent.id, PaymentAuthorization.Status.AUTHORIZED
        auth.save(update_fields=["stripe_payment_intent_id", "status", "updated_at"])
        ledger.post(
            kind=Kind.AUTHORIZE, key=f"authorize:{auth.pk}", currency=auth.currency, bid_id=auth.bid_id,
            stripe_object_id=intent.id, description=f"Bid {auth.bid_id}: budget held on the card",
            legs=[
                Leg(AccountKind.STRIPE_CLEARING, auth.amount_cents),
                Leg(AccountKind.CUSTOMER_HELD, -auth.amount_cents, user_id=auth.customer_id),
            ],
        )  # fmt: skip
        Bid.objects.filter(pk=auth.bid_id, status=Bid.Status.AUTHORIZING).update(status=Bid.Status.WAITING)
    return auth


def authorizations_resume(*, older_than_seconds: int = 60) -> int:
    """The sweeper for bids whose placing request died between Stripe and our commit: confirm them again."""
    cutoff = timezone.now() - timedelta(seconds=older_than_seconds)
    ids = list(
        PaymentAuthorization.objects.filter(
            status=PaymentAuthorization.Status.PENDING, created_at__lt=cutoff
        ).values_list("pk", flat=True)[:200]
    )
    for pk in ids:
        authorization_confirm(authorization_id=pk)
    return len(ids)


# --- Settling a finished job -----------------------------------------------------------------------------------------


def _work_lines(bid) -> tuple[list[settlement.WorkLine], list[settlement.WorkLine], dict]:
    """The bid's validated work, one line per (car, round price): what the customer pays for (the canonical result
    of each slice of items), what the platform pays for (replicas that confirmed it), and each car's CH and energy.
    Rejected results and results still waiting for a second opinion are nobody's to pay."""
    from marketplace.models import WorkUnit

    rows = (
        WorkUnit.objects.filter(
            bid=bid, status=WorkUnit.Status.DONE, verification=WorkUnit.Verification.VALID, allocation__isnull=False
        )
        .values_list("canonical", "done_by_id", "done_by__owner_id", "allocation__price_mcents_per_ch",
                     "allocation__round__platform_fee_pct")
        .annotate(ch=Sum("ch"), energy_wh=Sum("energy_wh"))
        .order_by()
    )  # fmt: skip
    customer_lines, replica_lines, usage = [], [], {}
    for canonical, vehicle_id, owner_id, price, fee_pct, ch, energy_wh in rows:
        key = f"{vehicle_id}:{owner_id}"
        line = settlement.WorkLine(key=key, ch=ch, price_mcents=price, fee_pct=Decimal(fee_pct))
        (customer_lines if canonical else replica_lines).append(line)
        used = usage.setdefault(key, {"ch": 0.0, "energy_wh": 0.0})
        used["ch"] += ch
        used["energy_wh"] += energy_wh or 0.0
    return customer_lines, replica_lines, usage


def bid_settle(*, bid_id: int) -> PaymentAuthorization | None:
    """When a job has ended, capture exactly its validated work × the clearing prices of the rounds that sold it, and
    release the rest of the hold. Safe to run any number of times, and after a crash at any point."""
    from marketplace.models import Bid, WorkUnit

    with transaction.atomic():
        auth = PaymentAuthorization.objects.select_for_update().filter(bid_id=bid_id).first()
        if auth is None or auth.status not in (PaymentAuthorization.Status.AUTHORIZED,
                                               PaymentAuthorization.Status.SETTLING):  # fmt: skip
            return auth
        bid = Bid.objects.get(pk=bid_id)
        if auth.status == PaymentAuthorization.Status.AUTHORIZED:
            if bid.status not in (Bid.Status.COMPLETED, Bid.Status.FAILED, Bid.Status.CANCELLED, Bid.Status.EXPIRED):
                return auth
            if bid.units.filter(status=WorkUnit.Status.LEASED).exists():
                return auth  # a car is still running a unit of this closed bid: bill it once it reports or expires
            lines, replica_lines, usage = _work_lines(bid)
            split = settlement.settle(lines, authorized_cents=auth.amount_cents)
            # A job too small to charge pays nobody, replicas included.
            replicas = settlement.replicas_pay(replica_lines) if split.charge_cents else {}
            auth.capture_cents, auth.work_mcents = split.charge_cents, split.work_mcents
            auth.capture_key = _stripe_key("capture" if split.charge_cents else "cancel", auth.pk)
            auth.settlement = {
                "fee_cents": split.fee_cents,
                "cars": {
                    key: {"cents": split.shares.get(key, 0) + replicas.get(key, 0),
                          "verification_cents": replicas.get(key, 0), **usage[key]}
                    for key in usage
                },
            }  # fmt: skip
            auth.status = PaymentAuthorization.Status.SETTLING
            auth.save(update_fields=["capture_cents", "work_mcents", "capture_key", "settlement", "status",
                                     "updated_at"])  # fmt: skip
    # Committed: the amount and the key are on record before Stripe hears of them.
    _settle_at_stripe(auth)
    return settlement_book(authorization_id=auth.pk)


def _settle_at_stripe(auth: PaymentAuthorization) -> None:
    try:
        if auth.capture_cents:
            stripe_gateway.payment_capture(
                payment_intent_id=auth.stripe_payment_intent_id, amount_cents=auth.capture_cents, key=auth.capture_key
            )
        else:
            stripe_gateway.payment_cancel(payment_intent_id=auth.stripe_payment_intent_id, key=auth.capture_key)
    except stripe_gateway.GatewayError:
        # Past Stripe's 24 h key memory a repeated capture is refused as "already captured": re-read the object.
        intent = stripe_gateway.payment_retrieve(auth.stripe_payment_intent_id)
        if not _stripe_settled(intent, auth):
            raise


def _stripe_settled(intent, auth: PaymentAuthorization) -> bool:
    if auth.capture_cents:
        return intent.status == "succeeded" and intent.amount_received == auth.capture_cents
    return intent.status == "canceled"


def settlement_book(*, authorization_id: int) -> PaymentAuthorization:
    """Book a settlement Stripe has done: the capture (customer spend, owners' pending earnings, the fee) and the
    release of the rest of the hold."""
    with transaction.atomic():
        auth = PaymentAuthorization.objects.select_for_update().get(pk=authorization_id)
        if auth.status != PaymentAuthorization.Status.SETTLING:
            return auth
        captured = auth.capture_cents or 0
        released = auth.amount_cents - captured
        if captured:
            legs = [
                Leg(AccountKind.CUSTOMER_HELD, captured, user_id=auth.customer_id),
                Leg(AccountKind.CUSTOMER_SPEND, captured, user_id=auth.customer_id),
                Leg(AccountKind.STRIPE_CLEARING, -captured),
                Leg(AccountKind.PLATFORM_FEE, -auth.settlement["fee_cents"]),
                Leg(AccountKind.VERIFICATION_COST,
                    sum(car.get("verification_cents", 0) for car in auth.settlement["cars"].values())),
            ]  # fmt: skip
            for key, car in sorted(auth.settlement["cars"].items()):
                vehicle_id, owner_id = (int(part) for part in key.split(":"))
                if car["cents"]:
                    legs.append(Leg(AccountKind.OWNER_PENDING, -car["cents"], user_id=owner_id,
                                    vehicle_id=vehicle_id, ch=car["ch"], energy_wh=car["energy_wh"]))  # fmt: skip
            ledger.post(
                kind=Kind.CAPTURE, key=f"capture:{auth.pk}", currency=auth.currency, bid_id=auth.bid_id, legs=legs,
                stripe_object_id=auth.stripe_payment_intent_id, description=f"Bid {auth.bid_id}: validated work",
            )  # fmt: skip
        if released:
            ledger.post(
                kind=Kind.RELEASE, key=f"release:{auth.pk}", currency=auth.currency, bid_id=auth.bid_id,
                stripe_object_id=auth.stripe_payment_intent_id, description=f"Bid {auth.bid_id}: unused budget",
                legs=[
                    Leg(AccountKind.CUSTOMER_HELD, released, user_id=auth.customer_id),
                    Leg(AccountKind.STRIPE_CLEARING, -released),
                ],
            )  # fmt: skip
        auth.captured_cents, auth.released_cents = captured, released
        auth.status = PaymentAuthorization.Status.SETTLED
        auth.save(update_fields=["captured_cents", "released_cents", "status", "updated_at"])
    return auth


def settlements_due() -> list[int]:
    """Closed bids whose authorization is still open (a lost message, a crash): the sweeper settles them."""
    from marketplace.models import Bid

    closed = (Bid.Status.COMPLETED, Bid.Status.FAILED, Bid.Status.CANCELLED, Bid.Status.EXPIRED)
    return list(
        PaymentAuthorization.objects.filter(
            status__in=(PaymentAuthorization.Status.AUTHORIZED, PaymentAuthorization.Status.SETTLING),
            bid__status__in=closed,
        ).values_list("bid_id", flat=True)[:500]
    )


# --- Refunds ---------------------------------------------------------------------------------------------------------


def refund_create(*, authorization: PaymentAuthorization, amount_cents: int, reason: str, by: User | None) -> Refund:
    """Give a customer back captured money (staff). The platform bears it: owners keep what their cars earned."""
    with transaction.atomic():
        auth = PaymentAuthorization.objects.select_for_update().get(pk=authorization.pk)
        refundable = auth.captured_cents - auth.refunded_cents
        if not 0 < amount_cents <= refundable:
            raise _field_error("amount_cents", f"Between 1 and {refundable} ¢ (captured and not yet refunded).")
        refund = Refund.objects.create(
            authorization=auth, amount_cents=amount_cents, reason=reason, created_by=by,
            idempotency_key=_stripe_key("refund", auth.pk),
        )  # fmt: skip
    try:
        stripe_refund = stripe_gateway.refund_create(
            payment_intent_id=auth.stripe_payment_intent_id, amount_cents=amount_cents, key=refund.idempotency_key,
            reason=reason,
        )  # fmt: skip
    except stripe_gateway.GatewayError as error:
        raise _field_error("amount_cents", f"Stripe refused the refund: {error.message}") from error
    refund_book(authorization_id=auth.pk, refund_row=refund, stripe_refund=stripe_refund)
    refund.refresh_from_db()
    return refund


def refund_book(*, authorization_id: int, stripe_refund, refund_row: Refund | None = None) -> None:
    """Book one Stripe refund once, whoever made it (us, or staff in Stripe's dashboard, seen via a webhook)."""
    if stripe_refund.status not in ("succeeded", "pending"):
        return
    with transaction.atomic():
        auth = PaymentAuthorization.objects.select_for_update().get(pk=authorization_id)
        if Refund.objects.filter(stripe_refund_id=stripe_refund.id).exists():
            return
        if refund_row is None:
            refund_row = Refund.objects.create(
                authorization=auth, amount_cents=stripe_refund.amount, reason="Refunded in Stripe",
                idempotency_key=f"stripe:{stripe_refund.id}",
            )  # fmt: skip
        refund_row.stripe_refund_id = stripe_refund.id
        refund_row.save(update_fields=["stripe_refund_id"])
        ledger.post(
            kind=Kind.REFUND, key=f"refund:{stripe_refund.id}", currency=auth.currency, bid_id=auth.bid_id,
            stripe_object_id=stripe_refund.id, description=f"Bid {auth.bid_id}: refund",
            legs=[
                Leg(AccountKind.REFUNDS, stripe_refund.amount, user_id=auth.customer_id),
                Leg(AccountKind.CUSTOMER_SPEND, -stripe_refund.amount, user_id=auth.customer_id),
            ],
        )  # fmt: skip
        auth.refunded_cents += stripe_refund.amount
        auth.save(update_fields=["refunded_cents", "updated_at"])


def refunds_sync(*, authorization: PaymentAuthorization) -> None:
    """Book the refunds Stripe holds for this payment that the ledger lacks (made in Stripe's dashboard, say)."""
    for stripe_refund in stripe_gateway.refunds(payment_intent_id=authorization.stripe_payment_intent_id):
        if not refund_is_release(authorization, stripe_refund):
            refund_book(authorization_id=authorization.pk, stripe_refund=stripe_refund)


def refund_is_release(authorization: PaymentAuthorization, stripe_refund) -> bool:
    """Whether a Stripe refund is the uncaptured rest of the hold, released by a partial capture (Stripe may record
    that as a refund on the charge) rather than money given back: it is no later than the capture and not ours."""
    if Refund.objects.filter(stripe_refund_id=stripe_refund.id).exists():
        return False
    if stripe_refund.amount != authorization.amount_cents - authorization.captured_cents:
        return False
    capture = LedgerTransaction.objects.filter(idempotency_key=f"capture:{authorization.pk}").first()
    return capture is None or stripe_refund.created <= int(capture.created_at.timestamp())


# --- Owners: Connect onboarding, earnings out of hold, payouts --------------------------------------------------------


def connect_onboarding_url(*, user: User, refresh_url: str, return_url: str) -> str:
    """Where to send an owner to set up (or finish setting up) payouts: Stripe's hosted onboarding."""
    if user.role != Role.OWNER:
        raise ApplicationError("Only car owners receive payouts.", code="permission_denied", status=403)
    account, _ = ConnectAccount.objects.get_or_create(
        user=user, defaults={"create_key": _stripe_key("connect", user.pk)}
    )
    try:
        if not account.stripe_account_id:
            created = stripe_gateway.account_create(email=user.email, user_id=user.pk, key=account.create_key)
            account.stripe_account_id = created.id
            account.save(update_fields=["stripe_account_id", "updated_at"])
        return stripe_gateway.account_link_create(
            account_id=account.stripe_account_id, refresh_url=refresh_url, return_url=return_url
        )
    except stripe_gateway.GatewayError as error:
        raise ApplicationError(f"Stripe could not start onboarding: {error.message}", code="stripe_error",
                               status=502) from error  # fmt: skip


def connect_account_sync(*, account_id: str) -> ConnectAccount | None:
    """Re-read an account from Stripe (after onboarding, or on account.updated) and keep its state."""
    account = ConnectAccount.objects.filter(stripe_account_id=account_id).first()
    if account is None:
        return None
    remote = stripe_gateway.account_retrieve(account_id)
    account.details_submitted = bool(getattr(remote, "details_submitted", False))
    account.payouts_enabled = bool(getattr(remote, "payouts_enabled", False))
    account.save(update_fields=["details_submitted", "payouts_enabled", "updated_at"])
    return account


def earnings_release_due(*, now: datetime | None = None) -> int:
    """Move owners' earnings whose hold period has passed from pending to available: one posting per capture."""
    now = now or timezone.now()
    hold = timedelta(hours=payout_policy_current().earnings_hold_hours)
    released_already = LedgerTransaction.objects.filter(
        idempotency_key=Concat(Value("hold_over:"), Cast(OuterRef("pk"), CharField()))
    )
    captures = (
        LedgerTransaction.objects.filter(kind=Kind.CAPTURE, created_at__lte=now - hold)
        .exclude(Exists(released_already))
        .prefetch_related("entries__account")[:500]
    )
    count = 0
    for capture in captures:
        legs = []
        for entry in capture.entries.all():
            if entry.account.kind == AccountKind.OWNER_PENDING:
                owner = entry.account.user_id
                legs += [
                    Leg(AccountKind.OWNER_PENDING, -entry.amount_cents, user_id=owner, vehicle_id=entry.vehicle_id),
                    Leg(AccountKind.OWNER_AVAILABLE, entry.amount_cents, user_id=owner, vehicle_id=entry.vehicle_id),
                ]
        if legs:
            currency = capture.entries.all()[0].currency
            ledger.post(kind=Kind.EARNINGS_RELEASE, key=f"hold_over:{capture.pk}", legs=legs, currency=currency,
                        bid_id=capture.bid_id, description=f"Bid {capture.bid_id}: earnings out of hold")  # fmt: skip
            count += 1
    return count


def payout_period(*, today: date, schedule: str) -> date | None:
    """The period a payout run on `today` belongs to: every day, or weekly on Mondays (None on other days)."""
    if schedule == PricingPolicy.PayoutSchedule.DAILY:
        return today
    return today if today.weekday() == 0 else None


def payouts_run(*, now: datetime | None = None, force: bool = False) -> list[Payout]:
    """Transfer each owner's available earnings above the minimum to their connected account, once per period.

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
        available = availability.get(account.user_id, 0)
        if available < max(policy.min_payout_cents, 1):
            continue
        with transaction.atomic():
            payout, created = Payout.objects.get_or_create(
                owner_id=account.user_id, period=period, currency="usd",
                defaults={"amount_cents": available, "destination": account.stripe_account_id,
                          "idempotency_key": _stripe_key("payout", f"{account.user_id}:{period.isoformat()}")},
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
                Leg(AccountKind.OWNER_AVAILABLE, payout.amount_cents, user_id=payout.owner_id),
                Leg(AccountKind.OWNER_PAID_OUT, -payout.amount_cents, user_id=payout.owner_id),
            ],
        )  # fmt: skip
        payout.status, payout.stripe_transfer_id, payout.paid_at = Payout.Status.PAID, transfer_id, timezone.now()
        payout.save(update_fields=["status", "stripe_transfer_id", "paid_at"])
    return payout
