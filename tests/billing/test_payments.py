"""Customers pay by card: a bid holds its budget, the job is charged exactly its validated work when it ends, the
rest is released, and owners' earnings follow the money. All through the real SDK and the local Stripe server."""

from decimal import Decimal

import pytest

from billing import ledger, stripe_gateway
from billing.models import AccountKind, LedgerTransaction, PaymentAuthorization
from billing.services import payouts, refunds, settling
from core.exceptions import ApplicationError
from core.money import NC_PER_CENT
from marketplace.models import Bid
from tests.billing import builders

pytestmark = pytest.mark.django_db
CENT = NC_PER_CENT  # the ledger meters n¢: 1 ¢ = 10⁹ n¢


def books_balance() -> None:
    assert ledger.unbalanced_transactions() == []
    totals = ledger.totals_by_kind()
    captured = totals.get("customer_spend", 0) + totals.get("refunds", 0)
    owners = sum(totals.get(k, 0) for k in ("owner_pending", "owner_available", "owner_paid_out"))
    assert captured + totals.get("verification_cost", 0) == owners + totals.get("platform_fee", 0)
    assert totals.get("stripe_clearing", 0) == totals.get("customer_held", 0)
    prepaid = totals.get("customer_balance", 0) + totals.get("customer_reserved", 0)
    assert totals.get("prepaid_cash", 0) == prepaid


def test_placing_a_bid_holds_its_budget_on_the_card(alice, alice_card):
    bid = builders.bid_authorized(alice, budget_cents=1234)

    assert bid.status == Bid.Status.WAITING
    auth = bid.authorization
    intent = stripe_gateway.payment_retrieve(auth.stripe_payment_intent_id)
    assert (intent.status, intent.amount, intent.capture_method) == ("requires_capture", 1234, "manual")
    assert ledger.balance(kind=AccountKind.CUSTOMER_HELD, user_id=alice.pk) == 1234 * CENT
    books_balance()


def test_a_declined_card_keeps_the_bid_out_and_says_why(alice, add_card):
    add_card(alice, "pm_card_chargeCustomerFail")

    bid = builders.bid_authorized(alice)

    assert bid.status == Bid.Status.DECLINED
    assert bid.authorization.status == PaymentAuthorization.Status.DECLINED
    assert "declined" in bid.authorization.failure_message.lower()
    assert not LedgerTransaction.objects.exists()


def test_a_job_is_charged_its_validated_work_at_each_rounds_price_and_the_rest_released(
    alice, alice_card, olivia, oscar, olivia_car, oscar_car
):
    bid = builders.bid_authorized(alice, budget_cents=1000)
    builders.validate(builders.sell(bid, olivia_car, ch=0.5, price_mcents=5_000))  # 2,500 m¢
    builders.validate(builders.sell(bid, oscar_car, ch=0.25, price_mcents=6_000))  # 1,500 m¢
    builders.fail(builders.sell(bid, oscar_car, ch=0.25, price_mcents=6_000))  # failed work is never billed
    builders.close(bid)

    auth = settling.bid_settle(bid_id=bid.pk)

    assert auth.status == PaymentAuthorization.Status.SETTLED
    assert auth.work_mcents == Decimal(4_000)
    assert auth.charged_nc == 4 * CENT
    assert (auth.captured_cents, auth.released_cents) == (4, 996)
    intent = stripe_gateway.payment_retrieve(auth.stripe_payment_intent_id)
    assert (intent.status, intent.amount_received) == ("succeeded", 4)
    fee = ledger.balance(kind=AccountKind.PLATFORM_FEE)
    olivia_pending = ledger.balance(kind=AccountKind.OWNER_PENDING, user_id=olivia.pk)
    oscar_pending = ledger.balance(kind=AccountKind.OWNER_PENDING, user_id=oscar.pk)
    # Exact, no longer rounded to the cent: the 15 % fee of 4 ¢ is 0.6 ¢; olivia earns 85 % of 2.5 ¢, oscar of 1.5 ¢.
    assert (fee, olivia_pending, oscar_pending) == (600_000_000, 2_125_000_000, 1_275_000_000)
    assert ledger.balance(kind=AccountKind.CUSTOMER_HELD, user_id=alice.pk) == 0
    assert ledger.balance(kind=AccountKind.CUSTOMER_SPEND, user_id=alice.pk) == 4 * CENT
    assert ledger.balance(kind=AccountKind.CUSTOMER_BALANCE, user_id=alice.pk) == 0  # whole cents: nothing carried
    books_balance()
    # Settling again (a retried task) changes nothing.
    settling.bid_settle(bid_id=bid.pk)
    assert LedgerTransaction.objects.filter(kind=LedgerTransaction.Kind.CAPTURE).count() == 1


def test_a_job_with_no_validated_work_releases_the_whole_hold(alice, alice_card, olivia_car):
    bid = builders.bid_authorized(alice, budget_cents=700)
    builders.fail(builders.sell(bid, olivia_car, ch=0.5, price_mcents=5_000))
    builders.close(bid, Bid.Status.FAILED)

    auth = settling.bid_settle(bid_id=bid.pk)

    assert (auth.captured_cents, auth.released_cents, auth.charged_nc) == (0, 700, 0)
    assert stripe_gateway.payment_retrieve(auth.stripe_payment_intent_id).status == "canceled"
    assert ledger.balance(kind=AccountKind.CUSTOMER_HELD, user_id=alice.pk) == 0
    assert ledger.balance(kind=AccountKind.CUSTOMER_SPEND, user_id=alice.pk) == 0
    books_balance()


def test_a_closed_bid_waits_for_a_car_still_running_its_unit(alice, alice_card, olivia_car):
    bid = builders.bid_authorized(alice)
    allocation = builders.sell(bid, olivia_car, ch=0.5, price_mcents=5_000)
    builders.close(bid, Bid.Status.EXPIRED)

    assert settling.bid_settle(bid_id=bid.pk).status == PaymentAuthorization.Status.AUTHORIZED

    builders.validate(allocation)
    auth = settling.bid_settle(bid_id=bid.pk)
    # Charged exactly 2.5 ¢; the card pays whole cents (3 ¢), and the other half cent goes onto alice's balance.
    assert (auth.charged_nc, auth.captured_cents, auth.settlement["carried_nc"]) == (2_500_000_000, 3, 500_000_000)
    assert ledger.balance(kind=AccountKind.CUSTOMER_SPEND, user_id=alice.pk) == 2_500_000_000
    assert ledger.balance(kind=AccountKind.CUSTOMER_BALANCE, user_id=alice.pk) == 500_000_000
    books_balance()


def test_a_refund_is_booked_once_and_borne_by_the_platform(alice, alice_card, olivia, olivia_car, staff):
    bid = builders.bid_authorized(alice)
    builders.validate(builders.sell(bid, olivia_car, ch=2.0, price_mcents=5_000))
    builders.close(bid)
    auth = settling.bid_settle(bid_id=bid.pk)
    assert auth.captured_cents == 10

    refunds.refund_create(authorization=auth, amount_cents=4, reason="slow job", by=staff)
    refunds.refunds_sync(authorization=auth)  # as if Stripe's webhook arrived too

    assert ledger.balance(kind=AccountKind.REFUNDS, user_id=alice.pk) == 4 * CENT
    assert ledger.balance(kind=AccountKind.CUSTOMER_SPEND, user_id=alice.pk) == 6 * CENT
    # Owners keep their earnings: 85 % of 10 ¢, exactly.
    assert ledger.balance(kind=AccountKind.OWNER_PENDING, user_id=olivia.pk) == 8_500_000_000
    auth.refresh_from_db()
    at_stripe = stripe_gateway.refunds(payment_intent_id=auth.stripe_payment_intent_id)
    assert [r.amount for r in at_stripe if not refunds.refund_is_release(auth, r)] == [4]
    with pytest.raises(ApplicationError, match="amount_cents"):
        refunds.refund_create(authorization=auth, amount_cents=7, reason="too much", by=staff)
    books_balance()


def test_earnings_wait_out_the_hold_then_a_payout_transfers_them(
    alice, alice_card, olivia, olivia_car, onboarded, settings
):
    from datetime import timedelta

    from django.utils import timezone

    bid = builders.bid_authorized(alice, budget_cents=5000)
    builders.validate(builders.sell(bid, olivia_car, ch=40.0, price_mcents=5_000))  # 200 ¢
    builders.close(bid)
    settling.bid_settle(bid_id=bid.pk)
    onboarded(olivia)
    settings.MIN_PAYOUT_CENTS = 100

    assert payouts.earnings_release_due() == 0  # still in the 72 h hold
    assert payouts.payouts_run(force=True) == []
    assert payouts.earnings_release_due(now=timezone.now() + timedelta(hours=73)) == 1
    assert ledger.balance(kind=AccountKind.OWNER_AVAILABLE, user_id=olivia.pk) == 170 * CENT

    (payout,) = payouts.payouts_run(force=True)

    assert (payout.status, payout.amount_cents) == ("paid", 170)
    transfer = stripe_gateway.transfer_retrieve(payout.stripe_transfer_id)
    assert (transfer.amount, transfer.destination) == (170, olivia.connect_account.stripe_account_id)
    assert ledger.balance(kind=AccountKind.OWNER_AVAILABLE, user_id=olivia.pk) == 0
    assert ledger.balance(kind=AccountKind.OWNER_PAID_OUT, user_id=olivia.pk) == 170 * CENT
    assert payouts.payouts_run(force=True) == []  # one payout per owner per period
    books_balance()


def test_an_owner_without_payouts_set_up_is_not_paid_and_keeps_the_money(alice, alice_card, olivia, olivia_car):
    from datetime import timedelta

    from django.utils import timezone

    bid = builders.bid_authorized(alice, budget_cents=5000)
    builders.validate(builders.sell(bid, olivia_car, ch=400.0, price_mcents=5_000))
    builders.close(bid)
    settling.bid_settle(bid_id=bid.pk)
    payouts.earnings_release_due(now=timezone.now() + timedelta(hours=73))

    assert payouts.payouts_run(force=True) == []
    assert ledger.balance(kind=AccountKind.OWNER_AVAILABLE, user_id=olivia.pk) == 1700 * CENT
