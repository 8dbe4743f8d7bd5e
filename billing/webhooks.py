"""Stripe's webhooks: verified, stored once by event id, processed in a task.

Stripe retries for days and does not keep order, so an event is only a hint: the task re-reads the object it names
and applies forward state changes; the ledger's idempotency keys make any repeat post nothing.
"""

from __future__ import annotations

import logging

import stripe
from django.db import IntegrityError, transaction
from django.utils import timezone

from . import stripe_gateway
from .models import PaymentAuthorization, Payout, StripeEvent
from .services import connect, payouts, refunds, settling, topups

log = logging.getLogger(__name__)


class BadWebhook(Exception):
    pass


def event_receive(*, payload: bytes, signature: str) -> tuple[StripeEvent, bool]:
    """Verify and store an event; (event, True) the first time it is seen. Raises BadWebhook when unverifiable."""
    try:
        event = stripe_gateway.event_verify(payload=payload, signature=signature)
    except (ValueError, stripe.SignatureVerificationError) as error:
        raise BadWebhook(str(error) or "Invalid signature.") from error
    payload_dict = event.to_dict()
    data_object = (payload_dict.get("data") or {}).get("object") or {}
    try:
        with transaction.atomic():
            stored = StripeEvent.objects.create(
                event_id=event.id, type=event.type, object_id=str(data_object.get("id", ""))[:80],
                payload=payload_dict,
            )  # fmt: skip
    except IntegrityError:
        return StripeEvent.objects.get(event_id=event.id), False
    return stored, True


def event_process(*, event_id: str) -> None:
    event = StripeEvent.objects.filter(event_id=event_id).first()
    if event is None or event.processed_at is not None:
        return
    kind, object_id = event.type, event.object_id
    if kind.startswith("payment_intent."):
        _payment_intent_changed(object_id)
    elif kind.startswith("charge.refund") or kind.startswith("refund."):
        payment_intent = (event.payload.get("data", {}).get("object") or {}).get("payment_intent")
        _refunds_changed(payment_intent)
    elif kind == "account.updated":
        connect.connect_account_sync(account_id=object_id)
    elif kind.startswith("transfer."):
        _transfer_changed(object_id)
    StripeEvent.objects.filter(pk=event.pk, processed_at__isnull=True).update(processed_at=timezone.now())


def _payment_intent_changed(intent_id: str) -> None:
    auth = PaymentAuthorization.objects.filter(stripe_payment_intent_id=intent_id).first()
    if auth is None:
        # Not a bid's card hold: a top-up's payment (one still processing, or whose request died before booking it).
        topups.topup_sync(intent=stripe_gateway.payment_retrieve(intent_id))
        return
    intent = stripe_gateway.payment_retrieve(intent_id)
    if auth.status == PaymentAuthorization.Status.SETTLING and settling.stripe_settled(intent, auth):
        settling.settlement_book(authorization_id=auth.pk)  # the capture happened; our booking did not
    elif auth.status == PaymentAuthorization.Status.SETTLED and intent.status == "succeeded":
        refunds.refunds_sync(authorization=auth)


def _refunds_changed(intent_id: str | None) -> None:
    auth = PaymentAuthorization.objects.filter(stripe_payment_intent_id=intent_id or "-").first()
    if auth is not None and auth.status == PaymentAuthorization.Status.SETTLED:
        refunds.refunds_sync(authorization=auth)


def _transfer_changed(transfer_id: str) -> None:
    transfer = stripe_gateway.transfer_retrieve(transfer_id)
    payout_id = (transfer.to_dict().get("metadata") or {}).get("payout_id")
    payout = Payout.objects.filter(pk=int(payout_id)).first() if str(payout_id or "").isdigit() else None
    if payout is not None and payout.status == Payout.Status.PENDING and payout.destination == transfer.destination:
        payouts.payout_book(payout_id=payout.pk, transfer_id=transfer.id)


__all__ = ["BadWebhook", "event_process", "event_receive"]
