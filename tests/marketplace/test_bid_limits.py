"""A bid's money, deadline and the customer's exposure are bounded (issue 16, findings 2, 3 and 9): a bid past a
bound is refused naming the field, stores nothing, and leaves every page answering."""

from datetime import timedelta

import pytest
from django.utils import timezone

from billing.models import LedgerTransaction, PaymentAuthorization
from core.exceptions import ApplicationError
from marketplace.models import Bid
from marketplace.services import bid_place
from tests.concurrency import at_once
from tests.marketplace.test_bids import bid_payload

pytestmark = pytest.mark.django_db


def place(client, model, **overrides):
    return client.post("/api/v1/bids/", bid_payload(model, **overrides), content_type="application/json")


def held_cents(customer) -> int:
    held = PaymentAuthorization.objects.filter(customer=customer, status="authorized")
    return sum(held.values_list("amount_cents", flat=True))


def assert_pages_healthy(client, customer, staff):
    client.force_login(customer)
    for page in ("/customer/", "/customer/billing/", "/api/v1/bids/"):
        assert client.get(page).status_code == 200, page
    client.force_login(staff)
    assert client.get("/staff/finance/").status_code == 200
    client.force_login(customer)


# --- Money: at most Stripe's largest amount ------------------------------------------------------------------------


def test_the_largest_bigint_budget_is_refused_and_the_finance_pages_stay_up(client, digits_with_variants, staff):
    """Finding 3: such a bid was authorized, and its SUM broke /staff/finance/ and /customer/billing/ for good."""
    model = digits_with_variants

    response = place(client, model, budget_usd="92233720368547758.07")

    assert response.status_code == 400
    assert response.json()["fields"] == {"budget_usd": ["At most $999,999.99: the largest payment."]}
    assert not Bid.objects.exists()
    assert not PaymentAuthorization.objects.exists()
    assert not LedgerTransaction.objects.exists()
    assert_pages_healthy(client, model.owner, staff)


def test_a_budget_of_stripes_largest_amount_is_held_where_staff_allow_it(client, digits_with_variants, staff):
    model = digits_with_variants
    model.owner.exposure_cap_cents = 200_000_000
    model.owner.save(update_fields=["exposure_cap_cents"])

    assert place(client, model, budget_usd="1000000.00").status_code == 400
    response = place(client, model, budget_usd="999999.99")

    assert response.status_code == 201, response.content
    assert held_cents(model.owner) == 99_999_999
    assert_pages_healthy(client, model.owner, staff)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("budget_usd", "1e20", "At most $999,999.99: the largest payment."),
        ("budget_usd", "1000000", "At most $999,999.99: the largest payment."),
        ("max_price_usd_per_ch", "1e999999", "no more than 12 digits in total"),
    ],
)
def test_the_bid_form_refuses_an_amount_too_large_naming_the_field(client, digits_with_variants, staff, field, value,
                                                                   message):  # fmt: skip
    model = digits_with_variants
    deadline = (timezone.now() + timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M")
    form = {"dataset": model.datasets.get().pk, "precision": "auto", "budget_usd": "2",
            "max_price_usd_per_ch": "0.05", "deadline": deadline, field: value}  # fmt: skip

    response = client.post(f"/customer/models/{model.pk}/bid/", form)

    assert response.status_code == 400
    assert message in response.context["form"].errors[field][0]
    assert not Bid.objects.exists()
    assert not PaymentAuthorization.objects.exists()
    assert_pages_healthy(client, model.owner, staff)


# --- Deadlines: at most 30 days ahead, and no later than a card hold lasts --------------------------------------------


LATEST = "At most 30 days ahead: {latest:%Y-%m-%d}"
CARD_LATEST = "At most 5 days ahead ({latest:%Y-%m-%d}"


@pytest.mark.parametrize(
    ("deadline", "message", "days"),
    [
        ("9999-12-31T23:59:59Z", LATEST, 30),
        ("2126-12-03T00:00:00Z", LATEST, 30),  # 100 years ahead
        ((timezone.now() + timedelta(days=30, hours=1)).isoformat(), LATEST, 30),
        # Paid by card (alice has a card and no balance): a card hold lapses after about a week, 5 days for some.
        ((timezone.now() + timedelta(days=5, hours=1)).isoformat(), CARD_LATEST, 5),
        ("9999-12-31T23:59:59-05:00", "Datetime value out of range.", 0),  # past year 9999 in UTC
    ],
)
def test_a_deadline_too_far_ahead_is_refused_naming_the_latest_date(client, digits_with_variants, staff, deadline,
                                                                    message, days):  # fmt: skip
    model = digits_with_variants

    response = place(client, model, deadline=deadline)

    assert response.status_code == 400
    body = response.json()
    assert list(body["fields"]) == ["deadline"]
    assert body["fields"]["deadline"][0].startswith(message.format(latest=timezone.now() + timedelta(days=days)))
    assert not Bid.objects.exists()
    assert not PaymentAuthorization.objects.exists()
    assert_pages_healthy(client, model.owner, staff)


def test_a_deadline_within_the_card_hold_is_accepted(client, digits_with_variants):
    deadline = (timezone.now() + timedelta(days=4, hours=23)).isoformat()

    response = place(client, digits_with_variants, deadline=deadline)

    assert response.status_code == 201, response.content
    assert response.json()["funding"] == "card"


def test_prepaid_a_bid_paid_from_the_balance_may_run_for_weeks(client, digits_with_variants):
    """A budget reserved from the prepaid balance does not lapse like a card hold: only the 30-day cap applies."""
    deadline = (timezone.now() + timedelta(days=20)).isoformat()

    response = place(client, digits_with_variants, deadline=deadline, funding="balance")

    assert response.status_code == 201, response.content
    assert response.json()["status"] == "paused"  # alice has no balance yet: it waits for a top-up


def test_a_deadline_in_the_past_is_refused(client, digits_with_variants):
    response = place(client, digits_with_variants, deadline="0001-01-01T00:00:00Z")

    assert response.status_code == 400
    assert response.json()["fields"]["deadline"][0].startswith("Give the cars at least 10 minutes")
    assert not Bid.objects.exists()


# --- Exposure: what a customer may have held at once ---------------------------------------------------------------


def test_a_bid_past_the_exposure_cap_is_refused_naming_the_room_left(client, digits_with_variants, staff):
    model = digits_with_variants
    first = place(client, model, budget_usd="400.00")
    assert first.status_code == 201, first.content
    Bid.objects.filter(pk=first.json()["id"]).update(status=Bid.Status.RUNNING)  # running: its money still held

    response = place(client, model, budget_usd="200.00")

    assert response.status_code == 400
    assert response.json()["code"] == "exposure_cap"
    assert response.json()["message"] == (
        "budget_usd: You have $400.00 held on your card by open bids and may hold up to $500.00 at once: this bid "
        "can hold at most $100.00. Pay it from your prepaid balance, or ask support to raise your limit."
    )
    assert Bid.objects.count() == 1 and PaymentAuthorization.objects.count() == 1
    assert place(client, model, budget_usd="100.00").status_code == 201  # what is left fits
    assert held_cents(model.owner) == 50_000
    assert_pages_healthy(client, model.owner, staff)


def test_money_released_from_a_hold_makes_room_again(client, digits_with_variants):
    model = digits_with_variants
    first = place(client, model, budget_usd="500.00")
    assert place(client, model, budget_usd="5.00").status_code == 400

    # Settled as billing leaves it once the bid closes: captured what the work cost, released the rest.
    PaymentAuthorization.objects.filter(bid_id=first.json()["id"]).update(status="settled")

    assert place(client, model, budget_usd="5.00").status_code == 201


def test_the_bid_form_shows_the_exposure_cap_on_the_budget(client, digits_with_variants):
    model = digits_with_variants
    assert place(client, model, budget_usd="499.00").status_code == 201
    deadline = (timezone.now() + timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M")
    form = {"dataset": model.datasets.get().pk, "precision": "auto", "budget_usd": "5",
            "max_price_usd_per_ch": "0.05", "deadline": deadline}  # fmt: skip

    response = client.post(f"/customer/models/{model.pk}/bid/", form)

    assert response.status_code == 400
    assert "this bid can hold at most $1.00" in response.context["form"].errors["budget_usd"][0]
    assert Bid.objects.count() == 1


def test_staff_raise_a_customers_exposure_cap_in_the_admin(client, digits_with_variants, staff):
    model = digits_with_variants
    customer = model.owner
    assert place(client, model, budget_usd="500.00").status_code == 201
    assert place(client, model, budget_usd="200.00").status_code == 400

    client.force_login(staff)
    url = f"/admin/accounts/user/{customer.pk}/change/"
    assert "exposure_cap_cents" in client.get(url).content.decode()
    joined = timezone.localtime(customer.date_joined)
    response = client.post(url, {
        "username": customer.username, "email": customer.email, "first_name": "", "last_name": "",
        "is_active": "on", "role": "customer", "exposure_cap_cents": "100000",
        "date_joined_0": joined.strftime("%Y-%m-%d"), "date_joined_1": joined.strftime("%H:%M:%S"),
    })  # fmt: skip
    assert response.status_code == 302, response.context["adminform"].form.errors
    customer.refresh_from_db()
    assert customer.exposure_cap_cents == 100_000

    client.force_login(customer)
    assert place(client, model, budget_usd="200.00").status_code == 201
    assert held_cents(customer) == 70_000


@pytest.mark.django_db(transaction=True)
def test_bids_placed_at_the_same_moment_never_hold_more_than_the_cap(digits_with_variants):
    """The issue's attack, smaller: 10 bids of $100 at once from a customer who may hold $500."""
    model = digits_with_variants
    dataset = model.datasets.get()
    placed: list[int] = []
    refused: list[str] = []

    def customer_tab():
        try:
            bid = bid_place(
                customer=model.owner, inference_model=model, dataset=dataset, precision="auto",
                max_price_mcents_per_ch=5000, budget_cents=10_000, deadline=timezone.now() + timedelta(hours=6),
            )  # fmt: skip
            placed.append(bid.pk)
        except ApplicationError as error:
            refused.append(error.code)

    at_once(customer_tab, 10)

    assert len(placed) == 5 and refused == ["exposure_cap"] * 5
    assert held_cents(model.owner) == 50_000
    assert Bid.objects.filter(status=Bid.Status.WAITING).count() == 5
