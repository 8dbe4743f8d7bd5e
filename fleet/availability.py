"""Can a car take work now, and how much? A pure function (no Django), unit-tested and benchmarked at scale.

Units: power in W, energy in kWh, time in seconds (hours where named), compute in CH (one hour of 100 dense INT8
TOPS). A car's rated CH rate for precision p is int8_tops * factor[p] / 100 per hour at its typical power draw; capped
below that draw, throughput scales down in proportion. Once the car has been measured running work of a precision
(`Hardware.measured_ch_per_hour`), that measured rate replaces the rating: cars are often far slower than rated.
Times are the car's own clock; a simulated car's clock may run `clock_rate` times faster than real time, while its
computing takes real time, so a measured rate counts 1 / clock_rate as much per car hour.
"""

from __future__ import annotations

import math
import zoneinfo
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta

from .agent.protocol import SILENT_AFTER_SECONDS, WORK_NETWORKS

# A car never draws more than this for compute, whatever its hardware or policy says (the article's ≈1 kW).
ABSOLUTE_MAX_POWER_W = 1000.0
# A car whose last heartbeat is older than this is treated as gone: 1.5 heartbeat intervals, so that with the sweeper
# running every third of an interval its work is back on the market within two intervals of its last heartbeat.
HEARTBEAT_LOST_AFTER_S = SILENT_AFTER_SECONDS
# Hysteresis: a car that is not computing starts only this far above its battery floor, so that a charger which
# cannot keep up does not make it flap on and off at the threshold.
START_MARGIN_PCT = 2.0


@dataclass(frozen=True)
class Hardware:
    int8_tops: float
    factors: dict[str, float]  # precision -> throughput factor relative to INT8; absent = unsupported
    typical_power_w: float
    max_power_w: float
    # precision -> CH per hour of computing, real time, as measured on this car (its slowest workload of that
    # precision); absent = not measured yet, the rating applies
    measured_ch_per_hour: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Window:
    """A weekly availability window in the car's local time: on `weekday` (0 = Monday) from `start_minute` to
    `end_minute` after midnight. end < start means the window runs past midnight into the next day; end == start
    means the whole day."""

    weekday: int
    start_minute: int
    end_minute: int


@dataclass(frozen=True)
class Policy:
    enabled: bool = True
    windows: tuple[Window, ...] = ()  # empty = any time
    battery_floor_pct: float = 50.0
    plugged_in_only: bool = False
    max_energy_kwh_per_day: float = 5.0
    max_power_w: float = 1000.0
    leave_at: datetime | None = None  # the owner's "I will leave at" for today: a hard limit


@dataclass(frozen=True)
class CarState:
    observed_at: datetime  # the car's clock (aware; converted to the car's time zone for windows)
    heartbeat_age_s: float  # real seconds since the platform received the last heartbeat
    parked: bool
    plugged_in: bool
    charge_power_w: float
    battery_pct: float
    battery_capacity_kwh: float
    network: str
    energy_used_today_kwh: float
    computing: bool = False
    clock_rate: float = 1.0  # car seconds per real second (1 for a real car)
    # Real seconds of silence after which the car is taken for gone: 1.5 times the interval the platform last asked
    # it to heartbeat at (fleet.offers.heartbeat_interval_s), never less than HEARTBEAT_LOST_AFTER_S.
    lost_after_s: float = HEARTBEAT_LOST_AFTER_S


@dataclass(frozen=True)
class Availability:
    available: bool
    reasons: tuple[str, ...]  # why not, in the owner's words; empty when available
    power_w: float = 0.0  # what compute would draw
    hours_offered: float = 0.0  # compute hours the car can run before it must stop
    limited_by: str = ""  # which limit set hours_offered: "departure", "leave_at", "window", "energy cap", "battery"
    ch_offered: dict[str, float] = field(default_factory=dict)  # precision -> CH over hours_offered
    energy_kwh: float = 0.0  # energy that work would use
    ch_per_hour: dict[str, float] = field(default_factory=dict)  # precision -> CH per car hour used for ch_offered
    measured: frozenset[str] = frozenset()  # the precisions whose rate was measured on the car (else rated)
    # Each limit of hours_offered in car seconds from the state's reading (math.inf where it does not apply), by the
    # names of `limited_by`: the supply book (fleet.offers) lets those that run down with time do so between readings.
    limits_s: dict[str, float] = field(default_factory=dict)


# Below this much work a car is not worth dispatching to: a work unit would not finish.
MIN_OFFER_SECONDS = 5 * 60.0
# Windows are followed this far ahead when they chain (Mon 18:00-24:00 then Tue 00:00-07:00 is one stretch).
WINDOW_LOOKAHEAD_S = 7 * 24 * 3600.0
# When two limits end within this many seconds of each other, `limited_by` names the one the owner set
# (the caller's departure prediction already includes the owner's "I leave at").
_TIE_S = 1.0
_LIMIT_ORDER = ("leave_at", "window", "energy cap", "battery", "departure")
_MINUTES_PER_WEEK = 7 * 24 * 60


def availability_get(
    *,
    hardware: Hardware,
    policy: Policy,
    state: CarState,
    vehicle_status: str,
    tz: zoneinfo.ZoneInfo,
    parked_seconds_left: float,
) -> Availability:
    """Whether the car may take work now and, if so, what it can offer before it must stop.

    `vehicle_status` is "active", "paused" (by the owner) or "suspended" (by the platform). `parked_seconds_left` is the
    caller's conservative prediction of how long the car stays parked, in seconds. Windows and "I leave at" are read in
    `tz`, the car's time zone.

    When the car is not available, every reason that applies is listed, in the owner's words. When it is, it draws
    power_w = min(policy, hardware typical, hardware max, ABSOLUTE_MAX_POWER_W) watts, and hours_offered is the
    shortest of: the predicted departure, the owner's "I leave at" (ignored once it has passed: it was for an earlier
    day), the end of the current run of chained availability windows, the rest of today's energy cap, and the battery
    energy above the floor divided by the net drain (power_w minus what the charger delivers, when plugged in; a charger
    that covers the drain means the battery sets no limit).

    The daily energy cap resets at local midnight; this function bounds a run by what is left of today's cap only.
    That under-offers a run that would cross midnight, which is the safe side and keeps the owner's promise simple.

    Offers shorter than MIN_OFFER_SECONDS are not made: the binding limit's reason is given instead.
    """
    now = state.observed_at
    local_now = now.astimezone(tz)
    reasons: list[str] = []

    if vehicle_status == "paused":
        reasons.append("paused by you")
    elif vehicle_status == "suspended":
        reasons.append("suspended by Idlefleet")
    elif vehicle_status != "active":
        reasons.append(f"vehicle is {vehicle_status}")
    if not policy.enabled:
        reasons.append("opt-in is off")
    if state.heartbeat_age_s > max(state.lost_after_s, HEARTBEAT_LOST_AFTER_S):
        reasons.append(f"heartbeat lost {_duration_words(state.heartbeat_age_s)} ago")
    if not state.parked:
        reasons.append("driving")
    if state.network not in WORK_NETWORKS:
        reasons.append("no network" if state.network == "none" else f"on {state.network}: work only runs on WiFi")
    if policy.plugged_in_only and not state.plugged_in:
        reasons.append("not plugged in (you chose plugged-in only)")

    battery, floor = _pct(state.battery_pct), _pct(policy.battery_floor_pct)
    if state.battery_pct < policy.battery_floor_pct:
        reasons.append(f"battery {battery}% is below your {floor}% floor")
    elif not state.computing and state.battery_pct < policy.battery_floor_pct + START_MARGIN_PCT:
        start = _pct(policy.battery_floor_pct + START_MARGIN_PCT)
        reasons.append(
            f"battery {battery}% is within {_pct(START_MARGIN_PCT)}% of your {floor}% floor: work starts at {start}%"
        )

    power_w = min(policy.max_power_w, hardware.typical_power_w, hardware.max_power_w, ABSOLUTE_MAX_POWER_W)
    if power_w <= 0:
        reasons.append(f"compute power is limited to {power_w:.0f} W")
        power_w = 0.0

    # Each limit in seconds from now; math.inf where it does not apply.
    limits: dict[str, float] = {"departure": max(parked_seconds_left, 0.0)}
    leave_at = policy.leave_at if policy.leave_at is not None and policy.leave_at > now else None
    limits["leave_at"] = _seconds_between(now, leave_at) if leave_at else math.inf
    window_end = _window_end(policy.windows, local_now)
    limits["window"] = math.inf if window_end is None else _seconds_between(now, window_end)
    energy_left_kwh = max(policy.max_energy_kwh_per_day - state.energy_used_today_kwh, 0.0)
    limits["energy cap"] = energy_left_kwh * 1000 / power_w * 3600 if power_w else math.inf
    limits["battery"] = _battery_seconds(state, policy.battery_floor_pct, power_w)

    if window_end is not None and window_end <= local_now:
        reasons.append("outside your availability windows")
    elif limits["window"] < MIN_OFFER_SECONDS:
        reasons.append(f"your availability window ends at {window_end.astimezone(tz):%H:%M}")
    if leave_at is not None and limits["leave_at"] < MIN_OFFER_SECONDS:
        reasons.append(f"you said you leave at {leave_at.astimezone(tz):%H:%M}")
    if limits["energy cap"] < MIN_OFFER_SECONDS:
        reasons.append(f"today's energy cap of {policy.max_energy_kwh_per_day:.1f} kWh is used up")
    if limits["battery"] < MIN_OFFER_SECONDS and state.battery_pct >= policy.battery_floor_pct:
        reasons.append(
            f"battery {battery}% leaves under {MIN_OFFER_SECONDS / 60:.0f} min of work above your {floor}% floor"
        )
    if state.parked and limits["departure"] < MIN_OFFER_SECONDS:
        reasons.append("expected to leave within minutes")

    if reasons:
        return Availability(available=False, reasons=tuple(reasons))

    seconds = min(limits.values())
    limited_by = next(name for name in _LIMIT_ORDER if limits[name] <= seconds + _TIE_S)
    hours = seconds / 3600
    rates = rates_per_car_hour(hardware, power_w=power_w, clock_rate=state.clock_rate)
    ch_offered = {precision: hours * rate for precision, rate in rates.items()}
    return Availability(
        available=True,
        reasons=(),
        power_w=power_w,
        hours_offered=hours,
        limited_by=limited_by,
        ch_offered=ch_offered,
        energy_kwh=power_w * hours / 1000,
        ch_per_hour=rates,
        measured=frozenset(p for p in rates if p in hardware.measured_ch_per_hour),
        limits_s=limits,
    )


def rated_ch_per_hour(hardware: Hardware, precision: str, *, power_w: float) -> float:
    """The hardware profile's rate for `precision` at `power_w` (throughput scales with power below the typical
    draw), CH per hour; 0 when the hardware does not run that precision."""
    factor = hardware.factors.get(precision, 0.0)
    return hardware.int8_tops * factor / 100 * power_w / hardware.typical_power_w if factor > 0 else 0.0


def rates_per_car_hour(hardware: Hardware, *, power_w: float, clock_rate: float = 1.0) -> dict[str, float]:
    """CH per car hour for every precision the hardware runs: the measured rate where there is one (counted in car
    time), else the rated one."""
    rates = {}
    for precision, factor in hardware.factors.items():
        if factor <= 0:
            continue
        measured = hardware.measured_ch_per_hour.get(precision)
        rates[precision] = (
            measured / max(clock_rate, 1e-9) if measured else rated_ch_per_hour(hardware, precision, power_w=power_w)
        )
    return rates


def _battery_seconds(state: CarState, floor_pct: float, power_w: float) -> float:
    """Seconds of compute at power_w before the battery reaches the floor (math.inf when the charger covers it)."""
    charge_w = state.charge_power_w if state.plugged_in else 0.0
    drain_w = power_w - charge_w
    if drain_w <= 0:
        return math.inf
    above_floor_kwh = max(state.battery_pct - floor_pct, 0.0) / 100 * state.battery_capacity_kwh
    return above_floor_kwh * 1000 / drain_w * 3600


def _window_end(windows: tuple[Window, ...], local_now: datetime) -> datetime | None:
    """When the run of windows that holds `local_now` ends (chained windows count as one run), in local time.

    None when windows do not limit: no windows at all, or a run that lasts beyond WINDOW_LOOKAHEAD_S. Returns
    `local_now` itself when no window holds it. A window with end == start lasts 24 hours from its start (for a
    start of 00:00 that is the whole day).
    """
    if not windows:
        return None
    week_start = datetime.combine(local_now.date() - timedelta(days=local_now.weekday()), time(), local_now.tzinfo)
    now_minute = (local_now.replace(tzinfo=None) - week_start.replace(tzinfo=None)).total_seconds() / 60
    # Last week's windows may run into this week, and a run may go on into next week.
    spans = []
    for week in (-1, 0, 1):
        for window in windows:
            start = week * _MINUTES_PER_WEEK + window.weekday * 1440 + window.start_minute
            length = (window.end_minute - window.start_minute) % 1440 or 1440
            spans.append((start, start + length))
    spans.sort()
    run_end = None
    for start, end in spans:
        if run_end is not None and start <= run_end:
            run_end = max(run_end, end)
        elif start <= now_minute < end:
            run_end = end
        elif start > now_minute:
            break
    if run_end is None or run_end <= now_minute:
        return local_now
    if (run_end - now_minute) * 60 > WINDOW_LOOKAHEAD_S:
        return None
    # Wall-clock minutes → an aware local time (fold and DST gaps as zoneinfo resolves them).
    return (week_start.replace(tzinfo=None) + timedelta(minutes=run_end)).replace(tzinfo=local_now.tzinfo)


def _seconds_between(start: datetime, end: datetime) -> float:
    """Real elapsed seconds (aware datetimes that share a tzinfo subtract as wall clocks, wrong across DST)."""
    return (end.astimezone(UTC) - start.astimezone(UTC)).total_seconds()


def _pct(value: float) -> str:
    """A percentage for an owner: whole numbers bare, else one decimal, rounded down so 59.96 never reads as 60."""
    tenths = math.floor(value * 10 + 1e-9) / 10
    return f"{tenths:.0f}" if tenths == int(tenths) else f"{tenths:.1f}"


def _duration_words(seconds: float) -> str:
    minutes = seconds / 60
    if minutes < 90:
        return f"{max(round(minutes), 1)} min"
    if minutes < 48 * 60:
        return f"{round(minutes / 60)} h"
    return f"{round(minutes / 1440)} days"
