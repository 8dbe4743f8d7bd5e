"""A real agent process is killed (SIGKILL) in the middle of a work unit: the sweeper reissues its unit and another
car finishes the job, every item once."""

import json
import os
import signal
import subprocess
import sys
import time
import zoneinfo
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.core.management import call_command
from django.utils import timezone

from accounts.models import Role, User
from fleet.agent.client import AgentClient
from fleet.agent.executor import ArtifactCache, Executor
from fleet.agent.runner import Agent
from fleet.agent.simulation import SimulatedCar
from fleet.models import OptInPolicy, Vehicle
from marketplace import services
from marketplace.dispatch import leases_expire
from marketplace.models import InferenceModel, WorkUnit
from marketplace.rounds import auction_round_run
from tests.factories import OwnerFactory, vehicle_with_credential
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]


def night_time_zone() -> str:
    """A time zone where it is the middle of the night now: every simulated car is parked at home on WiFi."""
    names = (
        "Pacific/Honolulu", "America/Los_Angeles", "America/New_York", "Europe/London", "Europe/Berlin", "Asia/Dubai",
        "Asia/Kolkata", "Asia/Shanghai", "Asia/Tokyo", "Australia/Sydney", "Pacific/Auckland", "America/Halifax",
        "Atlantic/Azores", "America/Denver",
    )  # fmt: skip
    for name in names:
        if 1 <= datetime.now(UTC).astimezone(zoneinfo.ZoneInfo(name)).hour <= 4:
            return name
    pytest.skip("no listed time zone is between 01:00 and 05:00 right now")


class StillClock:
    rate = 1.0

    def __init__(self, tz):
        self.tz = tz

    def now(self):
        return datetime.now(self.tz)

    def sleep(self, car_seconds, stop) -> bool:
        return stop.is_set()


@pytest.mark.django_db(transaction=True)
def test_a_killed_agent_process_loses_its_unit_to_another_car(live_server, tmp_path, monkeypatch, settings, card_for):
    from fleet import availability

    settings.AUCTION_INTERVAL_SECONDS = 1
    # An idle car heartbeats (and asks for work) every 15 s here, the shortest idle interval, not every 60 s: the test
    # runs in real time, and its car is sold while idle.
    settings.IDLE_HEARTBEAT_SECONDS = 15
    monkeypatch.setattr(availability, "HEARTBEAT_LOST_AFTER_S", 3.0)  # a killed car is "lost" after 3 s here
    tz = night_time_zone()
    call_command("catalogue_sync", documents=679)  # MiniLM: about two seconds of work for one car
    model = InferenceModel.objects.get(is_catalogue=True, kind="text")
    victim, victim_key = vehicle_with_credential(OwnerFactory(username="victim"), time_zone=tz)
    customer = User.objects.create_user("alice", "alice@example.test", "pw", role=Role.CUSTOMER)
    card_for(customer)
    bid = services.bid_place(
        customer=customer, inference_model=model, dataset=model.datasets.get(), precision="int8",
        max_price_mcents_per_ch=5000, budget_cents=100, deadline=timezone.now() + timedelta(hours=1),
    )  # fmt: skip
    OptInPolicy.objects.update(battery_floor_pct=10)  # whatever charge the simulated car starts with
    # This test is about a lost car, not a wrong result: each car's result stands alone (no replicas).
    settings.VERIFICATION_SPOT_CHECK_RATE = 0.0
    Vehicle.objects.update(valid_streak=settings.VERIFICATION_TRUSTED_AFTER)
    (tmp_path / "victim.json").write_text(victim_key.to_file_text(live_server.url))
    agent = subprocess.Popen(
        [sys.executable, "-m", "fleet.agent", "--credential", str(tmp_path / "victim.json"), "--simulate", "homebody",
         "--tz", tz, "--heartbeat", "1", "--cache-dir", str(tmp_path / "victim-cache"), "--threads", "1"],
        cwd=ROOT, env={k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        from fleet import state_store

        assert wait_for(lambda: state_store.state_get(victim.pk) is not None, timeout=30), "no heartbeat"
        assert auction_round_run() is not None
        from fleet.selectors import vehicles_live

        reasons = vehicles_live([victim])[0].availability.reasons
        assert WorkUnit.objects.filter(bid=bid).exists(), reasons
        unit = WorkUnit.objects.get(bid=bid)
        assert unit.assigned_vehicle == victim
        assert wait_for(lambda: WorkUnit.objects.get(pk=unit.pk).status == "leased", timeout=30)
        time.sleep(0.3)  # it is downloading or running the unit now
        os.kill(agent.pid, signal.SIGKILL)
        agent.wait(timeout=10)
    finally:
        if agent.poll() is None:
            agent.kill()
    log = agent.stdout.read()
    assert WorkUnit.objects.get(pk=unit.pk).status == "leased", log  # killed before it could return anything

    # The lease runs out; the unit goes back to the bid, and the next round sells it to another car.
    assert leases_expire(now=WorkUnit.objects.get(pk=unit.pk).lease_expires_at + timedelta(seconds=1)) == 1
    rescuer, rescuer_key = vehicle_with_credential(OwnerFactory(username="rescuer"), time_zone=tz)
    OptInPolicy.objects.update(battery_floor_pct=10)
    Vehicle.objects.update(valid_streak=settings.VERIFICATION_TRUSTED_AFTER)
    client = AgentClient(live_server.url, rescuer_key)
    zone = zoneinfo.ZoneInfo(tz)
    other = Agent(client, SimulatedCar("homebody", 5, datetime.now(zone), zone), StillClock(zone),
                  executor=Executor(client, ArtifactCache(tmp_path / "rescuer", max_bytes=500_000_000)))  # fmt: skip
    time.sleep(3.2)  # the killed car sends no more heartbeats: now it is lost
    other.step()
    assert auction_round_run() is not None
    other.step()  # a new car runs a self-test of the variant first (its speed and accuracy here)
    other.step()  # then the unit

    bid.refresh_from_db()
    assert bid.status == "completed", json.dumps(list(WorkUnit.objects.values("status", "attempts", "error")))
    done = WorkUnit.objects.get(bid=bid)
    assert (done.item_start, done.item_end, done.done_by, done.attempts) == (0, bid.items, rescuer, 1)
