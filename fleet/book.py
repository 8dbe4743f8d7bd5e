"""The supply book: every car's standing offer (fleet.offers), kept up to date as its heartbeats and its owner's, the
platform's and the marketplace's changes arrive, and read by a region's auction round in one pass.

In Redis, one book per market region (the car's `Vehicle.region`; blank is a market too). A region's book is an
array of fixed-width records (offers.RECORD) cut into strings of CHUNK records, so the round reads it with one MGET
and NumPy takes it as it comes (no parsing). A car keeps its slot in its region's array; a car that changes region is
moved, and a slot freed is reused. All keys of a region's book share the hash tag `{book:<region>}`, so under Redis
Cluster a region's book lives on one shard.

What a car's offer needs besides its heartbeat is its profile (profile_build: status, policy, hardware and measured
speeds, energy price, reputation, and the basis of its stay's departure prediction), kept in Redis beside its state
and rebuilt from the database when any of it changes (vehicle_refresh, after the change commits). A heartbeat then
touches no database: the admission script hands back the profile, the offer is computed here, and one more round
trip writes it (offer_store).
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import numpy as np
from django.conf import settings
from django.db import transaction

from core.redis import binary_client, client

from . import availability, offers, state_store
from .departure import ParkingRecord, stays_basis
from .models import Vehicle, VehicleThroughput
from .selectors import stays_of

CHUNK = 65_536  # records per Redis string: 9 MB at 144 bytes, far below Redis's 512 MB limit per string
REGION_OF_KEY = "idlefleet:book:region-of"  # hash: car -> the region whose book holds its record
REGIONS_KEY = "idlefleet:book:regions"  # set: every region with a book
LOST_AFTER_KEY = state_store.LOST_AFTER_KEY  # hash: car -> real seconds of silence after which it is gone
DEMAND_FRESH_S = 5.0  # a process reads a region's demand signal again after this long
# A profile is rebuilt from the database at least this often (at the car's first heartbeat after it expires): what a
# change that sent no signal (a bulk UPDATE) left stale lasts no longer. 280 rebuilds a second at 1M cars.
PROFILE_TTL_S = 3600


def region_part(region: str) -> str:
    """The region as it appears in key names: a code (US-CA), or "-" for the market of cars with no region."""
    return region or "-"


def _prefix(region: str) -> str:
    return f"idlefleet:{{book:{region_part(region)}}}:"


def profile_key(vehicle_id: int) -> str:
    return state_store.profile_key(vehicle_id)


# Move the car's record to its region's book, or drop it (an empty record): one atomic step, so a round never reads a
# car in two regions or in none while it moves. KEYS: REGION_OF_KEY, REGIONS_KEY, LOST_AFTER_KEY. ARGV: the car, its
# region's key part, the record ("" to drop it), CHUNK, the record size, the car's lost-after seconds ("" to keep it,
# "0" for the platform's default: only a car asked to heartbeat rarely is given longer).
_WRITE = """
local car, region, record = ARGV[1], ARGV[2], ARGV[3]
local per, size = tonumber(ARGV[4]), tonumber(ARGV[5])
local function prefix(r) return "idlefleet:{book:" .. r .. "}:" end
local old = redis.call("HGET", KEYS[1], car)
if old and (old ~= region or record == "") then
  local p = prefix(old)
  local slot = redis.call("HGET", p .. "slots", car)
  if slot then
    slot = tonumber(slot)
    redis.call("SETRANGE", p .. "chunk:" .. math.floor(slot / per), (slot % per) * size, string.rep("\\0", size))
    redis.call("HDEL", p .. "slots", car)
    redis.call("RPUSH", p .. "free", slot)
  end
  redis.call("HDEL", KEYS[1], car)
end
if ARGV[6] == "0" then
  redis.call("HDEL", KEYS[3], car)
elseif ARGV[6] ~= "" then
  redis.call("HSET", KEYS[3], car, ARGV[6])
end
if record == "" then return 0 end
local p = prefix(region)
local slot = redis.call("HGET", p .. "slots", car)
if not slot then
  slot = redis.call("LPOP", p .. "free")
  if not slot then slot = redis.call("INCR", p .. "size") - 1 end
  redis.call("HSET", p .. "slots", car, slot)
  redis.call("HSET", KEYS[1], car, region)
  redis.call("SADD", KEYS[2], region)
end
slot = tonumber(slot)
redis.call("SETRANGE", p .. "chunk:" .. math.floor(slot / per), (slot % per) * size, record)
return 1
"""
_scripts: dict[str, Any] = {}


def _write_script():
    script = _scripts.get("write")
    if script is None:
        script = _scripts["write"] = binary_client().register_script(_WRITE)
    return script


# --- Profiles ---------------------------------------------------------------------------------------------------


def profiles_build(vehicle_ids: Iterable[int]) -> dict[int, dict]:
    """Each car's profile from the database, in four queries whatever the count: what its offer needs besides its
    heartbeat (fleet.offers.offer_compute reads it). Cars that do not exist are left out."""
    ids = list(vehicle_ids)
    vehicles = list(
        Vehicle.objects.filter(pk__in=ids)
        .select_related("hardware", "policy")
        .only(
            "pk", "status", "region", "time_zone", "battery_capacity_kwh", "energy_price_cents_per_kwh",
            "results_valid", "results_invalid", "hardware", "policy",
        )
    )  # fmt: skip
    open_sessions, history = stays_of(ids)
    measured = _measured(ids)
    profiles = {}
    for vehicle in vehicles:
        hw, policy = vehicle.hardware, getattr(vehicle, "policy", None)
        arrived = open_sessions.get(vehicle.pk)
        profile = {
            "v": vehicle.pk,
            "status": vehicle.status if policy is not None else "paused",
            "region": vehicle.region,
            "tz": vehicle.time_zone,
            "capacity": vehicle.battery_capacity_kwh,
            "price": float(vehicle.energy_price_cents_per_kwh),
            "valid": vehicle.results_valid,
            "invalid": vehicle.results_invalid,
            "hw": [hw.pk, hw.int8_tops, hw.factors, hw.typical_power_w, hw.max_power_w],
            "measured": measured.get(vehicle.pk, {}),
            "min_price": policy.min_price_mcents_per_ch if policy else 0,
            "policy": [
                policy.enabled, [list(w) for w in policy.windows], float(policy.battery_floor_pct),
                policy.plugged_in_only, float(policy.max_energy_kwh_per_day), float(policy.max_power_w),
                policy.leave_at.timestamp() if policy.leave_at else None,
            ] if policy else [False, [], 100.0, False, 0.0, 0.0, None],
            "arrived": arrived.timestamp() if arrived else None,
            # Whether it has a history: a car without one needs none read to predict a stay longer than its prior.
            "stays": len(history.get(vehicle.pk, ())),
            "basis": stays_basis(history=history.get(vehicle.pk, []), arrived_at=arrived, tz=vehicle.tz)
            if arrived else None,
        }  # fmt: skip
        profiles[vehicle.pk] = profile
    return profiles


def history_of(vehicle_id: int) -> list[ParkingRecord]:
    return stays_of([vehicle_id])[1].get(vehicle_id, [])


def _measured(ids: list[int]) -> dict[int, dict[str, list[float]]]:
    """Per car and precision: the slowest measured speed (CH per real hour) of the workloads it ran, and the most
    energy per CH, as fleet.selectors.hardware_of and the round's ask take them."""
    measured: dict[int, dict[str, list[float]]] = defaultdict(dict)
    rows = VehicleThroughput.objects.filter(vehicle_id__in=ids).values_list(
        "vehicle_id", "precision", "items_per_s", "ch_per_item", "wh_per_item"
    )
    for vehicle_id, precision, items_per_s, ch_per_item, wh_per_item in rows:
        ch_per_hour = items_per_s * ch_per_item * 3600
        wh_per_ch = wh_per_item / ch_per_item if ch_per_item else 0.0
        figures = measured[vehicle_id].get(precision)
        if figures is None:
            measured[vehicle_id][precision] = [ch_per_hour, wh_per_ch]
        else:
            figures[0], figures[1] = min(figures[0], ch_per_hour), max(figures[1], wh_per_ch)
    return measured


# --- Writing offers ---------------------------------------------------------------------------------------------


def offer_store(
    offer: offers.Offer, *, region: str, lost_after: float | None = None, pipe=None, drop: bool = False
) -> None:
    """Put the car's offer in its region's book (moving it from another region's if it was there), or drop it."""
    script = _write_script()
    if lost_after is None:
        silence = ""
    elif lost_after <= availability.HEARTBEAT_LOST_AFTER_S:
        silence = "0"
    else:
        silence = repr(lost_after)
    args = [offer.car, region_part(region), b"" if drop else offer.pack(), CHUNK, offers.RECORD.itemsize, silence]
    script(keys=[REGION_OF_KEY, REGIONS_KEY, LOST_AFTER_KEY], args=args, client=pipe)


def heartbeat_offer(
    *, vehicle_id: int, state: dict, received_ts: float, profile: str | dict | None, holds_work: bool
) -> float:
    """A heartbeat's part in the book: the car's offer as of this state, stored with the interval the car is asked to
    heartbeat at (fleet.offers.heartbeat_interval_car_s). Returns that interval in real seconds (the answer's
    next_heartbeat_s). A car whose profile Redis does not have (a cold Redis, a new car) has it built first."""
    if isinstance(profile, str):
        profile = json.loads(profile)
    elif profile is None:
        profile = profile_rebuild(vehicle_id)
    clock = float(state.get("clock_rate", 1.0)) or 1.0
    if profile is None:  # the car was deleted meanwhile
        return offers.HEARTBEAT_SECONDS / clock
    probe = offers.offer_compute(profile, state, received_ts=received_ts, history=lambda: history_of(vehicle_id))
    interval_car_s = offers.heartbeat_interval_car_s(
        offer=probe, computing=bool(state.get("computing")), holds_work=holds_work,
        demand=demand_get(profile["region"]), idle_s=settings.IDLE_HEARTBEAT_SECONDS,
    )  # fmt: skip
    interval_s = interval_car_s / clock
    lost_after = offers.lost_after_s(interval_s, often=interval_car_s <= offers.HEARTBEAT_SECONDS)
    offer = offers.Offer(**{**probe.__dict__, "lost_at": received_ts + lost_after})
    offer_store(offer, region=profile["region"], lost_after=lost_after)
    return interval_s


def profile_rebuild(vehicle_id: int) -> dict | None:
    """The car's profile built from the database now and kept in Redis (None for a car that no longer exists)."""
    profile = profiles_build([vehicle_id]).get(vehicle_id)
    if profile is not None:
        client().set(profile_key(vehicle_id), json.dumps(profile), ex=PROFILE_TTL_S)
    return profile


def vehicle_refresh(vehicle_id: int) -> None:
    """Rebuild the car's profile from the database and its offer from its last heartbeat: now (this connection sees
    the change), and again once the current transaction commits, if there is one (so that the book ends with what was
    committed, whatever other writers did meanwhile). Every change of what an offer depends on calls this: the owner's
    policy, pausing and resuming, the platform's suspension, parking and departure, a measured speed, a judged result,
    the car's hardware, price or region (fleet.signals does for saved rows; services that update in bulk call it)."""
    vehicles_refresh_now([vehicle_id])
    if transaction.get_connection().in_atomic_block:
        transaction.on_commit(lambda: vehicles_refresh_now([vehicle_id]))


def vehicles_refresh_now(vehicle_ids: Iterable[int]) -> int:
    """Rebuild these cars' profiles and offers now (a deleted car's are dropped). Returns the offers written."""
    ids = list(vehicle_ids)
    profiles = profiles_build(ids)
    states = state_store.states_get(ids)
    lost_after = dict(zip(ids, client().hmget(LOST_AFTER_KEY, [str(i) for i in ids]), strict=True)) if ids else {}
    pipe = binary_client().pipeline(transaction=False)
    text = client().pipeline(transaction=False)
    written = 0
    for vehicle_id in ids:
        profile = profiles.get(vehicle_id)
        if profile is None:
            text.delete(profile_key(vehicle_id))
            offer_store(_empty(vehicle_id), region="", pipe=pipe, drop=True)
            continue
        state = states.get(vehicle_id)
        if state is None:
            text.delete(profile_key(vehicle_id))  # no heartbeat yet: its first one builds both afresh
            continue
        text.set(profile_key(vehicle_id), json.dumps(profile), ex=PROFILE_TTL_S)
        seconds = float(lost_after[vehicle_id]) if lost_after.get(vehicle_id) else availability.HEARTBEAT_LOST_AFTER_S
        received = datetime.fromisoformat(state["received_at"]).timestamp()
        offer = offers.offer_compute(profile, state, received_ts=received, lost_after=seconds,
                                     history=lambda v=vehicle_id: history_of(v))  # fmt: skip
        offer_store(offer, region=profile["region"], pipe=pipe)
        written += 1
    text.execute()
    pipe.execute()
    return written


def _empty(vehicle_id: int) -> offers.Offer:
    zeros = (0.0,) * len(offers.POOLS)
    return offers.Offer(vehicle_id, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, zeros, zeros, 0, 0.0, 0, 0, False)


# --- Reading ----------------------------------------------------------------------------------------------------


def regions() -> list[str]:
    """Every region that has a book, the blank one ("") included when it has one, sorted."""
    return sorted("" if r == "-" else r for r in client().smembers(REGIONS_KEY))


def read(region: str) -> np.ndarray:
    """The region's whole book as an array of offers.RECORD (empty slots have car 0), in one round trip."""
    prefix = _prefix(region)
    size = binary_client().get(prefix + "size")
    count = int(size or 0)
    if not count:
        return np.zeros(0, dtype=offers.RECORD)
    chunks = math.ceil(count / CHUNK)
    raws = binary_client().mget([f"{prefix}chunk:{i}" for i in range(chunks)])
    width = offers.RECORD.itemsize
    parts = []
    for i, raw in enumerate(raws):
        want = (min(CHUNK, count - i * CHUNK)) * width
        raw = raw or b""
        parts.append(raw[:want] + bytes(want - len(raw)) if len(raw) != want else raw)
    return np.frombuffer(b"".join(parts) if len(parts) > 1 else parts[0], dtype=offers.RECORD)


def records_of(vehicle_ids: Iterable[int]) -> np.ndarray:
    """These cars' records in the book (those it has), as offers.RECORD, in three round trips whatever the count."""
    ids = [str(i) for i in vehicle_ids]
    if not ids:
        return np.zeros(0, dtype=offers.RECORD)
    regions = client().hmget(REGION_OF_KEY, ids)
    pipe = client().pipeline(transaction=False)
    found = [(car, region) for car, region in zip(ids, regions, strict=True) if region is not None]
    for car, region in found:
        pipe.hget(f"idlefleet:{{book:{region}}}:slots", car)
    slots = pipe.execute()
    width = offers.RECORD.itemsize
    raw = binary_client().pipeline(transaction=False)
    for (_, region), slot in zip(found, slots, strict=True):
        if slot is not None:
            slot = int(slot)
            start = (slot % CHUNK) * width
            raw.getrange(f"idlefleet:{{book:{region}}}:chunk:{slot // CHUNK}", start, start + width - 1)
    parts = [part for part in raw.execute() if len(part) == width]
    return np.frombuffer(b"".join(parts), dtype=offers.RECORD) if parts else np.zeros(0, dtype=offers.RECORD)


def offer_of(vehicle_id: int) -> offers.Offer | None:
    """One car's record in the book, or None (for pages and tests)."""
    region = client().hget(REGION_OF_KEY, str(vehicle_id))
    if region is None:
        return None
    prefix = _prefix("" if region == "-" else region)
    slot = client().hget(prefix + "slots", str(vehicle_id))
    if slot is None:
        return None
    slot, width = int(slot), offers.RECORD.itemsize
    start = (slot % CHUNK) * width
    raw = binary_client().getrange(f"{prefix}chunk:{slot // CHUNK}", start, start + width - 1)
    return offers.unpack(raw) if len(raw) == width else None


def region_of(vehicle_id: int) -> str | None:
    region = client().hget(REGION_OF_KEY, str(vehicle_id))
    return None if region is None else ("" if region == "-" else region)


# --- What the round tells the heartbeats ------------------------------------------------------------------------

_demand_seen: dict[str, tuple[float, dict]] = {}


def demand_publish(region: str, demand: dict[str, Any]) -> None:
    """After a round: per pool, the best price of its bids that went unfilled (and "fee"), so that a car whose ask it
    meets heartbeats often: the next round is likely to sell it."""
    key = _prefix(region) + "demand"
    pipe = client().pipeline(transaction=True)
    pipe.delete(key)
    if demand:
        pipe.hset(key, mapping={name: repr(value) for name, value in demand.items()})
    pipe.execute()


# Raise a pool's best price in these regions' demand signals if the new bid pays more. KEYS: the signals. ARGV: the
# pool, the price, the fee.
_DEMAND_RAISE = """
for _, key in ipairs(KEYS) do
  local best = redis.call("HGET", key, ARGV[1])
  if not best or tonumber(best) < tonumber(ARGV[2]) then redis.call("HSET", key, ARGV[1], ARGV[2]) end
  redis.call("HSET", key, "fee", ARGV[3])
end
return 1
"""


def demand_raise(regions: Iterable[str], *, pool: str, price: int, fee: float) -> None:
    """A bid was placed: until the next round says otherwise, cars of these regions whose ask it meets in `pool` are
    about to get work, and heartbeat often from their next heartbeat on."""
    keys = [_prefix(region) + "demand" for region in regions]
    if keys:
        script = _scripts.get("demand")
        if script is None:
            script = _scripts["demand"] = client().register_script(_DEMAND_RAISE)
        script(keys=keys, args=[pool, int(price), repr(float(fee))])


def demand_get(region: str) -> dict[str, Any]:
    """The region's last demand signal, read from Redis at most every DEMAND_FRESH_S per process."""
    seen = _demand_seen.get(region)
    now = time.monotonic()
    if seen is not None and now - seen[0] < DEMAND_FRESH_S:
        return seen[1]
    raw = client().hgetall(_prefix(region) + "demand")
    demand = {name: float(value) for name, value in raw.items()}
    _demand_seen[region] = (now, demand)
    return demand


def process_caches_clear() -> None:
    _demand_seen.clear()
    _scripts.clear()


# Mark many cars at once: ARGV[1] packs (car: int64, until: float64) pairs, little-endian. KEYS: the working set.
_WORK_MARK = """
local data, args = ARGV[1], {}
for at = 1, #data, 16 do
  local car, busy_until = struct.unpack("<i8d", data, at)
  args[#args + 1] = busy_until
  args[#args + 1] = string.format("%d", car)
  if #args >= 2000 then redis.call("ZADD", KEYS[1], unpack(args)); args = {} end
end
if #args > 0 then redis.call("ZADD", KEYS[1], unpack(args)) end
return 1
"""
WORK_MARK_BATCH = 50_000  # cars per script call: Redis is never held for long


def work_mark(seconds_by_car: dict[int, float]) -> None:
    """These cars hold work (or were just sold some) for about so many seconds each: their heartbeats come often
    meanwhile (the admission script reads state_store.WORK_KEY)."""
    cars = np.fromiter(seconds_by_car.keys(), dtype=np.int64, count=len(seconds_by_car))
    seconds = np.fromiter(seconds_by_car.values(), dtype=np.float64, count=len(seconds_by_car))
    work_mark_until(cars, time.time() + seconds)


def work_mark_until(cars: np.ndarray, until: np.ndarray) -> None:
    """work_mark for a round's sales, as arrays: packed by NumPy and added by a script, WORK_MARK_BATCH cars a call;
    the marks past their time are swept at the same time."""
    script = _scripts.get("work")
    if script is None:
        script = _scripts["work"] = binary_client().register_script(_WORK_MARK)
    pairs = np.zeros(len(cars), dtype=[("car", "<i8"), ("until", "<f8")])
    pairs["car"], pairs["until"] = cars, until
    pipe = binary_client().pipeline(transaction=False)
    for start in range(0, len(pairs), WORK_MARK_BATCH):
        script(keys=[state_store.WORK_KEY], args=[pairs[start : start + WORK_MARK_BATCH].tobytes()], client=pipe)
    pipe.zremrangebyscore(state_store.WORK_KEY, "-inf", time.time())
    pipe.execute()


# The car is working: it is gone after the platform's own silence again, in its record too (the seen time plus that).
# KEYS: REGION_OF_KEY, LOST_AFTER_KEY. ARGV: the car, CHUNK, the record size, the threshold.
_SILENCE_RESET = """
redis.call("HDEL", KEYS[2], ARGV[1])
local region = redis.call("HGET", KEYS[1], ARGV[1])
if not region then return 0 end
local p = "idlefleet:{book:" .. region .. "}:"
local slot = redis.call("HGET", p .. "slots", ARGV[1])
if not slot then return 0 end
slot = tonumber(slot)
local per, size = tonumber(ARGV[2]), tonumber(ARGV[3])
local key, at = p .. "chunk:" .. math.floor(slot / per), (slot % per) * size
local seen = struct.unpack("<d", redis.call("GETRANGE", key, at + 8, at + 15))
redis.call("SETRANGE", key, at + 16, struct.pack("<d", seen + tonumber(ARGV[4])))
return 1
"""


def lost_after_reset(vehicle_id: int) -> None:
    """The car took work: its agent heartbeats often while it runs, so it is gone after the platform's own silence
    (fleet.availability.HEARTBEAT_LOST_AFTER_S) again, not after the longer one its last idle heartbeat was given."""
    script = _scripts.get("silence")
    if script is None:
        script = _scripts["silence"] = binary_client().register_script(_SILENCE_RESET)
    args = [vehicle_id, CHUNK, offers.RECORD.itemsize, repr(float(availability.HEARTBEAT_LOST_AFTER_S))]
    script(keys=[REGION_OF_KEY, LOST_AFTER_KEY], args=args)


def lost_after_of(vehicle_ids: Iterable[int]) -> dict[int, float]:
    """Per car, the seconds of silence after which it is gone, as its last heartbeat's answer set them."""
    ids = list(vehicle_ids)
    if not ids:
        return {}
    values = client().hmget(LOST_AFTER_KEY, [str(i) for i in ids])
    return {i: float(v) for i, v in zip(ids, values, strict=True) if v is not None}
