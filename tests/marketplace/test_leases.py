"""Leases match the work and the car: they last the unit's predicted run and are renewed while the car works; a car
that goes silent, is paused, drives off or loses WiFi gives its work back at once; the lease endpoint refuses work to
a car that may not work."""

import time
from datetime import timedelta

import pytest
from django.utils import timezone

from fleet import availability, book, state_store
from fleet.agent import protocol
from fleet.models import Vehicle
from marketplace import services, storage
from marketplace.dispatch import unit_split, vehicles_silent_release
from marketplace.models import WorkUnit
from marketplace.rounds import auction_round_run
from marketplace.selftests import lease_seconds_for
from tests.fleet.agent_requests import heartbeat, signed_post
from tests.marketplace.agents import catalogue_minilm, night_zone, parked_agent, until_next_heartbeat
from tests.marketplace.test_dispatch import LEASE, RESULT, run_unit

HEARTBEAT = "/api/v1/agent/heartbeat/"


def holds(vehicle) -> list[int]:
    """The units assigned to the car (queued or leased)."""
    return list(
        WorkUnit.objects.filter(assigned_vehicle=vehicle, status__in=("queued", "leased")).values_list("pk", flat=True)
    )


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("paused", "paused by its owner"),
        ("suspended", "suspended by Idlefleet"),
        ("driving", "driving"),
        ("cellular", "on cellular: work only runs on WiFi"),
    ],
)
def test_the_lease_endpoint_refuses_a_car_that_may_not_work(client, running_bid, cars, change, reason):
    (car, key), _ = cars
    assert holds(car)
    if change in ("paused", "suspended"):
        Vehicle.objects.filter(pk=car.pk).update(status=change)  # as staff or the owner set it, by whatever route
    else:
        moving = {"parked": False} if change == "driving" else {"network": "cellular"}
        assert signed_post(client, key, HEARTBEAT, heartbeat(**moving)).status_code == 200

    response = signed_post(client, key, LEASE, {})

    assert response.status_code == 409
    assert response.json()["code"] == "cannot_work"
    assert response.json()["message"] == f"This car cannot take work now: {reason}."
    assert not WorkUnit.objects.filter(status="leased").exists()  # nothing was handed out
    assert not holds(car)  # and what it held went back to the market
    running_bid.refresh_from_db()
    assert running_bid.ch_allocated == pytest.approx(0.0, abs=1e-12)


@pytest.mark.django_db
def test_pausing_a_car_gives_its_queued_work_to_other_cars(client, running_bid, cars, olivia, settings):
    (car, key), (other_car, _) = cars
    held = holds(car)
    assert held

    client.force_login(olivia)
    response = client.post(f"/owner/vehicles/{car.pk}/pause/", {"action": "pause"}, follow=True)

    page = response.content.decode()
    assert f"is paused: it takes no work; its {len(held)} work unit went to other cars" in page
    assert not holds(car)
    assert WorkUnit.objects.filter(pk__in=held, status="queued", assigned_vehicle=None).count() == len(held)
    settings.AUCTION_INTERVAL_SECONDS = 5
    auction_round_run(now=timezone.now() + timedelta(seconds=6))  # the next round sells them to the other car
    assert set(WorkUnit.objects.filter(pk__in=held).values_list("assigned_vehicle", flat=True)) == {other_car.pk}
    assert signed_post(client, key, LEASE, {}).status_code == 409


@pytest.mark.django_db
@pytest.mark.parametrize("moving", [{"parked": False}, {"network": "cellular"}, {"network": "none"}])
def test_a_heartbeat_that_says_driving_or_off_wifi_gives_the_work_back_at_once(client, running_bid, cars, moving):
    (car, key), _ = cars
    lease = signed_post(client, key, LEASE, {}).json()
    assert holds(car)

    assert signed_post(client, key, HEARTBEAT, heartbeat(**moving)).status_code == 200

    assert not holds(car)  # queued and leased alike, before any sweep
    refused = signed_post(client, key, RESULT, run_unit(lease, storage.artifact_read(lease["model_sha256"])))
    assert refused.status_code == 409  # a result for the released lease is not taken


@pytest.mark.django_db
def test_a_silent_cars_queued_and_leased_units_are_reissued_within_two_heartbeat_intervals(
    client, running_bid, cars, monkeypatch
):
    """Scaled to a one-second heartbeat: lost after 1.5 intervals of silence, swept every third of one (as beat does
    every 5 s for the 15 s of real cars)."""
    interval = 1.0
    monkeypatch.setattr(availability, "HEARTBEAT_LOST_AFTER_S", 1.5 * interval)
    (car, key), _ = cars
    unit = WorkUnit.objects.get(bid=running_bid)
    unit_split(unit, at=unit.item_start + unit.items // 2)  # two units: one will be leased, one stays queued
    assert signed_post(client, key, LEASE, {}).status_code == 200
    assert sorted(WorkUnit.objects.filter(assigned_vehicle=car).values_list("status", flat=True)) == [
        "leased", "queued",
    ]  # fmt: skip
    assert signed_post(client, key, HEARTBEAT, heartbeat()).status_code == 200
    last_heartbeat = state_store.last_seen([car.pk])[car.pk]

    # Then nothing from the car; the sweeper runs as beat runs it.
    released_at = None
    while time.time() - last_heartbeat < 4 * interval and released_at is None:
        time.sleep(interval / 3)
        if vehicles_silent_release():
            released_at = time.time()

    assert released_at is not None and released_at - last_heartbeat <= 2 * interval
    assert not holds(car)
    units = WorkUnit.objects.filter(bid=running_bid)
    assert {(u.status, u.assigned_vehicle_id, u.attempts) for u in units} == {("queued", None, 0)}
    running_bid.refresh_from_db()
    assert running_bid.ch_allocated == pytest.approx(0.0, abs=1e-12)  # the next round sells them again


@pytest.mark.django_db
def test_a_car_heard_from_within_the_interval_keeps_its_work(client, running_bid, cars):
    """The car was idle at its last heartbeat, so it was asked for the next in IDLE_HEARTBEAT_SECONDS: sold since,
    it keeps its work for 1.5 of those intervals (it learns of the work at its next heartbeat), not 1.5 of the short
    one, and loses it after."""
    (car, _), _ = cars
    now = timezone.now()
    last = state_store.last_seen([car.pk])[car.pk]
    lost_after = book.lost_after_of([car.pk])[car.pk]
    assert lost_after == 1.5 * protocol.IDLE_HEARTBEAT_SECONDS > availability.HEARTBEAT_LOST_AFTER_S

    assert (
        vehicles_silent_release(now=now.fromtimestamp(last + availability.HEARTBEAT_LOST_AFTER_S + 1, now.tzinfo)) == 0
    )
    assert vehicles_silent_release(now=now.fromtimestamp(last + lost_after - 1, now.tzinfo)) == 0
    assert holds(car)
    assert vehicles_silent_release(now=now.fromtimestamp(last + lost_after + 1, now.tzinfo)) == 1
    assert not holds(car)


def test_a_lease_is_the_predicted_run_plus_a_margin_within_the_settings(settings):
    settings.WORK_LEASE_MIN_SECONDS, settings.WORK_LEASE_SECONDS = 60, 600

    assert lease_seconds_for(predicted_s=0.5, transfer_s=0.1) == 60  # a short unit: the minimum
    assert lease_seconds_for(predicted_s=100, transfer_s=20) == 2 * 100 + 20 + 30
    assert lease_seconds_for(predicted_s=3600, transfer_s=0) == 600  # renewals carry the rest


@pytest.mark.django_db(transaction=True)
def test_a_unit_longer_than_its_lease_completes_under_renewal(live_server, tmp_path, settings, card_for, alice):
    """The car is six times slower than this machine (its self-test measures that); its lease is capped at 2 s,
    and its unit runs for several: the agent renews the lease while it works, and the result is taken. (At three
    times slower, the whole job ran in 1.98 s on a fast machine: no longer than one lease.)"""
    settings.WORK_LEASE_MIN_SECONDS, settings.WORK_LEASE_SECONDS = 1, 2
    settings.VERIFICATION_SPOT_CHECK_RATE = 0.0
    tz = night_zone()
    model = catalogue_minilm(documents=300)
    car, agent = parked_agent(live_server, tmp_path, name="slowpoke", tz=tz, slowdown=6.0)
    Vehicle.objects.filter(pk=car.pk).update(valid_streak=settings.VERIFICATION_TRUSTED_AFTER)
    agent.step()  # its compute and its first heartbeat
    card_for(alice)
    bid = services.bid_place(
        customer=alice, inference_model=model, dataset=model.datasets.get(), precision="auto",
        max_price_mcents_per_ch=5000, budget_cents=100, deadline=timezone.now() + timedelta(hours=1),
    )  # fmt: skip
    assert auction_round_run() is not None

    until_next_heartbeat(agent)  # a self-test: it has never run this variant
    agent.step()  # the unit, sized for its measured speed

    bid.refresh_from_db()
    unit = WorkUnit.objects.get(bid=bid, status="done")
    assert bid.status == "completed"
    assert unit.seconds > settings.WORK_LEASE_SECONDS  # it ran longer than any one lease
    assert agent.lease_renewals >= 2
    assert (unit.done_by_id, unit.attempts) == (car.pk, 0)


RENEW = "/api/v1/agent/lease/renew/"


@pytest.mark.django_db
def test_a_renewal_extends_the_lease_and_a_refused_one_gives_the_unit_back(client, running_bid, cars):
    (_, key), _ = cars
    lease = signed_post(client, key, LEASE, {}).json()
    unit = WorkUnit.objects.get(pk=lease["unit_id"])
    ids = {"unit_id": lease["unit_id"], "lease_id": lease["lease_id"]}

    renewed = signed_post(client, key, RENEW, ids)
    assert renewed.status_code == 200 and renewed.json()["lease_seconds"] == lease["lease_seconds"]
    assert WorkUnit.objects.get(pk=unit.pk).lease_expires_at > unit.lease_expires_at

    # Held four times longer than its measured speed predicts: the unit goes to another car, as a failed try.
    WorkUnit.objects.filter(pk=unit.pk).update(leased_at=timezone.now() - timedelta(hours=1))
    too_long = signed_post(client, key, RENEW, ids)
    assert (too_long.status_code, too_long.json()["code"]) == (409, "lease_lost")
    unit.refresh_from_db()
    assert (unit.status, unit.assigned_vehicle, unit.attempts) == ("queued", None, 1)


@pytest.mark.django_db
def test_a_renewal_for_a_car_that_may_no_longer_work_gives_the_unit_back(client, running_bid, cars):
    (car, key), _ = cars
    lease = signed_post(client, key, LEASE, {}).json()
    Vehicle.objects.filter(pk=car.pk).update(status="paused")

    refused = signed_post(client, key, RENEW, {"unit_id": lease["unit_id"], "lease_id": lease["lease_id"]})

    assert refused.status_code == 409
    assert "paused by its owner" in refused.json()["message"]
    unit = WorkUnit.objects.get(pk=lease["unit_id"])
    assert (unit.status, unit.assigned_vehicle, unit.attempts) == ("queued", None, 0)  # not the car's failure
    assert signed_post(client, key, RENEW, {"unit_id": lease["unit_id"], "lease_id": "made-up"}).status_code == 409


@pytest.mark.django_db
def test_a_malformed_renewal_is_refused_naming_the_field_and_changes_nothing(client, running_bid, cars):
    (_, key), _ = cars
    lease = signed_post(client, key, LEASE, {}).json()
    before = WorkUnit.objects.get(pk=lease["unit_id"]).lease_expires_at

    missing = signed_post(client, key, RENEW, {"unit_id": lease["unit_id"]})
    unknown = signed_post(client, key, RENEW, {"unit_id": "not-a-unit", "lease_id": lease["lease_id"]})

    assert (missing.status_code, missing.json()["fields"]) == (400, {"lease_id": ["This field is required."]})
    assert (unknown.status_code, unknown.json()["fields"]) == (404, {"unit_id": ["No such work unit."]})
    assert WorkUnit.objects.get(pk=lease["unit_id"]).lease_expires_at == before
