"""Work-unit sizing: how many items to put in one work unit for one car. A pure function (no Django).

Units: compute in CH (one hour of 100 dense INT8 TOPS), time in seconds, sizes in bytes, bandwidth in Mbps
(10^6 bit/s, as the agent measures it).

The rule. With B = safety × the predicted parked time left, a unit of n items must satisfy
- compute: n × ch_per_item / car_ch_per_hour hours ≤ B, so that it fits well inside the parked time;
- whole unit: transfer + compute ≤ (1 + transfer_ratio) × B, where transfer = the model download (unless the car
  holds the model) + n × (item input at the down rate + item output at the up rate).
The count is the largest n that satisfies both, capped at max_items; 0 when not even min_items do.

So transfers get an allowance of transfer_ratio × B on top of the compute budget: for a unit that fills its compute
budget (the usual case), transfer ≤ transfer_ratio × compute. Where transfers need more than that (a slow link, an
uncached model) the unit shrinks until the whole of it fits again, and is refused when nothing fits. No unit size can
make a big model download small next to compute when the car is leaving soon: then the count is still the one that
keeps the unit inside the time bound (not 0), because the download happens once and the car's next unit finds the
model cached. safety × (1 + transfer_ratio) ≤ 1, so every unit ends before the car is predicted to leave.

Bigger units are preferred within those bounds: each unit costs a lease round trip over a slow network and its own
verification, and the model download is paid once per car.
"""

from __future__ import annotations

import math

SECONDS_PER_HOUR = 3600.0
BITS_PER_BYTE = 8
BITS_PER_MEGABIT = 1e6


def transfer_seconds(size_bytes: float, mbps: float) -> float:
    """Seconds to move size_bytes bytes at mbps megabits per second; inf when there is something to move and no
    bandwidth, 0 when there is nothing to move."""
    if size_bytes < 0 or mbps < 0:
        raise ValueError("Sizes and bandwidths cannot be negative.")
    if size_bytes == 0:
        return 0.0
    if mbps == 0:
        return math.inf
    return size_bytes * BITS_PER_BYTE / (mbps * BITS_PER_MEGABIT)


def _most_items(seconds: float, fixed_seconds: float, seconds_per_item: float) -> float:
    """The largest n with fixed_seconds + n × seconds_per_item ≤ seconds (inf when items take no time)."""
    left = seconds - fixed_seconds
    if left < 0:
        return 0
    if seconds_per_item == 0:
        return math.inf
    # The relative slack keeps a quotient such as 449.99999999999994 from losing a whole item to float rounding.
    return math.floor(left / seconds_per_item * (1 + 1e-12))


def items_per_unit(
    *,
    ch_per_item: float,
    car_ch_per_hour: float,
    parked_seconds_left: float,
    down_mbps: float,
    up_mbps: float,
    item_bytes_in: float,
    item_bytes_out: float,
    model_bytes: int,
    model_cached: bool,
    min_items: int = 1,
    max_items: int = 10_000,
    safety: float = 0.25,
    transfer_ratio: float = 0.2,
) -> int:
    """The number of items in one work unit for this car, by the rule of the module docstring; 0 = give it none.

    ch_per_item: CH per item of the (inference model, precision); car_ch_per_hour: the car's CH rate in that
    precision; parked_seconds_left: predicted seconds until the car leaves; down_mbps, up_mbps: measured bandwidth;
    item_bytes_in, item_bytes_out: bytes per item down (input) and up (output); model_bytes: the model file's size;
    model_cached: the car already holds the model file.
    """
    for name, value in (
        ("ch_per_item", ch_per_item),
        ("car_ch_per_hour", car_ch_per_hour),
        ("item_bytes_in", item_bytes_in),
        ("item_bytes_out", item_bytes_out),
        ("model_bytes", model_bytes),
        ("down_mbps", down_mbps),
        ("up_mbps", up_mbps),
    ):
        if not value >= 0 or math.isinf(value):
            raise ValueError(f"{name} must be a finite number >= 0, not {value}.")
    if not 1 <= min_items <= max_items:
        raise ValueError("Need 1 <= min_items <= max_items.")
    if not (safety > 0 and transfer_ratio >= 0 and safety * (1 + transfer_ratio) <= 1):
        raise ValueError("Need safety > 0, transfer_ratio >= 0 and safety × (1 + transfer_ratio) <= 1.")
    if car_ch_per_hour == 0 or not parked_seconds_left > 0:
        return 0

    budget = safety * parked_seconds_left
    compute_per_item = ch_per_item / car_ch_per_hour * SECONDS_PER_HOUR
    transfer_per_item = transfer_seconds(item_bytes_in, down_mbps) + transfer_seconds(item_bytes_out, up_mbps)
    model_download = 0.0 if model_cached else transfer_seconds(model_bytes, down_mbps)
    items = min(
        max_items,
        _most_items(budget, 0.0, compute_per_item),
        _most_items((1 + transfer_ratio) * budget, model_download, compute_per_item + transfer_per_item),
    )
    return int(items) if items >= min_items else 0


# --- How long a lease lasts ----------------------------------------------------------------------------------------

# A lease covers twice the unit's predicted run time plus what its transfers take, and a little more: a car slower
# than measured by half still finishes within its first lease. The agent renews it every third of its length while
# it works, so a longer run is never taken for a lost car.
LEASE_RUN_FACTOR = 2.0
LEASE_EXTRA_S = 30.0
# Renewals keep a unit for at most this many times its predicted run (plus transfers): a car that slowed down more
# than that gives the unit back, and its measured speed (updated from every unit) sizes its next one.
HOLD_RUN_FACTOR = 4.0


def lease_seconds(*, predicted_s: float, transfer_s: float, floor_s: float, ceiling_s: float) -> float:
    """The length of one lease (and of each renewal), real seconds: LEASE_RUN_FACTOR × the predicted compute time +
    the transfers + LEASE_EXTRA_S, kept within [floor_s, ceiling_s]."""
    if not (predicted_s >= 0 and transfer_s >= 0 and 0 < floor_s <= ceiling_s):
        raise ValueError("Need predicted_s >= 0, transfer_s >= 0 and 0 < floor_s <= ceiling_s.")
    wanted = LEASE_RUN_FACTOR * predicted_s + transfer_s + LEASE_EXTRA_S
    return min(max(wanted, floor_s), ceiling_s)


def hold_limit_seconds(*, predicted_s: float, transfer_s: float, lease_s: float) -> float:
    """How long renewals may keep a unit in all, real seconds from its lease: HOLD_RUN_FACTOR × the predicted compute
    time + the transfers, and never less than one lease."""
    return max(HOLD_RUN_FACTOR * predicted_s + transfer_s, lease_s)
