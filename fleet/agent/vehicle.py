"""The vehicle interface: what the agent reads from a car, and the one real implementation, a state file.

The agent (runner.py) drives any object with the methods of `Car` below. Two implementations ship:

    StateFileCar   (--vehicle-state FILE) a JSON file that a vehicle integration or a home automation script keeps
                   up to date; the agent re-reads it at every heartbeat. The real car's interface.
    SimulatedCar   (--simulate PERSONA, simulation.py) a simulated car, for demos and tests only.

A vehicle integration written in Python may implement `Car` directly instead (and pass it to runner.Agent); any other
program writes the state file. The file, field by field (JSON object; README, "Installing the agent in a car"):

    gear                 str    required: "park", "drive", "reverse" or "neutral". The car works only in "park".
    battery_pct          number required: state of charge, 0 to 100.
    network              str    required: "wifi", "ethernet", "cellular" or "none": the link the car has now. Work
                                runs only on wifi or ethernet (never on metered cellular).
    plugged_in           bool   optional, default false: the charging cable is connected.
    charge_power_w       number optional, default 0: power the charger delivers now, W.
    battery_capacity_kwh number optional: usable pack capacity, kWh (1 to 300).
    bandwidth_down_mbps  number optional, default 0: measured download bandwidth, Mbps.
    bandwidth_up_mbps    number optional, default 0: measured upload bandwidth, Mbps.
    latency_ms           number optional, default 0: measured round trip to the platform, ms.
    departure_at         str    optional: the next planned departure (the car's departure timer, a calendar),
                                ISO 8601 with its offset, e.g. "2026-03-02T07:30:00+01:00"; null when none. The agent
                                stops taking work shortly before it and tells the platform.
    departing            bool   optional, default false: the driver is about to drive (door unlocked, seat occupied,
                                cabin preconditioning started): the agent stops its work and tells the platform now.
    observed_at          str    optional: when these values were read, ISO 8601 with its offset; without it, the
                                file's modification time counts.

A missing, unreadable or malformed file, or one older than the agent's --max-age (default 60 s), means "not parked, no
work": the agent says why in its log (once per change), reports the car as not parked, and tells the platform the car
is leaving if it was parked, so that its work goes to other cars at once. It never crashes on a bad file.
"""

from __future__ import annotations

import json
import logging
import math
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Protocol

from . import protocol

GEARS = ("park", "drive", "reverse", "neutral")
DEFAULT_MAX_AGE_S = 60.0


class Car(Protocol):
    """What the agent needs from a car: StateFileCar (a real car's state, through a file), SimulatedCar (a simulated
    one), or a vehicle integration's own class.

    Optionally a car also has set_compute(power_w) (see ComputingCar): the agent calls it with the executor's power
    while a work unit runs and with 0 after, so the car's heartbeats report computing and compute_power_w.
    """

    def advance_to(self, now: datetime) -> None:
        """Bring the car's readings up to `now` (a real car reads its sensors; a simulated one simulates)."""

    def state(self, now: datetime) -> dict:
        """The heartbeat fields of protocol.py, except observed_at and clock_rate: parked (gear in park), plugged_in,
        charge_power_w, battery_pct, battery_capacity_kwh, network (protocol.NETWORKS), bandwidth_down_mbps,
        bandwidth_up_mbps, latency_ms, runtime_version, models_cached, computing, compute_power_w,
        energy_used_today_wh."""

    def seconds_until_departure(self, now: datetime) -> float | None:
        """Car seconds until the car starts driving, if known (None while driving or when nothing is planned); 0 or
        less when it is leaving now. The agent sends the departure notice once per departure instant (now + this)."""


class ComputingCar(Car, Protocol):
    """A car that accounts for the power compute draws (the agent duck-types it: getattr(car, "set_compute"))."""

    def set_compute(self, power_w: float) -> bool:
        """Draw `power_w` W for compute from now on (0 stops); return whether the car is computing."""


class BadState(ValueError):
    """The state file cannot be used; the message says why, in words for the car's owner."""


def _number(
    data: dict, name: str, low: float, high: float, default: float | None = None, *, required: bool = False
) -> float | None:
    value = data.get(name)
    if value is None:
        if required:
            raise BadState(f'"{name}" is missing')
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadState(f'"{name}" must be a number')
    if not low <= value <= high:
        raise BadState(f'"{name}" must be between {low:g} and {high:g}, not {value:g}')
    return float(value)


def _moment(data: dict, name: str) -> datetime | None:
    value = data.get(name)
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        moment = None
    if moment is None or moment.utcoffset() is None:
        raise BadState(f'"{name}" must be an ISO 8601 time with its offset, e.g. "2026-03-02T07:30:00+01:00"')
    return moment


def parse_state(data: Any) -> dict:
    """The state file's JSON, checked: the car's readings (the keys of the module docstring). Raises BadState."""
    if not isinstance(data, dict):
        raise BadState("not a JSON object")
    gear = data.get("gear")
    if gear not in GEARS:
        raise BadState(f'"gear" must be one of {", ".join(GEARS)}')
    network = data.get("network")
    if network not in protocol.NETWORKS:
        raise BadState(f'"network" must be one of {", ".join(protocol.NETWORKS)}')
    for name in ("plugged_in", "departing"):
        if not isinstance(data.get(name, False), bool):
            raise BadState(f'"{name}" must be true or false')
    return {
        "gear": gear,
        "network": network,
        "battery_pct": _number(data, "battery_pct", 0, 100, required=True),
        "plugged_in": data.get("plugged_in", False),
        "charge_power_w": _number(data, "charge_power_w", 0, protocol.MAX_POWER_W, 0.0),
        "battery_capacity_kwh": _number(data, "battery_capacity_kwh", 1, protocol.MAX_BATTERY_KWH),
        "bandwidth_down_mbps": _number(data, "bandwidth_down_mbps", 0, protocol.MAX_BANDWIDTH_MBPS, 0.0),
        "bandwidth_up_mbps": _number(data, "bandwidth_up_mbps", 0, protocol.MAX_BANDWIDTH_MBPS, 0.0),
        "latency_ms": _number(data, "latency_ms", 0, protocol.MAX_LATENCY_MS, 0.0),
        "departure_at": _moment(data, "departure_at"),
        "departing": data.get("departing", False),
        "observed_at": _moment(data, "observed_at"),
    }


class StateFileCar:
    """A real car whose readings a vehicle integration writes to `path` (JSON: the module docstring), re-read at every
    advance_to (each heartbeat). `problem` says why the car cannot work now (None when it can); every change of it is
    logged once. `max_age_s`: a file older than this (its observed_at, else its modification time) is stale.
    `wall_clock` (Unix seconds) is injectable for tests.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        max_age_s: float = DEFAULT_MAX_AGE_S,
        runtime_version: str = "",
        log: logging.Logger = logging.getLogger("idlefleet.agent"),  # noqa: B008 - a module-level singleton
        wall_clock=time.time,
    ) -> None:
        self.path = Path(path)
        self.max_age_s = max_age_s
        self.runtime_version = runtime_version
        self.log = log
        self._wall_clock = wall_clock
        self.reading: dict | None = None  # the last usable reading; None while the file is unusable
        self.problem: str | None = "not read yet"
        self._last_battery_pct = 0.0
        self._leaving_since: datetime | None = None
        self._was_parked = False
        self._compute_w = 0.0
        self._energy_today_wh = 0.0
        self._day: date | None = None
        self._t: datetime | None = None

    def describe(self) -> str:
        return f"vehicle state file {self.path} (re-read every heartbeat; stale after {self.max_age_s:g} s)"

    def _read(self) -> tuple[dict | None, str | None]:
        try:
            raw = self.path.read_bytes()
            modified = self.path.stat().st_mtime
        except FileNotFoundError:
            return None, "the file does not exist"
        except OSError as error:
            return None, f"cannot read the file ({error.strerror or error})"
        try:
            reading = parse_state(json.loads(raw))
        except (ValueError, UnicodeDecodeError) as error:  # BadState is a ValueError, so is a JSON syntax error
            what = str(error) if isinstance(error, BadState) else f"not valid JSON ({error})"
            return None, f"malformed: {what}"
        seen = reading["observed_at"].timestamp() if reading["observed_at"] else modified
        age = self._wall_clock() - seen
        if age > self.max_age_s:
            return None, f"stale: last updated {age:.0f} s ago (more than {self.max_age_s:g} s)"
        return reading, None

    def advance_to(self, now: datetime) -> None:
        # Compute energy since local midnight (`now` is in the car's time zone): the heartbeat's energy_used_today_wh.
        if self._t is not None and now > self._t:
            if self._day is not None and now.date() != self._day:
                self._energy_today_wh = 0.0
            self._energy_today_wh += self._compute_w * (now - self._t).total_seconds() / 3600
        self._t, self._day = now, now.date()
        reading, problem = self._read()
        if problem != self.problem:
            if problem:
                self.log.warning("%s: %s; the car counts as not parked (no work)", self.path, problem)
            else:
                self.log.info("%s: the car's state is readable and fresh", self.path)
        self.problem, self.reading = problem, reading
        if reading is not None:
            self._last_battery_pct = reading["battery_pct"]
        parked = self._parked()
        leaving = not parked or (reading is not None and reading["departing"])
        if leaving and self._was_parked and self._leaving_since is None:
            self._leaving_since = now
        elif not leaving:
            self._leaving_since = None
        self._was_parked = parked and not leaving

    def _parked(self) -> bool:
        return self.reading is not None and self.reading["gear"] == "park"

    @property
    def computing(self) -> bool:
        return self._compute_w > 0

    def set_compute(self, power_w: float) -> bool:
        self._compute_w = max(0.0, float(power_w))
        return self.computing

    def seconds_until_departure(self, now: datetime) -> float | None:
        if self._leaving_since is not None:
            # The same instant at every step (≤ 0): the agent sends one notice for this departure.
            return (self._leaving_since - now).total_seconds()
        if not self._parked():
            return None
        departure = self.reading["departure_at"]
        if departure is None or departure <= now:
            return None
        return (departure.astimezone(UTC) - now.astimezone(UTC)).total_seconds()

    def state(self, now: datetime) -> dict:
        reading = self.reading
        parked = self._parked()
        usable = reading is not None
        state = {
            "parked": parked,
            "plugged_in": bool(usable and reading["plugged_in"]),
            "charge_power_w": reading["charge_power_w"] if usable else 0.0,
            "battery_pct": self._last_battery_pct,
            "network": reading["network"] if usable else "none",
            "bandwidth_down_mbps": reading["bandwidth_down_mbps"] if usable else 0.0,
            "bandwidth_up_mbps": reading["bandwidth_up_mbps"] if usable else 0.0,
            "latency_ms": reading["latency_ms"] if usable else 0.0,
            "runtime_version": self.runtime_version,
            "models_cached": [],
            # A car that is not parked is not computing (the platform refuses that pair): the agent stops the unit.
            "computing": self.computing and parked,
            "compute_power_w": round(self._compute_w, 1) if parked else 0.0,
            "energy_used_today_wh": round(self._energy_today_wh, 3),
        }
        if usable and reading["battery_capacity_kwh"] is not None:
            state["battery_capacity_kwh"] = reading["battery_capacity_kwh"]
        return state
