"""The prepaid balance, on the local Stripe server: a top-up charges the card at once and lands on the balance (once,
whether the charging request or the webhook books it); a bid reserves its budget from the balance, its validated
work draws exactly what it cost to the n¢, and the rest goes back; a balance too low pauses the bid with a message,
and a top-up starts it; unused balance goes back to the card in whole cents. And jobs worth less than a cent, billed
and paid to the n¢, with payouts that carry the sub-cent rest."""

from datetime import timedelta

import pytest
from django.utils import timezone

from billing import ledger, stripe_gateway
from billing.models import AccountKind, BalanceRefund, LedgerTransaction, PaymentAuthorization, TopUp
from billing.services import payouts, settling, topups
from core.exceptions import ApplicationError
from core.money import NC_PER_CENT
from marketplace.models import Bid
from marketplace.rounds import bids_expire
from tests.billing import builders
from tests.billing.test_webhooks import deliver, event  # noqa: F401 (a fixture)

pytestmark = pytest.mark.django_db
CENT = NC_PER_CENT
MINILM_CH_PER_ITEM = 1.4e-8  # the article's MiniLM: about 1.4e-8 CH per document


def balance(user, kind=AccountKind.CUSTOMER_BALANCE) -> int:
    return ledger.balance(kind=kind, user_id=user.pk)


def books_hold(*customers) -> None:
    """The ledger's identities, to the n¢ (billing/models.py: AccountKind)."""
    totals = ledger.totals_by_kind()
    spent = totals.get(AccountKind.CUSTOMER_SPEND, 0) + totals.get(AccountKind.REFUNDS, 0)
    earned = sum(totals.get(kind, 0) for kind in (AccountKind.OWNER_PENDING, AccountKind.OWNER_AVAILABLE,
                                                  AccountKind.OWNER_PAID_OUT, AccountKind.PLATFORM_FEE))  # fmt: skip
    assert spent + totals.get(AccountKind.VERIFICATION_COST, 0) == earned
    assert totals.get(AccountKind.STRIPE_CLEARING, 0) == totals.get(AccountKind.CUSTOMER_HELD, 0)
    for customer in customers:
        assert balance(customer, AccountKind.PREPAID_CASH) == balance(customer) + balance(
            customer, AccountKind.CUSTOMER_RESERVED
        )
        assert balance(customer) >= 0 and balance(customer, AccountKind.CUSTOMER_RESERVED) >= 0
    assert ledger.unbalanced_transactions() == []


# --- Top-ups ----------------------------------------------------------------------------------------------------------


def test_prepaid_a_top_up_charges_the_card_at_the_local_stripe_server_and_adds_to_the_balance(client, alice,
                                                                                              alice_card):  # fmt: skip
    client.force_login(alice)

    response = client.post("/customer/billing/topup/", {"amount": "10"}, follow=True)

    assert "$10.00 added to your balance." in response.content.decode()
    topup = TopUp.objects.get()
    assert (topup.status, topup.amount_cents) == ("succeeded", 1000)
    intent = stripe_gateway.payment_retrieve(topup.stripe_payment_intent_id)
    assert (intent.status, intent.amount) == ("succeeded", 1000)
    assert balance(alice) == 1000 * CENT
    page = " ".join(client.get("/customer/billing/").content.decode().split())
    assert '<div class="stat" id="balance-free">$10.00</div>' in page
    books_hold(alice)


@pytest.mark.parametrize(("amount", "message"), [("4.99", "Between $5.00 and $10,000.00."),
                                                 ("10001", "Between $5.00 and $10,000.00."),
                                                 ("ten", "Enter a number.")])  # fmt: skip
def test_prepaid_a_top_up_out_of_bounds_is_refused_naming_the_amount_and_charges_nothing(client, alice, alice_card,
                                                                                         amount, message):  # fmt: skip
    client.force_login(alice)

    response = client.post("/customer/billing/topup/", {"amount": amount})

    assert response.status_code == 400
    assert message in response.context["topup_form"].errors["amount"][0]
    assert not TopUp.objects.exists() and not LedgerTransaction.objects.exists()


def test_prepaid_a_declined_top_up_adds_nothing_and_says_why(client, alice, card_for):
    card_for(alice, "pm_card_chargeCustomerFail")
    client.force_login(alice)

    response = client.post("/customer/billing/topup/", {"amount": "10"})

    assert response.status_code == 400
    assert "declined" in " ".join(response.context["topup_form"].non_field_errors()).lower()
    assert TopUp.objects.get().status == "failed"
    assert balance(alice) == 0 and not LedgerTransaction.objects.exists()


def test_prepaid_a_top_up_whose_booking_was_lost_is_booked_by_its_webhook_once(deliver, monkeypatch, alice,  # noqa: F811
                                                                              alice_card):  # fmt: skip
    def crash(**kwargs):
        raise RuntimeError("the process died after Stripe charged the card")

    real_book = topups.topup_book
    monkeypatch.setattr(topups, "topup_book", crash)
    with pytest.raises(RuntimeError):
        topups.topup_create(customer=alice, amount_cents=2500)
    monkeypatch.setattr(topups, "topup_book", real_book)
    topup = TopUp.objects.get()
    assert topup.status == "pending" and balance(alice) == 0  # charged at Stripe, not yet on the balance

    succeeded = event("evt_topup", "payment_intent.succeeded", {"id": topup.stripe_payment_intent_id})
    for _ in range(3):
        assert deliver(succeeded).status_code == 200

    topup.refresh_from_db()
    assert topup.status == "succeeded"
    assert balance(alice) == 2500 * CENT
    assert LedgerTransaction.objects.filter(kind=LedgerTransaction.Kind.TOPUP).count() == 1
    assert topups.topups_resume(older_than_seconds=0) == 0  # nothing left for the sweeper
    books_hold(alice)


def test_prepaid_the_sweeper_books_a_top_up_whose_request_died_with_one_payment(alice, alice_card, monkeypatch):
    monkeypatch.setattr(topups, "topup_charge", lambda **kwargs: None)  # the request dies before calling Stripe
    topups.topup_create(customer=alice, amount_cents=1000)
    monkeypatch.undo()

    assert topups.topups_resume(older_than_seconds=0) == 1

    topup = TopUp.objects.get()
    assert topup.status == "succeeded" and balance(alice) == 1000 * CENT
    # The local Stripe server lives for the whole session: other tests' top-ups may have had this id too.
    customer_id = alice.billing_profile.stripe_customer_id
    mine = [
        i for i in stripe_gateway.payment_intents()
        if i.customer == customer_id and i.to_dict().get("metadata", {}).get("topup_id") == str(topup.pk)
    ]  # fmt: skip
    assert len(mine) == 1  # the same idempotency key: one payment


# --- Bids paid from the balance ---------------------------------------------------------------------------------------


def test_prepaid_a_bid_reserves_its_budget_and_gets_back_what_its_work_did_not_cost(alice, alice_card, olivia,
                                                                                    olivia_car):  # fmt: skip
    topups.topup_create(customer=alice, amount_cents=1000)
    intents_before = len(list(stripe_gateway.payment_intents()))

    bid = builders.bid_reserved(alice, budget_cents=500)

    assert bid.status == Bid.Status.WAITING
    assert (balance(alice), balance(alice, AccountKind.CUSTOMER_RESERVED)) == (500 * CENT, 500 * CENT)
    builders.validate(builders.sell(bid, olivia_car, ch=2.0, price_mcents=5_000))  # 10 ¢
    builders.validate(builders.sell(bid, olivia_car, ch=0.0123, price_mcents=5_000))  # 0.0615 ¢
    builders.close(bid)

    auth = settling.bid_settle(bid_id=bid.pk)

    assert (auth.method, auth.status, auth.charged_nc) == ("balance", "settled", 10_061_500_000)
    assert balance(alice, AccountKind.CUSTOMER_RESERVED) == 0
    assert balance(alice) == 1000 * CENT - 10_061_500_000  # $9.899385: nothing rounded away
    assert balance(alice, AccountKind.CUSTOMER_SPEND) == 10_061_500_000
    assert balance(olivia, AccountKind.OWNER_PENDING) == 8_552_275_000  # 85 %
    assert len(list(stripe_gateway.payment_intents())) == intents_before  # the balance pays: no card payment
    assert settling.bid_settle(bid_id=bid.pk).status == "settled"  # again: nothing more
    assert LedgerTransaction.objects.filter(bid=bid, kind=LedgerTransaction.Kind.CAPTURE).count() == 1
    books_hold(alice)


def test_prepaid_a_low_balance_pauses_the_bid_with_a_message_and_a_top_up_starts_it(client, alice, alice_card):
    topups.topup_create(customer=alice, amount_cents=500)

    bid = builders.bid_reserved(alice, budget_cents=800)

    assert bid.status == Bid.Status.PAUSED and bid not in Bid.objects.filter(status__in=Bid.OPEN_STATUSES)
    assert balance(alice, AccountKind.CUSTOMER_RESERVED) == 0 and balance(alice) == 500 * CENT
    client.force_login(alice)
    page = " ".join(client.get(f"/customer/bids/{bid.pk}/").content.decode().split())
    assert "Waiting for funds." in page
    assert "this job reserves its budget of $8.00 from your balance, which has $5.00 free." in page
    assert "Top up at least $3.00" in page

    topups.topup_create(customer=alice, amount_cents=500)

    bid.refresh_from_db()
    assert bid.status == Bid.Status.WAITING
    assert (balance(alice), balance(alice, AccountKind.CUSTOMER_RESERVED)) == (200 * CENT, 800 * CENT)
    assert PaymentAuthorization.objects.get(bid=bid).status == "authorized"
    books_hold(alice)


def test_prepaid_a_top_up_starts_the_paused_bids_it_covers_oldest_first(alice, alice_card):
    big = builders.bid_reserved(alice, budget_cents=5000)
    small = builders.bid_reserved(alice, budget_cents=700)
    other = builders.bid_reserved(alice, budget_cents=600)

    topups.topup_create(customer=alice, amount_cents=1000)

    statuses = {b.pk: b.status for b in Bid.objects.all()}
    assert statuses == {big.pk: "paused", small.pk: "waiting", other.pk: "paused"}  # $10 covers $7, then not $6
    assert balance(alice) == 300 * CENT
    books_hold(alice)


def test_prepaid_a_paused_bid_can_be_cancelled_or_expire_and_never_takes_money(client, alice, alice_card):
    first = builders.bid_reserved(alice, budget_cents=800)
    second = builders.bid_reserved(alice, budget_cents=800)
    client.force_login(alice)

    assert client.post(f"/api/v1/bids/{first.pk}/cancel/").json()["status"] == "cancelled"
    Bid.objects.filter(pk=second.pk).update(deadline=timezone.now() - timedelta(seconds=1))
    assert bids_expire(now=timezone.now()) == 1
    topups.topup_create(customer=alice, amount_cents=2000)

    assert set(Bid.objects.values_list("status", flat=True)) == {"cancelled", "expired"}
    assert balance(alice) == 2000 * CENT and balance(alice, AccountKind.CUSTOMER_RESERVED) == 0
    assert not LedgerTransaction.objects.filter(kind=LedgerTransaction.Kind.RESERVE).exists()


def test_prepaid_the_api_places_a_bid_on_the_balance_when_it_covers_the_budget(client, digits_with_variants, alice):
    topups.topup_create(customer=alice, amount_cents=1000)
    body = {
        "inference_model": digits_with_variants.pk, "dataset": digits_with_variants.datasets.get().pk,
        "max_price_usd_per_ch": "0.05", "budget_usd": "2.50",
        "deadline": (timezone.now() + timedelta(hours=2)).isoformat(),
    }  # fmt: skip

    placed = client.post("/api/v1/bids/", body, content_type="application/json").json()
    too_big = client.post("/api/v1/bids/", {**body, "budget_usd": "50.00"}, content_type="application/json").json()

    assert (placed["funding"], placed["status"], placed["budget_usd"]) == ("balance", "waiting", "2.50")
    assert (too_big["funding"], too_big["status"]) == ("card", "waiting")  # alice has a card: held on it instead
    assert balance(alice) == 750 * CENT


# --- Unused balance back to the card ----------------------------------------------------------------------------------


def test_prepaid_the_unused_balance_goes_back_to_the_card_in_whole_cents_and_the_rest_stays(client, alice, alice_card,
                                                                                           olivia_car):  # fmt: skip
    topups.topup_create(customer=alice, amount_cents=1000)
    open_bid = builders.bid_reserved(alice, budget_cents=300)
    done = builders.bid_reserved(alice, budget_cents=100)
    builders.validate(builders.sell(done, olivia_car, ch=0.0123, price_mcents=5_000))  # 0.0615 ¢
    builders.close(done)
    settling.bid_settle(bid_id=done.pk)
    assert balance(alice) == 700 * CENT - 61_500_000  # $6.999385

    client.force_login(alice)
    response = client.post("/customer/billing/refund-balance/", follow=True)

    assert "$6.99 refunded to your card." in response.content.decode()
    (refund,) = BalanceRefund.objects.all()
    assert (refund.status, refund.amount_cents) == ("succeeded", 699)
    at_stripe = [r for r in stripe_gateway.refunds() if r.id == refund.stripe_refund_id]
    assert [r.amount for r in at_stripe] == [699]
    assert balance(alice) == 938_500_000  # less than a cent stays on the balance
    assert balance(alice, AccountKind.CUSTOMER_RESERVED) == 300 * CENT  # the open bid keeps its reservation
    assert Bid.objects.get(pk=open_bid.pk).status == "waiting"
    with pytest.raises(ApplicationError, match="less than a cent to refund"):
        topups.balance_refund(customer=alice)
    books_hold(alice)


def test_prepaid_a_balance_refund_stripe_refuses_comes_back_to_the_balance(alice, alice_card, monkeypatch):
    topups.topup_create(customer=alice, amount_cents=1000)

    def refuse(**kwargs):
        raise stripe_gateway.GatewayError("The charge was disputed.", code="charge_disputed")

    monkeypatch.setattr(stripe_gateway, "refund_create", refuse)
    (refund,) = topups.balance_refund(customer=alice)

    assert (refund.status, refund.failure_message) == ("failed", "The charge was disputed.")
    assert balance(alice) == 1000 * CENT
    assert TopUp.objects.get().refunded_cents == 0
    books_hold(alice)


# --- Sub-cent jobs ----------------------------------------------------------------------------------------------------


def test_subcent_a_job_worth_a_millionth_of_a_dollar_is_charged_to_the_balance_and_paid_to_its_owners_to_the_nanocent(
    client, alice, alice_card, olivia, olivia_car, oscar, oscar_car
):
    """2,000 MiniLM documents at $0.015 per CH are worth $0.00000042. Before, such a job was charged $0.00 and its
    cars' owners never saw a cent of it."""
    topups.topup_create(customer=alice, amount_cents=500)
    bid = builders.bid_reserved(alice, budget_cents=100, items=2000)
    builders.validate(builders.sell(bid, olivia_car, ch=1200 * MINILM_CH_PER_ITEM, price_mcents=1_500))
    builders.validate(builders.sell(bid, oscar_car, ch=800 * MINILM_CH_PER_ITEM, price_mcents=1_500))
    builders.close(bid)

    auth = settling.bid_settle(bid_id=bid.pk)

    assert auth.charged_nc == 42_000  # n¢: 2,000 × 21 n¢
    assert balance(alice) == 500 * CENT - 42_000
    assert balance(olivia, AccountKind.OWNER_PENDING) == 21_420  # 1,200 documents × 21 n¢ × 85 %
    assert balance(oscar, AccountKind.OWNER_PENDING) == 14_280
    assert ledger.balance(kind=AccountKind.PLATFORM_FEE) == 6_300
    client.force_login(alice)
    receipt = " ".join(client.get(f"/customer/billing/receipts/{bid.pk}/").content.decode().split())
    assert 'Charged for the validated work</th><td class="number">$0.00000042</td>' in receipt
    client.force_login(olivia)
    earnings = client.get("/owner/earnings/").content.decode()
    assert "No earnings yet" not in earnings and "$0.000000214" in earnings
    books_hold(alice)


def test_subcent_a_payout_sends_whole_cents_and_carries_the_rest_to_the_next(alice, alice_card, olivia, olivia_car,
                                                                            onboarded, settings):  # fmt: skip
    settings.MIN_PAYOUT_CENTS = 1
    onboarded(olivia)
    topups.topup_create(customer=alice, amount_cents=1000)
    later = timezone.now() + timedelta(hours=73)

    def job(ch: float) -> None:
        bid = builders.bid_reserved(alice, budget_cents=300)
        builders.validate(builders.sell(bid, olivia_car, ch=ch, price_mcents=5_000))
        builders.close(bid)
        settling.bid_settle(bid_id=bid.pk)

    job(0.3)  # 1.5 ¢ of work: 1.275 ¢ to olivia
    payouts.earnings_release_due(now=later)
    (first,) = payouts.payouts_run(force=True)

    assert first.amount_cents == 1
    assert balance(olivia, AccountKind.OWNER_AVAILABLE) == 275_000_000  # 0.275 ¢ carried, not lost
    assert 0 <= balance(olivia, AccountKind.OWNER_AVAILABLE) < CENT

    job(0.2)  # 1 ¢ of work: 0.85 ¢ more
    payouts.earnings_release_due(now=later)
    from billing.models import Payout

    Payout.objects.update(period=timezone.localdate() - timedelta(days=1))  # yesterday's payout: today may pay again
    (second,) = payouts.payouts_run(force=True)

    assert second.amount_cents == 1  # 0.275 + 0.85 = 1.125 ¢: the carried rest made a whole cent
    assert balance(olivia, AccountKind.OWNER_AVAILABLE) == 125_000_000
    assert balance(olivia, AccountKind.OWNER_PAID_OUT) == 2 * CENT
    transfers = [t for t in stripe_gateway.transfers() if t.id in (first.stripe_transfer_id, second.stripe_transfer_id)]
    assert sorted(t.amount for t in transfers) == [1, 1]
    # Conserved: all that olivia's cars earned is paid out or carried, to the n¢.
    earned = 1_275_000_000 + 850_000_000
    assert balance(olivia, AccountKind.OWNER_PAID_OUT) + balance(olivia, AccountKind.OWNER_AVAILABLE) == earned
    books_hold(alice)


def test_subcent_a_card_capture_takes_whole_cents_and_keeps_the_rest_of_the_last_cent_on_the_balance(
    client, alice, alice_card, olivia, olivia_car
):
    bid = builders.bid_authorized(alice, budget_cents=100)
    builders.validate(builders.sell(bid, olivia_car, ch=1000 * MINILM_CH_PER_ITEM, price_mcents=1_500))
    builders.close(bid)

    auth = settling.bid_settle(bid_id=bid.pk)

    assert (auth.charged_nc, auth.captured_cents) == (21_000, 1)
    intent = stripe_gateway.payment_retrieve(auth.stripe_payment_intent_id)
    assert intent.status == "succeeded"
    assert balance(alice) == CENT - 21_000  # the rest of the cent: credit for the next job
    assert balance(olivia, AccountKind.OWNER_PENDING) == 17_850
    client.force_login(alice)
    receipt = " ".join(client.get(f"/customer/billing/receipts/{bid.pk}/").content.decode().split())
    # $0.00999979, read to 3 significant digits
    assert 'Rest of the last cent, kept on your balance</th><td class="number">$0.01</td>' in receipt
    books_hold(alice)


def test_prepaid_staff_refund_a_job_paid_from_the_balance_onto_the_balance(alice, alice_card, olivia, olivia_car,
                                                                          staff):  # fmt: skip
    from billing.services import refunds

    topups.topup_create(customer=alice, amount_cents=1000)
    bid = builders.bid_reserved(alice, budget_cents=500)
    builders.validate(builders.sell(bid, olivia_car, ch=0.5, price_mcents=5_000))  # 2.5 ¢
    builders.close(bid)
    auth = settling.bid_settle(bid_id=bid.pk)
    intents_before = len(list(stripe_gateway.payment_intents()))

    with pytest.raises(ApplicationError, match=r"Between \$0.01 and \$0.02"):  # 2.5 ¢ charged: 2 whole cents
        refunds.refund_create(authorization=auth, amount_cents=3, reason="too much", by=staff)
    refunds.refund_create(authorization=auth, amount_cents=2, reason="goodwill", by=staff)

    assert balance(alice) == 1000 * CENT - 2_500_000_000 + 2 * CENT
    assert balance(olivia, AccountKind.OWNER_PENDING) == 2_125_000_000  # owners keep what their cars earned
    assert len(list(stripe_gateway.payment_intents())) == intents_before  # nothing at Stripe: it was never there
    assert PaymentAuthorization.objects.get(pk=auth.pk).refunded_cents == 2
    books_hold(alice)


def test_prepaid_staff_refund_of_a_card_job_is_at_most_its_charge_not_the_rest_of_the_cent_kept_on_the_balance(
    alice, alice_card, olivia_car, staff
):
    from billing.services import refunds

    bid = builders.bid_authorized(alice, budget_cents=500)
    builders.validate(builders.sell(bid, olivia_car, ch=0.5, price_mcents=5_000))  # 2.5 ¢: 3 ¢ captured
    builders.close(bid)
    auth = settling.bid_settle(bid_id=bid.pk)
    assert (auth.captured_cents, balance(alice)) == (3, 500_000_000)

    assert refunds.refundable_cents(auth) == 2
    with pytest.raises(ApplicationError, match=r"Between \$0.01 and \$0.02"):
        refunds.refund_create(authorization=auth, amount_cents=3, reason="all of it", by=staff)


def test_prepaid_what_staff_may_refund_is_what_the_job_was_paid_net_of_refunds(alice, alice_card, olivia_car, staff):
    from billing.services import refunds

    bid = builders.bid_authorized(alice, budget_cents=500)
    builders.validate(builders.sell(bid, olivia_car, ch=1.0, price_mcents=5_000))  # 5 ¢
    builders.close(bid)
    auth = settling.bid_settle(bid_id=bid.pk)

    refunds.refund_create(authorization=auth, amount_cents=2, reason="one slice was late", by=staff)

    auth.refresh_from_db()
    assert refunds.refundable_cents(auth) == 3
    with pytest.raises(ApplicationError, match=r"Between \$0.01 and \$0.03"):
        refunds.refund_create(authorization=auth, amount_cents=4, reason="more", by=staff)
