"""The prepaid balance: top-ups charged to the customer's card at once, and unused balance refunded to the card.

As with the inference APIs' credits, a customer pays in whole cents once and their jobs draw on the balance to the
n¢ (billing/services/settling.py), so a job worth a millionth of a cent costs exactly that. A top-up's row and its
idempotency key commit before Stripe is called; whoever sees the payment succeed first (the charging request, the
webhook, the sweeper) books it, once. A top-up lets into the auction the customer's bids paused for want of funds.
"""

from __future__ import annotations

import contextlib
import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.models import User
from core.exceptions import ApplicationError
from core.money import cents_floor, nc_from_cents, usd, usd_cents

from .. import ledger, stripe_gateway
from ..ledger import Leg
from ..models import AccountKind, BalanceRefund, BillingProfile, LedgerTransaction, TopUp
from .authorizations import balance_available_nc, reservations_fund
from .keys import stripe_key

log = logging.getLogger(__name__)
Kind = LedgerTransaction.Kind
_field_error = ApplicationError.for_field


def topup_create(*, customer: User, amount_cents: int) -> TopUp:
    """Charge `amount_cents` to the customer's saved card and add it to their balance. A decline raises (402) and
    adds nothing; the declined top-up stays on record."""
    low, high = settings.TOPUP_MIN_CENTS, settings.TOPUP_MAX_CENTS
    if not low <= amount_cents <= high:
        raise _field_error("amount", f"Between {usd_cents(low)} and {usd_cents(high)}.")
    profile = BillingProfile.objects.filter(user=customer).first()
    if profile is None or not profile.has_card:
        raise _field_error("payment_method", "Add a card first: a top-up is charged to it.",
                           code="payment_method_missing")  # fmt: skip
    topup = TopUp.objects.create(
        customer=customer, amount_cents=amount_cents, idempotency_key=stripe_key("topup", customer.pk)
    )
    return topup_charge(topup_id=topup.pk)


def topup_charge(*, topup_id: int) -> TopUp:
    """Charge a stored top-up at Stripe (again, with its key, after a crash) and book it once it has succeeded."""
    topup = TopUp.objects.get(pk=topup_id)
    if topup.status != TopUp.Status.PENDING:
        return topup
    profile = BillingProfile.objects.get(user_id=topup.customer_id)
    try:
        intent = stripe_gateway.payment_charge(
            amount_cents=topup.amount_cents, currency=topup.currency, customer_id=profile.stripe_customer_id,
            payment_method_id=profile.payment_method_id, key=topup.idempotency_key,
            metadata={"topup_id": str(topup.pk), "customer_id": str(topup.customer_id)},
        )  # fmt: skip
    except stripe_gateway.GatewayError as error:
        TopUp.objects.filter(pk=topup.pk, status=TopUp.Status.PENDING).update(
            status=TopUp.Status.FAILED, failure_message=error.message[:255], updated_at=timezone.now()
        )
        raise ApplicationError(
            f"payment_method: your card was not charged {usd_cents(topup.amount_cents)}: {error.message}",
            fields={"payment_method": [error.message]}, code="card_declined", status=402,
        ) from error  # fmt: skip
    TopUp.objects.filter(pk=topup.pk, stripe_payment_intent_id="").update(stripe_payment_intent_id=intent.id)
    if intent.status == "succeeded":
        return topup_book(topup_id=topup.pk)
    return TopUp.objects.get(pk=topup.pk)  # processing: the webhook books it


def topup_book(*, topup_id: int) -> TopUp:
    """Book a top-up Stripe has charged: the money onto the customer's balance, once. Then start the bids it pays."""
    with transaction.atomic():
        topup = TopUp.objects.select_for_update().get(pk=topup_id)
        if topup.status == TopUp.Status.SUCCEEDED:
            return topup
        amount = nc_from_cents(topup.amount_cents)
        ledger.post(
            kind=Kind.TOPUP, key=f"topup:{topup.pk}", currency=topup.currency,
            stripe_object_id=topup.stripe_payment_intent_id,
            description=f"Top-up {topup.pk}: {usd_cents(topup.amount_cents)} onto the balance",
            legs=[
                Leg(AccountKind.PREPAID_CASH, amount, user_id=topup.customer_id),
                Leg(AccountKind.CUSTOMER_BALANCE, -amount, user_id=topup.customer_id),
            ],
        )  # fmt: skip
        topup.status, topup.failure_message = TopUp.Status.SUCCEEDED, ""
        topup.save(update_fields=["status", "failure_message", "updated_at"])
    reservations_fund(customer_id=topup.customer_id)
    return topup


def topup_sync(*, intent) -> TopUp | None:
    """What Stripe says of a top-up's payment (a webhook, the sweeper): book it if it succeeded, mark it failed if it
    cannot. None when the payment is not a top-up's."""
    topup = TopUp.objects.filter(stripe_payment_intent_id=intent.id).first()
    topup_id = (intent.to_dict().get("metadata") or {}).get("topup_id")
    if topup is None and str(topup_id or "").isdigit():
        topup = TopUp.objects.filter(
            pk=int(topup_id), customer__billing_profile__stripe_customer_id=intent.customer
        ).first()
    if topup is None:
        return None
    TopUp.objects.filter(pk=topup.pk, stripe_payment_intent_id="").update(stripe_payment_intent_id=intent.id)
    if intent.status == "succeeded" and intent.amount_received == topup.amount_cents:
        return topup_book(topup_id=topup.pk)
    if intent.status in ("canceled", "requires_payment_method"):
        TopUp.objects.filter(pk=topup.pk, status=TopUp.Status.PENDING).update(
            status=TopUp.Status.FAILED, failure_message=f"The payment is '{intent.status}'.", updated_at=timezone.now()
        )
    return TopUp.objects.get(pk=topup.pk)


def topups_resume(*, older_than_seconds: int = 60) -> int:
    """The sweeper for top-ups whose charging request died before it booked them: ask Stripe again, with their keys."""
    cutoff = timezone.now() - timedelta(seconds=older_than_seconds)
    ids = list(
        TopUp.objects.filter(status=TopUp.Status.PENDING, created_at__lt=cutoff).values_list("pk", flat=True)[:200]
    )
    for pk in ids:
        with contextlib.suppress(ApplicationError):  # declined: now on record as failed
            topup_charge(topup_id=pk)
    return len(ids)


# --- Unused balance back to the card ---------------------------------------------------------------------------------


def balance_refund(*, customer: User) -> list[BalanceRefund]:
    """Give back the customer's free balance in whole cents, to the cards of their top-ups, newest first (a Stripe
    refund can return at most what one payment paid). The sub-cent rest stays on the balance. Money reserved by open
    bids is not free: it comes back to the balance when they end."""
    with transaction.atomic():
        User.objects.select_for_update(no_key=True).filter(pk=customer.pk).exists()
        free = balance_available_nc(customer_id=customer.pk)
        cents = cents_floor(free)
        if cents <= 0:
            raise _field_error("amount", f"Your balance has {usd(free)} free: less than a cent to refund.")
        refunds = []
        for topup in TopUp.objects.select_for_update().filter(customer=customer, status=TopUp.Status.SUCCEEDED):
            part = min(cents, topup.amount_cents - topup.refunded_cents)
            if part <= 0:
                continue
            refund = BalanceRefund.objects.create(
                topup=topup,
                customer=customer,
                amount_cents=part,
                idempotency_key=stripe_key("balance_refund", topup.pk),
            )
            # Out of the balance now, so that no bid reserves it while Stripe is asked.
            ledger.post(
                kind=Kind.BALANCE_REFUND, key=f"balance_refund:{refund.pk}", currency=topup.currency,
                stripe_object_id=topup.stripe_payment_intent_id,  # reconciled against the top-up's refunds
                description=f"{usd_cents(part)} of the balance back to the card of top-up {topup.pk}",
                legs=[Leg(AccountKind.CUSTOMER_BALANCE, nc_from_cents(part), user_id=customer.pk),
                      Leg(AccountKind.PREPAID_CASH, -nc_from_cents(part), user_id=customer.pk)],
            )  # fmt: skip
            topup.refunded_cents += part
            topup.save(update_fields=["refunded_cents", "updated_at"])
            refunds.append(refund)
            cents -= part
            if cents == 0:
                break
    return [balance_refund_send(refund_id=refund.pk) for refund in refunds]


def balance_refund_send(*, refund_id: int) -> BalanceRefund:
    """Ask Stripe for one stored balance refund (again, with its key, after a crash). If Stripe refuses, the money
    goes back onto the balance."""
    refund = BalanceRefund.objects.select_related("topup").get(pk=refund_id)
    if refund.status != BalanceRefund.Status.PENDING:
        return refund
    try:
        stripe_refund = stripe_gateway.refund_create(
            payment_intent_id=refund.topup.stripe_payment_intent_id, amount_cents=refund.amount_cents,
            key=refund.idempotency_key, reason="Unused prepaid balance",
        )  # fmt: skip
    except stripe_gateway.GatewayError as error:
        with transaction.atomic():
            refund = BalanceRefund.objects.select_for_update().get(pk=refund_id)
            if refund.status != BalanceRefund.Status.PENDING:
                return refund
            posting = LedgerTransaction.objects.get(idempotency_key=f"balance_refund:{refund.pk}")
            ledger.reverse(
                txn=posting, key=f"balance_refund_failed:{refund.pk}",
                description=f"Balance refund {refund.pk} refused by Stripe: back on the balance",
            )  # fmt: skip
            TopUp.objects.filter(pk=refund.topup_id).update(
                refunded_cents=refund.topup.refunded_cents - refund.amount_cents
            )
            refund.status, refund.failure_message = BalanceRefund.Status.FAILED, error.message[:255]
            refund.save(update_fields=["status", "failure_message"])
        log.warning("balance refund %s refused by Stripe: %s", refund.pk, error.code)
        return refund
    BalanceRefund.objects.filter(pk=refund.pk, status=BalanceRefund.Status.PENDING).update(
        status=BalanceRefund.Status.SUCCEEDED, stripe_refund_id=stripe_refund.id
    )
    refund.refresh_from_db()
    return refund


def balance_refunds_resume(*, older_than_seconds: int = 60) -> int:
    cutoff = timezone.now() - timedelta(seconds=older_than_seconds)
    ids = list(
        BalanceRefund.objects.filter(status=BalanceRefund.Status.PENDING, created_at__lt=cutoff).values_list(
            "pk", flat=True
        )[:200]
    )
    for pk in ids:
        balance_refund_send(refund_id=pk)
    return len(ids)
