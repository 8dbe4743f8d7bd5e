"""Auction rounds over the real fleet state: supply from available cars, demand from open bids, one price per pool."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from fleet import state_store
from fleet.models import OptInPolicy, Vehicle
from marketplace.models import Allocation, Bid, PoolClearing, Round, RoundSale
from marketplace.rounds import auction_round_run, busy_cars, demand_snapshot
from tests.factories import vehicle_with_credential
from tests.fleet.agent_requests import heartbeat, signed_post

pytestmark = pytest.mark.django_db
HEARTBEAT = "/api/v1/agent/heartbeat/"


@pytest.fixture
def two_cars(cars):
    return [vehicle for vehicle, _ in cars]


def test_a_round_sells_the_cheapest_car_at_one_published_price(client, bid, two_cars):
    olivias_car, _ = two_cars

    round_ = auction_round_run()

    int8 = PoolClearing.objects.get(round=round_, pool="int8")
    assert int8.clearing_price_mcents == 2000  # max(reserve 1000, last accepted ask 2000); the bid is filled
    assert int8.volume_ch == pytest.approx(bid.ch_total, abs=1e-9)  # the auction counts whole nano-CH
    assert int8.unfilled_demand_ch == pytest.approx(0)
    allocation = Allocation.objects.get()
    assert (allocation.vehicle, allocation.bid, allocation.price_mcents_per_ch) == (olivias_car, bid, 2000)
    bid.refresh_from_db()
    assert bid.status == "running"
    assert bid.ch_allocated == pytest.approx(bid.ch_total)
    assert set(PoolClearing.objects.filter(round=round_).values_list("pool", flat=True)) == {
        "int8",
        "fp8",
        "fp16",
        "fp32",
    }
    assert "$0.02/CH" in client.get("/market/").content.decode()
    assert client.get("/api/v1/market/").json()["latest"]["int8"]["clearing_price_usd_per_ch"] == "0.02"


def test_a_second_round_in_the_same_slot_does_nothing(bid, two_cars):
    now = timezone.now()
    assert auction_round_run(now=now) is not None
    assert auction_round_run(now=now) is None
    assert Round.objects.count() == 1
    assert Allocation.objects.count() == 1


def test_a_busy_car_is_not_sold_again(bid, two_cars, digits_with_variants, settings):
    settings.AUCTION_INTERVAL_SECONDS = 5  # the next round comes while the cars' heartbeats are fresh
    _, oscars_car = two_cars
    now = timezone.now()
    auction_round_run(now=now)
    Allocation.objects.update(ends_at=now + timedelta(hours=1))  # olivia's car is still working on it
    second = Bid.objects.create(
        customer=bid.customer, inference_model=bid.inference_model, dataset=bid.dataset, variant=bid.variant,
        precision_requested="auto", pool="int8", max_price_mcents_per_ch=5000, budget_cents=100,
        deadline=now + timedelta(hours=2), items=bid.items, ch_total=bid.ch_total,
    )  # fmt: skip

    round_ = auction_round_run(now=now + timedelta(seconds=6))

    allocation = Allocation.objects.get(round=round_)
    assert (allocation.bid, allocation.vehicle) == (second, oscars_car)
    assert PoolClearing.objects.get(round=round_, pool="int8").clearing_price_mcents == 3000


def test_a_bid_below_every_ask_waits_and_an_expired_bid_closes(bid, two_cars):
    Bid.objects.filter(pk=bid.pk).update(max_price_mcents_per_ch=1500)  # below both cars' asks
    round_ = auction_round_run()
    int8 = PoolClearing.objects.get(round=round_, pool="int8")
    assert int8.clearing_price_mcents is None
    assert int8.unfilled_demand_ch == pytest.approx(bid.ch_total, abs=1e-9)
    bid.refresh_from_db()
    assert bid.status == "waiting"

    auction_round_run(now=bid.deadline + timedelta(minutes=1))
    bid.refresh_from_db()
    assert bid.status == "expired"


def test_an_all_or_none_bid_that_cannot_be_filled_takes_no_part(bid, two_cars, settings):
    settings.AUCTION_INTERVAL_SECONDS = 5  # the next round comes while the cars' heartbeats are fresh
    round_ = auction_round_run()  # learn what the two cars offer together
    offered = PoolClearing.objects.get(round=round_, pool="int8").supply_ch
    Allocation.objects.all().delete()
    Round.objects.all().delete()
    Bid.objects.filter(pk=bid.pk).update(ch_allocated=0, status="waiting", items_unitised=0)
    bid.units.all().delete()
    greedy = Bid.objects.create(
        customer=bid.customer, inference_model=bid.inference_model, dataset=bid.dataset, variant=bid.variant,
        precision_requested="int8", pool="int8", max_price_mcents_per_ch=9000, budget_cents=100_000,
        deadline=bid.deadline, items=bid.items, ch_total=offered * 2, all_or_none=True,
    )  # fmt: skip

    auction_round_run(now=timezone.now() + timedelta(seconds=6))

    assert not Allocation.objects.filter(bid=greedy).exists()  # it wanted more than the fleet has: nothing
    assert Allocation.objects.filter(bid=bid).exists()  # the ordinary bid is not crowded out
    greedy.refresh_from_db()
    assert (greedy.status, greedy.ch_allocated) == ("waiting", 0)


def test_between_equal_asks_the_car_that_holds_the_model_wins(client, bid, olivia, oscar):

    keys = []
    for owner, cached in ((olivia, []), (oscar, [bid.variant.sha256])):
        vehicle, credential = vehicle_with_credential(owner, name=f"{owner.username}'s car")
        OptInPolicy.objects.filter(vehicle=vehicle).update(min_price_mcents_per_ch=2000)  # the same ask
        signed_post(client, credential, HEARTBEAT, heartbeat(battery_pct=90, models_cached=cached))
        keys.append(vehicle)

    auction_round_run()

    assert Allocation.objects.get().vehicle == keys[1]  # oscar's car already has the model


def test_between_equal_asks_the_car_with_the_better_record_wins_even_without_the_model(client, bid, olivia, oscar):
    keys = []
    for owner, cached, record in ((olivia, [], (40, 0)), (oscar, [bid.variant.sha256], (40, 3))):
        vehicle, credential = vehicle_with_credential(owner, name=f"{owner.username}'s car")
        Vehicle.objects.filter(pk=vehicle.pk).update(results_valid=record[0], results_invalid=record[1])
        OptInPolicy.objects.filter(vehicle=vehicle).update(min_price_mcents_per_ch=2000)  # the same ask
        signed_post(client, credential, HEARTBEAT, heartbeat(battery_pct=90, models_cached=cached))
        keys.append(vehicle)

    auction_round_run()

    # Three faults in 43 results weigh more than a download: olivia's clean record sells first.
    assert Allocation.objects.get().vehicle == keys[0]


def test_a_car_never_sells_below_its_owners_price_which_may_be_a_fraction_of_a_cent(client, bid, olivia, settings):
    settings.AUCTION_INTERVAL_SECONDS = 5  # the next round comes while the car's heartbeat is fresh
    # No electricity cost: the owner's price alone sets the ask.
    vehicle, credential = vehicle_with_credential(olivia, energy_price_cents_per_kwh=Decimal(0))
    client.force_login(olivia)
    url = f"/api/v1/vehicles/{vehicle.pk}/policy/"
    assert client.patch(url, {"min_price_usd_per_ch": "0.015"}, content_type="application/json").status_code == 200
    assert signed_post(client, credential, HEARTBEAT, heartbeat(battery_pct=90)).status_code == 200
    Bid.objects.filter(pk=bid.pk).update(max_price_mcents_per_ch=1499)  # $0.00001 below the car's price
    now = timezone.now()

    round_ = auction_round_run(now=now)

    assert not Allocation.objects.exists()
    assert PoolClearing.objects.get(round=round_, pool="int8").clearing_price_mcents is None
    bid.refresh_from_db()
    assert bid.status == "waiting"

    Bid.objects.filter(pk=bid.pk).update(max_price_mcents_per_ch=5000)
    round_ = auction_round_run(now=now + timedelta(seconds=6))

    allocation = Allocation.objects.get(round=round_)
    assert (allocation.vehicle, allocation.price_mcents_per_ch) == (vehicle, 1500)  # exactly its ask, not a cent


def test_a_scheduled_round_leaves_the_cutting_to_the_dispatch_queue_which_gives_the_car_its_work_once(
    bid, two_cars, monkeypatch, django_capture_on_commit_callbacks
):
    """The scheduled round stores what it sold and nothing more (its time grows with the sale, not with the units);
    the dispatch queue's task cuts the units, with the car as the round saw it, once however often it runs, and the
    sweep finds what a lost task left uncut."""
    from config.celery import app
    from marketplace import dispatch

    queued = []
    monkeypatch.setattr(app.Task, "delay_on_commit", lambda task, *args, **kwargs: queued.append((task.name, args)))
    olivias_car, _ = two_cars
    now = timezone.now()
    auction_round_run(now=now, cut_units=False)

    assert queued == [("marketplace.tasks.units_cut", ([bid.pk],))]  # on the dispatch queue, once the round commits

    # The sale is packed; until it is cut, the next round neither sells its car again nor sells the bid twice.
    sale = RoundSale.objects.get()
    sold = dispatch.sales_rows(sale)
    assert (sale.allocations, sale.stored, list(sold["car"])) == (1, False, [olivias_car.pk])
    assert olivias_car.pk in busy_cars(now=now)
    assert not len(demand_snapshot(now=now).bid)
    assert not Allocation.objects.exists() and not bid.units.exists()
    assert dispatch.allocations_uncut(older_than=timezone.now() + timedelta(minutes=1)) == [bid.pk]

    with django_capture_on_commit_callbacks(execute=True):
        handed = dispatch.allocations_cut(bid_ids=[bid.pk])

    allocation = Allocation.objects.get()
    assert (allocation.vehicle, allocation.units_cut) == (olivias_car, True)
    assert allocation.ch == pytest.approx(sold["ch"][0])
    assert state_store.client().zscore(state_store.WORK_KEY, olivias_car.pk)  # it heartbeats often: work is here
    bid.refresh_from_db()
    assert bid.status == "running" and bid.ch_allocated == pytest.approx(sold["ch"][0], abs=1e-9)
    assert RoundSale.objects.get().stored
    assert olivias_car.pk in busy_cars(now=now)
    assert not len(demand_snapshot(now=now).bid)
    assert handed == bid.units.count() > 0
    assert set(bid.units.values_list("assigned_vehicle_id", "allocation_id")) == {(olivias_car.pk, allocation.pk)}
    assert sum(bid.units.values_list("ch", flat=True)) == pytest.approx(allocation.ch, abs=1e-9)
    assert dispatch.allocations_cut(bid_ids=[bid.pk]) == 0  # a redelivered task cuts nothing twice
    assert dispatch.allocations_uncut(older_than=timezone.now() + timedelta(minutes=1)) == []


def test_a_job_cancelled_before_its_sale_is_cut_gets_no_work_and_its_car_goes_back_to_the_market(
    bid, two_cars, monkeypatch
):
    """A customer may cancel in the seconds between the round and the cutting of what it sold: no unit is cut for
    the job (none would ever be leased, and its car would wait for them forever), and the car is for sale again."""
    from config.celery import app
    from marketplace import dispatch
    from marketplace.services import bid_cancel

    monkeypatch.setattr(app.Task, "delay_on_commit", lambda task, *args, **kwargs: None)
    olivias_car, _ = two_cars
    auction_round_run(cut_units=False)
    bid_cancel(bid=bid)

    assert dispatch.allocations_cut(bid_ids=[bid.pk]) == 0

    assert not bid.units.exists()
    allocation = Allocation.objects.get()
    assert (allocation.vehicle, allocation.units_cut) == (olivias_car, True)
    assert allocation.ends_at <= timezone.now()
    assert olivias_car.pk not in busy_cars(now=timezone.now())
    assert dispatch.allocations_uncut(older_than=timezone.now() + timedelta(minutes=1)) == []
