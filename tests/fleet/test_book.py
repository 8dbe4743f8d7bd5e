"""The supply book (fleet.book) is kept up to date as heartbeats and changes arrive, and always says what a full
recomputation of every car's availability says (fleet.selectors.vehicles_live: its state, policy, parking history and
measured speeds read afresh), whatever happened to the cars in between."""

import math
from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet import book, offers
from fleet.availability import rated_ch_per_hour
from fleet.models import Vehicle
from fleet.selectors import hardware_of, vehicles_live
from fleet.services import policy_update, throughput_record, vehicle_pause, vehicle_resume, vehicle_suspend
from marketplace.selectors import pricing_current
from marketplace.verdicts import reputation_record
from tests.factories import OwnerFactory, vehicle_with_credential
from tests.fleet.agent_requests import heartbeat, signed_post

HEARTBEAT, DEPARTURE = "/api/v1/agent/heartbeat/", "/api/v1/agent/departure/"
SHA = "ab" * 32


def recomputed(now: datetime, fee: float) -> dict[tuple[int, str], tuple[float, int, float]]:
    """What the round offered before the book: every car read afresh, (car, pool) -> (CH, ask, reputation)."""
    supply = {}
    vehicles = list(Vehicle.objects.select_related("hardware", "policy"))
    for item in vehicles_live(vehicles, now=now):
        availability = item.availability
        if not availability.available:
            continue
        vehicle = item.vehicle
        hardware = hardware_of(vehicle, item.measured)
        for pool, rate in availability.ch_per_hour.items():
            rated = rated_ch_per_hour(hardware, pool, power_w=availability.power_w)
            if rate <= 0 or rated <= 0:
                continue
            energies = [m.wh_per_ch for m in item.measured.values() if m.precision == pool]
            wh_per_ch = max(energies) if energies and max(energies) > 0 else availability.power_w / rated
            energy = wh_per_ch * float(vehicle.energy_price_cents_per_kwh)
            ask = max(vehicle.policy.min_price_mcents_per_ch, math.ceil(energy / (1 - fee)))
            reputation = offers.reputation(results_valid=vehicle.results_valid, results_invalid=vehicle.results_invalid)
            supply[(vehicle.pk, pool)] = (availability.hours_offered * rate, ask, reputation)
    return supply


def from_book(now: datetime, fee: float) -> dict[tuple[int, str], tuple[float, int, float]]:
    supply = {}
    for region in book.regions():
        rows = offers.rows_at(book.read(region), now=now.timestamp(), fee=fee)
        for car, pool, ch, ask, reputation in zip(
            rows.car.tolist(), rows.pool.tolist(), rows.ch.tolist(), rows.ask.tolist(), rows.reliability.tolist(),
            strict=True,
        ):  # fmt: skip
            assert (car, offers.POOLS[pool]) not in supply, "a car is in two regions' books"
            supply[(car, offers.POOLS[pool])] = (ch, ask, reputation)
    return supply


def assert_book_is_recomputation() -> None:
    fee = pricing_current().platform_fee_pct / 100
    now = timezone.now()
    expected, got = recomputed(now, fee), from_book(now, fee)
    if got.keys() != expected.keys():
        from fleet import state_store

        cars = {car for car, _ in got.keys() ^ expected.keys()}
        live = {i.vehicle.pk: i.availability.reasons for i in vehicles_live(list(Vehicle.objects.filter(pk__in=cars)))}
        import json

        details = {}
        for car in cars:
            profile = json.loads(state_store.client().get(book.profile_key(car)) or "null")
            state = state_store.state_get(car)
            again = offers.offer_compute(profile, state, received_ts=0) if profile and state else None
            details[car] = (profile, again and again.reasons, live.get(car))
        raise AssertionError(f"book {sorted(got)} != recomputed {sorted(expected)} at {now.timestamp()}: {details}")
    for key, (ch, ask, reputation) in expected.items():
        assert got[key][0] == pytest.approx(ch, rel=1e-6, abs=1e-9), key
        assert got[key][1:] == (ask, reputation), key
    for region in book.regions():
        for car in book.read(region)["car"].tolist():
            if car:
                assert Vehicle.objects.get(pk=car).region == region, "a car is offered in another region's book"


# One step of the fleet's life: (what, car index, a number that picks the change's details).
EVENTS = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "heartbeat",
                "heartbeat",
                "heartbeat",
                "policy",
                "depart",
                "pause",
                "resume",
                "suspend",
                "reinstate",
                "measured",
                "verdict",
                "region",
                "price",
            ]
        ),
        st.integers(0, 2),
        st.integers(0, 10_000),
    ),
    min_size=1,
    max_size=12,
)


@pytest.fixture
def cars(client):
    owners = [OwnerFactory(), OwnerFactory()]
    made = []
    for i in range(3):
        vehicle, credential = vehicle_with_credential(
            owners[i % 2], name=f"Car {i}", hardware_name=("HW3", "HW4")[i % 2]
        )
        assert signed_post(client, credential, HEARTBEAT, heartbeat(battery_pct=90)).status_code == 200
        made.append((vehicle, credential))
    return made


def apply(client, cars, event: str, index: int, pick: int, driven: set[int]) -> None:
    """One change to car `index`. A car that drove off (`driven`) stays away for the rest of the example: parked again
    a moment later, its stay of a second would be the only precedent of its next, and the departure prediction steps
    when it drops out (fleet.offers: the book equals a recomputation except where a prediction steps)."""
    vehicle, credential = cars[index]
    vehicle.refresh_from_db()
    if event == "heartbeat":
        parked = pick % 11 != 0 and index not in driven
        if not parked:
            driven.add(index)
        state = heartbeat(
            battery_pct=40 + pick % 60, plugged_in=pick % 3 == 0, charge_power_w=(pick % 3 == 0) * 7000.0,
            network=("wifi", "wifi", "wifi", "cellular")[pick % 4], parked=parked,
            energy_used_today_wh=float(pick % 5000), models_cached=[SHA] if pick % 2 else [],
        )  # fmt: skip
        assert signed_post(client, credential, HEARTBEAT, state).status_code == 200
    elif event == "policy":
        policy_update(
            policy=vehicle.policy, battery_floor_pct=20 + pick % 50, plugged_in_only=pick % 7 == 0,
            min_price_mcents_per_ch=(pick % 4) * 1000, max_power_w=60 + pick % 90,
            max_energy_kwh_per_day=1 + pick % 10, windows=[] if pick % 5 else [[d, 0, 1440] for d in range(7)],
        )  # fmt: skip
    elif event == "depart":
        driven.add(index)
        response = signed_post(client, credential, DEPARTURE, {"observed_at": datetime.now(UTC).isoformat()})
        assert response.status_code == 200
    elif event == "pause" and vehicle.status == Vehicle.Status.ACTIVE:
        vehicle_pause(vehicle=vehicle)
    elif event == "resume" and vehicle.status == Vehicle.Status.PAUSED:
        vehicle_resume(vehicle=vehicle)
    elif event == "suspend":
        vehicle_suspend(vehicle=vehicle, reason="a test")
    elif event == "reinstate" and vehicle.status == Vehicle.Status.SUSPENDED:
        vehicle.status, vehicle.status_reason = Vehicle.Status.ACTIVE, ""  # as staff do in the admin
        vehicle.save(update_fields=["status", "status_reason"])
    elif event == "measured":
        throughput_record(
            vehicle=vehicle, workload=SHA, precision=("int8", "fp16", "fp32")[pick % 3], ch_per_item=1e-6,
            items=10 + pick % 100, seconds=0.5 + pick % 7, energy_wh=0.01 * (pick % 4), at=timezone.now(),
        )  # fmt: skip
    elif event == "verdict":
        reputation_record(vehicle_id=vehicle.pk, valid=True, now=timezone.now())
    elif event == "region":
        vehicle.region = ("", "US-CA", "DE")[pick % 3]
        vehicle.save(update_fields=["region"])
    elif event == "price":
        vehicle.energy_price_cents_per_kwh = 5 + pick % 40
        vehicle.save(update_fields=["energy_price_cents_per_kwh"])


@pytest.mark.django_db
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=EVENTS)
def test_the_incremental_book_equals_a_full_recomputation_after_any_sequence_of_changes(client, cars, events):
    reset(client, cars)
    assert_book_is_recomputation()
    driven: set[int] = set()
    for event, index, pick in events:
        apply(client, cars, event, index, pick, driven)
        assert_book_is_recomputation()


def reset(client, cars) -> None:
    """Each example starts from three active, parked cars, by the paths a car and its owner take."""
    from fleet import state_store
    from fleet.models import ParkingSession

    # The stays of earlier examples, a second each, are not a car's history.
    ParkingSession.objects.filter(vehicle__in=[vehicle for vehicle, _ in cars]).delete()
    for vehicle, credential in cars:
        vehicle.refresh_from_db()
        vehicle.status, vehicle.region = Vehicle.Status.ACTIVE, ""
        vehicle.save(update_fields=["status", "region"])
        policy_update(policy=vehicle.policy, battery_floor_pct=30, plugged_in_only=False, windows=[], enabled=True)
        state_store.client().delete(state_store.state_key(vehicle.pk))  # a departure's grace is forgotten
        assert signed_post(client, credential, HEARTBEAT, heartbeat(battery_pct=90)).status_code == 200


@pytest.mark.django_db
def test_a_car_that_left_or_was_suspended_leaves_the_book_at_once(client, cars):
    fee = pricing_current().platform_fee_pct / 100
    offered = {car for car, _ in from_book(timezone.now(), fee)}
    assert offered == {vehicle.pk for vehicle, _ in cars}
    vehicle, credential = cars[0]
    signed_post(client, credential, DEPARTURE, {"observed_at": datetime.now(UTC).isoformat()})
    vehicle_suspend(vehicle=cars[1][0], reason="a test")
    offered = {car for car, _ in from_book(timezone.now(), fee)}
    assert offered == {cars[2][0].pk}
    assert book.offer_of(vehicle.pk).offered is False


@pytest.mark.django_db
def test_an_offer_runs_down_with_the_clock_between_heartbeats_as_recomputation_does(client, cars):
    """Minutes after the last heartbeat, with no heartbeat since, the book still equals a recomputation: its CH are
    fewer by the time gone, and a car silent for longer than it was asked to be is gone from both."""
    fee = pricing_current().platform_fee_pct / 100
    now = timezone.now()
    later = now + timedelta(seconds=20)
    before, after = from_book(now, fee), from_book(later, fee)
    expected = recomputed(later, fee)
    assert after.keys() == expected.keys() == before.keys()
    for key in expected:
        assert after[key][0] == pytest.approx(expected[key][0], rel=1e-6)
        assert after[key][0] < before[key][0]
    gone = now + timedelta(seconds=book.lost_after_of([cars[0][0].pk])[cars[0][0].pk] + 1)
    assert from_book(gone, fee) == recomputed(gone, fee) == {}


def test_the_packed_offer_and_the_book_array_agree():
    import numpy as np

    offer = offers.Offer(7, 1.5, 2.5, 3.5, 4.5, 60.0, 300.0, (1.0, 2.0, 3.0, 4.0), (5.0, 6.0, 7.0, 8.0), 9, 0.75,
                         2**63 + 5, 3, True)  # fmt: skip
    raw = offer.pack()
    assert len(raw) == offers.RECORD.itemsize
    assert offers.unpack(raw) == offer
    record = np.frombuffer(raw, dtype=offers.RECORD)[0]
    assert (record["car"], record["hardware"], record["held"]) == (7, 3, 2**63 + 5)
    assert record["rate"].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert record["energy"].tolist() == [5.0, 6.0, 7.0, 8.0]
