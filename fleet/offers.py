"""A parked car's standing offer to the market: computed from its last heartbeat when the heartbeat arrives, read by
the auction round for the whole fleet in one pass. A pure module (no Django): fleet.book stores the offers in Redis.

An offer is fixed-width (RECORD), so a region's book is one array: the round reads it as NumPy columns and evaluates
every car at its own time with a few vector operations, instead of recomputing each car's availability from its
state, policy and parking history (fleet.availability, fleet.departure) as a round once did.

What a car can offer runs down between its heartbeats in two ways, and the offer keeps both: the limits that run with
the clock (the predicted departure, the owner's "I leave at", the end of an availability window) as the real time
`until` they end, and those that do not move while the car stands idle (the battery above the floor, what is left of
the day's energy cap) as car seconds `fixed_s`. Evaluated at the heartbeat's own moment an offer is exactly what
fleet.availability says; later, exactly what it would say from the same heartbeat, except where a prediction steps
(a precedent stay drops out of the departure prediction, a stated departure passes): the next heartbeat corrects it.

Units: CH per car hour (rates), m¢ per CH (energy cost, asks), Unix seconds (times).
"""

from __future__ import annotations

import math
import struct
import zoneinfo
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from . import availability
from .agent.precisions import PRECISIONS
from .agent.protocol import HEARTBEAT_SECONDS, IDLE_HEARTBEAT_SECONDS, SILENT_AFTER_SECONDS
from .availability import MIN_OFFER_SECONDS, CarState, Hardware, Policy, Window, availability_get, rated_ch_per_hour
from .departure import ParkingRecord, remaining_from_basis, remaining_parked_seconds

POOLS = PRECISIONS  # the auction's pools, in its order (marketplace.auction.POOLS)
# The limits of fleet.availability that run down with the clock; the others stay until the next reading.
CLOCK_LIMITS = ("departure", "leave_at", "window")
FIXED_LIMITS = ("energy cap", "battery")
# A car is taken for gone after this many of the intervals it was asked to heartbeat at.
LOST_AFTER_INTERVALS = 1.5

# One offer, little-endian and packed: the book is an array of these (fleet.book), one per car.
RECORD = np.dtype(
    [
        ("car", "<i8"),  # the vehicle id; 0: an empty slot
        ("seen", "<f8"),  # when its last heartbeat was received
        ("lost_at", "<f8"),  # when it is taken for gone, if no heartbeat came since
        ("until", "<f8"),  # when the limits that run with the clock end (real time)
        ("fixed_s", "<f8"),  # the limits that do not, car seconds
        ("clock", "<f8"),  # car seconds per real second
        ("power_w", "<f8"),  # what compute draws
        ("rate", "<f8", (len(POOLS),)),  # CH per car hour per pool; 0: not offered there
        ("energy", "<f8", (len(POOLS),)),  # energy cost, m¢ per CH, per pool
        ("min_price", "<i8"),  # the owner's minimum, m¢ per CH
        ("reliability", "<f8"),  # its reputation (between equal asks the higher sells first)
        ("held", "<u8"),  # the model files it holds, as bits (held_bits)
        ("hardware", "<i4"),  # its hardware profile's id
        ("offered", "<u1"),  # 1: available at its reading
        ("_pad", "u1", (3,)),
    ]
)
_PACK = struct.Struct(f"<q6d{len(POOLS)}d{len(POOLS)}dqdQiB3x")
if _PACK.size != RECORD.itemsize:  # the two layouts are one
    raise ImportError(f"fleet.offers: the packed offer is {_PACK.size} bytes, RECORD {RECORD.itemsize}")


def reputation(*, results_valid: int, results_invalid: int) -> float:
    """A car's reputation in [0, 1): the share of its judged results that were validated, with one valid and one
    invalid result assumed before any (Laplace's rule), so a new car starts at 0.5, a long clean record nears 1, and
    every fault weighs more the shorter the record. The auction prefers the higher between equal asks."""
    if results_valid < 0 or results_invalid < 0:
        raise ValueError("result counts cannot be negative")
    return (results_valid + 1) / (results_valid + results_invalid + 2)


def held_bits(shas: Sequence[str]) -> int:
    """The model files (sha256 hex) a car holds, as one bit each of 64 (a one-word Bloom filter). The round only
    breaks ties with it (a car that holds a pool's model wins between equal asks and reputations: no download), so a
    rare false "holds" costs a download, never a wrong sale; what dispatch sizes with is read from the car's state."""
    bits = 0
    for sha in shas:
        try:
            bits |= 1 << (int(sha[:16], 16) % 64)
        except ValueError:
            continue
    return bits


@dataclass(frozen=True)
class Offer:
    car: int
    seen: float
    lost_at: float
    until: float
    fixed_s: float
    clock: float
    power_w: float
    rate: tuple[float, ...]
    energy: tuple[float, ...]
    min_price: int
    reliability: float
    held: int
    hardware: int
    offered: bool
    reasons: tuple[str, ...] = ()  # why not offered, in the owner's words

    def pack(self) -> bytes:
        return _PACK.pack(
            self.car, self.seen, self.lost_at, self.until, self.fixed_s, self.clock, self.power_w, *self.rate,
            *self.energy, self.min_price, self.reliability, self.held, self.hardware, int(self.offered),
        )  # fmt: skip


def unpack(raw: bytes) -> Offer:
    values = _PACK.unpack(raw)
    n = len(POOLS)
    return Offer(
        car=values[0], seen=values[1], lost_at=values[2], until=values[3], fixed_s=values[4], clock=values[5],
        power_w=values[6], rate=tuple(values[7 : 7 + n]), energy=tuple(values[7 + n : 7 + 2 * n]),
        min_price=values[7 + 2 * n], reliability=values[8 + 2 * n], held=values[9 + 2 * n],
        hardware=values[10 + 2 * n], offered=bool(values[11 + 2 * n]),
    )  # fmt: skip


def lost_after_s(interval_s: float, *, often: bool) -> float:
    """Real seconds of silence after which a car asked to heartbeat every `interval_s` real seconds is gone: the
    platform's own threshold (fleet.availability.HEARTBEAT_LOST_AFTER_S) for a car asked to heartbeat `often`, else
    LOST_AFTER_INTERVALS of its longer interval."""
    default = availability.HEARTBEAT_LOST_AFTER_S
    return default if often else max(LOST_AFTER_INTERVALS * interval_s, default)


def offer_compute(
    profile: dict,
    state: dict,
    *,
    received_ts: float,
    lost_after: float = SILENT_AFTER_SECONDS,
    history: Callable[[], list[ParkingRecord]] | None = None,
) -> Offer:
    """The car's offer as of its heartbeat `state` (as fleet.state_store keeps it), received at `received_ts`.

    `profile` is what fleet.book keeps of the car between heartbeats (fleet.book.profile_build: its status, policy,
    hardware and measured speeds, energy price, reputation, and its stay's departure basis). `history` returns its
    parking history, asked for only when it has been parked longer than every precedent stay (then the prediction
    starts again as if it had just arrived, and needs the history for the present time of day).
    """
    car = profile["v"]
    clock = float(state.get("clock_rate", 1.0)) or 1.0
    observed = datetime.fromisoformat(state["observed_at"])
    tz = zoneinfo.ZoneInfo(profile["tz"])
    hardware = _hardware(profile)
    policy = _policy(profile)
    car_state = CarState(
        observed_at=observed,
        heartbeat_age_s=0.0,
        parked=bool(state["parked"]),
        plugged_in=bool(state["plugged_in"]),
        charge_power_w=float(state.get("charge_power_w", 0)),
        battery_pct=float(state["battery_pct"]),
        battery_capacity_kwh=float(state.get("battery_capacity_kwh") or profile["capacity"]),
        network=state["network"],
        energy_used_today_kwh=float(state.get("energy_used_today_wh", 0)) / 1000,
        computing=bool(state.get("computing")),
        clock_rate=clock,
    )
    declared = policy.leave_at if policy.leave_at is not None and policy.leave_at > observed else None
    left = _parked_seconds_left(profile, observed, tz, declared, history)
    availability = availability_get(
        hardware=hardware, policy=policy, state=car_state, vehicle_status=profile["status"], tz=tz,
        parked_seconds_left=left,
    )  # fmt: skip
    common = {
        "car": car, "seen": received_ts, "lost_at": received_ts + lost_after, "clock": clock,
        "min_price": int(profile["min_price"]), "hardware": int(profile["hw"][0]),
        "reliability": reputation(results_valid=profile["valid"], results_invalid=profile["invalid"]),
        "held": held_bits(state.get("models_cached", ())),
    }  # fmt: skip
    zeros = (0.0,) * len(POOLS)
    if not availability.available:
        return Offer(**common, until=received_ts, fixed_s=0.0, power_w=0.0, rate=zeros, energy=zeros, offered=False,
                     reasons=availability.reasons)  # fmt: skip
    limits = availability.limits_s
    running_s = min(limits[name] for name in CLOCK_LIMITS)
    price = float(profile["price"])
    rates, energies = [], []
    for pool in POOLS:
        rate = availability.ch_per_hour.get(pool, 0.0)
        rated = rated_ch_per_hour(hardware, pool, power_w=availability.power_w)
        if rate <= 0 or rated <= 0:
            rates.append(0.0)
            energies.append(0.0)
            continue
        measured = profile["measured"].get(pool)
        wh_per_ch = measured[1] if measured and measured[1] > 0 else availability.power_w / rated
        rates.append(rate)
        energies.append(wh_per_ch * price)  # Wh per CH × ¢ per kWh = m¢ per CH
    return Offer(
        **common,
        until=received_ts + running_s / clock if math.isfinite(running_s) else math.inf,
        fixed_s=min(limits[name] for name in FIXED_LIMITS),
        power_w=availability.power_w,
        rate=tuple(rates),
        energy=tuple(energies),
        offered=True,
    )


def _parked_seconds_left(profile, observed, tz, declared, history) -> float:
    arrived = profile.get("arrived")
    basis = profile.get("basis")
    if arrived is not None and basis is not None:
        seconds = remaining_from_basis(basis, elapsed_s=observed.timestamp() - arrived)
        if seconds is not None:
            if declared is not None:
                seconds = min(seconds, (declared.astimezone(UTC) - observed.astimezone(UTC)).total_seconds())
            return max(min(seconds, 24 * 3600), 0.0)
    records = history() if history is not None and profile.get("stays", 1) else []
    arrived_at = datetime.fromtimestamp(arrived, tz=UTC) if arrived is not None else observed
    return remaining_parked_seconds(
        history=records, arrived_at=arrived_at, now=observed, tz=tz, declared_departure=declared
    )


def _hardware(profile: dict) -> Hardware:
    _, int8_tops, factors, typical_w, max_w = profile["hw"]
    return Hardware(
        int8_tops=int8_tops, factors=factors, typical_power_w=typical_w, max_power_w=max_w,
        measured_ch_per_hour={precision: figures[0] for precision, figures in profile["measured"].items()},
    )  # fmt: skip


def _policy(profile: dict) -> Policy:
    enabled, windows, floor, plugged_only, max_energy, max_power, leave_at = profile["policy"]
    return Policy(
        enabled=enabled, windows=tuple(Window(*w) for w in windows), battery_floor_pct=floor,
        plugged_in_only=plugged_only, max_energy_kwh_per_day=max_energy, max_power_w=max_power,
        leave_at=datetime.fromtimestamp(leave_at, tz=UTC) if leave_at is not None else None,
    )  # fmt: skip


# --- The cadence of a car's heartbeats ----------------------------------------------------------------------------


def heartbeat_interval_car_s(
    *, offer: Offer, computing: bool, holds_work: bool, demand: dict, idle_s: float = IDLE_HEARTBEAT_SECONDS
) -> float:
    """Car seconds until the car's next heartbeat: often (HEARTBEAT_SECONDS) while it computes, holds work, or is
    about to get some (a bid of its region that went unfilled in the last round pays at least its ask in a pool it
    offers: `demand` maps pool -> that round's best unfilled price, m¢ per CH, with "fee" the platform's share);
    rarely (`idle_s`, IDLE_HEARTBEAT_SECONDS by default) otherwise. A departure is announced at once whatever the
    interval. Never less often than HEARTBEAT_SECONDS."""
    idle_s = max(idle_s, HEARTBEAT_SECONDS)
    if computing or holds_work:
        return HEARTBEAT_SECONDS
    if offer.offered:
        fee = float(demand.get("fee", 0.0))
        for pool, rate, energy in zip(POOLS, offer.rate, offer.energy, strict=True):
            best = demand.get(pool)
            if rate > 0 and best is not None and _ask(offer.min_price, energy, fee) <= best:
                return HEARTBEAT_SECONDS
    return idle_s


def _ask(min_price: int, energy: float, fee: float) -> int:
    # The ask never runs an owner at a loss: max(the owner's minimum, energy cost ÷ (1 − platform fee)).
    return max(min_price, math.ceil(energy / (1 - fee)))


# --- Reading a book -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rows:
    """A book evaluated at one moment: one row per (offered car, pool it offers), as the auction takes them, with
    what the round needs of each car besides (index: the row's record in the book)."""

    car: np.ndarray  # int64
    pool: np.ndarray  # int8 index into POOLS
    ch: np.ndarray  # float64 CH it can deliver before it must stop
    ask: np.ndarray  # int64 m¢ per CH
    reliability: np.ndarray  # float64
    holds_model: np.ndarray  # bool
    index: np.ndarray  # int64: the row's record in the book
    hours: np.ndarray  # float64 car hours it can compute


def rows_at(
    book: np.ndarray, *, now: float, fee: float, wanted: Sequence[int] = (), exclude: np.ndarray | None = None
) -> Rows:
    """Every offer of `book` (an array of RECORD) as of `now`: cars heard from recently enough (lost_at) and available
    at their reading, their hours run down with the clock (until, clock) and capped by what does not (fixed_s), those
    left with less than MIN_OFFER_SECONDS dropped, as fleet.availability drops them. `wanted[p]` holds the bits
    (held_bits) of the model files pool p's bids run; `exclude` the cars not to offer (busy ones)."""
    live = (book["car"] != 0) & (book["offered"] == 1) & (book["lost_at"] >= now)
    seconds = np.minimum((book["until"] - now) * book["clock"], book["fixed_s"])
    live &= seconds >= MIN_OFFER_SECONDS
    if exclude is not None and len(exclude):
        live &= ~np.isin(book["car"], exclude)
    index = np.flatnonzero(live)
    if not len(index):
        empty = np.zeros(0)
        return Rows(empty.astype(np.int64), empty.astype(np.int8), empty, empty.astype(np.int64), empty,
                    empty.astype(bool), empty.astype(np.int64), empty)  # fmt: skip
    part = book[index]
    hours = seconds[index] / 3600
    rates, energies = part["rate"], part["energy"]
    ask = np.maximum(part["min_price"][:, None], np.ceil(energies / (1 - fee)).astype(np.int64))
    wanted_bits = np.array([wanted[p] if p < len(wanted) else 0 for p in range(len(POOLS))], dtype=np.uint64)
    holds = (part["held"][:, None] & wanted_bits[None, :]) != 0
    row, pool = np.nonzero(rates > 0)
    return Rows(
        car=part["car"][row].astype(np.int64),
        pool=pool.astype(np.int8),
        ch=hours[row] * rates[row, pool],
        ask=ask[row, pool],
        reliability=part["reliability"][row],
        holds_model=holds[row, pool],
        index=index[row],
        hours=hours[row],
    )
