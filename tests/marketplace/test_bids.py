"""Placing and cancelling bids: the amount of work follows from the dataset; bad bids are refused, naming the field."""

from datetime import timedelta

import pytest
from django.utils import timezone

from marketplace.models import Bid

pytestmark = pytest.mark.django_db


def bid_payload(model, **overrides):
    data = {
        "inference_model": model.pk,
        "dataset": model.datasets.get().pk,
        "precision": "auto",
        "max_price_usd_per_ch": "0.05",
        "budget_usd": "5.00",
        "deadline": (timezone.now() + timedelta(hours=6)).isoformat(),
    }
    data.update(overrides)
    return data


def test_a_bid_buys_the_datasets_work_at_the_auto_precision(client, digits_with_variants):
    model = digits_with_variants

    response = client.post("/api/v1/bids/", bid_payload(model), content_type="application/json")

    assert response.status_code == 201, response.content
    body = response.json()
    int8 = model.variants.get(precision="int8")
    assert (body["precision_requested"], body["precision"], body["status"]) == ("auto", "int8", "waiting")
    assert body["items"] == 200
    assert body["ch_total"] == pytest.approx(200 * int8.ch_per_item)
    assert client.get(f"/customer/bids/{body['id']}/").status_code == 200
    assert f"#{body['id']}" in client.get("/customer/").content.decode()


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"max_price_usd_per_ch": "0"}, "max_price_usd_per_ch", "Ensure this value is greater than or equal to"),
        ({"max_price_usd_per_ch": "100"}, "max_price_usd_per_ch", "Between $0.00001/CH and $1.00/CH (the price"),
        ({"max_price_usd_per_ch": "0.005"}, "max_price_usd_per_ch", "Below the INT8 reserve price of $0.01/CH"),
        ({"deadline": "2020-01-01T00:00:00Z"}, "deadline", "Give the cars at least 10 minutes"),
        ({"precision": "fp4"}, "precision", '"fp4" is not a valid choice.'),
        ({"dataset": 999999}, "dataset", "Not a dataset of this model that you can use."),
    ],
)
def test_a_bad_bid_names_the_field_and_is_not_entered(client, digits_with_variants, overrides, field, message):
    response = client.post(
        "/api/v1/bids/", bid_payload(digits_with_variants, **overrides), content_type="application/json"
    )

    assert response.status_code == 400
    assert field in response.json()["fields"], response.json()
    assert response.json()["fields"][field][0].startswith(message)
    assert not Bid.objects.exists()


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ("dataset", "Not a dataset of this model that you can use."),
        ("inference_model", "No such model that you can use."),
    ],
)
def test_an_unknown_model_or_dataset_is_named_in_the_message(client, digits_with_variants, field, message):
    payload = bid_payload(digits_with_variants, **{field: 999999})

    response = client.post("/api/v1/bids/", payload, content_type="application/json")

    assert response.status_code == 400
    assert response.json() == {"code": "invalid", "message": f"{field}: {message}", "fields": {field: [message]}}
    assert not Bid.objects.exists()


def test_a_precision_that_misses_the_tolerance_is_refused(client, digits_with_variants):
    model = digits_with_variants
    model.metric, model.tolerance = "max_abs", 1e-7
    model.save()

    response = client.post("/api/v1/bids/", bid_payload(model, precision="int8"), content_type="application/json")

    assert response.status_code == 400
    assert response.json()["message"] == "precision: The INT8 variant misses your accuracy tolerance."


def test_the_bid_form_places_a_bid_and_shows_errors(client, digits_with_variants):
    model = digits_with_variants
    url = f"/customer/models/{model.pk}/bid/"
    deadline = (timezone.now() + timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M")
    form = {"dataset": model.datasets.get().pk, "precision": "auto", "budget_usd": "2", "deadline": deadline}

    page = client.get(url).content.decode()
    assert "Estimated cost of digits.npy (200 items) in INT8: <strong>" in page
    assert "at $0.01/CH" in page  # no round yet: the INT8 reserve

    bad = client.post(url, {**form, "max_price_usd_per_ch": "0.001"})
    assert bad.status_code == 400
    assert "Below the INT8 reserve price" in bad.content.decode()

    good = client.post(url, {**form, "max_price_usd_per_ch": "0.045"})
    assert good.status_code == 302
    bid = Bid.objects.get()
    assert (bid.max_price_mcents_per_ch, bid.budget_cents) == (4500, 200)


def test_a_closed_bid_cannot_be_cancelled_again(client, digits_with_variants):
    bid_id = client.post("/api/v1/bids/", bid_payload(digits_with_variants), content_type="application/json").json()[
        "id"
    ]

    assert client.post(f"/api/v1/bids/{bid_id}/cancel/").json()["status"] == "cancelled"
    again = client.post(f"/api/v1/bids/{bid_id}/cancel/")
    assert again.status_code == 409
    assert again.json()["message"] == "This bid is cancelled: only a bid that is waiting or running can be cancelled."


def test_another_customers_bid_is_404(client, digits_with_variants, bob):
    bid_id = client.post("/api/v1/bids/", bid_payload(digits_with_variants), content_type="application/json").json()[
        "id"
    ]
    client.force_login(bob)
    assert client.get(f"/api/v1/bids/{bid_id}/").status_code == 404
    assert client.post(f"/api/v1/bids/{bid_id}/cancel/").status_code == 404
    assert client.get(f"/customer/bids/{bid_id}/").status_code == 404
    assert client.get("/api/v1/bids/").json() == []
    assert Bid.objects.get().status == "waiting"


def test_prepaid_without_a_card_or_funds_a_bid_waits_paused_and_its_page_says_how_much_to_top_up(
    client, digits_with_variants, alice
):
    from billing.models import BillingProfile

    BillingProfile.objects.filter(user=alice).update(payment_method_id="")

    response = client.post("/api/v1/bids/", bid_payload(digits_with_variants), content_type="application/json")

    assert response.status_code == 201
    assert (response.json()["status"], response.json()["funding"]) == ("paused", "balance")
    page = client.get(f"/customer/bids/{response.json()['id']}/").content.decode()
    assert "Waiting for funds." in page
    assert "reserves its budget of $5.00 from your balance, which has $0.00 free" in page
    assert "Top up at least $5.00" in page and "/customer/billing/" in page


def test_a_bid_paid_by_card_without_a_card_is_refused_naming_where_to_add_one(client, digits_with_variants, alice):
    from billing.models import BillingProfile

    BillingProfile.objects.filter(user=alice).update(payment_method_id="")

    response = client.post(
        "/api/v1/bids/", bid_payload(digits_with_variants, funding="card"), content_type="application/json"
    )

    assert response.status_code == 400
    assert response.json()["fields"]["payment_method"] == [
        "Add a card on your billing page before placing a bid paid by card."
    ]
    assert not Bid.objects.exists()


def test_the_bid_form_names_the_balance_and_the_card_the_budget_can_come_from(client, digits_with_variants):
    page = " ".join(client.get(f"/customer/models/{digits_with_variants.pk}/bid/").content.decode().split())

    assert "Your prepaid balance: <strong>$0.00</strong> free" in page
    assert "card: Visa ending 4242" in page


def test_a_declined_card_gets_402_with_stripes_reason_and_the_bid_never_trades(client, digits_with_variants, alice,
                                                                               card_for):  # fmt: skip
    card_for(alice, "pm_card_chargeCustomerFail")

    response = client.post("/api/v1/bids/", bid_payload(digits_with_variants), content_type="application/json")

    assert response.status_code == 402
    body = response.json()
    assert body["code"] == "card_declined"
    assert "declined" in body["fields"]["payment_method"][0].lower()
    bid = Bid.objects.get()
    assert bid.status == Bid.Status.DECLINED and bid not in Bid.objects.filter(status__in=Bid.OPEN_STATUSES)
    assert "Your card was declined" in client.get(f"/customer/bids/{bid.pk}/").content.decode()


def test_the_job_list_is_at_customer_bids_too(client, digits_with_variants):
    bid_id = client.post("/api/v1/bids/", bid_payload(digits_with_variants), content_type="application/json").json()[
        "id"
    ]

    response = client.get("/customer/bids/")

    assert response.status_code == 200
    assert f'href="/customer/bids/{bid_id}/"' in response.content.decode()
