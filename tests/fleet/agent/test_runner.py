"""The agent's loop with a recording fake platform and a simulated car on a hand-driven simulated clock."""

import logging
import threading
import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from fleet.agent.client import AgentHTTPError, AgentUnavailable
from fleet.agent.clock import SimClock
from fleet.agent.runner import DEPARTURE_PATH, HARDWARE_PATH, HEARTBEAT_PATH, LEASE_PATH, Agent
from fleet.agent.simulation import SimulatedCar

BERLIN = ZoneInfo("Europe/Berlin")
MONDAY = datetime(2025, 3, 3, tzinfo=BERLIN)


class FakePlatform:
    """Records every POST; `failures[path]` is a list of exceptions raised, one per call, before answering again."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.hardware: list[dict] = []
        self.failures: dict[str, list[Exception]] = {}

    def post(self, path: str, payload: dict):
        if path == HARDWARE_PATH:  # the compute report, sent once before the first heartbeat: kept apart
            self.hardware.append(payload)
            return 200, {"compute_class": "x86_64-avx2", "description": "x86-64 with AVX2, no VNNI"}
        self.calls.append((path, payload))
        if self.failures.get(path):
            raise self.failures[path].pop(0)
        if path == HEARTBEAT_PATH:
            return 200, {"received_at": payload["observed_at"], "next_heartbeat_s": 15}
        if path == DEPARTURE_PATH:
            return 200, {"released_work_units": 0}
        return 204, None

    def paths(self) -> list[str]:
        return [path for path, _ in self.calls]


class HandClock:
    """Real seconds for SimClock, moved by the test."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __call__(self) -> float:
        return self.seconds


class EmptyCache:
    def holds(self) -> list[str]:
        return []


class IdleExecutor:
    """An executor for a platform that never has work: the agent asks for leases, nothing ever runs."""

    power_w = 100.0
    cache = EmptyCache()

    def run(self, unit):
        raise AssertionError("no work unit was leased")


def agent_at(start: datetime, seed: int = 2, speed: float = 1.0):
    hand = HandClock()
    clock = SimClock(start, speed, monotonic=hand)
    platform = FakePlatform()
    agent = Agent(platform, SimulatedCar("commuter", seed, start, BERLIN), clock, executor=IdleExecutor())
    return agent, platform, hand


def test_the_departure_notice_goes_out_before_the_car_is_seen_driving():
    probe = SimulatedCar("commuter", 2, MONDAY + timedelta(hours=4), BERLIN)
    departure = probe.next_departure(MONDAY + timedelta(hours=4))
    agent, platform, hand = agent_at(departure - timedelta(seconds=100))

    for _ in range(12):  # three minutes of heartbeats, every 15 car seconds
        agent.step()
        hand.seconds += 15

    assert agent.departures_sent == 1
    assert platform.paths().count(DEPARTURE_PATH) == 1
    notice = platform.paths().index(DEPARTURE_PATH)
    heartbeats = [(index, payload) for index, (path, payload) in enumerate(platform.calls) if path == HEARTBEAT_PATH]
    first_driving = next(index for index, payload in heartbeats if not payload["parked"])
    assert notice < first_driving
    assert all(payload["parked"] for index, payload in heartbeats if index < notice)
    observed = datetime.fromisoformat(platform.calls[notice][1]["observed_at"])
    assert departure - timedelta(seconds=15) <= observed < departure
    # Once it has announced its departure, the car asks for no more work.
    assert LEASE_PATH not in platform.paths()[notice:]


def test_a_heartbeat_carries_the_cars_state_its_clock_and_its_clock_rate():
    agent, platform, _ = agent_at(MONDAY + timedelta(hours=3), speed=60)

    agent.step()

    path, payload = platform.calls[0]
    assert path == HEARTBEAT_PATH
    assert payload["observed_at"] == "2025-03-03T03:00:00+01:00"
    assert payload["clock_rate"] == 60
    assert payload["parked"] is True
    assert agent.heartbeats_sent == 1
    assert agent.last_heartbeat_response == {"received_at": payload["observed_at"], "next_heartbeat_s": 15}


def test_work_is_asked_for_only_when_parked_on_wifi():
    agent, platform, _ = agent_at(MONDAY + timedelta(hours=3))
    agent.step()
    assert platform.paths() == [HEARTBEAT_PATH, LEASE_PATH]

    platform.calls.clear()
    agent.poll_work({"parked": True, "network": "cellular"})
    agent.poll_work({"parked": False, "network": "wifi"})
    assert platform.calls == []


def test_an_agent_without_an_executor_never_asks_for_work():
    agent, platform, _ = agent_at(MONDAY + timedelta(hours=3))
    agent.executor = None

    agent.step()

    assert platform.paths() == [HEARTBEAT_PATH]
    assert agent.lease_requests == 0


def test_the_agent_stops_when_the_platform_refuses_its_credential(caplog):
    agent, platform, _ = agent_at(MONDAY + timedelta(hours=3))
    refused = {"code": "credential_invalid", "message": "Invalid or revoked vehicle credential.", "fields": {}}
    platform.failures[HEARTBEAT_PATH] = [AgentHTTPError(401, refused)]

    with caplog.at_level(logging.ERROR, logger="idlefleet.agent"):
        agent.run()  # returns at once: the first step sets stop

    assert agent.stop.is_set()
    assert agent.stopped_reason == "Invalid or revoked vehicle credential."
    assert platform.paths() == [HEARTBEAT_PATH]
    assert "refused this car's credential" in caplog.text


@pytest.mark.parametrize("code", ["clock_skew", "replayed"])
def test_a_refusal_of_one_request_does_not_stop_the_agent(code):
    agent, platform, _ = agent_at(MONDAY + timedelta(hours=3))
    platform.failures[HEARTBEAT_PATH] = [AgentHTTPError(401, {"code": code, "message": "this request", "fields": {}})]

    agent.step()
    agent.step()

    assert not agent.stop.is_set()
    assert agent.errors == 1
    assert agent.heartbeats_sent == 1


def test_the_agent_carries_on_after_the_platform_was_unavailable():
    agent, platform, hand = agent_at(MONDAY + timedelta(hours=3))
    platform.failures[HEARTBEAT_PATH] = [AgentUnavailable("down"), AgentUnavailable("still down")]

    for _ in range(3):
        agent.step()
        hand.seconds += 15

    assert not agent.stop.is_set()
    assert agent.errors == 2
    assert agent.heartbeats_sent == 1


def test_an_unexpected_error_in_a_step_is_logged_and_the_next_step_works(caplog):
    agent, platform, hand = agent_at(MONDAY + timedelta(hours=3))
    platform.failures[HEARTBEAT_PATH] = [RuntimeError("sensor glitch")]

    with caplog.at_level(logging.ERROR, logger="idlefleet.agent"):
        agent.step()
    hand.seconds += 15
    agent.step()

    assert "sensor glitch" in caplog.text
    assert agent.errors == 1
    assert agent.heartbeats_sent == 1


def test_a_bad_request_is_logged_and_does_not_stop_the_agent():
    agent, platform, _ = agent_at(MONDAY + timedelta(hours=3))
    platform.failures[HEARTBEAT_PATH] = [AgentHTTPError(400, {"code": "invalid", "message": "x", "fields": {}})]

    agent.step()

    assert not agent.stop.is_set()
    assert agent.errors == 1


def test_run_returns_promptly_when_stop_is_set():
    platform = FakePlatform()
    clock = SimClock(MONDAY + timedelta(hours=3), 1.0)  # real time: a heartbeat every 15 real seconds
    agent = Agent(platform, SimulatedCar("commuter", 1, MONDAY, BERLIN), clock)
    thread = threading.Thread(target=agent.run)
    thread.start()
    deadline = time.monotonic() + 5
    while agent.heartbeats_sent == 0 and time.monotonic() < deadline:
        time.sleep(0.01)

    started = time.monotonic()
    agent.stop.set()
    thread.join(timeout=2)

    assert not thread.is_alive()
    assert time.monotonic() - started < 1
    assert agent.heartbeats_sent == 1


@pytest.mark.parametrize("speed", [1.0, 600.0])
def test_the_sim_clock_sleeps_car_seconds_divided_by_its_speed(speed):
    stop = threading.Event()
    clock = SimClock(MONDAY, speed)

    started = time.monotonic()
    stopped = clock.sleep(0.05 * speed, stop)

    assert stopped is False
    assert 0.04 < time.monotonic() - started < 0.5
    stop.set()
    assert clock.sleep(3600, stop) is True


def test_the_sim_clock_runs_faster_than_real_time_in_the_cars_time_zone():
    hand = HandClock()
    clock = SimClock(MONDAY, 60, monotonic=hand)
    hand.seconds = 90

    assert clock.now() == MONDAY + timedelta(minutes=90)
    assert clock.now().tzinfo == BERLIN
    assert clock.rate == 60


def test_a_departure_is_announced_even_when_steps_lag_behind_the_heartbeat_interval():
    probe = SimulatedCar("commuter", 2, MONDAY + timedelta(hours=4), BERLIN)
    departure = probe.next_departure(MONDAY + timedelta(hours=4))
    agent, platform, hand = agent_at(departure - timedelta(seconds=110))

    for _ in range(4):  # 40 car seconds between steps (a fast clock), the last parked one 30 s before leaving
        agent.step()
        hand.seconds += 40

    assert platform.paths().count(DEPARTURE_PATH) == 1
    first_driving = next(
        i for i, (path, body) in enumerate(platform.calls) if path == HEARTBEAT_PATH and not body["parked"]
    )
    assert platform.paths().index(DEPARTURE_PATH) < first_driving
