"""The platform asks each car to heartbeat as often as it needs to: rarely while it holds no work and expects none,
often while it computes, holds work, or is about to get some (a bid it could win, a round that sold it)."""

from datetime import timedelta

import pytest
from django.utils import timezone

from fleet import availability, book
from fleet.agent import protocol
from fleet.models import OptInPolicy
from marketplace.rounds import auction_round_run
from tests.factories import OwnerFactory, vehicle_with_credential
from tests.fleet.agent_requests import heartbeat, signed_post

pytestmark = pytest.mark.django_db
HEARTBEAT, LEASE = "/api/v1/agent/heartbeat/", "/api/v1/agent/lease/"
IDLE, OFTEN = protocol.IDLE_HEARTBEAT_SECONDS, protocol.HEARTBEAT_SECONDS


def beat(client, credential, **state) -> float:
    response = signed_post(client, credential, HEARTBEAT, heartbeat(battery_pct=90, **state))
    assert response.status_code == 200, response.content
    return response.json()["next_heartbeat_s"]


def test_an_idle_car_with_no_bid_in_sight_heartbeats_rarely_and_is_given_time_to(client, olivia):
    vehicle, credential = vehicle_with_credential(olivia)

    assert beat(client, credential) == IDLE
    # Not taken for gone after the usual 1.5 short intervals: after 1.5 of its own.
    assert book.lost_after_of([vehicle.pk]) == {vehicle.pk: 1.5 * IDLE}
    assert book.offer_of(vehicle.pk).lost_at - book.offer_of(vehicle.pk).seen == 1.5 * IDLE


def test_a_car_that_computes_heartbeats_often(client, olivia):
    vehicle, credential = vehicle_with_credential(olivia)

    assert beat(client, credential, computing=True, compute_power_w=80.0) == OFTEN
    assert book.lost_after_of([vehicle.pk]) == {}  # the platform's own silence: availability.HEARTBEAT_LOST_AFTER_S
    offer = book.offer_of(vehicle.pk)
    assert offer.lost_at - offer.seen == availability.HEARTBEAT_LOST_AFTER_S


def test_a_simulated_cars_intervals_are_in_its_own_time(client, olivia):
    _, credential = vehicle_with_credential(olivia)

    assert beat(client, credential, clock_rate=60.0) == pytest.approx(IDLE / 60)


def test_a_bid_the_car_could_win_makes_it_heartbeat_often_and_one_below_its_ask_does_not(
    client, olivia, digits_with_variants, settings
):
    """olivia asks $0.03/CH. A bid at up to $0.02 is no work for her car: it stays on the idle interval. One at up to
    $0.05 may be: from its next heartbeat on, it heartbeats often (and asks for work with each)."""
    vehicle, credential = vehicle_with_credential(olivia)
    OptInPolicy.objects.filter(vehicle=vehicle).update(min_price_mcents_per_ch=3000)
    assert beat(client, credential) == IDLE

    def place(price: str) -> None:
        response = client.post(
            "/api/v1/bids/",
            {"inference_model": digits_with_variants.pk, "dataset": digits_with_variants.datasets.get().pk,
             "max_price_usd_per_ch": price, "budget_usd": "1.00",
             "deadline": (timezone.now() + timedelta(hours=2)).isoformat()},
            content_type="application/json",
        )  # fmt: skip
        assert response.status_code == 201, response.content

    settings.IDLE_HEARTBEAT_SECONDS = IDLE
    book.process_caches_clear()
    place("0.02")
    assert beat(client, credential) == IDLE
    book.process_caches_clear()  # a web process reads the signal again within seconds (book.DEMAND_FRESH_S)
    place("0.05")
    assert beat(client, credential) == OFTEN


def test_a_car_sold_while_idle_heartbeats_often_from_its_next_heartbeat_and_keeps_its_work_meanwhile(client, bid, cars):
    """Sold by a round while on the idle interval, the car hears of its work at its next heartbeat: its units wait
    for it that long (1.5 idle intervals), and that heartbeat's answer is the short interval. Once it leases a unit,
    it is gone after the platform's usual silence again."""
    (car, credential), _ = cars
    assert book.lost_after_of([car.pk]) == {car.pk: 1.5 * IDLE}
    auction_round_run()
    assert car.allocations.exists()

    assert beat(client, credential) == OFTEN
    assert signed_post(client, credential, LEASE, {}).status_code == 200
    assert book.lost_after_of([car.pk]) == {}
    offer = book.offer_of(car.pk)
    assert offer.lost_at - offer.seen == availability.HEARTBEAT_LOST_AFTER_S


def test_owners_pages_count_an_idle_car_online_until_its_own_interval_has_passed(client, olivia):
    from fleet.selectors import vehicles_live

    vehicle, credential = vehicle_with_credential(olivia, name="Sleepy")
    beat(client, credential)
    later = timezone.now() + timedelta(seconds=availability.HEARTBEAT_LOST_AFTER_S + 5)
    (item,) = vehicles_live([vehicle], now=later)
    assert item.availability.available, item.availability.reasons
    (item,) = vehicles_live([vehicle], now=timezone.now() + timedelta(seconds=1.5 * IDLE + 1))
    assert not item.availability.available
    assert any("heartbeat lost" in reason for reason in item.availability.reasons)


def test_a_second_owners_car_is_not_affected(client, olivia):
    """Each car's interval is its own."""
    _, first = vehicle_with_credential(olivia, name="One")
    _, second = vehicle_with_credential(OwnerFactory(username="other"), name="Two")
    assert beat(client, first, computing=True, compute_power_w=50.0) == OFTEN
    assert beat(client, second) == IDLE
