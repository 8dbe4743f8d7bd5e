"""A bid's budget held on the customer's card: checked and stored inside the bid's own transaction, confirmed with
Stripe once that has committed, and finished by the sweeper when the placing request died in between."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from accounts.models import User
from core.exceptions import ApplicationError
from core.money import MAX_AUTHORIZATION_CENTS
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
        create_key=stripe_key("authorize", bid.pk),
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
