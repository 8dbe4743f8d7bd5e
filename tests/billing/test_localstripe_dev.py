"""The local Stripe server (billing/localstripe_dev.py) seen through the real `stripe` SDK, as the platform sees it.

Every test makes its own customers and accounts: the server lives for the whole session.
"""

import json
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
import stripe
from django.conf import settings

from billing.localstripe_dev import ONBOARDING_TITLE, webhook_register

RETURN_URL = "http://127.0.0.1:8000/owner/payouts/done/"
REFRESH_URL = "http://127.0.0.1:8000/owner/payouts/retry/"


@pytest.fixture
def stripe_client(stripe_server) -> stripe.StripeClient:
    """Built from the settings the fixture set, as the platform builds its own; no retries, so no test waits."""
    return stripe.StripeClient(
        settings.STRIPE_SECRET_KEY, base_addresses={"api": settings.STRIPE_API_BASE}, max_network_retries=0
    )


def express_account(client: stripe.StripeClient) -> stripe.Account:
    return client.v1.accounts.create(
        params={
            "type": "express",
            "country": "FR",
            "email": f"owner-{uuid.uuid4().hex[:8]}@example.com",
            "capabilities": {"transfers": {"requested": True}},
            "metadata": {"owner_id": "17"},
        }
    )


def onboarding_link(client: stripe.StripeClient, account_id: str) -> stripe.AccountLink:
    return client.v1.account_links.create(
        params={
            "account": account_id,
            "refresh_url": REFRESH_URL,
            "return_url": RETURN_URL,
            "type": "account_onboarding",
        }
    )


def onboarded_account(client: stripe.StripeClient) -> stripe.Account:
    account = express_account(client)
    response = requests.post(onboarding_link(client, account.id).url, headers={"Accept": "application/json"}, timeout=5)
    assert response.status_code == 200
    return client.v1.accounts.retrieve(account.id)


def customer_with_card(client: stripe.StripeClient) -> tuple[stripe.Customer, stripe.PaymentMethod]:
    customer = client.v1.customers.create(params={"email": "alice@example.com"})
    card = client.v1.payment_methods.attach("pm_card_visa", params={"customer": customer.id})
    return customer, card


def authorized_payment(client: stripe.StripeClient, amount: int = 1000) -> stripe.PaymentIntent:
    """A manual-capture payment intent, confirmed: the customer's card holds `amount` cents until capture."""
    customer, card = customer_with_card(client)
    return client.v1.payment_intents.create(
        params={
            "amount": amount,
            "currency": "eur",
            "customer": customer.id,
            "payment_method": card.id,
            "payment_method_types": ["card"],
            "capture_method": "manual",
            "confirm": True,
            "transfer_group": "bid_1",
        }
    )


# --- Connect ----------------------------------------------------------------------------------------------------------


def test_an_account_link_onboarding_enables_payouts(stripe_client, stripe_server):
    account = express_account(stripe_client)
    assert account.id.startswith("acct_")
    assert (account.type, account.details_submitted, account.payouts_enabled) == ("express", False, False)
    assert account.metadata["owner_id"] == "17"

    link = onboarding_link(stripe_client, account.id)
    assert link.object == "account_link"
    assert link.url.startswith(f"{stripe_server}/_connect/onboard/{account.id}?")
    assert link.expires_at > link.created

    response = requests.post(link.url, headers={"Accept": "application/json"}, timeout=5)
    assert response.status_code == 200
    assert response.json()["payouts_enabled"] is True

    account = stripe_client.v1.accounts.retrieve(account.id)
    assert (account.details_submitted, account.charges_enabled, account.payouts_enabled) == (True, True, True)
    assert account.capabilities["transfers"] == "active"
    assert account.id in [listed.id for listed in stripe_client.v1.accounts.list(params={"limit": 100}).data]


def test_the_onboarding_page_has_one_button_that_returns_to_the_platform(stripe_client):
    account = express_account(stripe_client)
    link = onboarding_link(stripe_client, account.id)

    page = requests.get(link.url, timeout=5)  # a browser sends no API key
    assert page.status_code == 200
    assert f"<title>{ONBOARDING_TITLE}</title>" in page.text
    assert page.text.count("<button") == 1 and "Complete onboarding" in page.text

    submitted = requests.post(link.url, data={"return_url": RETURN_URL}, allow_redirects=False, timeout=5)
    assert (submitted.status_code, submitted.headers["Location"]) == (303, RETURN_URL)
    assert stripe_client.v1.accounts.retrieve(account.id).payouts_enabled is True


def test_a_transfer_to_an_onboarded_account(stripe_client):
    account = onboarded_account(stripe_client)

    transfer = stripe_client.v1.transfers.create(
        params={
            "amount": 1234,
            "currency": "eur",
            "destination": account.id,
            "transfer_group": "round_7",
            "metadata": {"payout_id": "5"},
        }
    )

    assert transfer.id.startswith("tr_")
    assert (transfer.amount, transfer.currency, transfer.destination) == (1234, "eur", account.id)
    assert (transfer.reversed, transfer.amount_reversed, transfer.transfer_group) == (False, 0, "round_7")
    assert transfer.metadata["payout_id"] == "5"
    assert stripe_client.v1.transfers.retrieve(transfer.id).amount == 1234


def test_the_same_idempotency_key_twice_makes_one_transfer(stripe_client):
    account = onboarded_account(stripe_client)
    params = {"amount": 500, "currency": "eur", "destination": account.id, "metadata": {"payout_id": "6"}}
    key = f"payout-6-{uuid.uuid4()}"

    first = stripe_client.v1.transfers.create(params=params, options={"idempotency_key": key})
    second = stripe_client.v1.transfers.create(params=dict(params), options={"idempotency_key": key})

    assert second.id == first.id
    assert second.last_response.headers["Idempotent-Replayed"] == "true"
    listed = stripe_client.v1.transfers.list(params={"destination": account.id})
    assert [transfer.id for transfer in listed.data] == [first.id]


def test_the_same_idempotency_key_with_other_parameters_is_refused(stripe_client):
    account = onboarded_account(stripe_client)
    key = f"payout-7-{uuid.uuid4()}"
    stripe_client.v1.transfers.create(
        params={"amount": 500, "currency": "eur", "destination": account.id}, options={"idempotency_key": key}
    )

    with pytest.raises(stripe.IdempotencyError):
        stripe_client.v1.transfers.create(
            params={"amount": 501, "currency": "eur", "destination": account.id}, options={"idempotency_key": key}
        )

    assert len(stripe_client.v1.transfers.list(params={"destination": account.id}).data) == 1


def test_a_transfer_to_an_account_without_payouts_is_refused(stripe_client):
    account = express_account(stripe_client)

    with pytest.raises(stripe.InvalidRequestError) as refused:
        stripe_client.v1.transfers.create(params={"amount": 500, "currency": "eur", "destination": account.id})

    assert account.id in refused.value.user_message
    assert refused.value.param == "destination"
    assert stripe_client.v1.transfers.list(params={"destination": account.id}).data == []


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"amount": 500, "currency": "eur"}, "destination"),
        ({"amount": 500, "currency": "eur", "destination": "acct_doesnotexist"}, "destination"),
        ({"amount": 0, "currency": "eur"}, "amount"),
        ({"amount": -5, "currency": "eur"}, "amount"),
    ],
)
def test_a_transfer_with_a_bad_destination_or_amount_is_refused(stripe_client, params, param):
    if param == "amount":
        params = {**params, "destination": onboarded_account(stripe_client).id}

    with pytest.raises(stripe.InvalidRequestError) as refused:
        stripe_client.v1.transfers.create(params=params)

    assert refused.value.http_status == 400
    assert refused.value.param == param


# --- Payments ---------------------------------------------------------------------------------------------------------


def test_a_partial_capture_retried_with_the_same_key_captures_once(stripe_client):
    intent = authorized_payment(stripe_client, amount=1000)
    assert (intent.status, intent.amount_capturable, intent.transfer_group) == ("requires_capture", 1000, "bid_1")
    key = f"capture-{intent.id}"

    captured = stripe_client.v1.payment_intents.capture(
        intent.id, params={"amount_to_capture": 600}, options={"idempotency_key": key}
    )
    retried = stripe_client.v1.payment_intents.capture(
        intent.id, params={"amount_to_capture": 600}, options={"idempotency_key": key}
    )

    assert (captured.status, captured.amount_received, captured.amount_capturable) == ("succeeded", 600, 0)
    assert retried.last_response.headers["Idempotent-Replayed"] == "true"
    assert retried.to_dict() == captured.to_dict()
    charge = stripe_client.v1.charges.retrieve(captured.latest_charge.id)
    assert (charge.amount, charge.amount_captured) == (1000, 600)
    # localstripe records the released 400 as a refund, once: the retry did not run again.
    refunds = stripe_client.v1.refunds.list(params={"payment_intent": intent.id}).data
    assert [refund.amount for refund in refunds] == [400]

    # A new key is a new capture, which Stripe refuses for a payment that is no longer capturable.
    with pytest.raises(stripe.InvalidRequestError):
        stripe_client.v1.payment_intents.capture(intent.id, params={"amount_to_capture": 600})


def test_cancel_refund_and_lists(stripe_client):
    captured = stripe_client.v1.payment_intents.capture(authorized_payment(stripe_client, amount=800).id)
    canceled = stripe_client.v1.payment_intents.cancel(authorized_payment(stripe_client, amount=300).id)

    refund = stripe_client.v1.refunds.create(
        params={"payment_intent": captured.id, "amount": 200, "reason": "duplicate"}
    )

    assert (captured.status, captured.amount_received) == ("succeeded", 800)
    assert (canceled.status, canceled.amount_capturable, canceled.amount_received) == ("canceled", 0, 0)
    assert (refund.amount, refund.status, refund.reason) == (200, "succeeded", "duplicate")
    # The server is shared by the whole test session: page through everything it holds.
    intents = stripe_client.v1.payment_intents.list(params={"limit": 100}).auto_paging_iter()
    assert {captured.id, canceled.id} <= {intent.id for intent in intents}
    charges = stripe_client.v1.charges.list(params={"customer": captured.customer}).data
    assert [(charge.amount, charge.amount_refunded) for charge in charges] == [(800, 200)]
    assert [r.id for r in stripe_client.v1.refunds.list(params={"payment_intent": captured.id}).data] == [refund.id]


def test_a_declined_card_fails_the_authorization(stripe_client):
    customer = stripe_client.v1.customers.create(params={"email": "bob@example.com"})
    card = stripe_client.v1.payment_methods.attach("pm_card_chargeCustomerFail", params={"customer": customer.id})

    with pytest.raises(stripe.CardError) as declined:
        stripe_client.v1.payment_intents.create(
            params={
                "amount": 1000,
                "currency": "eur",
                "customer": customer.id,
                "payment_method": card.id,
                "capture_method": "manual",
                "confirm": True,
            }
        )

    assert declined.value.code == "card_declined"


# --- Webhooks ---------------------------------------------------------------------------------------------------------


@dataclass
class WebhookInbox:
    """An HTTP endpoint on 127.0.0.1 that keeps what the server POSTs to it: (raw payload, Stripe-Signature)."""

    url: str
    secret: str
    deliveries: "queue.Queue[tuple[bytes, str]]"
    received: list[tuple[bytes, str]] = field(default_factory=list)

    def wait_for(self, matches: Callable[[dict], bool], timeout: float = 10.0) -> tuple[bytes, str]:
        """The first delivery whose event matches, whenever it came: the server sends events in no fixed order."""
        deadline = time.monotonic() + timeout
        while True:
            for payload, signature in self.received:
                if matches(json.loads(payload)):
                    return payload, signature
            self.received.append(self.deliveries.get(timeout=max(deadline - time.monotonic(), 0.01)))


@pytest.fixture
def webhook_inbox(stripe_server) -> Iterator[WebhookInbox]:
    deliveries: queue.Queue[tuple[bytes, str]] = queue.Queue()

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            payload = self.rfile.read(int(self.headers["Content-Length"]))
            deliveries.put((payload, self.headers.get("Stripe-Signature", "")))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    inbox = WebhookInbox(
        f"http://127.0.0.1:{server.server_port}/stripe/webhook/", f"whsec_{uuid.uuid4().hex}", deliveries
    )
    webhook_register(stripe_server, url=inbox.url, secret=inbox.secret)
    yield inbox
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def is_event(event_type: str, object_id: str) -> Callable[[dict], bool]:
    return lambda event: event["type"] == event_type and event["data"]["object"]["id"] == object_id


def test_a_webhook_endpoint_receives_a_signed_transfer_created(stripe_client, webhook_inbox):
    account = onboarded_account(stripe_client)
    transfer = stripe_client.v1.transfers.create(params={"amount": 700, "currency": "eur", "destination": account.id})

    payload, signature = webhook_inbox.wait_for(is_event("transfer.created", transfer.id))

    event = stripe.Webhook.construct_event(payload, signature, webhook_inbox.secret)
    assert (event.type, event.data.object.id, event.data.object.amount) == ("transfer.created", transfer.id, 700)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(payload, signature, "whsec_someone_else")


def test_webhooks_for_onboarding_and_a_manual_capture(stripe_client, webhook_inbox):
    account = onboarded_account(stripe_client)
    intent = authorized_payment(stripe_client)
    stripe_client.v1.payment_intents.capture(intent.id, params={"amount_to_capture": 700})
    refund = stripe_client.v1.refunds.create(params={"payment_intent": intent.id, "amount": 100})
    canceled = stripe_client.v1.payment_intents.cancel(authorized_payment(stripe_client).id)

    for event_type, object_id in [
        ("account.updated", account.id),
        ("payment_intent.amount_capturable_updated", intent.id),
        ("payment_intent.succeeded", intent.id),
        ("charge.refunded", refund.charge),
        ("payment_intent.canceled", canceled.id),
    ]:
        payload, signature = webhook_inbox.wait_for(is_event(event_type, object_id))
        assert stripe.Webhook.construct_event(payload, signature, webhook_inbox.secret).type == event_type
