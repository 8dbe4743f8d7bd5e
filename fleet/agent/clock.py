"""The car's clock: real time for a real car, a fast-forwarded one for a simulated car.

A simulated car lives a day in minutes, so the agent asks its clock both for "now" and for how long to wait; the
heartbeat interval is counted in car seconds (protocol.HEARTBEAT_SECONDS) and turned into real seconds here.
Request signatures never use this clock: the server checks them against real time (see client.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, tzinfo


class RealClock:
    """Wall-clock time in the car's time zone `tz`; one car second is one real second."""

    rate = 1.0

    def __init__(self, tz: tzinfo = UTC) -> None:
        self.tz = tz

    def now(self) -> datetime:
        """The current time, aware, in the car's time zone."""
        return datetime.now(self.tz)

    def sleep(self, car_seconds: float, stop: threading.Event) -> bool:
        """Wait `car_seconds` seconds; return True early as soon as `stop` is set, else False."""
        return stop.wait(max(0.0, car_seconds))


class SimClock:
    """A clock that starts at `start` and runs `speed` times faster than real time.

    `start` must be aware; now() keeps its time zone. `monotonic` (real seconds) is injectable so tests can move time
    by hand instead of waiting.
    """

    def __init__(self, start: datetime, speed: float, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        if start.tzinfo is None or start.utcoffset() is None:
            raise ValueError("SimClock needs an aware start datetime")
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self._start_utc = start.astimezone(UTC)
        self._tz = start.tzinfo
        self._speed = float(speed)
        self._monotonic = monotonic
        self._real_start = monotonic()

    @property
    def rate(self) -> float:
        """Car seconds per real second."""
        return self._speed

    def now(self) -> datetime:
        """The car's time, aware, in the time zone of `start`."""
        elapsed_real_s = self._monotonic() - self._real_start
        # Add in UTC: adding a timedelta to a zoneinfo datetime adds wall time, which is off by an hour across DST.
        return (self._start_utc + timedelta(seconds=elapsed_real_s * self._speed)).astimezone(self._tz)

    def sleep(self, car_seconds: float, stop: threading.Event) -> bool:
        """Wait `car_seconds` car seconds (car_seconds / rate real seconds); return True early if `stop` is set."""
        return stop.wait(max(0.0, car_seconds) / self._speed)
