"""How long will a parked car stay parked? Predicted from the car's own parking history (a pure module, no Django).

The model is empirical: past stays that began like this one (the same kind of day, weekday or weekend, and an arrival
time within ARRIVAL_WINDOW_MINUTES, both in the car's time zone) say how long this one lasts, given how long the car has
been parked already. A few pseudo-stays from a prior that depends on the arrival time (an evening arrival stays the
night, a weekday morning arrival is a work day, anything else is an errand) are blended in, so a new car gets sensible
predictions; their weight is fixed, so they matter less as real history grows.

Times are aware datetimes; durations are in seconds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

# Past stays that arrived within this many minutes of the current arrival (across midnight) are "similar".
ARRIVAL_WINDOW_MINUTES = 120
# With fewer similar stays than this, all stays are used: any history of the car beats none.
MIN_SIMILAR_SESSIONS = 5
# How many pseudo-stays the prior adds. Each real stay counts as one, so the prior fades as history grows.
PRIOR_WEIGHT = 4.0


@dataclass(frozen=True)
class ParkingRecord:
    arrived_at: datetime  # aware
    duration_s: float  # completed sessions only


def survival(
    *,
    history: Sequence[ParkingRecord],
    arrived_at: datetime,
    now: datetime,
    horizon_s: float,
    tz: ZoneInfo,
    declared_departure: datetime | None = None,
) -> float:
    """P(still parked at now + horizon_s | parked since arrived_at and still parked at now), in [0, 1].

    A declared departure (the owner's "I leave at") in the future makes the probability 0 from that moment on; one in
    the past is ignored (it was for an earlier day).
    """
    if (
        declared_departure is not None
        and declared_departure > now
        and now + timedelta(seconds=horizon_s) >= declared_departure
    ):
        return 0.0
    if horizon_s <= 0:
        return 1.0
    remaining = _remaining_durations(history=history, arrived_at=arrived_at, now=now, tz=tz)
    total = sum(weight for _, weight in remaining)
    staying = sum(weight for left_s, weight in remaining if left_s > horizon_s)
    return staying / total


def remaining_parked_seconds(
    *,
    history: Sequence[ParkingRecord],
    arrived_at: datetime,
    now: datetime,
    tz: ZoneInfo,
    confidence: float = 0.8,
    declared_departure: datetime | None = None,
    max_horizon_s: float = 24 * 3600,
) -> float:
    """Seconds the car stays parked from `now` with probability at least `confidence` (a conservative estimate).

    It is the largest t with survival(t) >= confidence (strictly: the supremum; at that moment the next similar stay
    ended), capped by the owner's declared departure (ignored when in the past) and by max_horizon_s.
    """
    basis = stays_basis(history=history, arrived_at=arrived_at, tz=tz)
    seconds = remaining_from_basis(basis, elapsed_s=_seconds_between(arrived_at, now), confidence=confidence)
    if seconds is None:  # parked longer than every precedent: predicted as if it had just arrived
        basis = stays_basis(history=history, arrived_at=now, tz=tz)
        seconds = remaining_from_basis(basis, elapsed_s=0.0, confidence=confidence)
    if declared_departure is not None and declared_departure > now:
        seconds = min(seconds, _seconds_between(now, declared_departure))
    return max(min(seconds, max_horizon_s), 0.0)


def stays_basis(*, history: Sequence[ParkingRecord], arrived_at: datetime, tz: ZoneInfo) -> list[tuple[float, float]]:
    """(duration in seconds, weight) of each past or pseudo stay that says how long a stay that began at `arrived_at`
    lasts, shortest first: what the prediction needs of the car's history, computed once per stay (the supply book
    keeps it, so a heartbeat predicts without reading the history)."""
    local_arrival = arrived_at.astimezone(tz)
    similar = [record for record in history if _is_similar(record.arrived_at.astimezone(tz), local_arrival)]
    if len(similar) < MIN_SIMILAR_SESSIONS:
        similar = list(history)
    stays = [(record.duration_s, 1.0) for record in similar]
    prior = _prior_durations(local_arrival)
    stays += [(duration_s, PRIOR_WEIGHT / len(prior)) for duration_s in prior]
    return sorted(stays)


def remaining_from_basis(basis: Sequence[tuple[float, float]], *, elapsed_s: float, confidence: float = 0.8):
    """The seconds still to stay with probability at least `confidence`, after `elapsed_s` of a stay whose
    `stays_basis` is `basis` (sorted); None when the car has been parked longer than every stay in it."""
    elapsed_s = max(elapsed_s, 0.0)
    remaining = [(duration_s - elapsed_s, weight) for duration_s, weight in basis if duration_s > elapsed_s]
    if not remaining:
        return None
    total = sum(weight for _, weight in remaining)
    staying = total
    # survival(t) steps down at each remaining duration: walk them until it falls below the confidence.
    for left_s, weight in remaining:
        staying -= weight
        if staying / total < confidence - 1e-12:
            return left_s
    return math.inf  # only with a confidence of 0 or less: every stay is that likely


def _remaining_durations(
    *, history: Sequence[ParkingRecord], arrived_at: datetime, now: datetime, tz: ZoneInfo
) -> list[tuple[float, float]]:
    """(seconds still to stay, weight) of each past or pseudo stay that lasted longer than this one has so far.

    Never empty: a car parked longer than every precedent is predicted as if it had just arrived (its past says
    nothing about such a stay, and the prior for "now" is the least surprising guess).
    """
    elapsed_s = max(_seconds_between(arrived_at, now), 0.0)
    stays = stays_basis(history=history, arrived_at=arrived_at, tz=tz)
    remaining = [(duration_s - elapsed_s, weight) for duration_s, weight in stays if duration_s > elapsed_s]
    if not remaining:
        return _remaining_durations(history=history, arrived_at=now, now=now, tz=tz)
    return remaining


def _is_similar(past: datetime, current: datetime) -> bool:
    """Same kind of day (weekday or weekend) and an arrival time within ARRIVAL_WINDOW_MINUTES, across midnight."""
    if (past.weekday() >= 5) != (current.weekday() >= 5):
        return False
    gap = abs((past.hour * 60 + past.minute) - (current.hour * 60 + current.minute))
    return min(gap, 1440 - gap) <= ARRIVAL_WINDOW_MINUTES


def _prior_durations(local_arrival: datetime) -> list[float]:
    """Pseudo-stays (seconds) for a car that arrived at `local_arrival`, before its own history says otherwise.

    Evening or night arrival (17:00-02:00): overnight, until 07:00-08:00. Weekday morning arrival (06:00-10:00): a
    work day of 8-9 hours. Anything else: an errand of half an hour to two hours.
    """
    hour = local_arrival.hour
    if hour >= 17 or hour < 2:
        morning = local_arrival.date() + timedelta(days=1 if hour >= 17 else 0)
        wake = datetime.combine(morning, time(7), local_arrival.tzinfo)
        return [_seconds_between(local_arrival, wake + timedelta(minutes=m)) for m in (0, 20, 40, 60)]
    if 6 <= hour < 10 and local_arrival.weekday() < 5:
        return [hours * 3600 for hours in (8.0, 8 + 1 / 3, 8 + 2 / 3, 9.0)]
    return [hours * 3600 for hours in (0.5, 1.0, 1.5, 2.0)]


def _seconds_between(start: datetime, end: datetime) -> float:
    """Real elapsed seconds (aware datetimes that share a tzinfo subtract as wall clocks, wrong across DST)."""
    return (end.astimezone(UTC) - start.astimezone(UTC)).total_seconds()
