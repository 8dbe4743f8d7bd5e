"""Reads of the fleet. Every owner-facing read is scoped to the owner: someone else's vehicle is a 404."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import models
from django.db.models import F, QuerySet
from django.db.models.functions import RowNumber
from django.http import Http404
from django.utils import timezone

from accounts.models import User

from . import state_store
from .agent.precisions import PRECISIONS
from .availability import (
    HEARTBEAT_LOST_AFTER_S,
    Availability,
    CarState,
    Hardware,
    Policy,
    Window,
    availability_get,
)
from .departure import ParkingRecord, remaining_parked_seconds
from .models import STATE_FIELDS, FleetPolicy, ParkingSession, Vehicle, VehicleState, VehicleThroughput, VehicleWorkDay

HISTORY_SESSIONS = 200  # completed parking sessions used for departure prediction


def vehicles_for_owner(*, owner: User) -> QuerySet[Vehicle]:
    return Vehicle.objects.filter(owner=owner).select_related("hardware", "policy")


def vehicle_get_for_owner(*, owner: User, vehicle_id: int) -> Vehicle:
    try:
        return vehicles_for_owner(owner=owner).get(pk=vehicle_id)
    except Vehicle.DoesNotExist:
        raise Http404("No such vehicle.") from None


def vehicle_for_agent(*, vehicle_id: int) -> Vehicle:
    """The car an agent's credential belongs to, with what its agent reads at start (name, time zone), read fresh:
    the agent's principal holds only the fields that never change (fleet/authentication.py)."""
    return Vehicle.objects.only("id", "display_name", "time_zone").get(pk=vehicle_id)


@dataclass(frozen=True)
class Measured:
    """What a car was measured doing on one workload (fleet.models.VehicleThroughput), real time."""

    precision: str
    items_per_s: float
    ch_per_hour: float
    wh_per_ch: float


@dataclass(frozen=True)
class LiveVehicle:
    vehicle: Vehicle
    state: dict[str, Any] | None  # the last heartbeat (Redis, or the database snapshot if Redis lost it)
    availability: Availability
    heartbeat_age_s: float | None
    car_now: datetime | None  # the car's clock now (simulated cars run fast)
    parked_since: datetime | None
    measured: dict[str, Measured] = field(default_factory=dict)  # workload (model file sha256) -> measured figures

    @property
    def online(self) -> bool:
        lost_after = max(float((self.state or {}).get("lost_after_s") or 0), HEARTBEAT_LOST_AFTER_S)
        return self.heartbeat_age_s is not None and self.heartbeat_age_s <= lost_after

    @property
    def clock_rate(self) -> float:
        """Car seconds per real second (a simulated car's clock runs fast)."""
        return float((self.state or {}).get("clock_rate", 1.0)) or 1.0


def hardware_of(vehicle: Vehicle, measured: dict[str, Measured] | None = None) -> Hardware:
    hw = vehicle.hardware
    slowest: dict[str, float] = {}
    for figures in (measured or {}).values():
        slowest[figures.precision] = min(slowest.get(figures.precision, figures.ch_per_hour), figures.ch_per_hour)
    return Hardware(
        int8_tops=hw.int8_tops, factors=hw.factors, typical_power_w=hw.typical_power_w, max_power_w=hw.max_power_w,
        measured_ch_per_hour=slowest,
    )  # fmt: skip


def measurements_of(vehicle_ids: list[int]) -> dict[int, dict[str, Measured]]:
    """Each car's measured figures per workload, in one query."""
    measured: dict[int, dict[str, Measured]] = defaultdict(dict)
    rows = VehicleThroughput.objects.filter(vehicle_id__in=vehicle_ids).values_list(
        "vehicle_id", "workload", "precision", "items_per_s", "ch_per_item", "wh_per_item"
    )
    for vehicle_id, workload, precision, items_per_s, ch_per_item, wh_per_item in rows:
        measured[vehicle_id][workload] = Measured(
            precision=precision,
            items_per_s=items_per_s,
            ch_per_hour=items_per_s * ch_per_item * 3600,
            wh_per_ch=wh_per_item / ch_per_item if ch_per_item else 0.0,
        )
    return measured


def _policy(vehicle: Vehicle) -> Policy:
    p = vehicle.policy
    return Policy(
        enabled=p.enabled,
        windows=tuple(Window(*w) for w in p.windows),
        battery_floor_pct=float(p.battery_floor_pct),
        plugged_in_only=p.plugged_in_only,
        max_energy_kwh_per_day=float(p.max_energy_kwh_per_day),
        max_power_w=float(p.max_power_w),
        leave_at=p.leave_at,
    )


def _state_from_snapshot(snapshot: VehicleState) -> dict[str, Any]:
    state = {name: getattr(snapshot, name) for name in STATE_FIELDS}
    state["observed_at"] = snapshot.observed_at.isoformat()
    state["received_at"] = snapshot.received_at.isoformat()
    return state


def vehicles_live(vehicles: list[Vehicle], *, now: datetime | None = None) -> list[LiveVehicle]:
    """Each vehicle with its live state and what it can offer now (in four queries, whatever the count)."""
    now = now or timezone.now()
    ids = [v.pk for v in vehicles]
    states = state_store.states_get(ids)
    missing = [i for i in ids if i not in states]
    if missing:
        for snapshot in VehicleState.objects.filter(vehicle_id__in=missing):
            states[snapshot.vehicle_id] = _state_from_snapshot(snapshot)

    open_sessions, history = stays_of(ids)
    measured = measurements_of(ids)
    return [_live(v, states.get(v.pk), history[v.pk], open_sessions.get(v.pk), now, measured[v.pk]) for v in vehicles]


def stays_of(ids: list[int]) -> tuple[dict[int, datetime], dict[int, list[ParkingRecord]]]:
    """Each car's open stay (when it arrived) and its newest completed stays (at most HISTORY_SESSIONS, newest first),
    in one query: what the departure prediction reads."""
    history: dict[int, list[ParkingRecord]] = defaultdict(list)
    open_sessions: dict[int, datetime] = {}
    # Plain tuples: at fleet scale (tens of thousands of stays) building model instances was most of the time.
    # Each car's newest stays only (its open one and HISTORY_SESSIONS before it), however long its record grows.
    newest = models.Window(RowNumber(), partition_by=F("vehicle_id"), order_by=F("arrived_at").desc())
    sessions = (
        ParkingSession.objects.filter(vehicle_id__in=ids)
        .annotate(newest=newest)
        .filter(newest__lte=HISTORY_SESSIONS + 1)
        .order_by("vehicle_id", "-arrived_at")
    )
    for vehicle_id, arrived_at, departed_at in sessions.values_list("vehicle_id", "arrived_at", "departed_at"):
        if departed_at is None:
            open_sessions[vehicle_id] = arrived_at
        elif len(history[vehicle_id]) < HISTORY_SESSIONS:
            history[vehicle_id].append(ParkingRecord(arrived_at, (departed_at - arrived_at).total_seconds()))
    return open_sessions, history


def _live(vehicle, state, history, parked_since, now, measured) -> LiveVehicle:
    if state is None:
        availability = Availability(available=False, reasons=("no heartbeat yet: is the agent running?",))
        return LiveVehicle(vehicle, None, availability, None, None, parked_since, measured)
    received_at = datetime.fromisoformat(state["received_at"])
    age = max((now - received_at).total_seconds(), 0.0)
    car_now = datetime.fromisoformat(state["observed_at"]) + timedelta(seconds=age * float(state.get("clock_rate", 1)))
    tz = vehicle.tz
    car_state = CarState(
        observed_at=car_now,
        heartbeat_age_s=age,
        parked=state["parked"],
        plugged_in=state["plugged_in"],
        charge_power_w=float(state.get("charge_power_w", 0)),
        battery_pct=float(state["battery_pct"]),
        battery_capacity_kwh=float(state.get("battery_capacity_kwh") or vehicle.battery_capacity_kwh),
        network=state["network"],
        energy_used_today_kwh=float(state.get("energy_used_today_wh", 0)) / 1000,
        computing=bool(state.get("computing")),
        clock_rate=float(state.get("clock_rate", 1.0)) or 1.0,
        lost_after_s=float(state.get("lost_after_s") or HEARTBEAT_LOST_AFTER_S),
    )
    policy = _policy(vehicle)
    left = remaining_parked_seconds(
        history=history,
        arrived_at=parked_since or car_now,
        now=car_now,
        tz=tz,
        declared_departure=policy.leave_at if policy.leave_at and policy.leave_at > car_now else None,
    )
    availability = availability_get(
        hardware=hardware_of(vehicle, measured),
        policy=policy,
        state=car_state,
        vehicle_status=vehicle.status,
        tz=tz,
        parked_seconds_left=left,
    )
    return LiveVehicle(vehicle, state, availability, age, car_now, parked_since, measured)


def vehicle_live_for_owner(*, owner: User, vehicle_id: int) -> LiveVehicle:
    return vehicles_live([vehicle_get_for_owner(owner=owner, vehicle_id=vehicle_id)])[0]


@dataclass(frozen=True)
class WorkSummary:
    """A car's measured work for its owner: today's units and energy, and its speed on each workload it ran."""

    today: VehicleWorkDay | None
    throughputs: list[VehicleThroughput]
    rated_ch_per_hour: dict[str, float]  # the hardware profile's rating per precision, for comparison


def vehicle_work_summary(*, vehicle: Vehicle, now: datetime | None = None) -> WorkSummary:
    """Today's work (the car's own calendar day) and its measured speeds, in two queries."""
    from .availability import rated_ch_per_hour

    today = (now or timezone.now()).astimezone(vehicle.tz).date()
    hardware = hardware_of(vehicle)
    return WorkSummary(
        today=VehicleWorkDay.objects.filter(vehicle=vehicle, day=today).first(),
        throughputs=list(vehicle.throughputs.order_by("precision", "-measured_at")),
        rated_ch_per_hour={
            p: rated_ch_per_hour(hardware, p, power_w=hardware.typical_power_w) for p in vehicle.hardware.factors
        },
    )


def parking_sessions_for_vehicle(*, vehicle: Vehicle, limit: int = 20) -> list[ParkingSession]:
    return list(vehicle.parking_sessions.all()[:limit])


@dataclass(frozen=True)
class FleetOverview:
    vehicles: int
    online: int
    available: int
    ch_per_precision: dict[str, float]  # CH the available cars can offer before they are expected to leave
    power_kw: float  # what the available cars could draw together
    reasons: list[tuple[str, int]]  # the commonest reasons cars are not available, with counts


OVERVIEW_CACHE_KEY = "fleet:overview"
OVERVIEW_FRESH_S = 15  # a heartbeat's interval: the cars' own figures are up to this old anyway
OVERVIEW_KEEP_S = 600  # a stale overview is still shown while one request computes the next


def fleet_overview_cached() -> FleetOverview:
    """The fleet overview as of at most OVERVIEW_FRESH_S ago, from the cache.

    Computing it reads every car (seconds at 10,000 cars), so pages never do it per view: when the cached copy is
    stale, one request (the one that takes the lock) computes the next while the others show the stale one; only
    with nothing cached at all (a cold cache) does a request wait for it.
    """
    cached = cache.get(OVERVIEW_CACHE_KEY)
    if cached is None:
        return fleet_overview_refresh()
    computed_at, overview = cached
    lock = f"{OVERVIEW_CACHE_KEY}:lock"
    if time.time() - computed_at < OVERVIEW_FRESH_S or not cache.add(lock, 1, 60):
        return overview
    try:
        return fleet_overview_refresh()
    finally:
        cache.delete(lock)


def fleet_overview_refresh() -> FleetOverview:
    """Compute the fleet overview and keep it in the cache (a periodic task may call this, so no page has to)."""
    overview = fleet_overview()
    cache.set(OVERVIEW_CACHE_KEY, (time.time(), overview), OVERVIEW_KEEP_S)
    return overview


def fleet_overview(*, now: datetime | None = None) -> FleetOverview:
    """Every car's availability summed up: what the fleet can offer now. Reads the whole fleet; pages use
    `fleet_overview_cached`."""
    vehicles = list(Vehicle.objects.select_related("hardware", "policy"))
    live = vehicles_live(vehicles, now=now)
    ch = dict.fromkeys(PRECISIONS, 0.0)
    reasons: dict[str, int] = defaultdict(int)
    power = 0.0
    for item in live:
        if item.availability.available:
            power += item.availability.power_w
            for precision, amount in item.availability.ch_offered.items():
                ch[precision] += amount
        for reason in item.availability.reasons:
            reasons[_reason_kind(reason)] += 1
    return FleetOverview(
        vehicles=len(live),
        online=sum(item.online for item in live),
        available=sum(item.availability.available for item in live),
        ch_per_precision=ch,
        power_kw=power / 1000,
        reasons=sorted(reasons.items(), key=lambda kv: -kv[1])[:8],
    )


def _reason_kind(reason: str) -> str:
    """Group reasons that differ only in their numbers ("battery 41% ..." and "battery 38% ...")."""
    return " ".join("…" if any(ch.isdigit() for ch in word) else word for word in reason.split())


def energy_price_default() -> Decimal:
    """The energy price a new car starts with: the newest FleetPolicy's, or the setting's before staff ever set one."""
    policy = FleetPolicy.objects.order_by("-created_at", "-pk").first()
    if policy is None:
        return Decimal(str(settings.DEFAULT_ENERGY_PRICE_CENTS_PER_KWH))
    return policy.default_energy_price_cents_per_kwh
