"""A customer's billing page (card, spend history, totals) and the receipt of each job."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing import ledger, selectors, stripe_gateway
from billing.ledger import Leg
from billing.models import AccountKind, BillingProfile, LedgerTransaction, PaymentAuthorization, Refund
from billing.services import cards, settling
from core.money import NC_PER_CENT
from marketplace.models import Bid, WorkUnit
from tests.billing import builders

pytestmark = pytest.mark.django_db

BILLING = "/customer/billing/"
CENT = NC_PER_CENT  # the ledger meters n¢: 1 ¢ = 10⁹ n¢


def job(customer, *, budget_cents: int = 1000, status: str = Bid.Status.COMPLETED) -> Bid:
    """A bid built straight in the database, with no card behind it (no Stripe)."""
    variant = builders.catalogue_variant()
    return Bid.objects.create(
        customer=customer, inference_model=variant.inference_model, dataset=variant.inference_model.datasets.get(),
        variant=variant, precision_requested="int8", pool="int8", max_price_mcents_per_ch=10_000,
        budget_cents=budget_cents, deadline=timezone.now() + timedelta(hours=2), items=1000, ch_total=1.0,
        status=status,
    )  # fmt: skip


def settled(bid: Bid, *, captured: int, refunded: int = 0, charged_nc: int | None = None) -> PaymentAuthorization:
    """A job paid by card, settled: `charged_nc` (by default the whole cents captured) for its work, `captured` whole
    cents from the card, and the rest of the last cent carried onto the balance."""
    charged_nc = captured * CENT if charged_nc is None else charged_nc
    return PaymentAuthorization.objects.create(
        bid=bid, customer=bid.customer, amount_cents=bid.budget_cents, status=PaymentAuthorization.Status.SETTLED,
        method=PaymentAuthorization.Method.CARD, stripe_payment_intent_id=f"pi_test_{bid.pk}",
        create_key=f"authorize:bid:{bid.pk}", capture_cents=captured, captured_cents=captured,
        released_cents=bid.budget_cents - captured, refunded_cents=refunded, charged_nc=charged_nc,
        settlement={"charge_nc": charged_nc, "carried_nc": captured * CENT - charged_nc},
    )  # fmt: skip


def book_capture(auth: PaymentAuthorization, owner) -> None:
    """The ledger's side of a job captured in full, in n¢ (the platform takes 1 ¢, the owner the rest)."""
    cents, customer = auth.captured_cents * CENT, auth.customer_id
    ledger.post(
        kind=LedgerTransaction.Kind.AUTHORIZE, key=f"authorize:{auth.pk}", bid_id=auth.bid_id,
        legs=[Leg(AccountKind.STRIPE_CLEARING, cents), Leg(AccountKind.CUSTOMER_HELD, -cents, user_id=customer)],
    )  # fmt: skip
    ledger.post(
        kind=LedgerTransaction.Kind.CAPTURE, key=f"capture:{auth.pk}", bid_id=auth.bid_id,
        stripe_object_id=auth.stripe_payment_intent_id,
        legs=[
            Leg(AccountKind.CUSTOMER_HELD, cents, user_id=customer),
            Leg(AccountKind.CUSTOMER_SPEND, cents, user_id=customer),
            Leg(AccountKind.STRIPE_CLEARING, -cents), Leg(AccountKind.PLATFORM_FEE, -CENT),
            Leg(AccountKind.OWNER_PENDING, -(cents - CENT), user_id=owner.pk),
        ],
    )  # fmt: skip


# --- The card ---------------------------------------------------------------------------------------------------------


def test_a_customer_without_a_card_is_offered_stripes_test_cards(client, alice):
    client.force_login(alice)

    response = client.get(BILLING)

    assert response.status_code == 200
    page = " ".join(response.content.decode().split())
    assert "No card yet." in page
    for payment_method in cards.TEST_CARDS:
        assert f'value="{payment_method}"' in page
    assert "Each bid reserves its budget from it" in page
    assert "you are charged exactly what its validated work cost" in page
    assert "Add a card first." in page  # a top-up is charged to the card: none is offered without one
    assert 'action="/customer/billing/topup/"' not in page


def test_saving_a_test_card_at_the_local_stripe_server_shows_its_brand_and_last_four(client, alice, stripe_server):
    client.force_login(alice)

    response = client.post(BILLING, {"payment_method": "pm_card_visa"}, follow=True)

    assert response.redirect_chain == [(BILLING, 302)]
    profile = BillingProfile.objects.get(user=alice)
    assert (profile.card_brand, profile.card_last4) == ("visa", "4242")
    assert profile.stripe_customer_id.startswith("cus_")
    page = response.content.decode()
    assert "Card saved: Visa ending in 4242." in page
    assert "<strong>Visa</strong> ending in <strong>4242</strong>" in page
    assert "Replace the card" in page


def test_a_card_stripe_refuses_shows_stripes_message_on_the_field(client, alice, monkeypatch):
    monkeypatch.setattr(stripe_gateway, "customer_create", lambda **kwargs: "cus_refusing")

    def refuse(**kwargs):
        raise stripe_gateway.CardDeclined("Your card was declined.", code="card_declined")

    monkeypatch.setattr(stripe_gateway, "card_attach", refuse)
    client.force_login(alice)

    response = client.post(BILLING, {"payment_method": "pm_card_chargeDeclined"})

    assert response.status_code == 400
    assert response.context["form"].errors == {"payment_method": ["Your card was declined."]}
    assert 'id="id_payment_method_error"' in response.content.decode()
    assert not BillingProfile.objects.get(user=alice).has_card


def test_a_payment_method_that_is_not_a_test_card_is_refused_before_stripe(client, alice, monkeypatch):
    monkeypatch.setattr(cards, "card_save", lambda **kwargs: pytest.fail("Stripe was called"))
    client.force_login(alice)

    response = client.post(BILLING, {"payment_method": "pm_made_up"})

    assert response.status_code == 400
    assert "Select a valid choice" in response.context["form"].errors["payment_method"][0]


# --- Spend history and totals -----------------------------------------------------------------------------------------


def test_the_spend_history_lists_only_the_customers_settled_jobs_newest_first_25_a_page(client, alice, bob):
    jobs = [settled(job(alice), captured=10 + n) for n in range(26)]
    settled(job(bob), captured=99)
    open_bid = job(alice, status=Bid.Status.RUNNING)
    PaymentAuthorization.objects.create(
        bid=open_bid, customer=alice, amount_cents=1000, status=PaymentAuthorization.Status.AUTHORIZED,
        create_key="authorize:open",
    )  # fmt: skip
    client.force_login(alice)

    first = client.get(BILLING)
    second = client.get(BILLING, {"page": 2})

    assert list(first.context["history"]) == jobs[::-1][:25]
    assert list(second.context["history"]) == [jobs[0]]
    assert "Page 1 of 2" in first.content.decode()
    assert f'href="/customer/billing/receipts/{jobs[-1].bid_id}/"' in first.content.decode()
    assert "$0.99" not in first.content.decode() + second.content.decode()  # bob's job


def test_totals_are_what_the_ledger_says_the_customer_paid_net_of_refunds(alice, olivia):
    auth = settled(job(alice), captured=250, refunded=50)
    book_capture(auth, olivia)
    ledger.post(
        kind=LedgerTransaction.Kind.REFUND, key="refund:re_1", stripe_object_id="re_1", bid_id=auth.bid_id,
        legs=[Leg(AccountKind.REFUNDS, 50 * CENT, user_id=alice.pk),
              Leg(AccountKind.CUSTOMER_SPEND, -50 * CENT, user_id=alice.pk)],
    )  # fmt: skip

    this_month = selectors.spend_totals(user=alice)
    next_month = selectors.spend_totals(user=alice, now=timezone.now() + timedelta(days=32))

    assert (this_month.month_nc, this_month.all_time_nc) == (200 * CENT, 200 * CENT)
    assert (next_month.month_nc, next_month.all_time_nc) == (0, 200 * CENT)


def test_the_page_shows_the_totals(client, alice, olivia):
    book_capture(settled(job(alice, budget_cents=5000), captured=1234), olivia)
    client.force_login(alice)

    page = client.get(BILLING).content.decode()

    assert page.count("$12.34") >= 3  # this month, in all, and the job's row
    flat = " ".join(page.split())
    assert ('<th scope="col">Paid from</th><th scope="col">Budget</th><th scope="col">Charged</th>'
            '<th scope="col">Refunded</th>') in flat  # fmt: skip
    assert "<td>Card hold</td> <td>$50.00</td> <td>$12.34</td> <td>—</td>" in flat


# --- Receipts ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def alices_job(alice, olivia_car, oscar_car):
    """Two rounds sold validated work (0.5 CH at 5,000 m¢/CH, 0.1 CH at 3,333 m¢/CH); one unit failed, one was
    done under no allocation: neither is billed."""
    bid = job(alice)
    first = builders.sell(bid, olivia_car, ch=0.5, price_mcents=5_000)
    second = builders.sell(bid, oscar_car, ch=0.1, price_mcents=3_333)
    builders.validate(first)
    builders.validate(second)
    builders.fail(builders.sell(bid, oscar_car, ch=0.25, price_mcents=6_000))
    WorkUnit.objects.create(
        bid=bid,
        variant_id=bid.variant_id,
        index=99,
        item_start=900,
        item_end=1000,
        ch=0.1,
        status=WorkUnit.Status.DONE,
        done_by=olivia_car,
    )
    builders.close(bid)
    return bid, first.round, second.round


def test_a_receipt_has_one_line_per_round_with_its_exact_amount(alices_job):
    bid, first_round, second_round = alices_job

    receipt = selectors.receipt_get(bid=bid)

    assert [(line.round_slot, line.ch, line.price_mcents_per_ch) for line in receipt.lines] == [
        (first_round.slot, 0.5, 5_000),
        (second_round.slot, 0.1, 3_333),
    ]
    assert [line.value_mcents for line in receipt.lines] == [Decimal(2_500), Decimal("333.3")]
    assert receipt.work_mcents == Decimal("2833.3")
    assert [line.value_nc for line in receipt.lines] == [2_500_000_000, 333_300_000]
    assert receipt.estimate_nc == 2_833_300_000  # 2.8333 ¢, exactly (to the n¢), no longer rounded to 3 ¢


def test_before_settlement_the_receipt_says_charges_are_final_when_the_job_ends(client, alice, alices_job):
    bid, _, _ = alices_job
    bid.status = Bid.Status.RUNNING
    bid.save()
    PaymentAuthorization.objects.create(
        bid=bid, customer=alice, amount_cents=1000, status=PaymentAuthorization.Status.AUTHORIZED,
        create_key=f"authorize:bid:{bid.pk}",
    )  # fmt: skip
    client.force_login(alice)

    page = client.get(f"/customer/billing/receipts/{bid.pk}/").content.decode()

    assert "Charges are final when the job ends." in page
    # 2.8333 ¢ of validated work so far, shown with the digits it needs.
    assert "Running estimate for the work validated so far: <strong>$0.0283</strong>" in page
    assert 'Estimated charge</th><td class="number">$0.0283</td>' in page


def test_a_settled_receipt_shows_the_charge_hold_release_and_refunds(client, alice, alices_job):
    bid, _, _ = alices_job
    auth = settled(bid, captured=3, refunded=1, charged_nc=2_833_300_000)  # 2.8333 ¢: 3 whole cents from the card
    Refund.objects.create(
        authorization=auth, amount_cents=1, reason="slow job", idempotency_key="refund:1", stripe_refund_id="re_1"
    )
    client.force_login(alice)

    response = client.get(f"/customer/billing/receipts/{bid.pk}/")

    assert response.status_code == 200
    page = response.content.decode()
    assert "Charges are final" not in page
    for text in (
        "billing-test-model", "billing-test-data", "Completed", "INT8",
        # Each round's line: its price per CH (and per 1M items of 0.001 CH) and its exact amount; then the total.
        '<td class="number">$0.05/CH <small class="muted">($50.00 per 1M items)</small></td>',
        '<td class="number">$0.025</td>',  # 0.5 CH × 5 ¢
        '<td class="number">$0.03333/CH <small class="muted">($33.33 per 1M items)</small></td>',
        '<td class="number">$0.00333</td>',  # 0.1 CH × 3.333 ¢ = 0.3333 ¢
        '<td></td><td class="number">$0.0283</td>',  # 2.8333 ¢ in all
        "slow job", "−$0.01", "@media print",
    ):  # fmt: skip
        assert text in page, text
    amounts = {
        "Charged for the validated work": "$0.0283",  # exactly the work, not rounded to the cent
        "Held on your card": "$10.00",
        'Captured from your card <small class="muted">(whole cents)</small>': "$0.03",
        "Rest of the last cent, kept on your balance": "$0.00167",  # 3 ¢ − 2.8333 ¢
        "Released": "$9.97",
    }
    for label, amount in amounts.items():
        assert f'{label}</th><td class="number">{amount}</td>' in page, label
    assert "$0.06/CH" not in page  # the failed unit's round sold nothing that was validated


# --- Checking work is the platform's, not the customer's --------------------------------------------------------------


@pytest.fixture
def alices_checked_job(alice, alice_card, olivia_car, oscar_car):
    """Alice bought 500 items (0.5 CH at 5,000 m¢/CH) run on Olivia's car; Oscar's car ran them again in a round that
    verification bought (4,000 m¢/CH) and agreed. The job is completed and settled at the local Stripe server."""
    bid = builders.bid_authorized(alice, items=500)
    bought = builders.sell(bid, olivia_car, ch=0.5, price_mcents=5_000)
    Bid.objects.filter(pk=bid.pk).update(ch_allocated=0.5)  # as the round that sold it does
    builders.confirm(builders.validate(bought), oscar_car, price_mcents=4_000)
    builders.close(bid)
    settling.bid_settle(bid_id=bid.pk)
    bid.refresh_from_db()
    return bid, bought


def test_a_job_checked_by_a_second_car_shows_its_items_and_rounds_once(client, alice, alices_checked_job):
    bid, bought = alices_checked_job
    client.force_login(alice)

    response = client.get(f"/customer/bids/{bid.pk}/")
    api = client.get(f"/api/v1/bids/{bid.pk}/").json()

    page = " ".join(response.content.decode().split())
    assert "500 of 500 items done in 1 work unit ·" in page
    assert '<progress value="500" max="500"' in page
    assert list(response.context["allocations"]) == [bought]  # not the round verification bought
    assert '<td>$0.05/CH <small class="muted">($50.00 per 1M items)</small></td>' in page and "$0.04/CH" not in page
    assert (api["items"], api["ch_allocated"], api["ch_total"]) == (500, 0.5, 0.5)


def test_the_receipt_of_a_checked_job_is_the_work_bought_and_equals_the_charge(client, alice, alices_checked_job):
    bid, bought = alices_checked_job
    auth = PaymentAuthorization.objects.get(bid=bid)

    receipt = selectors.receipt_get(bid=bid)
    client.force_login(alice)
    page = client.get(f"/customer/billing/receipts/{bid.pk}/").content.decode()

    assert [(line.round_slot, line.ch, line.price_mcents_per_ch) for line in receipt.lines] == [
        (bought.round.slot, 0.5, 5_000)
    ]
    assert receipt.ch == bid.ch_total
    assert receipt.work_mcents == auth.work_mcents == Decimal(2_500)
    assert receipt.work_nc == receipt.charged_nc == auth.charged_nc == 2_500_000_000  # 2.5 ¢, exactly
    assert auth.captured_cents == 3  # the card pays whole cents; the half cent left goes onto the balance
    assert ledger.balance(kind=AccountKind.CUSTOMER_BALANCE, user_id=alice.pk) == receipt.carried_nc == 500_000_000
    assert "$0.05/CH" in page and "$0.04/CH" not in page
    assert 'Charged for the validated work</th><td class="number">$0.025</td>' in page
    assert 'Rest of the last cent, kept on your balance</th><td class="number">$0.005</td>' in page


def test_bob_cannot_see_alices_receipt(client, alice, bob):
    bid = job(alice)
    settled(bid, captured=3)
    client.force_login(bob)

    assert client.get(f"/customer/billing/receipts/{bid.pk}/").status_code == 404
    assert client.get("/customer/billing/receipts/999999/").status_code == 404


def test_owners_and_visitors_have_no_billing_pages(client, alice, olivia):
    bid = job(alice)
    assert client.get(BILLING).status_code == 302  # to the login page
    client.force_login(olivia)

    assert client.get(BILLING).status_code == 403
    assert client.get(f"/customer/billing/receipts/{bid.pk}/").status_code == 403


def test_a_replica_bought_dearer_that_outvotes_the_first_result_never_raises_the_customers_charge(
    client, alice, alice_card, olivia, oscar, olivia_car, oscar_car
):
    """Alice bought 5 CH at 1,000 m¢/CH on Olivia's car; Olivia's result was outvoted by a replica on Oscar's car that
    verification bought at 8,000 m¢/CH (the car's ask). Alice pays her own price; the platform pays the rest."""
    bid = builders.bid_authorized(alice, items=500, budget_cents=1000)
    bought = builders.sell(bid, olivia_car, ch=5.0, price_mcents=1_000)
    Bid.objects.filter(pk=bid.pk).update(ch_allocated=5.0)
    first = builders.validate(bought)
    replica = builders.confirm(first, oscar_car, price_mcents=8_000)
    WorkUnit.objects.filter(pk=first.pk).update(verification=WorkUnit.Verification.INVALID, canonical=False)
    WorkUnit.objects.filter(pk=replica.pk).update(canonical=True)
    builders.close(bid)

    settling.bid_settle(bid_id=bid.pk)

    auth = PaymentAuthorization.objects.get(bid=bid)
    assert auth.charged_nc == 5 * CENT  # 5 CH × 1,000 m¢, not 5 CH × 8,000 m¢ = 40 ¢
    assert auth.captured_cents == 5
    receipt = selectors.receipt_get(bid=bid)
    assert [(line.round_slot, line.ch, line.price_mcents_per_ch) for line in receipt.lines] == [
        (bought.round.slot, 5.0, 1_000)
    ]
    assert receipt.work_nc == auth.charged_nc
    # Oscar's car still earns its own sale, 40 ¢ less the 15 % fee; Olivia's outvoted result earns nothing.
    assert ledger.balance(kind=AccountKind.OWNER_PENDING, user_id=oscar.pk) == 34 * CENT
    assert ledger.balance(kind=AccountKind.OWNER_PENDING, user_id=olivia.pk) == 0
    # The platform pays what Alice does not: 34 ¢ less her 5 ¢ net of the fee (4.25 ¢).
    assert ledger.balance(kind=AccountKind.VERIFICATION_COST) == 34 * CENT - 4_250_000_000
    assert ledger.balance(kind=AccountKind.CUSTOMER_SPEND, user_id=alice.pk) == 5 * CENT
