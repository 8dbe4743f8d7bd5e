"""The agent's loop: read the car, tell the platform (heartbeat, departure notice), ask for work.

One step every heartbeat interval (car seconds). The departure notice goes out in the last step before the car drives
off, so the platform releases the car's work while it is still parked rather than finding out from a missed heartbeat.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta
from typing import Protocol

from . import protocol
from .client import AgentHTTPError, AgentUnavailable

HEARTBEAT_PATH = "/api/v1/agent/heartbeat/"
DEPARTURE_PATH = "/api/v1/agent/departure/"
LEASE_PATH = "/api/v1/agent/lease/"


class Car(Protocol):
    """What the agent needs from a car: a SimulatedCar today, a vehicle-bus reader in a real car later."""

    def advance_to(self, now: datetime) -> None:
        """Bring the car's readings up to `now` (a real car reads its sensors; a simulated one simulates)."""

    def state(self, now: datetime) -> dict:
        """The heartbeat fields of protocol.py, except observed_at and clock_rate."""

    def seconds_until_departure(self, now: datetime) -> float | None:
        """Car seconds until the car starts driving, if known (None while driving or when nothing is planned)."""


class Clock(Protocol):
    rate: float

    def now(self) -> datetime: ...

    def sleep(self, car_seconds: float, stop: threading.Event) -> bool: ...


class Client(Protocol):
    def post(self, path: str, payload: dict) -> tuple[int, dict | None]: ...


class Agent:
    """Runs one car's agent. Counters (heartbeats_sent, departures_sent, errors) are for tests and monitoring.

    heartbeat_seconds: car seconds between steps. `stop` ends run() (set it from a signal handler); the agent sets it
    itself when the platform refuses its credential (401), and says why in `stopped_reason`.
    """

    def __init__(
        self,
        client: Client,
        car: Car,
        clock: Clock,
        *,
        heartbeat_seconds: float = protocol.HEARTBEAT_SECONDS,
        stop: threading.Event | None = None,
        log: logging.Logger = logging.getLogger("idlefleet.agent"),  # noqa: B008 - a module-level singleton
    ) -> None:
        self.client = client
        self.car = car
        self.clock = clock
        self.heartbeat_seconds = heartbeat_seconds
        self.stop = stop or threading.Event()
        self.log = log
        self.heartbeats_sent = 0
        self.departures_sent = 0
        self.lease_requests = 0
        self.errors = 0
        self.last_heartbeat_response: dict | None = None
        self.stopped_reason: str | None = None
        # The departure already announced, so that two steps before the same departure send one notice.
        self._announced_departure: datetime | None = None
        self._last_step_at: datetime | None = None
        # Car seconds between the last two steps: a fast simulated clock or a slow platform stretches it past
        # heartbeat_seconds, and the departure notice must look that far ahead not to miss a departure.
        self._step_interval_s = 0.0

    def run(self) -> None:
        """Step every heartbeat interval until `stop` is set."""
        self.log.info(
            "agent started: heartbeat every %s car seconds, clock rate %s", self.heartbeat_seconds, self.clock.rate
        )
        while not self.stop.is_set():
            self.step()
            if self.stop.is_set() or self.clock.sleep(self.heartbeat_seconds, self.stop):
                break
        self.log.info(
            "agent stopped: %d heartbeats, %d departure notices, %d errors",
            self.heartbeats_sent,
            self.departures_sent,
            self.errors,
        )

    def step(self) -> None:
        """One iteration: departure notice if due, heartbeat, then ask for work. Never raises: the next step retries,
        except after a 401, which stops the agent."""
        try:
            now = self.clock.now()
            if self._last_step_at is not None:
                self._step_interval_s = (now - self._last_step_at).total_seconds()
            self._last_step_at = now
            self.car.advance_to(now)
            departing = self._announce_departure(now)
            state = self._send_heartbeat(now)
            # A car about to leave takes no new work: the platform has just released what it had.
            if not departing:
                self.poll_work(state)
        except AgentHTTPError as error:
            self.errors += 1
            # Only a refused credential stops the car; a clock off by minutes or a replayed nonce concerns one request.
            if error.status == 401 and error.code not in protocol.TRANSIENT_AUTH_ERRORS:
                self.stopped_reason = error.message or "credential refused"
                self.log.error(
                    "the platform refused this car's credential (HTTP 401: %s); stopping. Revoked? Register the "
                    "car again and start the agent with the new credential file.",
                    self.stopped_reason,
                )
                self.stop.set()
            else:
                self.log.error("the platform refused a request: %s %s", error, error.body or "")
        except AgentUnavailable as error:
            self.errors += 1
            self.log.warning("platform unavailable, will retry at the next heartbeat: %s", error)
        except Exception as error:
            self.errors += 1
            # One line per event; the traceback only when debugging (--verbose).
            self.log.error(
                "unexpected error in the agent's step, carrying on: %s: %s",
                type(error).__name__,
                error,
                exc_info=self.log.isEnabledFor(logging.DEBUG),
            )

    def _announce_departure(self, now: datetime) -> bool:
        """Send the departure notice when the car will drive off before the next heartbeat; True if it is leaving."""
        seconds = self.car.seconds_until_departure(now)
        if seconds is None or seconds > max(self.heartbeat_seconds, self._step_interval_s):
            return False
        departure = now + timedelta(seconds=seconds)
        if self._announced_departure is not None and abs((departure - self._announced_departure).total_seconds()) < 1:
            return True
        self.client.post(DEPARTURE_PATH, {"observed_at": now.isoformat()})
        self._announced_departure = departure
        self.departures_sent += 1
        self.log.info("departure notice sent: driving off in %.0f car seconds", seconds)
        return True

    def _send_heartbeat(self, now: datetime) -> dict:
        state = self.car.state(now)
        payload = {**state, "observed_at": now.isoformat(), "clock_rate": self.clock.rate}
        _, body = self.client.post(HEARTBEAT_PATH, payload)
        self.last_heartbeat_response = body
        self.heartbeats_sent += 1
        self.log.debug(
            "heartbeat: parked=%s network=%s battery=%.1f%%", state["parked"], state["network"], state["battery_pct"]
        )
        return state

    # --- the work loop (the marketplace fills this in) ---

    def poll_work(self, state: dict) -> None:
        """Ask for a work unit, only while parked on a network the platform sends work over (never cellular).

        Placeholder: the platform answers 204 (no work) until the marketplace runs work units on cars.
        """
        if not state["parked"] or state["network"] not in protocol.WORK_NETWORKS:
            return
        status, _ = self.client.post(LEASE_PATH, {})
        self.lease_requests += 1
        if status != 204:
            self.log.warning("the platform offered work (HTTP %s) but this agent cannot run work units yet", status)
