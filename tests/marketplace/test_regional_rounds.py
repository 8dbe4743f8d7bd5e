"""Regional markets: each region's round clears its own cars at its own prices, beside the others; a bid pinned to a
region (data residency) never runs on a car of another; a bid that accepts any region goes where the capacity is."""

import threading
from datetime import timedelta

import psycopg
import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.utils import timezone

from fleet import book
from fleet.models import OptInPolicy, Vehicle
from fleet.services import policy_update
from marketplace import rounds
from marketplace.models import Allocation, Bid, PoolClearing, Round
from tests.factories import OwnerFactory, vehicle_with_credential
from tests.fleet.agent_requests import heartbeat, signed_post
from tests.marketplace.conftest import measured_here

HEARTBEAT = "/api/v1/agent/heartbeat/"


def car_in(client, region: str, *, min_price: int, name: str, settings, battery_pct: float = 90):
    vehicle, credential = vehicle_with_credential(OwnerFactory(username=name), name=f"{name}'s car", region=region)
    Vehicle.objects.filter(pk=vehicle.pk).update(valid_streak=settings.VERIFICATION_TRUSTED_AFTER)
    OptInPolicy.objects.filter(vehicle=vehicle).update(min_price_mcents_per_ch=min_price)
    assert signed_post(client, credential, HEARTBEAT, heartbeat(battery_pct=battery_pct)).status_code == 200
    return vehicle


def bid_for(client, model, *, region: str = "") -> Bid:
    response = client.post(
        "/api/v1/bids/",
        {"inference_model": model.pk, "dataset": model.datasets.get().pk, "max_price_usd_per_ch": "0.05",
         "budget_usd": "1.00", "deadline": (timezone.now() + timedelta(hours=2)).isoformat(), "region": region},
        content_type="application/json",
    )  # fmt: skip
    assert response.status_code == 201, response.content
    return Bid.objects.get(pk=response.json()["id"])


@pytest.fixture
def trusted(settings):
    settings.VERIFICATION_SPOT_CHECK_RATE = 0.0
    return settings


@pytest.mark.django_db(transaction=True)
def test_two_regions_clear_in_parallel_each_at_its_own_price(client, alice, digits_with_variants, trusted):
    """Berlin's cars ask $0.02, California's $0.04: each region's round sells its own car at its own price. While
    DE's round waits for its lock (another DE round holds it), California's round runs and finishes: the regions'
    rounds do not wait for each other."""
    de = car_in(client, "DE", min_price=2000, name="dora", settings=trusted)
    ca = car_in(client, "US-CA", min_price=4000, name="carl", settings=trusted)
    for car in (de, ca):
        for variant in digits_with_variants.variants.filter(status="ready"):
            measured_here(car, variant)
    client.force_login(alice)
    de_bid, ca_bid = (
        bid_for(client, digits_with_variants, region="DE"),
        bid_for(client, digits_with_variants, region="US-CA"),
    )
    regions = book.regions()
    assert regions == ["DE", "US-CA"]
    now = timezone.now()

    # Another process holds DE's round lock (a long DE round, say).
    holder = psycopg.connect(
        host=connection.settings_dict["HOST"] or None, port=connection.settings_dict["PORT"] or None,
        user=connection.settings_dict["USER"], dbname=connection.settings_dict["NAME"], autocommit=True,
    )  # fmt: skip
    holder.execute("SELECT pg_advisory_lock(%s, %s)", [rounds.ROUND_LOCK_KEY, rounds._region_lock_id("DE")])
    finished = {}

    def de_round():
        try:
            finished["DE"] = rounds.auction_round_run(now=now, region="DE", regions=regions)
        finally:
            from django.db import connection as thread_connection

            thread_connection.close()

    waiting = threading.Thread(target=de_round)
    waiting.start()
    try:
        ca_round = rounds.auction_round_run(now=now, region="US-CA", regions=regions)
        assert ca_round is not None and ca_round.region == "US-CA"  # done while DE's round waits
        assert waiting.is_alive() and "DE" not in finished
    finally:
        holder.execute("SELECT pg_advisory_unlock(%s, %s)", [rounds.ROUND_LOCK_KEY, rounds._region_lock_id("DE")])
        holder.close()
        waiting.join(timeout=30)
    assert finished["DE"] is not None and finished["DE"].region == "DE"

    assert set(Round.objects.values_list("slot", "region")) == {(ca_round.slot, "DE"), (ca_round.slot, "US-CA")}
    prices = dict(PoolClearing.objects.filter(pool="int8").values_list("round__region", "clearing_price_mcents"))
    assert prices == {"DE": 2000, "US-CA": 4000}
    assert set(Allocation.objects.values_list("bid_id", "vehicle_id")) == {(de_bid.pk, de.pk), (ca_bid.pk, ca.pk)}
    # The market's prices, per region.
    assert client.get("/api/v1/market/?region=DE").json()["latest"]["int8"]["clearing_price_usd_per_ch"] == "0.02"
    assert client.get("/api/v1/market/?region=US-CA").json()["latest"]["int8"]["clearing_price_usd_per_ch"] == "0.04"


@pytest.mark.django_db
def test_a_pinned_bid_never_gets_a_car_of_another_region_and_an_unpinned_one_can(
    client, alice, digits_with_variants, trusted
):
    """Only Berlin has a car that can work: California's is below its battery floor. A bid pinned to California waits,
    round after round, though Berlin's car is free and cheap; a bid that accepts any region runs in Berlin."""
    trusted.AUCTION_INTERVAL_SECONDS = 10
    de = car_in(client, "DE", min_price=2000, name="dora", settings=trusted)
    ca = car_in(client, "US-CA", min_price=2000, name="carl", settings=trusted, battery_pct=30)
    policy_update(policy=ca.policy, battery_floor_pct=50)
    for variant in digits_with_variants.variants.filter(status="ready"):
        measured_here(de, variant)
    client.force_login(alice)
    pinned = bid_for(client, digits_with_variants, region="US-CA")
    anywhere = bid_for(client, digits_with_variants)
    now = timezone.now()

    for step in range(3):
        rounds.auction_round_run(now=now + timedelta(seconds=10 * step))

    assert not Allocation.objects.filter(bid=pinned).exists()
    pinned.refresh_from_db()
    assert pinned.status == Bid.Status.WAITING and pinned.ch_allocated == 0
    assert list(Allocation.objects.filter(bid=anywhere).values_list("vehicle_id", flat=True)) == [de.pk]
    # Every round of the slot ran: one per region.
    assert Round.objects.filter(slot=rounds.round_slot(now)).count() == 2


@pytest.mark.django_db
def test_each_bid_that_accepts_any_region_is_in_exactly_one_regions_round_per_slot(trusted):
    """Rounds of several regions run at once and must not sell one bid twice: each unpinned bid is drawn to one
    region per slot (the same draw in every region's round), and the draws spread over the regions."""
    regions = ["", "DE", "US-CA"]
    bids = [(bid_id, "int8") for bid_id in range(1, 601)]
    now = timezone.now()
    shares = [rounds.bids_unpinned_here(bids, region=r, regions=regions, now=now) for r in regions]
    assert set().union(*shares) == {bid_id for bid_id, _ in bids}
    assert sum(len(share) for share in shares) == len(bids)  # no bid in two regions' rounds
    assert all(120 < len(share) < 280 for share in shares)  # spread, not piled on one region
    later = [rounds.bids_unpinned_here(bids, region=r, regions=regions, now=now + timedelta(
        seconds=django_settings.AUCTION_INTERVAL_SECONDS)) for r in regions]  # fmt: skip
    assert later != shares  # a bid left unfilled in one region may land in another the next slot
