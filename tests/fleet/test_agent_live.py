"""The real agent code against a live server: cars drive, park and plug in, and the platform follows."""

import threading
import zoneinfo
from datetime import datetime, timedelta

import pytest

from fleet.agent import protocol
from fleet.agent.client import AgentClient
from fleet.agent.runner import Agent
from fleet.agent.simulation import SimulatedCar
from fleet.models import OptInPolicy, ParkingSession, Vehicle
from fleet.selectors import vehicles_live
from tests.factories import OwnerFactory, vehicle_with_credential

TZ = zoneinfo.ZoneInfo("America/Los_Angeles")
MONDAY_5AM = datetime(2026, 11, 23, 5, 0, tzinfo=TZ)


class ManualClock:
    """The test moves the car's clock; the agent's sleeps return at once."""

    rate = 1.0

    def __init__(self, now: datetime) -> None:
        self.current = now

    def now(self) -> datetime:
        return self.current

    def sleep(self, car_seconds: float, stop: threading.Event) -> bool:
        return stop.is_set()


@pytest.mark.django_db(transaction=True)
def test_the_platform_follows_real_agents_through_a_day(live_server):
    owner = OwnerFactory(username="olivia")
    fleet = []
    for seed in (11, 12, 13):
        vehicle, credential = vehicle_with_credential(owner, name=f"car {seed}", time_zone=str(TZ))
        OptInPolicy.objects.filter(vehicle=vehicle).update(battery_floor_pct=20)
        clock = ManualClock(MONDAY_5AM)
        agent = Agent(AgentClient(live_server.url, credential), SimulatedCar("commuter", seed, MONDAY_5AM, TZ), clock)
        fleet.append((vehicle, clock, agent))

    seen = {
        vehicle.pk: {"parked": set(), "plugged_in": set(), "available": set(), "reasons": set()}
        for vehicle, *_ in fleet
    }
    t = MONDAY_5AM
    while t <= MONDAY_5AM + timedelta(hours=16):  # 05:00 to 21:00: to work and back home
        for _vehicle, clock, agent in fleet:
            clock.current = t
            agent.step()
        vehicles = list(Vehicle.objects.select_related("hardware", "policy").order_by("pk"))
        for item in vehicles_live(vehicles):
            record = seen[item.vehicle.pk]
            record["parked"].add(item.state["parked"])
            record["plugged_in"].add(item.state["plugged_in"])
            record["available"].add(item.availability.available)
            record["reasons"].update(item.availability.reasons)
        t += timedelta(minutes=5)

    for vehicle, _clock, agent in fleet:
        assert agent.errors == 0
        record = seen[vehicle.pk]
        assert record["parked"] == {True, False}, "each commuter drove and parked"
        assert record["available"] == {True, False}, "each was available at some point and not at others"
        assert "driving" in record["reasons"]
        sessions = list(ParkingSession.objects.filter(vehicle=vehicle).order_by("arrived_at"))
        assert len(sessions) >= 3, "home, work (or an errand), home again"
        assert sessions[0].departure_announced, "the agent announced leaving home before it drove"
        assert sessions[-1].departed_at is None, "parked at home again at the end of the day"
    assert any(seen[v.pk]["plugged_in"] == {True, False} for v, *_ in fleet), "someone plugged in or unplugged"


@pytest.mark.django_db(transaction=True)
def test_a_revoked_car_is_stopped(live_server):
    from fleet.services import credential_issue

    owner = OwnerFactory(username="oscar")
    vehicle, credential = vehicle_with_credential(owner, time_zone=str(TZ))
    agent = Agent(
        AgentClient(live_server.url, credential), SimulatedCar("homebody", 1, MONDAY_5AM, TZ), ManualClock(MONDAY_5AM)
    )
    agent.step()
    assert agent.heartbeats_sent == 1

    credential_issue(vehicle=vehicle)  # the owner issued a new one: this one is dead
    # The car is idle: its next heartbeat is due an idle interval later, and is refused.
    agent.clock.current += timedelta(seconds=protocol.IDLE_HEARTBEAT_SECONDS)
    agent.step()

    assert agent.stop.is_set()
    assert "revoked" in agent.stopped_reason
