"""Refunds: captured money given back to a customer, whether staff refund it here or in Stripe's dashboard (seen
through a webhook): each is booked once, and released holds that Stripe records as refunds are told apart."""

from __future__ import annotations

from django.db import transaction
from django.db.models import Sum

from accounts.models import User
from core.exceptions import ApplicationError
from core.money import cents_floor, nc_from_cents, usd_cents

from .. import ledger, stripe_gateway
from ..ledger import Leg
from ..models import AccountKind, LedgerEntry, LedgerTransaction, PaymentAuthorization, Refund
from .keys import stripe_key

Kind = LedgerTransaction.Kind
_field_error = ApplicationError.for_field


def refundable_cents(auth: PaymentAuthorization) -> int:
    """What staff may still refund of a settled job, in whole cents: what the customer has paid for its work, net of
    every refund and correction so far (the job's customer_spend in the ledger). Of a card's capture, the rest of the
    last cent is on the customer's balance already, so it is not counted."""
    spent = (
        LedgerEntry.objects.filter(
            transaction__bid_id=auth.bid_id, account__kind=AccountKind.CUSTOMER_SPEND, account__user_id=auth.customer_id
        ).aggregate(total=Sum("amount_nc"))["total"]
        or 0
    )
    return max(cents_floor(spent), 0)


def refund_create(*, authorization: PaymentAuthorization, amount_cents: int, reason: str, by: User | None) -> Refund:
    """Give a customer back what a job was charged (staff): to the card it was captured from, or onto the prepaid
    balance it was drawn from. The platform bears it: owners keep what their cars earned."""
    with transaction.atomic():
        auth = PaymentAuthorization.objects.select_for_update().get(pk=authorization.pk)
        refundable = refundable_cents(auth)
        if not 0 < amount_cents <= refundable:
            raise _field_error(
                "amount_cents", f"Between $0.01 and {usd_cents(refundable)} (charged and not yet refunded)."
            )
        refund = Refund.objects.create(
            authorization=auth, amount_cents=amount_cents, reason=reason, created_by=by,
            idempotency_key=stripe_key("refund", auth.pk),
        )  # fmt: skip
        if auth.method == PaymentAuthorization.Method.BALANCE:
            amount = nc_from_cents(amount_cents)
            ledger.post(
                kind=Kind.REFUND_TO_BALANCE, key=f"refund_to_balance:{refund.pk}", currency=auth.currency,
                bid_id=auth.bid_id,
                description=f"Bid {auth.bid_id}: refund onto the prepaid balance",
                legs=[
                    Leg(AccountKind.REFUNDS, amount, user_id=auth.customer_id),
                    Leg(AccountKind.CUSTOMER_SPEND, -amount, user_id=auth.customer_id),
                    Leg(AccountKind.PREPAID_CASH, amount, user_id=auth.customer_id),
                    Leg(AccountKind.CUSTOMER_BALANCE, -amount, user_id=auth.customer_id),
                ],
            )  # fmt: skip
            auth.refunded_cents += amount_cents
            auth.save(update_fields=["refunded_cents", "updated_at"])
            return refund
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
                Leg(AccountKind.REFUNDS, nc_from_cents(stripe_refund.amount), user_id=auth.customer_id),
                Leg(AccountKind.CUSTOMER_SPEND, -nc_from_cents(stripe_refund.amount), user_id=auth.customer_id),
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
