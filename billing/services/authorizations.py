"""A bid's budget set aside: reserved from the customer's prepaid balance at once, inside the bid's own transaction
(or, when the balance is short, the bid waits paused until a top-up covers it); or held on the customer's card:
checked and stored inside the bid's transaction, confirmed with Stripe once that has committed, and finished by the
sweeper when the placing request died in between."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from accounts.models import User
from core.exceptions import ApplicationError
from core.money import MAX_AUTHORIZATION_CENTS, nc_from_cents, usd, usd_cents
from marketplace.models import Bid

from .. import ledger, stripe_gateway
from ..ledger import Leg
from ..models import AccountKind, BillingProfile, LedgerTransaction, PaymentAuthorization
from .keys import stripe_key

# Stripe's smallest card charge in USD; an authorization below it is refused by Stripe.
MIN_AUTHORIZATION_CENTS = 50
# Authorizations whose money is held on a card, or about to be: what counts against a customer's exposure cap.
HELD_STATUSES = (PaymentAuthorization.Status.PENDING, PaymentAuthorization.Status.AUTHORIZED,
                 PaymentAuthorization.Status.SETTLING)  # fmt: skip

Kind = LedgerTransaction.Kind
_field_error = ApplicationError.for_field


def authorization_prepare(*, bid) -> PaymentAuthorization:
    """Inside the bid's transaction: decide where its budget comes from, check the customer can pay, and store the
    authorization with its key. A bid that named no funding is paid from the balance when it covers the budget, else
    held on the card on file, else paused until a top-up covers it."""
    if bid.budget_cents > MAX_AUTHORIZATION_CENTS:
        raise _field_error("budget_usd", f"At most {usd_cents(MAX_AUTHORIZATION_CENTS)}: the largest payment.")
    profile = BillingProfile.objects.filter(user_id=bid.customer_id).first()
    if not bid.funding:
        covered = balance_available_nc(customer_id=bid.customer_id) >= nc_from_cents(bid.budget_cents)
        card = profile is not None and profile.has_card
        bid.funding = Bid.Funding.CARD if card and not covered else Bid.Funding.BALANCE
        Bid.objects.filter(pk=bid.pk).update(funding=bid.funding)
    if bid.funding == Bid.Funding.BALANCE:
        auth = PaymentAuthorization.objects.create(
            bid=bid, customer_id=bid.customer_id, amount_cents=bid.budget_cents, currency=bid.currency,
            method=PaymentAuthorization.Method.BALANCE, create_key=stripe_key("reserve", bid.pk),
        )  # fmt: skip
        if not reservation_make(auth=auth):
            Bid.objects.filter(pk=bid.pk, status=Bid.Status.AUTHORIZING).update(status=Bid.Status.PAUSED)
        return auth
    if profile is None or not profile.has_card:
        raise _field_error("payment_method", "Add a card on your billing page before placing a bid paid by card.",
                           code="payment_method_missing")  # fmt: skip
    if bid.budget_cents < MIN_AUTHORIZATION_CENTS:
        raise _field_error("budget_usd", f"At least {usd_cents(MIN_AUTHORIZATION_CENTS)}: the smallest card payment. "
                           "Pay a smaller budget from your prepaid balance.")  # fmt: skip
    latest = bid.created_at + timedelta(days=settings.CARD_HOLD_MAX_DAYS)
    if bid.deadline > latest:
        raise _field_error("deadline", (
            f"At most {settings.CARD_HOLD_MAX_DAYS} days ahead ({latest:%Y-%m-%d %H:%M} UTC) for a budget held on "
            "your card: a card hold lapses after about a week. Pay a longer job from your prepaid balance."
        ))  # fmt: skip
    exposure_check(customer_id=bid.customer_id, amount_cents=bid.budget_cents)
    return PaymentAuthorization.objects.create(
        bid=bid, customer_id=bid.customer_id, amount_cents=bid.budget_cents, currency=bid.currency,
        create_key=stripe_key("authorize", bid.pk),
    )  # fmt: skip


def balance_available_nc(*, customer_id: int, currency: str = "usd") -> int:
    """What the customer's prepaid balance has free to reserve, in n¢."""
    return ledger.balance(kind=AccountKind.CUSTOMER_BALANCE, user_id=customer_id, currency=currency)


def reservation_make(*, auth: PaymentAuthorization) -> bool:
    """Reserve a balance-paid bid's budget if the balance covers it, and let the bid into the auction: True when it
    did. Inside a transaction. The customer's row is locked first, so two bids (or a bid and a refund of the
    balance) never both count the same money."""
    User.objects.select_for_update(no_key=True).filter(pk=auth.customer_id).exists()
    amount = nc_from_cents(auth.amount_cents)
    if balance_available_nc(customer_id=auth.customer_id, currency=auth.currency) < amount:
        return False
    # Only a bid still waiting for this: one cancelled or expired meanwhile takes nothing.
    if not Bid.objects.filter(pk=auth.bid_id, status__in=(Bid.Status.AUTHORIZING, Bid.Status.PAUSED)).update(
        status=Bid.Status.WAITING
    ):
        return False
    ledger.post(
        kind=Kind.RESERVE, key=f"reserve:{auth.pk}", currency=auth.currency, bid_id=auth.bid_id,
        description=f"Bid {auth.bid_id}: budget reserved from the balance",
        legs=[
            Leg(AccountKind.CUSTOMER_BALANCE, amount, user_id=auth.customer_id),
            Leg(AccountKind.CUSTOMER_RESERVED, -amount, user_id=auth.customer_id),
        ],
    )  # fmt: skip
    PaymentAuthorization.objects.filter(pk=auth.pk).update(
        status=PaymentAuthorization.Status.AUTHORIZED, updated_at=timezone.now()
    )
    return True


def reservations_fund(*, customer_id: int) -> int:
    """After a top-up: reserve the budgets of the customer's paused bids that the balance now covers, oldest first
    (a later, smaller one may fit where an older one does not). How many bids it let into the auction."""
    started = 0
    waiting = PaymentAuthorization.objects.filter(
        customer_id=customer_id, method=PaymentAuthorization.Method.BALANCE,
        status=PaymentAuthorization.Status.PENDING, bid__status=Bid.Status.PAUSED,
    ).order_by("created_at", "pk")  # fmt: skip
    for auth in waiting:
        with transaction.atomic():
            started += reservation_make(auth=auth)
    return started


def funds_needed_message(*, bid) -> str:
    """Why a bid is paused, and what to do: for the bid's page and its API answer ("" when it is not paused)."""
    if bid.status != Bid.Status.PAUSED:
        return ""
    available = balance_available_nc(customer_id=bid.customer_id, currency=bid.currency)
    budget = nc_from_cents(bid.budget_cents)
    return (
        f"Paused: this job reserves its budget of {usd(budget)} from your balance, which has {usd(available)} free. "
        f"Top up at least {usd(budget - available)} on your billing page and it starts in the next round."
    )


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
    held_now = PaymentAuthorization.objects.filter(
        customer_id=customer_id, status__in=HELD_STATUSES, method=PaymentAuthorization.Method.CARD
    )
    held = held_now.aggregate(total=Sum("amount_cents"))["total"] or 0
    if held + amount_cents > cap:
        room = max(cap - held, 0)
        raise _field_error(
            "budget_usd",
            f"You have {usd_cents(held)} held on your card by open bids and may hold up to {usd_cents(cap)} at once: "
            f"this bid can hold at most {usd_cents(room)}. Pay it from your prepaid balance, or ask support to raise "
            "your limit.",
            code="exposure_cap",
        )


def authorization_confirm(*, authorization_id: int) -> PaymentAuthorization:
    """Hold the bid's budget on the card. On success the bid enters the next round; on a decline it never does,
    and the customer sees why. Safe to run again (the key is the bid's)."""
    auth = PaymentAuthorization.objects.select_related("bid").get(pk=authorization_id)
    if auth.status != PaymentAuthorization.Status.PENDING:
        return auth
    if auth.method == PaymentAuthorization.Method.BALANCE:
        with transaction.atomic():  # a paused bid: its balance may cover it now
            reservation_make(auth=auth)
        return PaymentAuthorization.objects.get(pk=authorization_id)
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
                Leg(AccountKind.STRIPE_CLEARING, nc_from_cents(auth.amount_cents)),
                Leg(AccountKind.CUSTOMER_HELD, -nc_from_cents(auth.amount_cents), user_id=auth.customer_id),
            ],
        )  # fmt: skip
        Bid.objects.filter(pk=auth.bid_id, status=Bid.Status.AUTHORIZING).update(status=Bid.Status.WAITING)
    return auth


def authorizations_resume(*, older_than_seconds: int = 60) -> int:
    """The sweeper for bids whose placing request died between Stripe and our commit: confirm them again. And paused
    bids whose customer's balance covers them now (a top-up whose request died before it reserved them)."""
    cutoff = timezone.now() - timedelta(seconds=older_than_seconds)
    ids = list(
        PaymentAuthorization.objects.filter(
            status=PaymentAuthorization.Status.PENDING, created_at__lt=cutoff, method=PaymentAuthorization.Method.CARD
        ).values_list("pk", flat=True)[:200]
    )
    for pk in ids:
        authorization_confirm(authorization_id=pk)
    paused = (
        PaymentAuthorization.objects.filter(
            status=PaymentAuthorization.Status.PENDING,
            method=PaymentAuthorization.Method.BALANCE,
            bid__status=Bid.Status.PAUSED,
        )
        .values_list("customer_id", flat=True)
        .distinct()[:200]
    )
    for customer_id in list(paused):
        reservations_fund(customer_id=customer_id)
    return len(ids)
