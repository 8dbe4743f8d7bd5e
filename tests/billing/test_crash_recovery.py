"""A crash between a Stripe call and our commit, then a retry: exactly one charge (or transfer) at the local Stripe
server and exactly one ledger transaction. The stored idempotency key makes Stripe answer the retry with the first
object; the posting key makes the ledger post once."""

from datetime import timedelta

import pytest
from django.utils import timezone

from billing import ledger, stripe_gateway
from billing.models import AccountKind, LedgerTransaction, PaymentAuthorization, Payout
from billing.services import authorizations, payouts, settling
from core.money import NC_PER_CENT
from marketplace.models import Bid
from tests.billing import builders

pytestmark = pytest.mark.django_db


class Crash(Exception):
    pass


def crash_once(monkeypatch, module, name):
    real = getattr(module, name)
    calls = {"n": 0}

    def crashing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise Crash(f"the process died after Stripe answered, before {name} committed")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, crashing)


def intents_for(bid: Bid) -> list:
    """The payment intents at the (session-wide) Stripe server of this bid's customer: each test has a new one."""
    customer = bid.customer.billing_profile.stripe_customer_id
    return [i for i in stripe_gateway.payment_intents() if i.customer == customer]


def test_a_crash_after_authorizing_then_the_sweeper_gives_one_hold(monkeypatch, alice, alice_card):
    crash_once(monkeypatch, ledger, "post")

    with pytest.raises(Crash):
        builders.bid_authorized(alice, budget_cents=900)
    bid = Bid.objects.get()
    assert bid.status == Bid.Status.AUTHORIZING  # not entered in any round yet
    assert authorizations.authorizations_resume(older_than_seconds=0) == 1

    bid.refresh_from_db()
    assert bid.status == Bid.Status.WAITING
    assert [(i.status, i.amount) for i in intents_for(bid)] == [("requires_capture", 900)]
    assert LedgerTransaction.objects.filter(kind="authorize").count() == 1


def test_a_request_that_dies_while_stripe_holds_a_new_bids_budget_leaves_both_rows_for_the_sweeper(
    monkeypatch, client, digits_with_variants
):
    from tests.marketplace.test_bids import bid_payload

    real_authorize, keys = stripe_gateway.payment_authorize, []

    def dies_once(**kwargs):
        keys.append(kwargs["key"])
        if len(keys) == 1:
            raise Crash("the placing request died while Stripe was holding the budget")
        return real_authorize(**kwargs)

    monkeypatch.setattr(stripe_gateway, "payment_authorize", dies_once)

    with pytest.raises(Crash):
        client.post("/api/v1/bids/", bid_payload(digits_with_variants), content_type="application/json")
    bid = Bid.objects.get()  # committed with its authorization before Stripe was called
    assert bid.status == Bid.Status.AUTHORIZING
    assert bid.authorization.status == PaymentAuthorization.Status.PENDING
    assert authorizations.authorizations_resume(older_than_seconds=0) == 1

    bid.refresh_from_db()
    assert bid.status == Bid.Status.WAITING
    assert keys[0] == keys[1] == bid.authorization.create_key  # the sweeper asked with the stored key
    assert [(i.status, i.amount) for i in intents_for(bid)] == [("requires_capture", bid.budget_cents)]


def test_a_crash_after_capturing_then_a_retry_charges_once(monkeypatch, alice, alice_card, olivia_car):
    bid = builders.bid_authorized(alice, budget_cents=1000)
    builders.validate(builders.sell(bid, olivia_car, ch=3.0, price_mcents=7_000))  # 21 ¢
    builders.close(bid)
    crash_once(monkeypatch, settling, "settlement_book")

    with pytest.raises(Crash):
        settling.bid_settle(bid_id=bid.pk)
    assert PaymentAuthorization.objects.get(bid=bid).status == PaymentAuthorization.Status.SETTLING
    assert not LedgerTransaction.objects.filter(kind="capture").exists()

    auth = settling.bid_settle(bid_id=bid.pk)  # the retried task

    assert (auth.status, auth.captured_cents) == ("settled", 21)
    (intent,) = intents_for(bid)
    assert (intent.status, intent.amount_received) == ("succeeded", 21)
    charges = stripe_gateway.client().v1.charges.list(params={"customer": alice.billing_profile.stripe_customer_id})
    assert [c.amount_captured for c in charges.data] == [21]
    assert LedgerTransaction.objects.filter(kind="capture").count() == 1
    assert ledger.balance(kind=AccountKind.CUSTOMER_SPEND, user_id=alice.pk) == 21 * NC_PER_CENT


def test_a_capture_retried_after_stripe_forgot_the_key_reads_the_payment_instead(
    monkeypatch, alice, alice_card, olivia_car
):
    bid = builders.bid_authorized(alice, budget_cents=1000)
    builders.validate(builders.sell(bid, olivia_car, ch=1.0, price_mcents=5_000))
    builders.close(bid)
    crash_once(monkeypatch, settling, "settlement_book")
    with pytest.raises(Crash):
        settling.bid_settle(bid_id=bid.pk)

    # More than 24 h later Stripe no longer knows the key: capturing again is refused as already captured.
    def refused(**kwargs):
        raise stripe_gateway.GatewayError("This PaymentIntent has already been captured.", code="already_captured")

    monkeypatch.setattr(stripe_gateway, "payment_capture", refused)
    auth = settling.bid_settle(bid_id=bid.pk)

    assert (auth.status, auth.captured_cents, auth.charged_nc) == ("settled", 5, 5 * NC_PER_CENT)
    assert LedgerTransaction.objects.filter(kind="capture").count() == 1
    assert ledger.balance(kind=AccountKind.CUSTOMER_SPEND, user_id=alice.pk) == 5 * NC_PER_CENT


def test_a_crash_after_transferring_then_a_retry_pays_once(
    monkeypatch, alice, alice_card, olivia, olivia_car, onboarded
):
    bid = builders.bid_authorized(alice, budget_cents=5000)
    builders.validate(builders.sell(bid, olivia_car, ch=300.0, price_mcents=5_000))  # 1,500 ¢
    builders.close(bid)
    settling.bid_settle(bid_id=bid.pk)
    payouts.earnings_release_due(now=timezone.now() + timedelta(days=4))
    onboarded(olivia)
    crash_once(monkeypatch, payouts, "payout_book")

    with pytest.raises(Crash):
        payouts.payouts_run(force=True)
    assert Payout.objects.get().status == Payout.Status.PENDING

    (payout,) = payouts.payouts_run(force=True)  # the next run finishes the half-done payout first

    assert (payout.status, payout.amount_cents) == ("paid", 1275)
    destination = olivia.connect_account.stripe_account_id
    transfers = stripe_gateway.client().v1.transfers.list(params={"destination": destination})
    assert [t.amount for t in transfers.data] == [1275]
    assert LedgerTransaction.objects.filter(kind="payout").count() == 1
    assert ledger.balance(kind=AccountKind.OWNER_PAID_OUT, user_id=olivia.pk) == 1275 * NC_PER_CENT
    assert ledger.balance(kind=AccountKind.OWNER_AVAILABLE, user_id=olivia.pk) == 0
