"""A simulated electric car: where it is, its battery and its network over the days, for demos and tests.

Pure and deterministic: a car's behaviour depends only on its persona, its seed and its time zone, never on when or
in which steps it is advanced (each local day is planned from a `random.Random` seeded with the car's seed and the
date, and the battery is integrated exactly between events). So a fleet of simulated cars run at any speed draws the
same availability-over-the-day curve every time.

Units: power in W (kW in the integration), energy in kWh (Wh for the daily compute counter), time in seconds, distance
in km, bandwidth in Mbps, latency in ms.

Personas:
    commuter     weekdays: leaves home ≈07:00-08:30 (now and then much earlier), drives 20-50 min, parked at work
                 until ≈16:30-18:30, sometimes an evening errand, a day working from home now and then; weekends: a
                 couple of short trips; plugged in at home most nights.
    homebody     a few short trips a week in the daytime, almost always parked at home; plugs in when it needs to.
    night_shift  works five nights a week (leaves ≈21:00-22:30, back ≈06:00-08:00), parked at home by day.
    rideshare    drives for a ride-hailing service on most days, a morning and an evening shift of short rides with
                 waits between them (parked on cellular), home at midday and at night; plugs in almost every night.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo

from . import protocol

PERSONAS = ("commuter", "homebody", "night_shift", "rideshare")
# The mix make_fleet draws: mostly commuters, as in a city's private car fleet.
FLEET_MIX = {"commuter": 0.65, "homebody": 0.15, "night_shift": 0.10, "rideshare": 0.10}
RUNTIME_VERSION = "1.20.1"

HOME, WORK, ERRAND, DRIVING = "home", "work", "errand", "driving"
LOCATIONS = (HOME, WORK, ERRAND, DRIVING)

# A fixed Monday, so that make_fleet without a start gives the same fleet on every run.
DEFAULT_START = datetime(2025, 1, 6)  # naive: make_fleet reads it as local time in the fleet's time zone
# How often a measured bandwidth/latency reading changes, car seconds.
_NETWORK_READING_S = 300


@dataclass(frozen=True)
class Trip:
    """One drive: leaves at `depart`, arrives at `destination` at `arrive` (both aware, UTC)."""

    depart: datetime
    arrive: datetime
    destination: str
    distance_km: float
    # Drawn for every trip (so the random stream does not depend on the destination); used on arriving home.
    plug_roll: float

    @property
    def speed_kmh(self) -> float:
        """Mean speed over the trip, km/h (times the car's consumption in kWh/km gives its traction power in kW)."""
        return self.distance_km / ((self.arrive - self.depart).total_seconds() / 3600)


@dataclass(frozen=True)
class CarProfile:
    """What does not change from day to day: the car's pack and charger, its owner's habits and networks."""

    capacity_kwh: float
    consumption_kwh_per_km: float
    charger_w: float
    charge_limit_pct: float
    initial_battery_pct: float
    plug_probability: float  # chance of plugging in on arriving home
    plug_below_pct: float  # always plugs in on arriving home below this battery level
    work_has_wifi: bool
    home_down_mbps: float
    home_up_mbps: float
    home_latency_ms: float
    work_down_mbps: float
    work_up_mbps: float
    work_latency_ms: float
    # Persona habits (hours after local midnight, minutes of driving).
    leave_home_h: float
    leave_work_h: float
    commute_min: float


def _profile(persona: str, seed: int) -> CarProfile:
    rng = random.Random(f"{seed}:{persona}:car")  # noqa: S311 - a reproducible simulation, not security
    plug_probability, plug_below_pct = {
        "commuter": (0.8, 50.0),
        "homebody": (0.4, 60.0),
        "night_shift": (0.8, 50.0),
        "rideshare": (0.95, 70.0),
    }[persona]
    return CarProfile(
        capacity_kwh=round(rng.uniform(60, 100), 1),
        consumption_kwh_per_km=rng.uniform(0.15, 0.20),
        charger_w=round(rng.uniform(7000, 11000), -2),
        charge_limit_pct=90.0,
        initial_battery_pct=rng.uniform(50, 90),
        plug_probability=plug_probability,
        plug_below_pct=plug_below_pct,
        work_has_wifi=rng.random() < 0.5,
        home_down_mbps=rng.uniform(50, 700),
        home_up_mbps=rng.uniform(10, 40),
        home_latency_ms=rng.uniform(5, 40),
        work_down_mbps=rng.uniform(100, 500),
        work_up_mbps=rng.uniform(20, 100),
        work_latency_ms=rng.uniform(5, 25),
        leave_home_h=rng.uniform(7.0, 8.5),
        leave_work_h=rng.uniform(16.5, 18.5),
        commute_min=rng.uniform(20, 50),
    )


class _DayPlan:
    """Builds one local day's trips from hours after that day's local midnight (may run past 24 into the next day)."""

    def __init__(self, day: date, tz: tzinfo, rng: random.Random) -> None:
        self._midnight = datetime.combine(day, time(), tzinfo=tz)
        self.rng = rng
        self.trips: list[Trip] = []

    def _at(self, hours: float) -> datetime:
        # Wall-clock hours: "leaves at 07:30" stays 07:30 across a DST change.
        return (self._midnight + timedelta(hours=hours)).astimezone(UTC)

    def drive(self, depart_h: float, minutes: float, destination: str, speed_kmh: float) -> float:
        """Add a drive and return its arrival time (hours after midnight)."""
        minutes = max(5.0, minutes)
        arrive_h = depart_h + minutes / 60
        distance_km = speed_kmh * minutes / 60
        self.trips.append(
            Trip(self._at(depart_h), self._at(arrive_h), destination, round(distance_km, 2), self.rng.random())
        )
        return arrive_h

    def round_trip(self, depart_h: float, drive_min: float, stay_min: float, destination: str = ERRAND) -> float:
        """Drive out, stay, drive back home; return the time back home (hours after midnight)."""
        there_h = self.drive(depart_h, drive_min, destination, self.rng.uniform(25, 45))
        back_min = drive_min * self.rng.uniform(0.8, 1.2)
        return self.drive(there_h + stay_min / 60, back_min, HOME, self.rng.uniform(25, 45))

    def short_trips(self, count: int, first_h: float, last_h: float) -> None:
        """`count` errands one after another from `first_h`, none leaving after `last_h`."""
        t = first_h
        for _ in range(count):
            if t > last_h:
                break
            t = self.round_trip(t, self.rng.uniform(8, 30), self.rng.uniform(30, 150))
            t += self.rng.uniform(0.5, 3.0)


def _plan_commuter(plan: _DayPlan, profile: CarProfile, weekday: int) -> None:
    rng = plan.rng
    if weekday >= 5:
        plan.short_trips(rng.choice((1, 2, 2, 3)), rng.uniform(9, 12), 19.0)
        return
    if rng.random() < 0.08:  # working from home (or ill, or on holiday)
        if rng.random() < 0.5:
            plan.short_trips(1, rng.uniform(10, 16), 19.0)
        return
    leave_h = profile.leave_home_h + rng.uniform(-0.25, 0.25)
    if rng.random() < 0.07:  # an early meeting or a flight: out well before the usual time
        leave_h = rng.uniform(5.0, 6.5)
    arrive_h = plan.drive(leave_h, profile.commute_min * rng.uniform(0.85, 1.25), WORK, rng.uniform(35, 60))
    leave_work_h = max(arrive_h + 6.0, profile.leave_work_h + rng.uniform(-0.3, 0.3))
    home_h = plan.drive(leave_work_h, profile.commute_min * rng.uniform(0.9, 1.4), HOME, rng.uniform(30, 55))
    if rng.random() < 0.3:  # an evening errand: shopping, sport, picking someone up
        depart_h = home_h + rng.uniform(0.5, 2.0)
        if depart_h < 21.0:
            plan.round_trip(depart_h, rng.uniform(5, 15), rng.uniform(20, 60))


def _plan_homebody(plan: _DayPlan, profile: CarProfile, weekday: int) -> None:
    rng = plan.rng
    roll = rng.random()
    count = 0 if roll < 0.6 else 1 if roll < 0.92 else 2
    plan.short_trips(count, rng.uniform(10, 14), 17.0)


def _plan_night_shift(plan: _DayPlan, profile: CarProfile, weekday: int) -> None:
    rng = plan.rng
    # Nights that start Sunday to Thursday; the drive home belongs to the night's plan (it ends the next morning).
    works_tonight = weekday in (6, 0, 1, 2, 3)
    if works_tonight:
        if rng.random() < 0.3:  # an afternoon errand after sleeping
            plan.short_trips(1, rng.uniform(14, 16.5), 18.0)
        leave_h = rng.uniform(21.0, 22.5)
        if rng.random() < 0.05:  # called in early
            leave_h = rng.uniform(19.0, 20.0)
        commute = profile.commute_min * rng.uniform(0.85, 1.2)
        at_work_h = plan.drive(leave_h, commute, WORK, rng.uniform(40, 65))
        leave_work_h = max(at_work_h + 7.0, 24 + rng.uniform(6.0, 7.5))
        plan.drive(leave_work_h, commute * rng.uniform(0.9, 1.3), HOME, rng.uniform(35, 60))
    else:
        plan.short_trips(rng.choice((1, 2, 2, 3)), rng.uniform(11, 14), 20.0)


def _plan_rideshare(plan: _DayPlan, profile: CarProfile, weekday: int) -> None:
    rng = plan.rng
    if rng.random() < (0.5 if weekday >= 5 else 0.15):  # a day off
        plan.short_trips(rng.choice((1, 2)), rng.uniform(10, 13), 19.0)
        return

    def shift(start_h: float, end_h: float) -> None:
        t = start_h
        while t < end_h:  # rides, with waits for the next one parked at the kerb (on cellular)
            t = plan.drive(t, rng.uniform(10, 35), ERRAND, rng.uniform(20, 40)) + rng.uniform(5, 25) / 60
        plan.drive(t, rng.uniform(10, 30), HOME, rng.uniform(25, 45))

    shift(rng.uniform(6.5, 7.5), rng.uniform(10.0, 11.0))
    shift(rng.uniform(15.5, 16.5), rng.uniform(19.5, 21.0))


_PLANNERS: dict[str, Callable[[_DayPlan, CarProfile, int], None]] = {
    "commuter": _plan_commuter,
    "homebody": _plan_homebody,
    "night_shift": _plan_night_shift,
    "rideshare": _plan_rideshare,
}


class SimulatedCar:
    """A simulated car that only moves forward in time: call advance_to(now), then read state(now).

    `start` is when the simulation begins (naive = local time in `tz`). The car behaves as if it had been living
    before `start` (its plans are a pure function of the date), with a battery drawn from its seed.
    """

    def __init__(self, persona: str, seed: int, start: datetime, tz: tzinfo = UTC) -> None:
        if persona not in _PLANNERS:
            raise ValueError(f"unknown persona {persona!r}; choose one of {', '.join(PERSONAS)}")
        self.persona = persona
        self.seed = seed
        self.tz = tz
        self.profile = _profile(persona, seed)
        if start.tzinfo is None:
            start = start.replace(tzinfo=tz)
        self._t = start.astimezone(UTC)
        self._plans: dict[date, list[Trip]] = {}
        self._windows: dict[tuple[date, int, int], tuple[list[Trip], list[datetime]]] = {}
        self._energy_kwh = self.profile.capacity_kwh * self.profile.initial_battery_pct / 100
        self._energy_today_wh = 0.0
        self._compute_w = 0.0
        self._day = self._local_date(self._t)
        self._location = self.location(self._t)
        trip = self._current_trip(self._t)
        roll = trip.plug_roll if trip else random.Random(f"{seed}:initial").random()  # noqa: S311
        self._plugged = self._location == HOME and self._decides_to_plug(roll)

    # --- the plan (pure functions of the date) ---

    def _local_date(self, moment: datetime) -> date:
        return moment.astimezone(self.tz).date()

    def _trips_of(self, day: date) -> list[Trip]:
        trips = self._plans.get(day)
        if trips is None:
            rng = random.Random(f"{self.seed}:{self.persona}:{day.isoformat()}")  # noqa: S311
            plan = _DayPlan(day, self.tz, rng)
            _PLANNERS[self.persona](plan, self.profile, day.weekday())
            trips = plan.trips
            if len(self._plans) > 16:  # a long run: forget old days (they are recomputed identically if needed)
                self._plans.clear()
            self._plans[day] = trips
        return trips

    def _trips_around(self, moment: datetime, days_before: int, days_after: int) -> tuple[list[Trip], list[datetime]]:
        """The trips planned from `days_before` local days before `moment` to `days_after` after, in order, and their
        departure times (for bisect)."""
        key = (self._local_date(moment), days_before, days_after)
        window = self._windows.get(key)
        if window is None:
            trips = [
                trip
                for offset in range(-days_before, days_after + 1)
                for trip in self._trips_of(key[0] + timedelta(offset))
            ]
            if len(self._windows) > 16:
                self._windows.clear()
            window = self._windows[key] = (trips, [trip.depart for trip in trips])
        return window

    def _current_trip(self, moment: datetime) -> Trip | None:
        """The last trip that left at or before `moment` (every day's plan ends at home, so one day back is enough)."""
        trips, departures = self._trips_around(moment, 1, 0)
        index = bisect.bisect_right(departures, moment)
        return trips[index - 1] if index else None

    def location(self, now: datetime) -> str:
        """Where the car is at `now`: one of LOCATIONS (a pure lookup; it does not advance the battery)."""
        trip = self._current_trip(now.astimezone(UTC))
        if trip is None:
            return HOME
        return DRIVING if now < trip.arrive else trip.destination

    def next_departure(self, now: datetime) -> datetime | None:
        """When the car next starts driving after `now` (within the next two days), aware UTC."""
        now = now.astimezone(UTC)
        departures = self._trips_around(now, 1, 2)[1]
        index = bisect.bisect_right(departures, now)
        return departures[index] if index < len(departures) else None

    def seconds_until_departure(self, now: datetime) -> float | None:
        """Car seconds from `now` until the car starts driving; None while it drives or when no trip is planned."""
        if self.location(now) == DRIVING:
            return None
        departure = self.next_departure(now)
        return None if departure is None else (departure - now).total_seconds()

    # --- compute (the marketplace's work) ---

    @property
    def computing(self) -> bool:
        return self._compute_w > 0

    def set_compute(self, power_w: float) -> bool:
        """Draw `power_w` W for compute from the car's current time on (0 stops). Only a parked car with charge left
        computes; returns whether it is computing now. Call advance_to(now) first."""
        power_w = min(max(0.0, power_w), protocol.MAX_POWER_W)
        self._compute_w = power_w if self._location != DRIVING and self._energy_kwh > 0 else 0.0
        return self.computing

    # --- moving forward ---

    def _decides_to_plug(self, roll: float) -> bool:
        return roll < self.profile.plug_probability or self._battery_pct() < self.profile.plug_below_pct

    def _battery_pct(self) -> float:
        return 100 * self._energy_kwh / self.profile.capacity_kwh

    def _next_event(self, moment: datetime) -> datetime:
        """The next moment something changes on its own: a departure, an arrival or local midnight."""
        local = moment.astimezone(self.tz)
        midnight = datetime.combine(local.date() + timedelta(days=1), time(), tzinfo=self.tz).astimezone(UTC)
        events = [midnight]
        for trip in self._trips_around(moment, 1, 0)[0]:
            events.extend(t for t in (trip.depart, trip.arrive) if t > moment)
        return min(events)

    def advance_to(self, now: datetime) -> None:
        """Move the simulation forward to `now` (aware). The car's past is gone: an earlier time is a ValueError
        (reading a state there would silently give the present)."""
        target = now.astimezone(UTC)
        if target < self._t:
            raise ValueError(f"the simulated car is already at {self._t.isoformat()}; it cannot go back to {now}")
        while self._t < target:
            boundary = min(target, self._next_event(self._t))
            self._integrate((boundary - self._t).total_seconds() / 3600)
            self._t = boundary
            self._apply_events()

    def _apply_events(self) -> None:
        day = self._local_date(self._t)
        if day != self._day:  # local midnight: the owner's daily energy cap starts again
            self._day = day
            self._energy_today_wh = 0.0
        location = self.location(self._t)
        if location == self._location:
            return
        if location == DRIVING:  # the owner drives off: unplugged, and compute stops with the car in gear
            self._plugged = False
            self._compute_w = 0.0
        elif location == HOME:
            trip = self._current_trip(self._t)
            self._plugged = trip is not None and self._decides_to_plug(trip.plug_roll)
        self._location = location

    def _integrate(self, hours: float) -> None:
        """Battery and compute energy over `hours` in which nothing else changes (exact: the powers are constant)."""
        profile = self.profile
        if self._location == DRIVING:
            trip = self._current_trip(self._t)
            drive_kw = trip.speed_kmh * profile.consumption_kwh_per_km if trip else 0.0
            self._energy_kwh = max(0.0, self._energy_kwh - drive_kw * hours)
            return
        charger_kw = profile.charger_w / 1000 if self._plugged else 0.0
        limit_kwh = profile.capacity_kwh * profile.charge_limit_pct / 100
        compute_kw = self._compute_w / 1000
        if compute_kw > 0:
            net_kw = charger_kw - compute_kw
            if net_kw >= 0:
                # The charger covers compute and tops up to the limit, then holds the level (never charges past it).
                self._energy_kwh = max(self._energy_kwh, min(limit_kwh, self._energy_kwh + net_kw * hours))
                self._energy_today_wh += compute_kw * hours * 1000
                return
            hours_to_empty = self._energy_kwh / -net_kw
            if hours_to_empty >= hours:
                self._energy_kwh = max(0.0, self._energy_kwh + net_kw * hours)
                self._energy_today_wh += compute_kw * hours * 1000
                return
            # The pack runs empty part-way: compute stops there, the charger (if any) carries on alone.
            self._energy_today_wh += compute_kw * hours_to_empty * 1000
            self._energy_kwh = 0.0
            self._compute_w = 0.0
            hours -= hours_to_empty
        if charger_kw > 0 and self._energy_kwh < limit_kwh:
            self._energy_kwh = min(limit_kwh, self._energy_kwh + charger_kw * hours)

    # --- what the agent reports ---

    def _network(self) -> tuple[str, float, float, float]:
        """(network, down Mbps, up Mbps, latency ms) as the car measures them now; readings wobble every few minutes."""
        profile = self.profile
        bucket = int(self._t.timestamp() // _NETWORK_READING_S)
        rng = random.Random(f"{self.seed}:net:{bucket}")  # noqa: S311

        def wobble(value: float) -> float:
            return value * rng.uniform(0.85, 1.15)

        if self._location == HOME:
            return "wifi", wobble(profile.home_down_mbps), wobble(profile.home_up_mbps), wobble(profile.home_latency_ms)
        if self._location == WORK and profile.work_has_wifi:
            return "wifi", wobble(profile.work_down_mbps), wobble(profile.work_up_mbps), wobble(profile.work_latency_ms)
        if self._location == DRIVING:
            return "cellular", rng.uniform(5, 80), rng.uniform(2, 20), rng.uniform(40, 120)
        return "cellular", rng.uniform(20, 150), rng.uniform(5, 30), rng.uniform(30, 70)

    def state(self, now: datetime) -> dict:
        """The heartbeat fields of protocol.py at `now` (advancing to it first), except observed_at and clock_rate."""
        self.advance_to(now)
        profile = self.profile
        parked = self._location != DRIVING
        charge_power_w = 0.0
        if self._plugged and parked:
            at_limit = self._battery_pct() >= profile.charge_limit_pct - 1e-9
            # At the limit the charger only supplies what compute draws.
            charge_power_w = min(profile.charger_w, self._compute_w) if at_limit else profile.charger_w
        network, down, up, latency = self._network()
        return {
            "parked": parked,
            "plugged_in": self._plugged and parked,
            "charge_power_w": round(charge_power_w, 1),
            "battery_pct": round(min(100.0, max(0.0, self._battery_pct())), 3),
            "battery_capacity_kwh": profile.capacity_kwh,
            "network": network,
            "bandwidth_down_mbps": round(down, 1),
            "bandwidth_up_mbps": round(up, 1),
            "latency_ms": round(latency, 1),
            "runtime_version": RUNTIME_VERSION,
            "models_cached": [],
            "computing": self.computing,
            "compute_power_w": round(self._compute_w, 1),
            "energy_used_today_wh": round(self._energy_today_wh, 3),
        }


def make_fleet(n: int, seed: int, *, start: datetime | None = None, tz: tzinfo = UTC) -> list[SimulatedCar]:
    """`n` simulated cars in FLEET_MIX proportions (mostly commuters), each with its own seed drawn from `seed`.

    `start` defaults to DEFAULT_START (a fixed Monday midnight in `tz`), so the same arguments give the same fleet.
    """
    rng = random.Random(f"fleet:{seed}")  # noqa: S311
    counts = {persona: int(n * share) for persona, share in FLEET_MIX.items()}
    counts["commuter"] += n - sum(counts.values())
    personas = [persona for persona, count in counts.items() for _ in range(count)]
    rng.shuffle(personas)
    start = start or DEFAULT_START
    return [SimulatedCar(persona, rng.getrandbits(32), start, tz) for persona in personas]
