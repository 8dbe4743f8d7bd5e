"""The real car's interface (a state file a vehicle integration keeps up to date), the command line's choice of
vehicle interface, and the car's time zone read from the platform. No Django, no server: a recording fake platform."""

import json
import logging
import os
import threading
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from fleet.agent import __main__ as cli
from fleet.agent.client import AgentHTTPError, AgentUnavailable
from fleet.agent.runner import DEPARTURE_PATH, HEARTBEAT_PATH, ME_PATH, Agent
from fleet.agent.vehicle import StateFileCar

BERLIN = ZoneInfo("Europe/Berlin")
NOW = datetime(2026, 3, 2, 22, 0, tzinfo=BERLIN)
PARKED = {
    "gear": "park",
    "battery_pct": 80,
    "network": "wifi",
    "plugged_in": True,
    "charge_power_w": 7400,
    "battery_capacity_kwh": 75,
    "bandwidth_down_mbps": 200,
    "bandwidth_up_mbps": 20,
    "latency_ms": 18,
}


def write(path, **fields):
    path.write_text(json.dumps({**PARKED, "observed_at": NOW.isoformat(), **fields}))


def car_at(path, *, seconds_later: float = 5, **options) -> StateFileCar:
    """A state-file car whose wall clock reads NOW plus `seconds_later`."""
    return StateFileCar(path, wall_clock=lambda: NOW.timestamp() + seconds_later, **options)


class FakePlatform:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    def post(self, path: str, payload: dict):
        self.calls.append((path, payload))
        if path == HEARTBEAT_PATH:
            return 200, {"received_at": payload["observed_at"], "next_heartbeat_s": 15}
        return 200, {"released_work_units": 0}


class StepClock:
    rate = 1.0

    def __init__(self, now: datetime) -> None:
        self.current = now

    def now(self) -> datetime:
        return self.current

    def sleep(self, car_seconds: float, stop: threading.Event) -> bool:
        return stop.is_set()


def test_a_fresh_file_is_the_cars_state(tmp_path):
    path = tmp_path / "state.json"
    write(path, departure_at=(NOW + timedelta(hours=9)).isoformat())
    car = car_at(path, runtime_version="1.32.0")

    car.advance_to(NOW)
    state = car.state(NOW)

    assert car.problem is None
    assert state["parked"] is True and state["plugged_in"] is True
    assert (state["network"], state["battery_pct"], state["battery_capacity_kwh"]) == ("wifi", 80, 75)
    assert (state["bandwidth_down_mbps"], state["latency_ms"], state["runtime_version"]) == (200, 18, "1.32.0")
    assert car.seconds_until_departure(NOW) == 9 * 3600
    # Computing is reported while a unit runs, and its energy counts towards today's.
    car.set_compute(100.0)
    later = NOW + timedelta(minutes=30)
    car.advance_to(later)
    state = car.state(later)
    assert state["computing"] is True and state["compute_power_w"] == 100
    assert state["energy_used_today_wh"] == pytest.approx(50.0)


@pytest.mark.parametrize(
    ("prepare", "why"),
    [
        (lambda path: None, "does not exist"),
        (lambda path: write(path, observed_at=(NOW - timedelta(minutes=5)).isoformat()), "stale"),
        (lambda path: path.write_text('{"gear": "park", "battery_pct": 80,'), "not valid JSON"),
        (lambda path: write(path, gear="P"), '"gear" must be one of park, drive, reverse, neutral'),
        (lambda path: write(path, battery_pct=140), '"battery_pct" must be between 0 and 100'),
        (lambda path: write(path, network="5g"), '"network" must be one of'),
        (lambda path: write(path, departure_at="tomorrow 7:30"), '"departure_at" must be an ISO 8601 time'),
        (lambda path: path.write_text("[1, 2]"), "not a JSON object"),
    ],
    ids=["missing", "stale", "broken-json", "bad-gear", "bad-battery", "bad-network", "bad-departure", "not-object"],
)
def test_an_unusable_file_means_not_parked_and_says_why(tmp_path, caplog, prepare, why):
    path = tmp_path / "state.json"
    prepare(path)
    car = car_at(path)

    with caplog.at_level(logging.WARNING, logger="idlefleet.agent"):
        car.advance_to(NOW)
        state = car.state(NOW)

    assert why in car.problem
    assert (state["parked"], state["plugged_in"], state["network"]) == (False, False, "none")
    assert car.seconds_until_departure(NOW) is None  # it was never parked: nothing to announce
    assert why in caplog.text and str(path) in caplog.text and "no work" in caplog.text


def test_a_file_without_observed_at_is_as_fresh_as_its_modification_time(tmp_path):
    path = tmp_path / "state.json"
    path.write_text(json.dumps(PARKED))
    old = NOW.timestamp() - 120
    os.utime(path, (old, old))

    stale, fresh = car_at(path), car_at(path, max_age_s=300)
    stale.advance_to(NOW)
    fresh.advance_to(NOW)

    assert "stale: last updated 125 s ago" in stale.problem
    assert fresh.problem is None and fresh.state(NOW)["parked"] is True


def test_a_car_that_stops_being_usable_is_announced_leaving_once_and_gets_no_work(tmp_path):
    path = tmp_path / "state.json"
    write(path)
    clock = StepClock(NOW)
    seconds = {"now": 5.0}
    car = StateFileCar(path, wall_clock=lambda: NOW.timestamp() + seconds["now"])
    platform = FakePlatform()
    agent = Agent(platform, car, clock, heartbeat_seconds=15)

    agent.step()
    path.unlink()  # the integration stopped: the agent cannot know where the car is
    for _ in range(3):
        clock.current += timedelta(seconds=15)
        seconds["now"] += 15
        agent.step()

    assert [path for path, _ in platform.calls].count(DEPARTURE_PATH) == 1
    heartbeats = [payload for path, payload in platform.calls if path == HEARTBEAT_PATH]
    assert [h["parked"] for h in heartbeats] == [True, False, False, False]
    assert agent.errors == 0


def test_the_departure_signal_announces_leaving_while_still_parked(tmp_path):
    path = tmp_path / "state.json"
    write(path)
    platform = FakePlatform()
    clock = StepClock(NOW)
    agent = Agent(platform, car_at(path), clock, heartbeat_seconds=15)

    agent.step()
    write(path, departing=True)
    clock.current += timedelta(seconds=15)
    agent.step()

    assert [path for path, _ in platform.calls] == [HEARTBEAT_PATH, DEPARTURE_PATH, HEARTBEAT_PATH]


def test_without_a_vehicle_interface_the_agent_names_both_options(tmp_path, capsys):
    credential = tmp_path / "car.json"
    credential.write_text('{"server": "http://127.0.0.1:9", "credential": "ifv1.k.' + "A" * 43 + '"}')

    with pytest.raises(SystemExit) as exited:
        cli.main(["--credential", str(credential)])

    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert "--vehicle-state FILE" in error and "--simulate PERSONA" in error


class MeClient:
    """GET /api/v1/agent/me/: fails as told, then answers with the car's time zone."""

    def __init__(self, time_zone: str, failures: list[Exception] | None = None) -> None:
        self.time_zone, self.failures, self.paths = time_zone, list(failures or []), []

    def get_json(self, path: str):
        self.paths.append(path)
        if self.failures:
            raise self.failures.pop(0)
        return {"vehicle_id": 7, "display_name": "Blue car", "time_zone": self.time_zone}


def test_the_time_zone_is_the_one_the_car_was_registered_with(caplog):
    client = MeClient("Europe/Berlin", failures=[AgentUnavailable("connection refused")])

    with caplog.at_level(logging.INFO, logger="idlefleet.agent"):
        zone = cli.server_time_zone(client, threading.Event(), logging.getLogger("idlefleet.agent"), retry_s=0)

    assert zone == BERLIN
    assert client.paths == [ME_PATH, ME_PATH]  # asked again after the platform could not be reached
    assert "time zone Europe/Berlin (from the platform)" in caplog.text


def test_a_refused_credential_gets_no_time_zone_and_an_unknown_zone_falls_back_to_utc(caplog):
    refused = MeClient("Europe/Berlin", failures=[AgentHTTPError(401, {"code": "credential_invalid"})])
    log = logging.getLogger("idlefleet.agent")

    assert cli.server_time_zone(refused, threading.Event(), log, retry_s=0) is None
    with caplog.at_level(logging.WARNING, logger="idlefleet.agent"):
        zone = cli.server_time_zone(MeClient("Mars/Olympus_Mons"), threading.Event(), log, retry_s=0)
    assert zone.utcoffset(datetime.now(UTC)) == timedelta(0)
    assert "unknown on this machine" in caplog.text
