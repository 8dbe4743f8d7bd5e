"""Cars vanish: one is killed holding a unit, one announces it is leaving. Their work is reissued and the job still
completes, with every item done exactly once and results equal to local inference."""

import threading
import time
import zoneinfo
from datetime import datetime, timedelta

import numpy as np
import pytest
from django.db import connection
from django.utils import timezone

from fleet import availability
from fleet.agent.client import AgentClient
from fleet.agent.executor import ArtifactCache, Executor
from fleet.agent.inference import ModelRunner, ModelSpec, decode_npy
from fleet.agent.runner import Agent
from fleet.agent.simulation import SimulatedCar
from fleet.models import OptInPolicy, Vehicle
from marketplace import storage
from marketplace.dispatch import leases_expire
from marketplace.inference.catalogue import DIGITS_OUTPUT
from marketplace.models import Allocation, Bid, PoolClearing, WorkUnit
from marketplace.rounds import auction_round_run
from marketplace.storage import dataset_items
from tests.factories import OwnerFactory, vehicle_with_credential
from tests.marketplace.conftest import measured_here

TZ = zoneinfo.ZoneInfo("America/Los_Angeles")
SUNDAY_NIGHT = datetime(2026, 11, 22, 23, 0, tzinfo=TZ)
LOST_AFTER_S = 2.0


class StillClock:
    rate = 1.0

    def now(self):
        return SUNDAY_NIGHT

    def sleep(self, car_seconds, stop: threading.Event) -> bool:
        return stop.is_set()


def wait_for_next_slot():
    time.sleep(1.05)  # rounds here are one second apart


@pytest.mark.django_db(transaction=True)
def test_work_of_a_killed_car_and_of_a_departing_car_is_reissued(
    live_server, digits_with_variants, tmp_path, settings, monkeypatch
):
    settings.AUCTION_INTERVAL_SECONDS = 1
    trust_every_car(settings)
    monkeypatch.setattr(availability, "HEARTBEAT_LOST_AFTER_S", LOST_AFTER_S)
    model = digits_with_variants
    cars, agents = [], []
    for n, min_price in enumerate((2000, 3000, 4000)):  # A is the cheapest, then B, then C
        vehicle, credential = vehicle_with_credential(OwnerFactory(username=f"owner{n}"), time_zone=str(TZ))
        Vehicle.objects.filter(pk=vehicle.pk).update(valid_streak=settings.VERIFICATION_TRUSTED_AFTER)
        OptInPolicy.objects.filter(vehicle=vehicle).update(min_price_mcents_per_ch=min_price)
        measured_here(vehicle, model.variants.get(precision="int8"))  # it ran this work before: no self-test
        http = AgentClient(live_server.url, credential)
        executor = Executor(http, ArtifactCache(tmp_path / f"car{n}", max_bytes=50_000_000))
        cars.append(vehicle)
        agents.append(Agent(http, SimulatedCar("homebody", 30 + n, SUNDAY_NIGHT, TZ), StillClock(), executor=executor))
    a, b, c = agents
    for agent in agents:
        agent.step()
    variant = model.variants.get(precision="int8")
    bid = Bid.objects.create(
        customer=model.owner, inference_model=model, dataset=model.datasets.get(), variant=variant,
        precision_requested="auto", pool="int8", max_price_mcents_per_ch=5000, budget_cents=100,
        deadline=timezone.now() + timedelta(hours=1), items=200, ch_total=200 * variant.ch_per_item,
    )  # fmt: skip

    # Round 1 sells car A, which leases the unit and is killed before it returns anything.
    auction_round_run()
    unit = WorkUnit.objects.get(bid=bid)
    assert unit.assigned_vehicle == cars[0]
    status, _ = a.client.post("/api/v1/agent/lease/", {})
    assert status == 200

    time.sleep(LOST_AFTER_S + 0.2)  # A sends no more heartbeats: lost
    b.step()
    c.step()
    assert leases_expire(now=WorkUnit.objects.get(pk=unit.pk).lease_expires_at + timedelta(seconds=1)) == 1

    # Round 2 sells the unit to B, the cheapest car still there; B leases it and announces it is leaving.
    wait_for_next_slot()
    b.step()
    c.step()
    auction_round_run()
    assert WorkUnit.objects.get(pk=unit.pk).assigned_vehicle == cars[1]
    assert b.client.post("/api/v1/agent/lease/", {})[0] == 200
    _, released = b.client.post("/api/v1/agent/departure/", {"observed_at": SUNDAY_NIGHT.isoformat()})
    assert released == {"released_work_units": 1}

    # Round 3: C gets it and its agent runs it for real.
    wait_for_next_slot()
    c.step()
    auction_round_run()
    c.step()

    bid.refresh_from_db()
    assert bid.status == "completed", list(WorkUnit.objects.values("status", "attempts", "error"))
    units = list(WorkUnit.objects.filter(bid=bid).order_by("item_start"))
    assert [(u.item_start, u.item_end) for u in units] == [(0, 200)]  # every item once: none missing, none twice
    assert (units[0].done_by, units[0].attempts) == (cars[2], 1)  # the kill counted, the announced departure not
    assert c.units_done == 1 and a.units_done == b.units_done == 0
    assert not Allocation.objects.filter(vehicle=cars[1], ends_at__gt=timezone.now()).exists()
    outputs = decode_npy(storage.artifact_read(bid.result_sha256))
    local = ModelRunner(storage.artifact_read(bid.variant.sha256), ModelSpec("tensor", DIGITS_OUTPUT)).run(
        list(dataset_items(bid.dataset).items)
    )
    np.testing.assert_allclose(outputs, local, atol=1e-6)


@pytest.mark.django_db(transaction=True)
def test_two_rounds_started_together_sell_a_car_once(client, digits_with_variants, settings):
    from tests.fleet.agent_requests import heartbeat, signed_post

    settings.AUCTION_INTERVAL_SECONDS = 1
    model = digits_with_variants
    variant = model.variants.get(precision="int8")
    vehicle, credential = vehicle_with_credential(OwnerFactory(username="olivia"))
    assert signed_post(client, credential, "/api/v1/agent/heartbeat/", heartbeat(battery_pct=90)).status_code == 200
    for _ in range(2):
        Bid.objects.create(
            customer=model.owner, inference_model=model, dataset=model.datasets.get(), variant=variant,
            precision_requested="int8", pool="int8", max_price_mcents_per_ch=5000, budget_cents=100,
            # More than the car can deliver: whatever round sells it first sells all of it.
            deadline=timezone.now() + timedelta(hours=1), items=200, ch_total=10.0,
        )  # fmt: skip
    now = timezone.now()
    start = threading.Barrier(2)
    errors = []

    def run(at):
        try:
            start.wait()
            auction_round_run(now=at)
        except BaseException as error:
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(now + timedelta(seconds=s),)) for s in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert not errors
    sold = Allocation.objects.filter(vehicle=vehicle)
    assert sold.exists()
    assert sold.values("round").distinct().count() == 1  # the other round found the car busy
    offered = PoolClearing.objects.get(round=sold.first().round, pool="int8").supply_ch
    assert sum(sold.values_list("ch", flat=True)) <= offered + 1e-9  # never more than it offered


def trust_every_car(settings) -> None:
    """These tests are about lost cars, not wrong results: each car's result stands alone (no replicas)."""
    settings.VERIFICATION_SPOT_CHECK_RATE = 0.0
