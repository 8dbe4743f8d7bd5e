"""Bids a customer manages while they run: what the bid object reports (items done, cost so far, the rounds that sold
it), cancelling a running bid (validated work is paid, the cars' units are released, the rest of the budget freed),
and raising a bid's maximum price so that it wins what it was outbid for."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing import stripe_gateway
from billing.models import PaymentAuthorization
from billing.services import settling
from core.money import NC_PER_CENT, cents_ceil, nc_from_mcents, usd_text_from_nc
from marketplace import storage
from marketplace.models import Allocation, Bid, WorkUnit
from marketplace.rounds import auction_round_run
from tests.fleet.agent_requests import signed_headers, signed_post
from tests.marketplace.test_dispatch import run_unit

pytestmark = pytest.mark.django_db
LEASE, RENEW, RESULT = "/api/v1/agent/lease/", "/api/v1/agent/lease/renew/", "/api/v1/agent/result/"


def lease(client, key) -> dict | None:
    response = signed_post(client, key, LEASE, {})
    assert response.status_code in (200, 204), response.content
    return response.json() if response.status_code == 200 else None


def model_bytes(client, key, lease_: dict) -> bytes:
    path = lease_["model_url"]
    return b"".join(client.get(path, **signed_headers(key, path, b"", method="GET")).streaming_content)


def value_nc(units) -> int:
    """What the customer pays for these units' work, to the n¢ (billing/settlement.py's rule)."""
    return nc_from_mcents(sum(Decimal(repr(u.ch)) * u.allocation.price_mcents_per_ch for u in units))


def test_the_bid_object_reports_items_done_the_cost_so_far_and_each_round_that_sold_it(client, bid, cars, settings):
    settings.WORK_UNIT_MAX_ITEMS = 50  # 200 items: four slices, so that one can be done while the others are not
    auction_round_run()
    running_bid = bid
    (_, olivias_key), _ = cars
    first = lease(client, olivias_key)
    assert (
        signed_post(client, olivias_key, RESULT, run_unit(first, model_bytes(client, olivias_key, first))).status_code
        == 200
    )

    body = client.get(f"/api/v1/bids/{running_bid.pk}/").json()

    done = WorkUnit.objects.get(status="done")
    assert (body["status"], body["items_total"], body["items_done"]) == ("running", 200, done.items)
    assert 0 < done.items < 200
    assert body["charged_usd"] == usd_text_from_nc(value_nc([done]))
    assert Decimal(body["charged_usd"]) > 0
    sold = Allocation.objects.get(bid=running_bid)
    assert body["allocations"] == [
        {"round": sold.round.slot.isoformat().replace("+00:00", "Z"), "pool": "int8", "ch": sold.ch,
         "price_usd_per_ch": "0.02"}
    ]  # fmt: skip
    listed = client.get("/api/v1/bids/").json()
    assert [(b["id"], b["items_done"], b["charged_usd"]) for b in listed] == [
        (running_bid.pk, done.items, body["charged_usd"])
    ]


def test_cancelling_a_running_bid_pays_its_validated_work_releases_the_cars_and_frees_the_rest_of_the_budget(
    client, bid, cars, settings
):
    settings.WORK_UNIT_MAX_ITEMS = 50  # 200 items: four slices, so that one can be done while the others are not
    auction_round_run()
    running_bid = bid
    (olivias_car, olivias_key), _ = cars
    first = lease(client, olivias_key)
    onnx = model_bytes(client, olivias_key, first)
    assert signed_post(client, olivias_key, RESULT, run_unit(first, onnx)).status_code == 200
    running = lease(client, olivias_key)  # the car is running the second slice when the customer cancels
    assert WorkUnit.objects.filter(bid=running_bid, status="queued").exists()

    response = client.post(f"/api/v1/bids/{running_bid.pk}/cancel/")

    assert response.status_code == 200, response.content
    assert response.json()["status"] == "cancelled"
    validated = WorkUnit.objects.filter(bid=running_bid, status="done", verification="valid")
    assert response.json()["items_done"] == sum(u.items for u in validated) == 50
    # Nothing of the bid is left to run: the running unit and the queued ones are withdrawn, never billed.
    assert not WorkUnit.objects.filter(bid=running_bid, status__in=("queued", "leased")).exists()
    assert set(WorkUnit.objects.filter(bid=running_bid, status="failed").values_list("error", flat=True)) == {
        "the customer cancelled the job"
    }
    # The car running a unit learns at its next renewal that its lease is gone, and its late result is refused.
    renew = signed_post(client, olivias_key, RENEW, {"unit_id": running["unit_id"], "lease_id": running["lease_id"]})
    assert renew.status_code == 409
    assert signed_post(client, olivias_key, RESULT, run_unit(running, onnx)).status_code == 409
    assert lease(client, olivias_key) is None
    # Its sold time ends now: the next round may sell the car again.
    assert not Allocation.objects.filter(vehicle=olivias_car, ends_at__gt=timezone.now()).exists()

    settling.bid_settle(bid_id=running_bid.pk)  # what the worker does once the bid closed

    auth = PaymentAuthorization.objects.get(bid=running_bid)
    charge_nc = value_nc(validated)
    assert (auth.status, auth.charged_nc) == ("settled", charge_nc)
    intent = stripe_gateway.payment_retrieve(auth.stripe_payment_intent_id)
    assert intent.amount_received == cents_ceil(charge_nc) < running_bid.budget_cents  # the rest of the hold freed
    assert client.get(f"/api/v1/bids/{running_bid.pk}/").json()["charged_usd"] == usd_text_from_nc(charge_nc)
    assert charge_nc < NC_PER_CENT  # digits are light: the work of 50 costs a fraction of a cent, exactly
    assert storage.artifact_exists(validated.get().output_sha256)  # what was validated is kept


def test_raising_the_maximum_price_wins_the_car_the_bid_was_outbid_for(client, bid, cars, settings):
    settings.AUCTION_INTERVAL_SECONDS = 5  # the next round comes while the cars' heartbeats are fresh
    (olivias_car, _), _ = cars
    now = timezone.now()
    Bid.objects.filter(pk=bid.pk).update(max_price_mcents_per_ch=1500)  # below both cars' asks ($0.02, $0.03)
    auction_round_run(now=now)
    assert Bid.objects.get(pk=bid.pk).status == "waiting"

    response = client.patch(
        f"/api/v1/bids/{bid.pk}/", {"max_price_usd_per_ch": "0.025"}, content_type="application/json"
    )

    assert response.status_code == 200, response.content
    assert response.json()["max_price_usd_per_ch"] == "0.025"
    auction_round_run(now=now + timedelta(seconds=6))
    bid.refresh_from_db()
    assert bid.status == "running"
    assert Allocation.objects.get(bid=bid).vehicle == olivias_car


@pytest.mark.parametrize(
    ("price", "message"),
    [
        ("0.01", "Above the current maximum of $0.05/CH: a price can only rise."),
        ("0.05", "Above the current maximum of $0.05/CH: a price can only rise."),
        ("2", "At most $1.00/CH (the price ceiling)."),
    ],
)
def test_a_price_that_does_not_rise_or_that_the_budget_cannot_cover_is_refused_naming_the_field(
    client, bid, price, message
):
    response = client.patch(f"/api/v1/bids/{bid.pk}/", {"max_price_usd_per_ch": price}, content_type="application/json")

    assert response.status_code == 400
    assert response.json()["fields"]["max_price_usd_per_ch"][0].startswith(message), response.json()
    assert Bid.objects.get(pk=bid.pk).max_price_mcents_per_ch == 5000


def test_a_price_the_budget_set_aside_cannot_cover_is_refused(client, alice, card_for):
    from tests.billing import builders

    card_for(alice)
    bid = builders.bid_authorized(alice, budget_cents=60, items=1000)  # 1 CH at up to $0.10: 10 ¢ of a 60 ¢ budget
    client.force_login(alice)

    response = client.patch(
        f"/api/v1/bids/{bid.pk}/", {"max_price_usd_per_ch": "0.75"}, content_type="application/json"
    )

    assert response.status_code == 400
    assert response.json()["fields"]["max_price_usd_per_ch"] == [
        "All 1,000 items at $0.75/CH can cost $0.75, more than the budget of $0.60 set aside: cancel this bid and "
        "place a new one with a larger budget, or raise the price less."
    ]
    assert (
        client.patch(
            f"/api/v1/bids/{bid.pk}/", {"max_price_usd_per_ch": "0.2"}, content_type="application/json"
        ).json()["max_price_usd_per_ch"]
        == "0.2"
    )


def test_a_closed_bids_price_cannot_be_raised_and_another_customers_bid_is_404(client, bid, bob):
    Bid.objects.filter(pk=bid.pk).update(status="completed")
    response = client.patch(
        f"/api/v1/bids/{bid.pk}/", {"max_price_usd_per_ch": "0.06"}, content_type="application/json"
    )
    assert response.status_code == 409
    assert "only a waiting or running bid's price can be raised" in response.json()["message"]

    client.force_login(bob)
    Bid.objects.filter(pk=bid.pk).update(status="waiting")
    response = client.patch(
        f"/api/v1/bids/{bid.pk}/", {"max_price_usd_per_ch": "0.06"}, content_type="application/json"
    )
    assert response.status_code == 404
    assert client.post(f"/api/v1/bids/{bid.pk}/cancel/").status_code == 404
    assert Bid.objects.get(pk=bid.pk).max_price_mcents_per_ch == 5000


# --- The pages --------------------------------------------------------------------------------------------------------


def test_my_jobs_is_paginated_filters_by_status_and_shows_each_jobs_cost(client, alice, card_for):
    from billing.services import settling as settling_service
    from tests.billing import builders
    from tests.factories import OwnerFactory, vehicle_with_credential

    card_for(alice)
    car, _ = vehicle_with_credential(OwnerFactory(username="owen"))
    paid = builders.bid_authorized(alice, budget_cents=100)
    builders.validate(builders.sell(paid, car, ch=0.5, price_mcents=3000))  # 0.5 CH at $0.03: 1.5 ¢
    builders.close(paid)
    settling_service.bid_settle(bid_id=paid.pk)
    for _ in range(24):
        Bid.objects.create(
            customer=alice, inference_model=paid.inference_model, dataset=paid.dataset, variant=paid.variant,
            precision_requested="int8", pool="int8", max_price_mcents_per_ch=10_000, budget_cents=100,
            deadline=timezone.now() + timedelta(hours=2), items=1000, ch_total=1.0, status="waiting",
        )  # fmt: skip
    client.force_login(alice)

    first = client.get("/customer/")
    assert first.status_code == 200
    page = " ".join(first.content.decode().split())
    assert page.count('aria-label="items done for bid') == 20
    assert "Page 1 of 2 · 25 jobs" in page
    last = " ".join(client.get("/customer/?page=2").content.decode().split())
    assert last.count('aria-label="items done for bid') == 5
    assert f"#{paid.pk}</a>" in last  # the oldest job is on the last page, with its charge
    assert "$0.015" in last and "500 of 1000" in last

    completed = " ".join(client.get("/customer/?show=completed").content.decode().split())
    assert completed.count('aria-label="items done for bid') == 1
    assert f"#{paid.pk}</a>" in completed and "$0.015" in completed
    ended = " ".join(client.get("/customer/?show=ended").content.decode().split())
    assert "No job here." in ended
    assert client.get("/customer/?page=99").status_code == 200  # past the end: the last page, not an error


def test_the_bid_page_cancels_a_running_bid_and_raises_a_price(client, bid, cars, settings):
    settings.WORK_UNIT_MAX_ITEMS = 50
    auction_round_run()
    page = " ".join(client.get(f"/customer/bids/{bid.pk}/").content.decode().split())
    assert "Cancel bid" in page and "You pay for the 0 items validated so far" in page
    assert "Cost so far: <strong>$0.00</strong>" in page

    raised = client.post(f"/customer/bids/{bid.pk}/price/", {"max_price_usd_per_ch": "0.04"}, follow=True)
    assert "Above the current maximum of $0.05/CH: a price can only rise." in raised.content.decode()
    raised = client.post(f"/customer/bids/{bid.pk}/price/", {"max_price_usd_per_ch": "0.06"}, follow=True)
    assert "Maximum price raised to $0.06/CH" in raised.content.decode()
    assert Bid.objects.get(pk=bid.pk).max_price_mcents_per_ch == 6000

    cancelled = client.post(f"/customer/bids/{bid.pk}/cancel/", follow=True)
    assert "Bid cancelled" in cancelled.content.decode()
    assert Bid.objects.get(pk=bid.pk).status == "cancelled"
    assert not WorkUnit.objects.filter(bid=bid, status__in=("queued", "leased")).exists()
    page = cancelled.content.decode()
    assert "Cancel bid" not in page and "Raise price" not in page


def test_the_job_pages_poll_brings_the_rounds_won_and_the_cancel_terms_with_the_progress(client, bid, cars):
    poll = {"HX-Request": "true"}
    before = " ".join(client.get(f"/customer/bids/{bid.pk}/", headers=poll).content.decode().split())
    assert "No round won yet." in before and "cancelling costs nothing" in before

    auction_round_run()  # the page stays open while a round sells the bid a car

    after = " ".join(client.get(f"/customer/bids/{bid.pk}/", headers=poll).content.decode().split())
    assert '<article id="rounds-won" hx-swap-oob="true">' in after
    assert "No round won yet." not in after and "$0.02/CH" in after  # olivia's car, at the clearing price
    assert '<p id="cancel-help" hx-swap-oob="true">' in after and "You pay for the 0 items validated so far" in after

    Bid.objects.filter(pk=bid.pk).update(status="completed")
    closed = client.get(f"/customer/bids/{bid.pk}/", headers=poll).content.decode()
    assert '<div id="manage" hx-swap-oob="true"></div>' in closed  # no Raise or Cancel for a finished job
