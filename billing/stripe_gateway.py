"""All of the platform's Stripe calls, in one place, on one pinned API version.

Every call that creates or moves money takes an idempotency key that the caller stored in the database *before*
calling, so a crash between Stripe's answer and our commit is repaired by calling again with the same key: Stripe
returns the first answer instead of acting twice. With STRIPE_API_BASE set (the demo and the tests), the same SDK
talks to the local Stripe server (billing/localstripe_dev.py); with only STRIPE_SECRET_KEY=sk_test_..., to Stripe's
test mode.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

import stripe
from django.conf import settings

# The API version this code was written and tested against; Stripe keeps it stable whatever the account's default.
API_VERSION = "2026-10-28.endive"


class GatewayError(Exception):
    """Stripe refused or could not be reached. `message` is safe to show to the user."""

    def __init__(self, message: str, *, code: str = "stripe_error", param: str | None = None):
        super().__init__(message)
        self.message, self.code, self.param = message, code, param


class CardDeclined(GatewayError):
    """The card was declined (or needs an authentication the platform cannot do off-session)."""


@dataclass(frozen=True)
class Card:
    payment_method_id: str
    brand: str
    last4: str


@cache
def _client(api_key: str, api_base: str) -> stripe.StripeClient:
    base = {"api": api_base, "connect": api_base, "files": api_base} if api_base else None
    return stripe.StripeClient(api_key, stripe_version=API_VERSION, base_addresses=base, max_network_retries=2)


def client() -> stripe.StripeClient:
    if not settings.STRIPE_SECRET_KEY:
        raise GatewayError("Payments are not configured: set STRIPE_SECRET_KEY.", code="stripe_not_configured")
    return _client(settings.STRIPE_SECRET_KEY, settings.STRIPE_API_BASE)


def _call(function, *args, **kwargs):
    try:
        return function(*args, **kwargs)
    except stripe.CardError as error:
        raise CardDeclined(
            error.user_message or str(error.error.message if error.error else error), code=error.code or "card_declined"
        ) from error
    except stripe.StripeError as error:
        detail = error.error
        message = (detail.message if detail else None) or error.user_message or str(error)
        raise GatewayError(message, code=(detail.code if detail else None) or "stripe_error",
                           param=detail.param if detail else None) from error  # fmt: skip


def _options(key: str | None) -> dict[str, Any]:
    return {"idempotency_key": key} if key else {}


# --- Customers and cards -------------------------------------------------------------------------------------------


def customer_create(*, email: str, name: str, user_id: int, key: str) -> str:
    customer = _call(
        client().v1.customers.create,
        params={"email": email, "name": name, "metadata": {"user_id": str(user_id)}},
        options=_options(key),
    )
    return customer.id


def card_attach(*, customer_id: str, payment_method: str, key: str) -> Card:
    """Attach a card (in test mode, one of Stripe's test payment methods such as pm_card_visa) to the customer."""
    method = _call(
        client().v1.payment_methods.attach, payment_method, params={"customer": customer_id}, options=_options(key)
    )
    card = method.to_dict().get("card") or {}
    return Card(payment_method_id=method.id, brand=str(card.get("brand", "card")), last4=str(card.get("last4", "")))


# --- Payment intents ------------------------------------------------------------------------------------------------


def _payment_create(
    *,
    amount_cents: int,
    currency: str,
    customer_id: str,
    payment_method_id: str,
    key: str,
    metadata: dict[str, str],
    capture: str,
) -> stripe.PaymentIntent:
    return _call(
        client().v1.payment_intents.create,
        params={
            "amount": amount_cents,
            "currency": currency,
            "customer": customer_id,
            "payment_method": payment_method_id,
            "payment_method_types": ["card"],
            "capture_method": capture,
            "confirm": True,
            "off_session": True,
            "metadata": metadata,
        },
        options=_options(key),
    )


def payment_authorize(
    *, amount_cents: int, currency: str, customer_id: str, payment_method_id: str, key: str, metadata: dict[str, str]
) -> stripe.PaymentIntent:
    """Authorize (hold) `amount_cents` on the card, to be captured later. Raises CardDeclined when refused."""
    intent = _payment_create(
        amount_cents=amount_cents, currency=currency, customer_id=customer_id, payment_method_id=payment_method_id,
        key=key, metadata=metadata, capture="manual",
    )  # fmt: skip
    if intent.status != "requires_capture":
        raise CardDeclined(
            f"The card could not be authorized (the payment is '{intent.status}'): try another card.",
            code=f"payment_{intent.status}",
        )
    return intent


def payment_charge(
    *, amount_cents: int, currency: str, customer_id: str, payment_method_id: str, key: str, metadata: dict[str, str]
) -> stripe.PaymentIntent:
    """Charge `amount_cents` to the card at once (a top-up of the prepaid balance). Raises CardDeclined when refused;
    a payment still `processing` is returned, and its webhook tells how it ends."""
    intent = _payment_create(
        amount_cents=amount_cents, currency=currency, customer_id=customer_id, payment_method_id=payment_method_id,
        key=key, metadata=metadata, capture="automatic",
    )  # fmt: skip
    if intent.status not in ("succeeded", "processing"):
        raise CardDeclined(
            f"The card could not be charged (the payment is '{intent.status}'): try another card.",
            code=f"payment_{intent.status}",
        )
    return intent


def payment_capture(*, payment_intent_id: str, amount_cents: int, key: str) -> stripe.PaymentIntent:
    """Capture `amount_cents` (≤ the authorized amount); Stripe releases the rest of the hold."""
    return _call(
        client().v1.payment_intents.capture,
        payment_intent_id,
        params={"amount_to_capture": amount_cents},
        options=_options(key),
    )


def payment_cancel(*, payment_intent_id: str, key: str) -> stripe.PaymentIntent:
    """Release the whole hold (nothing to charge)."""
    return _call(client().v1.payment_intents.cancel, payment_intent_id, options=_options(key))


def payment_retrieve(payment_intent_id: str) -> stripe.PaymentIntent:
    return _call(client().v1.payment_intents.retrieve, payment_intent_id)


def payment_intents(*, limit: int = 100) -> Iterator[stripe.PaymentIntent]:
    return iter(_call(client().v1.payment_intents.list, params={"limit": limit}).auto_paging_iter())


# --- Refunds --------------------------------------------------------------------------------------------------------


def refund_create(*, payment_intent_id: str, amount_cents: int, key: str, reason: str = "") -> stripe.Refund:
    params: dict[str, Any] = {"payment_intent": payment_intent_id, "amount": amount_cents}
    if reason:
        params["metadata"] = {"reason": reason[:400]}
    return _call(client().v1.refunds.create, params=params, options=_options(key))


def refunds(*, payment_intent_id: str | None = None, limit: int = 100) -> Iterator[stripe.Refund]:
    params: dict[str, Any] = {"limit": limit}
    if payment_intent_id:
        params["payment_intent"] = payment_intent_id
    return iter(_call(client().v1.refunds.list, params=params).auto_paging_iter())


# --- Connect: owners' accounts and transfers --------------------------------------------------------------------


def account_create(*, email: str, user_id: int, key: str) -> stripe.Account:
    return _call(
        client().v1.accounts.create,
        params={
            "type": "express",
            "email": email,
            "capabilities": {"transfers": {"requested": True}},
            "metadata": {"user_id": str(user_id)},
        },
        options=_options(key),
    )


def account_retrieve(account_id: str) -> stripe.Account:
    return _call(client().v1.accounts.retrieve, account_id)


def account_link_create(*, account_id: str, refresh_url: str, return_url: str) -> str:
    link = _call(
        client().v1.account_links.create,
        params={"account": account_id, "refresh_url": refresh_url, "return_url": return_url,
                "type": "account_onboarding"},
    )  # fmt: skip
    return link.url


def transfer_create(
    *, amount_cents: int, currency: str, destination: str, key: str, metadata: dict[str, str]
) -> stripe.Transfer:
    return _call(
        client().v1.transfers.create,
        params={"amount": amount_cents, "currency": currency, "destination": destination, "metadata": metadata},
        options=_options(key),
    )


def transfer_retrieve(transfer_id: str) -> stripe.Transfer:
    return _call(client().v1.transfers.retrieve, transfer_id)


def transfers(*, limit: int = 100) -> Iterator[stripe.Transfer]:
    return iter(_call(client().v1.transfers.list, params={"limit": limit}).auto_paging_iter())


# --- Webhooks -------------------------------------------------------------------------------------------------------


def event_verify(*, payload: bytes, signature: str) -> stripe.Event:
    """The event, if `signature` is Stripe's signature of `payload` with our secret and is fresh (300 s);
    otherwise ValueError or stripe.SignatureVerificationError."""
    return stripe.Webhook.construct_event(payload, signature, settings.STRIPE_WEBHOOK_SECRET)
