"""The agent's loop: read the car, tell the platform (heartbeat, departure notice), ask for work and run it.

One step every heartbeat interval (car seconds): it reads the car, which costs nothing, and talks to the platform only
when there is something to say. The departure notice goes out in the last step before the car drives off, so the
platform releases the car's work while it is still parked rather than finding out from a missed heartbeat. A heartbeat
goes out when the platform's last answer asked for one by now (next_heartbeat_s, real seconds: a car with no work and
none coming is asked every IDLE_HEARTBEAT_SECONDS, so it sends a quarter of the requests), or at once when, since the
last one, the car parked or drove off, was plugged in or out, changed network, or started or stopped computing;
against a platform that does not say, every step. Work is asked for (lease/) only in a step that sent a heartbeat,
so an idle car asks rarely, and a step runs at most one work unit, never in a step that announced a departure.

While a unit runs, a second thread keeps the car in touch: it sends the heartbeats (a working car is never taken for
gone), renews the unit's lease every third of its length (POST lease/renew/), and when the car is about to drive off
or the platform says the lease is no longer the car's, it sends the departure notice and stops the unit between two
batches. The agent tells the platform what its compute can do (hardware.py) before its first heartbeat.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from datetime import datetime, timedelta
from typing import Protocol

from . import hardware, protocol
from .client import AgentHTTPError, AgentUnavailable
from .executor import (
    MAX_ERROR_LENGTH,
    MAX_ID_LENGTH,
    BadWorkUnit,
    Executor,
    UnitResult,
    WorkUnit,
    failure_payload,
    result_payload,
)
from .vehicle import Car, ComputingCar  # noqa: F401 - the vehicle interface, defined in vehicle.py

HEARTBEAT_PATH = "/api/v1/agent/heartbeat/"
DEPARTURE_PATH = "/api/v1/agent/departure/"
LEASE_PATH = "/api/v1/agent/lease/"
RENEW_PATH = "/api/v1/agent/lease/renew/"
HARDWARE_PATH = "/api/v1/agent/hardware/"
ME_PATH = "/api/v1/agent/me/"
RESULT_PATH = "/api/v1/agent/result/"
FAILURE_PATH = "/api/v1/agent/failure/"

# A change of these since the last heartbeat goes to the platform at once: it decides whether the car can get work.
HEARTBEAT_AT_ONCE_FIELDS = ("parked", "plugged_in", "network", "computing")
# The longest interval between heartbeats the agent accepts from the platform (car seconds), however long it asks:
# a wrong answer must not make a car look gone for long.
MAX_HEARTBEAT_INTERVAL_S = 10 * protocol.IDLE_HEARTBEAT_SECONDS
# A heartbeat a hair early counts as on time: a 60 s interval with 15 s steps beats on the 4th step, not the 5th.
_ON_TIME = 0.999


class Clock(Protocol):
    rate: float

    def now(self) -> datetime: ...

    def sleep(self, car_seconds: float, stop: threading.Event) -> bool: ...


class Client(Protocol):
    def post(self, path: str, payload: dict) -> tuple[int, dict | None]: ...


class Agent:
    """Runs one car's agent. Counters (heartbeats_sent, heartbeats_skipped, departures_sent, lease_requests,
    units_done, units_failed, results_refused, errors) are for tests and monitoring; heartbeats_skipped counts the
    steps that sent none because the platform asked for fewer.

    heartbeat_seconds: car seconds between steps, the shortest interval between heartbeats (and between them while a
    unit runs). `stop` ends run() (set it from a signal handler); the agent sets it itself when the platform refuses
    its credential (401), and says why in `stopped_reason`. executor: runs the work units this car leases; without
    one the agent only reports the car's state and never asks for work. hardware: what the car's compute can do
    (hardware.detect() when not given), reported before the first heartbeat of an agent with an executor.
    units_stopped counts units stopped part-way (a departure, a lost lease); lease_renewals the renewals the platform
    granted.
    """

    def __init__(
        self,
        client: Client,
        car: Car,
        clock: Clock,
        *,
        heartbeat_seconds: float = protocol.HEARTBEAT_SECONDS,
        stop: threading.Event | None = None,
        executor: Executor | None = None,
        hardware: dict | None = None,
        log: logging.Logger = logging.getLogger("idlefleet.agent"),  # noqa: B008 - a module-level singleton
    ) -> None:
        self.client = client
        self.car = car
        self.clock = clock
        self.executor = executor
        self.heartbeat_seconds = heartbeat_seconds
        self.stop = stop or threading.Event()
        self.log = log
        self.heartbeats_sent = 0
        self.heartbeats_skipped = 0
        # Whether the car's last request for work was answered with a unit: then it asks again at the next step.
        self._working = False
        self.departures_sent = 0
        self.lease_requests = 0
        # Units whose result the platform accepted; units that failed here (bad lease, download, model, inference);
        # outcomes (results or failures) refused with 409 because the lease had expired or been reissued meanwhile.
        self.units_done = 0
        self.units_failed = 0
        self.results_refused = 0
        self.units_stopped = 0
        self.lease_renewals = 0
        self.errors = 0
        self.hardware = hardware
        self.hardware_reported: dict | None = None  # the platform's answer: the car's compute class
        # The car is read by the step and, while a unit runs, by the thread that keeps its heartbeats going.
        self._car_lock = threading.Lock()
        self.last_heartbeat_response: dict | None = None
        # The last heartbeat sent: when (car clock), the fields that cannot wait as it said them, and the interval the
        # platform answered (car seconds; None: it did not say, a heartbeat every step).
        self._last_heartbeat_at: datetime | None = None
        self._steps_since_heartbeat = 0
        self._last_heartbeat_state: dict = {}
        self._heartbeat_interval_s: float | None = None
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
            "agent started: a step every %s car seconds, heartbeats as often as the platform asks, clock rate %s",
            self.heartbeat_seconds,
            self.clock.rate,
        )
        while not self.stop.is_set():
            self.step()
            if self.stop.is_set() or self.clock.sleep(self.heartbeat_seconds, self.stop):
                break
        self.log.info(
            "agent stopped: %d heartbeats, %d departure notices, %d units done, %d failed, %d errors",
            self.heartbeats_sent,
            self.departures_sent,
            self.units_done,
            self.units_failed,
            self.errors,
        )

    def step(self) -> None:
        """One iteration: departure notice if due, heartbeat if due (_heartbeat_due), then, after a heartbeat, ask for
        work and run at most one unit. Never raises: the next step retries, except after a 401, which stops the
        agent."""
        try:
            now = self.clock.now()
            if self._last_step_at is not None:
                self._step_interval_s = (now - self._last_step_at).total_seconds()
            self._last_step_at = now
            if self.executor is not None and self.hardware_reported is None:
                self._report_hardware()
            with self._car_lock:
                self.car.advance_to(now)
            departing = self._announce_departure(now)
            state = self._read_state(now)
            if self._heartbeat_due(now, state):
                self._send_heartbeat(now, state)
            elif not self._working:
                self.heartbeats_skipped += 1
                return
            # Work is asked for with each heartbeat, and at every step while the car is getting some (its last
            # request was answered with a unit): a car with work queued runs it back to back. A car about to leave
            # takes no new work: the platform has just released what it had.
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
        self.log.info("departure notice sent: driving off in %.0f car seconds", max(0.0, seconds))
        return True

    def _report_hardware(self) -> None:
        """Tell the platform what this car's compute can do, once per run. An unreachable platform is asked again at
        the next step; a refused report (400) is not sent again. Neither stops the heartbeat."""
        if self.hardware is None:
            self.hardware = hardware.detect()
        try:
            _, body = self.client.post(HARDWARE_PATH, self.hardware)
        except AgentUnavailable as error:
            self.log.warning("could not report this car's compute yet: %s", error)
            return
        except AgentHTTPError as error:
            if error.status == 401:
                raise
            self.log.error("the platform refused this car's compute report: %s", error)
            self.hardware_reported = {}
            return
        self.hardware_reported = body or {}
        described = self.hardware_reported.get("description") or hardware.compute_class(self.hardware)
        self.log.info("compute reported: %s", described)

    def _read_state(self, now: datetime) -> dict:
        with self._car_lock:
            return self.car.state(now)

    def _heartbeat_due(self, now: datetime, state: dict) -> bool:
        """Whether this step sends a heartbeat: the first one; one the platform's last answer asked for by now (every
        step when it did not say); one after a change the platform cannot wait for (HEARTBEAT_AT_ONCE_FIELDS).

        "By now" is counted on the car's clock and in steps, whichever comes first: steps are at least
        heartbeat_seconds apart, so the count only matters when the car's clock stands still or was set back, and
        then it keeps the car from falling silent (an interval no longer than a step means every step)."""
        if self._last_heartbeat_at is None:
            return True
        self._steps_since_heartbeat += 1
        said = self._last_heartbeat_state
        changed = [field for field in HEARTBEAT_AT_ONCE_FIELDS if state.get(field) != said.get(field)]
        if changed:
            self.log.debug("heartbeat at once: %s changed", ", ".join(changed))
            return True
        if self._heartbeat_interval_s is None:
            return True
        due_after_s = self._heartbeat_interval_s * _ON_TIME
        elapsed = (now - self._last_heartbeat_at).total_seconds()
        steps_due = math.ceil(due_after_s / self.heartbeat_seconds) if self.heartbeat_seconds > 0 else 1
        if elapsed >= due_after_s or self._steps_since_heartbeat >= steps_due:
            return True
        self.log.debug("no heartbeat this step: next in %.0f car seconds", self._heartbeat_interval_s - elapsed)
        return False

    def _suggested_interval(self, body: object) -> float | None:
        """The interval the platform asked for, car seconds, at most MAX_HEARTBEAT_INTERVAL_S; None when its answer
        has no usable next_heartbeat_s (an older platform, or nonsense): then the car beats every step."""
        value = body.get("next_heartbeat_s") if isinstance(body, dict) else None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
            return None
        return min(value * self.clock.rate, MAX_HEARTBEAT_INTERVAL_S)

    def _send_heartbeat(self, now: datetime, state: dict | None = None) -> dict:
        """POST the car's state read at `now` (read here when not given); note when and what was said and the
        interval the platform asks for until the next one."""
        if state is None:
            state = self._read_state(now)
        if self.executor is not None:
            # The models this car really holds: the cache's files, each checked against its sha256.
            state["models_cached"] = self.executor.cache.holds()
        payload = {**state, "observed_at": now.isoformat(), "clock_rate": self.clock.rate}
        _, body = self.client.post(HEARTBEAT_PATH, payload)
        self.last_heartbeat_response = body
        self.heartbeats_sent += 1
        self._last_heartbeat_at = now
        self._steps_since_heartbeat = 0
        self._last_heartbeat_state = {field: state.get(field) for field in HEARTBEAT_AT_ONCE_FIELDS}
        self._heartbeat_interval_s = self._suggested_interval(body)
        self.log.debug(
            "heartbeat: parked=%s network=%s battery=%.1f%%, next in %g car seconds",
            state["parked"],
            state["network"],
            state["battery_pct"],
            self.heartbeat_seconds if self._heartbeat_interval_s is None else self._heartbeat_interval_s,
        )
        return state

    # --- the work loop ---

    def poll_work(self, state: dict) -> None:
        """Ask for a work unit, only while parked on a network the platform sends work over (never cellular) and only
        with an executor; run it and report the outcome. At most one unit per call.

        POST lease/ {} -> 204: nothing to do. 200: the lease (WorkUnit.from_lease); a malformed one is reported to
        failure/ (with whatever unit_id and lease_id it has) and not run. The unit's result goes to result/, a
        failure to failure/; a 409 there means the lease is no longer this car's (expired or reissued): the outcome
        is dropped quietly. Other errors propagate to step(), which logs them and carries on.
        """
        if self.executor is None or not state["parked"] or state["network"] not in protocol.WORK_NETWORKS:
            return
        status, lease = self.client.post(LEASE_PATH, {})
        self.lease_requests += 1
        self._working = status == 200
        if status == 204:
            return
        if status != 200:
            self.log.warning("unexpected answer to a lease request (HTTP %s); asking again next time", status)
            return
        try:
            unit = WorkUnit.from_lease(lease)
        except BadWorkUnit as error:
            self._refuse_lease(lease, error)
            return
        self.log.info(
            "running work unit %s (lease %s): %d items of model %s",
            unit.unit_id,
            unit.lease_id,
            len(unit.items),
            unit.model_sha256[:12],
        )
        result = self._run_unit(unit)
        if result.cancelled:
            self.units_stopped += 1
            self.log.info("work unit %s stopped part-way: the platform has taken it back", unit.unit_id)
        elif result.ok:
            if self._report(RESULT_PATH, result_payload(result), unit.unit_id):
                self.units_done += 1
                self.log.info("work unit %s done: %d items in %.2f s", unit.unit_id, result.items, result.seconds)
        else:
            self.units_failed += 1
            self.log.warning("work unit %s failed: %s", unit.unit_id, result.error)
            self._report(FAILURE_PATH, failure_payload(result), unit.unit_id)

    def _run_unit(self, unit: WorkUnit) -> UnitResult:
        """executor.run(unit), with the car drawing the executor's power meanwhile (when it can say so), and a second
        thread keeping its heartbeats and its lease going (_keep_alive)."""
        cancel, done = threading.Event(), threading.Event()
        keeper = threading.Thread(
            target=self._keep_alive, args=(unit, cancel, done), name=f"{threading.current_thread().name}-keeper",
            daemon=True,
        )  # fmt: skip
        set_compute = getattr(self.car, "set_compute", None)
        if callable(set_compute):
            # The car accounts for compute energy between its readings: bring it to the present at each change.
            with self._car_lock:
                self.car.advance_to(self.clock.now())
                set_compute(self.executor.power_w)
        keeper.start()
        try:
            return self.executor.run(unit, cancel=cancel)
        finally:
            done.set()
            keeper.join()
            if callable(set_compute):
                with self._car_lock:
                    try:
                        self.car.advance_to(self.clock.now())
                    finally:
                        set_compute(0.0)

    def _keep_alive(self, unit: WorkUnit, cancel: threading.Event, done: threading.Event) -> None:
        """While `unit` runs (until `done`): heartbeats every heartbeat interval, the lease renewed every third of its
        length; on a departure or a lost lease, `cancel` the unit. Errors are logged; the next tick tries again."""
        heartbeat_every = self.heartbeat_seconds / max(self.clock.rate, 1e-9)  # real seconds
        renew_every = unit.lease_seconds / 3 if unit.lease_seconds else math.inf
        last_heartbeat = last_renewal = time.monotonic()
        while not done.wait(max(0.05, min(heartbeat_every, renew_every))):
            ticked = time.monotonic()
            try:
                if ticked - last_heartbeat >= heartbeat_every * 0.999:
                    now = self.clock.now()
                    with self._car_lock:
                        self.car.advance_to(now)
                    if self._announce_departure(now):
                        self.log.info("the car is leaving: stopping work unit %s", unit.unit_id)
                        cancel.set()
                        return
                    self._send_heartbeat(now)
                    last_heartbeat = ticked
                if ticked - last_renewal >= renew_every * 0.999:
                    self.client.post(RENEW_PATH, {"unit_id": unit.unit_id, "lease_id": unit.lease_id})
                    self.lease_renewals += 1
                    last_renewal = ticked
            except AgentHTTPError as error:
                self.errors += 1
                if error.status == 409:  # the lease is gone (reissued, the car paused...): stop working for nothing
                    self.log.info("lease of work unit %s lost (%s): stopping it", unit.unit_id, error)
                    cancel.set()
                    return
                self.log.error("the platform refused a request while a unit ran: %s", error)
            except Exception as error:
                self.errors += 1
                self.log.warning("while a unit ran: %s: %s", type(error).__name__, error)

    def _refuse_lease(self, lease: object, error: BadWorkUnit) -> None:
        """Tell the platform a lease could not be read, so it can reissue the unit rather than wait for its expiry."""
        self.units_failed += 1
        raw = lease if isinstance(lease, dict) else {}
        unit_id, lease_id = (raw.get(key) for key in ("unit_id", "lease_id"))
        if not all(isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH for value in (unit_id, lease_id)):
            self.log.error("the platform sent a malformed lease that names no unit (%s); ignoring it", error)
            return
        self.log.error("the platform sent a malformed lease for unit %s: %s", unit_id, error)
        message = " ".join(f"malformed lease: {error}".splitlines())[:MAX_ERROR_LENGTH]
        self._report(FAILURE_PATH, {"unit_id": unit_id, "lease_id": lease_id, "error": message}, unit_id)

    def _report(self, path: str, payload: dict, unit_id: str) -> bool:
        """POST a unit's outcome; False when the platform answered 409 (the lease is no longer this car's)."""
        try:
            self.client.post(path, payload)
        except AgentHTTPError as error:
            if error.status != 409:
                raise
            self.results_refused += 1
            self.log.info("lease no longer ours: the platform refused the outcome of unit %s (%s)", unit_id, error)
            return False
        return True
