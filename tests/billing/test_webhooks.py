"""Stripe's webhooks: verified, stored once, processed by re-reading the object. The same signed event delivered
five times, and events out of order, change the books once; a bad signature or a stale one changes nothing."""

import hashlib
import hmac
import json
import time

import pytest

from billing import ledger, stripe_gateway
from billing.models import AccountKind, LedgerTransaction, StripeEvent
from billing.services import settling
from core.money import NC_PER_CENT
from tests.billing import builders

pytestmark = pytest.mark.django_db
URL = "/billing/stripe/webhook/"
SECRET = "whsec_test_webhooks"


def signed(event: dict, secret: str, *, timestamp: int | None = None) -> tuple[bytes, str]:
    """The body and Stripe-Signature header Stripe would send (its documented scheme: HMAC-SHA256 of "t.body")."""
    body = json.dumps(event).encode()
    timestamp = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return body, f"t={timestamp},v1={digest}"


def event(event_id: str, kind: str, data_object: dict) -> dict:
    return {"id": event_id, "object": "event", "type": kind, "created": int(time.time()), "livemode": False,
            "api_version": stripe_gateway.API_VERSION, "data": {"object": data_object}}  # fmt: skip


@pytest.fixture
def deliver(client, settings, monkeypatch):
    """POST a signed event to the webhook; the processing task runs at once, as a worker would."""
    from billing import tasks

    settings.STRIPE_WEBHOOK_SECRET = SECRET
    monkeypatch.setattr(tasks.stripe_event_process, "delay", lambda event_id: tasks.stripe_event_process(event_id))

    def post(payload: dict, *, secret: str = SECRET, timestamp: int | None = None, header=None):
        body, signature = signed(payload, secret, timestamp=timestamp)
        return client.post(
            URL, body, content_type="application/json", HTTP_STRIPE_SIGNATURE=signature if header is None else header
        )

    return post


@pytest.fixture
def settled_job(alice, alice_card, olivia_car):
    bid = builders.bid_authorized(alice, budget_cents=1000)
    builders.validate(builders.sell(bid, olivia_car, ch=4.0, price_mcents=5_000))  # 20 ¢
    builders.close(bid)
    return settling.bid_settle(bid_id=bid.pk)


def test_a_refund_made_in_stripe_is_booked_once_whatever_the_deliveries(deliver, settled_job, alice):
    auth = settled_job
    # Staff refund 5 ¢ in Stripe's dashboard: Stripe has it, the ledger does not yet.
    refund = stripe_gateway.refund_create(payment_intent_id=auth.stripe_payment_intent_id, amount_cents=5,
                                          key="dashboard-refund-1")  # fmt: skip
    refunded = event("evt_refunded", "charge.refunded",
                     {"id": "ch_x", "object": "charge", "payment_intent": auth.stripe_payment_intent_id})  # fmt: skip
    succeeded = event("evt_succeeded", "payment_intent.succeeded",
                      {"id": auth.stripe_payment_intent_id, "object": "payment_intent"})  # fmt: skip

    # The later event first, then both again and again.
    for payload in [refunded, succeeded, refunded, refunded, succeeded, refunded, succeeded, refunded, succeeded,
                    succeeded]:  # fmt: skip
        assert deliver(payload).status_code == 200

    assert StripeEvent.objects.count() == 2
    assert StripeEvent.objects.filter(processed_at__isnull=False).count() == 2
    refunds = LedgerTransaction.objects.filter(kind=LedgerTransaction.Kind.REFUND)
    assert [(t.stripe_object_id, t.entries.get(account__kind="refunds").amount_nc) for t in refunds] == [
        (refund.id, 5 * NC_PER_CENT)
    ]
    assert ledger.balance(kind=AccountKind.CUSTOMER_SPEND, user_id=alice.pk) == 15 * NC_PER_CENT
    assert LedgerTransaction.objects.filter(kind=LedgerTransaction.Kind.CAPTURE).count() == 1
    assert ledger.unbalanced_transactions() == []


def test_a_capture_whose_booking_was_lost_is_booked_by_the_webhook(deliver, monkeypatch, alice, alice_card, olivia_car):
    bid = builders.bid_authorized(alice, budget_cents=1000)
    builders.validate(builders.sell(bid, olivia_car, ch=2.0, price_mcents=5_000))
    builders.close(bid)
    real_book = settling.settlement_book
    monkeypatch.setattr(settling, "settlement_book", lambda **kwargs: None)  # the process dies after capturing
    settling.bid_settle(bid_id=bid.pk)
    monkeypatch.setattr(settling, "settlement_book", real_book)
    from billing.models import PaymentAuthorization

    auth = PaymentAuthorization.objects.get(bid=bid)
    captured = event("evt_cap", "payment_intent.succeeded", {"id": auth.stripe_payment_intent_id})
    for _ in range(5):
        assert deliver(captured).status_code == 200

    auth.refresh_from_db()
    assert (auth.status, auth.captured_cents) == ("settled", 10)
    assert LedgerTransaction.objects.filter(kind=LedgerTransaction.Kind.CAPTURE).count() == 1
    assert ledger.balance(kind=AccountKind.CUSTOMER_SPEND, user_id=alice.pk) == 10 * NC_PER_CENT


def test_a_top_up_whose_booking_was_lost_is_booked_by_the_webhook_once(deliver, monkeypatch, alice, alice_card):
    from billing.models import TopUp
    from billing.services import topups

    real_book = topups.topup_book
    monkeypatch.setattr(topups, "topup_book", lambda **kwargs: None)  # the process dies after Stripe charged the card
    topups.topup_create(customer=alice, amount_cents=1000)
    monkeypatch.setattr(topups, "topup_book", real_book)
    topup = TopUp.objects.get(customer=alice)
    assert topup.status == TopUp.Status.PENDING and topup.stripe_payment_intent_id
    assert ledger.balance(kind=AccountKind.CUSTOMER_BALANCE, user_id=alice.pk) == 0

    charged = event("evt_topup", "payment_intent.succeeded", {"id": topup.stripe_payment_intent_id})
    for _ in range(3):
        assert deliver(charged).status_code == 200

    topup.refresh_from_db()
    assert topup.status == TopUp.Status.SUCCEEDED
    assert LedgerTransaction.objects.filter(kind=LedgerTransaction.Kind.TOPUP).count() == 1
    assert ledger.balance(kind=AccountKind.CUSTOMER_BALANCE, user_id=alice.pk) == 1000 * NC_PER_CENT
    assert ledger.unbalanced_transactions() == []


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        ({"secret": "whsec_someone_else"}, "bad signature"),
        ({"timestamp": int(time.time()) - 600}, "stale timestamp (over 300 s)"),
        ({"header": "t=1,v1=deadbeef"}, "forged header"),
        ({"header": ""}, "no header"),
    ],
)
def test_an_unverifiable_webhook_gets_400_and_changes_nothing(deliver, settled_job, kwargs, why):
    auth = settled_job
    stripe_gateway.refund_create(payment_intent_id=auth.stripe_payment_intent_id, amount_cents=5, key=f"r-{why}")
    before = LedgerTransaction.objects.count()

    refunded = event("evt_bad", "charge.refunded", {"id": "ch_x", "payment_intent": auth.stripe_payment_intent_id})
    response = deliver(refunded, **kwargs)

    assert response.status_code == 400, why
    assert not StripeEvent.objects.exists()
    assert LedgerTransaction.objects.count() == before


def test_the_webhook_answers_fast_and_leaves_the_work_to_a_task(client, settings, monkeypatch, settled_job):
    from billing import tasks

    settings.STRIPE_WEBHOOK_SECRET = SECRET
    queued = []
    monkeypatch.setattr(tasks.stripe_event_process, "delay", queued.append)
    body, signature = signed(event("evt_q", "payment_intent.succeeded", {"id": "pi_x"}), SECRET)

    for _ in range(3):
        assert (
            client.post(URL, body, content_type="application/json", HTTP_STRIPE_SIGNATURE=signature).status_code == 200
        )

    assert queued == ["evt_q"]  # stored once, queued once
