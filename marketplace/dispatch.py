"""From sold compute to finished work: cutting allocations into work units, leasing them to cars, taking results
and failures back, reissuing what a lost or departing car held, and assembling a bid's results in item order.

This module saves a unit's lease (who holds it, until when, its probes, attempts and error), its result (outputs,
timing, who ran it) and its status, and its bid's status when work ends it. A result is saved here first and then
judged by marketplace/verdicts.py, which saves the verdict and returns what it means for the units and the bid
(verdicts.Judgement): this module acts on that.
"""

from __future__ import annotations

import math
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Exists, F, OuterRef, Q, Sum
from django.utils import timezone

from core.exceptions import ApplicationError
from fleet import availability, book, state_store
from fleet.agent import protocol
from fleet.agent.inference import decode_npy, encode_npy
from fleet.availability import Hardware, rated_ch_per_hour
from fleet.models import HardwareProfile, Vehicle, VehicleThroughput
from fleet.selectors import measurements_of, vehicles_live
from fleet.services import throughput_record

from . import auction, selftests, sizing, storage, verdicts
from .models import Allocation, Bid, PrecisionVariant, RoundSale, SelfTest, WorkUnit
from .payloads import LEASE_BATCH_SIZE, lease_lost, leased_items, no_such_unit, outputs_checked, variant_payload
from .signals import (
    bid_audited_announce,
    bid_closed_announce,
    bid_progressed_announce,
    bids_won_announce,
    units_cut_wanted,
)

MAX_UNIT_ATTEMPTS = 3
# What one item's output weighs on the way back, bytes (an embedding of 384 floats is 1.5 kB): sizing's upload term.
ITEM_OUTPUT_BYTES = 4 * 1024


# --- Cutting -----------------------------------------------------------------------------------------------------


def units_cut(*, allocations: list[Allocation], bids: dict[int, Bid], cars: list[dict[str, Any]]) -> int:
    """Give each allocated car work worth the CH it sold: reissued units of the bid first, then new ones.

    `allocations` are a round's, in pk order; `bids` holds their bids, locked by the caller and with ch_allocated
    already raised by the round; `cars[i]` describes allocations[i]'s car as the round saw it: ch_per_hour,
    parked_seconds_left, down_mbps, up_mbps, model_cached, hardware_id. Units are sized (marketplace/sizing.py) to fit
    well inside the car's predicted stay with transfer small next to compute. The bid's last allocation takes whatever
    items are left, so rounding never strands an item. A constant number of queries, whatever the round's size.
    Returns the number of units handed out.
    """
    bid_ids = {allocation.bid_id for allocation in allocations}
    reissued: dict[int, list[WorkUnit]] = {}
    waiting = WorkUnit.objects.filter(bid_id__in=bid_ids, status=WorkUnit.Status.QUEUED, assigned_vehicle__isnull=True)
    for unit in waiting.order_by("bid_id", "index"):
        reissued.setdefault(unit.bid_id, []).append(unit)
    next_index = dict(
        WorkUnit.objects.filter(bid_id__in=bid_ids).values("bid").annotate(n=Count("pk")).values_list("bid", "n")
    )
    # Only the bid's last allocation in the round (they are cut in pk order) takes what is left, or the first car
    # would get the work every other car bought.
    last_of_bid = {allocation.bid_id: allocation.pk for allocation in allocations}
    # A reissued unit never goes back to a car that ran it, nor a replica to a car of an owner who did: their owners,
    # in one query, only when a replica waits.
    replicas = [unit for units in reissued.values() for unit in units if unit.replica_of_id]
    owners = verdicts.owners_of(
        [a.vehicle_id for a in allocations] + [v for unit in replicas for v in unit.excluded_vehicles]
    ) if replicas else {}  # fmt: skip
    # CH an allocation sold but could not spend, because the units left were ones its car may not run: given back to
    # the bid at the end, so that its next rounds buy them from another car instead of waiting forever.
    unspent: dict[int, float] = {}
    stranded: dict[int, float] = {}
    cut: list[tuple] = []  # rows of _CUT_COLUMNS: a big round cuts tens of thousands, too many to build as models
    reassigned: list[WorkUnit] = []
    unitised_before = {bid_id: bids[bid_id].items_unitised for bid_id in bid_ids}
    for allocation, car in zip(allocations, cars, strict=True):
        bid = bids[allocation.bid_id]
        per_item = bid.variant.ch_per_item
        budget = max(1, round(allocation.ch / per_item))
        fully_allocated = bid.ch_allocated >= bid.ch_total and last_of_bid[bid.pk] == allocation.pk
        size = sizing.items_per_unit(
            ch_per_item=per_item,
            car_ch_per_hour=car["ch_per_hour"],
            parked_seconds_left=car["parked_seconds_left"],
            down_mbps=car["down_mbps"],
            up_mbps=car["up_mbps"],
            item_bytes_in=bid.dataset.size_bytes / max(bid.dataset.item_count, 1),
            item_bytes_out=ITEM_OUTPUT_BYTES,
            model_bytes=bid.variant.size_bytes or 0,
            model_cached=car["model_cached"],
            max_items=settings.WORK_UNIT_MAX_ITEMS,
        ) or 1  # fmt: skip
        index = next_index.get(bid.pk, 0)
        left: list[WorkUnit] = []
        for unit in reissued.get(bid.pk, []):
            # No unit goes back to a car that ran it (a failed known answer must not count twice). A replica checks
            # another car's result: it runs on the same hardware class, never on a car of an owner who ran it
            # (rounds.verification_allocate finds it a car when no allocation of the bid fits).
            if (
                (budget <= 0 and not fully_allocated)
                or verdicts.vehicle_refused(unit=unit, vehicle_id=allocation.vehicle_id, owners=owners)
                or (unit.replica_of_id and unit.requires_hardware_id
                    and unit.requires_hardware_id != car["hardware_id"])
            ):  # fmt: skip
                left.append(unit)
                continue
            rest = unit.item_end
            if unit.replica_of_id is None and unit.items > size:
                unit.item_end, unit.ch = unit.item_start + size, size * per_item
            unit.assigned_vehicle_id, unit.allocation = allocation.vehicle_id, allocation
            reassigned.append(unit)
            budget -= unit.items
            # A unit given back by a car with more time or speed than this one is cut to this car's size, the rest
            # into units of that size too: this car's while its budget lasts, else left for the next rounds.
            for start in range(unit.item_end, rest, size):
                end = min(start + size, rest)
                mine = budget > 0 or fully_allocated
                cut.append(
                    (bid.pk, unit.variant_id, index, start, end, (end - start) * per_item,
                     allocation.vehicle_id if mine else None, allocation.pk if mine else None,
                     unit.price_cap_mcents, unit.excluded_vehicles)
                )  # fmt: skip
                budget -= (end - start) if mine else 0
                if not mine and unit.replica_of_id is None:
                    # A piece no car got this round waits for one (see the end: what the bid gets back for it).
                    stranded[bid.pk] = stranded.get(bid.pk, 0.0) + (end - start) * per_item
                index += 1
        reissued[bid.pk] = left
        remaining = bid.items - bid.items_unitised
        to_cut = remaining if fully_allocated else min(max(budget, 0), remaining)
        unspent[bid.pk] = unspent.get(bid.pk, 0.0) + max(budget - to_cut, 0) * per_item
        start = bid.items_unitised
        while to_cut > 0:
            count = min(size, to_cut)
            cut.append(
                (bid.pk, bid.variant_id, index, start, start + count, count * per_item, allocation.vehicle_id,
                 allocation.pk, None, [])
            )  # fmt: skip
            index, start, to_cut = index + 1, start + count, to_cut - count
        next_index[bid.pk], bid.items_unitised = index, start
    WorkUnit.objects.bulk_update(reassigned, ["assigned_vehicle", "allocation", "item_end", "ch"], batch_size=1000)
    _units_insert(cut)
    changed = [bids[bid_id] for bid_id in bid_ids if bids[bid_id].items_unitised != unitised_before[bid_id]]
    Bid.objects.bulk_update(changed, ["items_unitised"], batch_size=1000)
    for bid_id, units in reissued.items():
        # Without a refused unit, units are left only once every allocation's budget is spent: nothing goes back.
        # Pieces of a reissued unit that no car got this round count as left too: a later allocation of the bid in
        # the round does not see them, so its CH are given back for them rather than left sold with nothing to run.
        left = sum(unit.ch for unit in units if unit.replica_of_id is None) + stranded.get(bid_id, 0.0)
        back = min(left, unspent.get(bid_id, 0.0))
        if back > 0:
            Bid.objects.filter(pk=bid_id).update(ch_allocated=F("ch_allocated") - back)
    return len(reassigned) + len(cut)


class CarInfo(dict):
    """What dispatch and verification need of each car the round sells, read on demand from its offer in the book,
    its heartbeat and its measured speeds: only for the cars sold or considered, never for the whole fleet.

    Per car: hardware_id, parked_seconds_left (car seconds it can compute), clock_rate, down_mbps and up_mbps (its
    measured bandwidth), model_shas_held (the model files it holds), ch_per_hour (CH per car hour per pool it
    offers), rated (its hardware's rating per pool at its power), measured (CH per car hour per model file it ran)."""

    def __init__(self, records: np.ndarray, *, now: float) -> None:
        super().__init__()
        self.records, self.now = records, now

    def load(self, cars) -> None:
        wanted = sorted({int(c) for c in cars} - self.keys())
        if not wanted:
            return
        index = np.flatnonzero(np.isin(self.records["car"], wanted))
        part = self.records[index]
        states = state_store.states_get(wanted)
        measured = measurements_of(wanted)
        hardware = {hw.pk: hw for hw in HardwareProfile.objects.filter(pk__in=set(part["hardware"].tolist()))}
        seconds = np.minimum((part["until"] - self.now) * part["clock"], part["fixed_s"])
        for row, car_seconds in zip(part, seconds.tolist(), strict=True):
            car, clock = int(row["car"]), float(row["clock"]) or 1.0
            state = states.get(car) or {}
            hw = hardware.get(int(row["hardware"]))
            rated = {}
            if hw is not None:
                profile = Hardware(int8_tops=hw.int8_tops, factors=hw.factors, typical_power_w=hw.typical_power_w,
                                   max_power_w=hw.max_power_w)  # fmt: skip
                rated = {p: rated_ch_per_hour(profile, p, power_w=float(row["power_w"])) for p in auction.POOLS}
            self[car] = {
                "hardware_id": int(row["hardware"]),
                "parked_seconds_left": max(car_seconds, 0.0),
                "clock_rate": clock,
                "down_mbps": float(state.get("bandwidth_down_mbps", 0.0)),
                "up_mbps": float(state.get("bandwidth_up_mbps", 0.0)),
                "model_shas_held": set(state.get("models_cached", [])),
                "ch_per_hour": {p: float(r) for p, r in zip(auction.POOLS, row["rate"].tolist(), strict=True) if r > 0},
                "rated": rated,
                "measured": {sha: figures.ch_per_hour / clock for sha, figures in measured.get(car, {}).items()},
            }

    def _index(self, cars: np.ndarray) -> np.ndarray:
        """The position in the book of each of `cars` (all in it), at once."""
        if getattr(self, "_order", None) is None:
            self._order = np.argsort(self.records["car"], kind="stable")
        return self._order[np.searchsorted(self.records["car"][self._order], cars)]

    def rates_of(self, cars: np.ndarray, pools: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each car's CH per car hour in the pool beside it, and its clock rate: the round's sales, at once."""
        index = self._index(np.asarray(cars))
        return self.records["rate"][index, np.asarray(pools, dtype=np.int64)], self.records["clock"][index]

    def hardware_of(self, cars: np.ndarray) -> np.ndarray:
        """The hardware profile id of each of `cars` (all in the book), from the book's arrays at once."""
        if not len(cars):
            return np.zeros(0, dtype=np.int64)
        return self.records["hardware"][self._index(np.asarray(cars))].astype(np.int64)

    def __missing__(self, car):
        self.load([car])
        return dict.__getitem__(self, car)


def car_sizing(info: dict, pool: str) -> dict:
    """What cutting units for a car needs of it, whatever bid it runs (Allocation.car; dispatch.sizing_of reads it
    with the bid's model file): its speeds (measured per model file, else its rating in the pool), its stay, its
    bandwidth, the model files it holds, its hardware class. All per car hour; JSON."""
    return {
        "measured": info["measured"],
        "rated": info["rated"].get(pool) or info["ch_per_hour"][pool],
        "parked_seconds_left": info["parked_seconds_left"],
        "down_mbps": info["down_mbps"],
        "up_mbps": info["up_mbps"],
        "held": sorted(info["model_shas_held"]),
        "hardware_id": info["hardware_id"],
    }


# Bids per cutting task: a big round's cutting is spread over the dispatch queue's workers.
CUT_BIDS_PER_TASK = 500

# One (bid, car) sale of a scheduled round, as RoundSale.rows packs it: the car's sold time ends at `ends` (a Unix
# timestamp), `pool` is the index in auction.POOLS.
SALE_ROW = np.dtype([("bid", "<i8"), ("car", "<i8"), ("ch", "<f8"), ("ends", "<f8"), ("price", "<i8"), ("pool", "i1")])


def sales_pack(*, bid, car, ch, ends_ts, price, pool) -> list[np.ndarray]:
    """A round's sales (arrays of one length) as SALE_ROW arrays in bid order, one per batch of up to
    CUT_BIDS_PER_TASK bids: what a cutting task takes at once."""
    order = np.argsort(bid, kind="stable")  # each bid's sales stay in the order the clearing made them
    rows = np.empty(len(bid), dtype=SALE_ROW)
    for name, values in (("bid", bid), ("car", car), ("ch", ch), ("ends", ends_ts), ("price", price), ("pool", pool)):
        rows[name] = np.asarray(values)[order]
    firsts = np.flatnonzero(np.r_[True, rows["bid"][1:] != rows["bid"][:-1]])
    return np.split(rows, firsts[CUT_BIDS_PER_TASK::CUT_BIDS_PER_TASK])


def sales_rows(sale: RoundSale) -> np.ndarray:
    return _unpacked(sale.rows)


def _unpacked(packed) -> np.ndarray:
    """RoundSale.rows (bytes, or the memoryview a database driver returns) as a SALE_ROW array."""
    return np.frombuffer(bytes(packed), dtype=SALE_ROW)


def _sales_waiting(**where) -> np.ndarray:
    """The sales of the batches not yet stored as allocations (RoundSale), as one SALE_ROW array: the last round's,
    for the seconds its cutting takes."""
    rows = [_unpacked(p) for p in RoundSale.objects.filter(stored=False, **where).values_list("rows", flat=True)]
    return np.concatenate(rows) if rows else np.empty(0, dtype=SALE_ROW)


def sold_cars_waiting(*, now: datetime) -> np.ndarray:
    """The cars of sales not yet stored whose sold time still runs: busy (rounds.busy_cars)."""
    rows = _sales_waiting(ends_max__gt=now)
    return np.unique(rows["car"][rows["ends"] > now.timestamp()])


def sales_held() -> dict[int, float]:
    """The CH each bid bought in sales not yet stored: its Bid.ch_allocated does not count them yet, the next round
    must (rounds.demand_snapshot)."""
    rows = _sales_waiting()
    bids, position = np.unique(rows["bid"], return_inverse=True)
    return dict(zip(bids.tolist(), np.bincount(position, weights=rows["ch"]).tolist(), strict=True))


def allocations_cut_wanted(bid_ids: list[int]) -> None:
    """A scheduled round sold these bids compute without cutting it into units: ask the dispatch queue to, in tasks
    of CUT_BIDS_PER_TASK bids, once the round commits (signals.units_cut_wanted; marketplace.tasks queues them)."""
    for start in range(0, len(bid_ids), CUT_BIDS_PER_TASK):
        units_cut_wanted.send(sender="marketplace", bid_ids=bid_ids[start : start + CUT_BIDS_PER_TASK])


def allocations_cut(*, bid_ids: list[int]) -> int:
    """Cut the work of these bids' allocations that no one has cut yet (units_cut, with the car as the round saw it,
    Allocation.car, or as it is now), oldest first, in one transaction with the bids locked: safe to run twice, or
    beside a round. The batches of sales still packed (RoundSale) that hold any of these bids become Allocation rows
    first, whole (their other bids are cut too), and their bids hold the CH they bought and run: a bid's customer
    hears it won when its work is on cars. A bid closed since the round (cancelled, expired, failed) gets no units:
    its cars' sold time ends now. Returns the number of units handed out."""
    if not bid_ids:
        return 0
    with transaction.atomic():
        # The batches' rows are read once, unlocked: they do not change until a batch is stored, and one stored
        # meanwhile is left out below.
        packed = {
            pk: _unpacked(rows)
            for pk, rows in RoundSale.objects.filter(
                stored=False, bid_min__lte=max(bid_ids), bid_max__gte=min(bid_ids)
            ).values_list("pk", "rows")
        }
        sale_bids = {b for rows in packed.values() for b in rows["bid"].tolist()}
        bids = {
            bid.pk: bid
            for bid in Bid.objects.select_for_update(of=("self",))
            .select_related("variant", "dataset")
            .filter(pk__in=sorted({*bid_ids, *sale_bids}))
            .order_by("pk")
        }
        won = []
        locked = RoundSale.objects.select_for_update().filter(pk__in=list(packed), stored=False).defer("rows")
        for sale in locked.order_by("pk"):
            won += _sale_store(sale, packed[sale.pk], bids)
        if won:
            bids_won_announce(won)  # sold their first compute: their customers hear of it (signals.bid_won)
        allocations = list(
            Allocation.objects.select_for_update(of=("self",))
            .filter(bid_id__in=list(bids), units_cut=False, for_verification=False)
            .order_by("pk")
        )
        if not allocations:
            return 0
        closed = {a.pk for a in allocations if bids[a.bid_id].status not in (*Bid.OPEN_STATUSES, Bid.Status.PAUSED)}
        if closed:
            now = timezone.now()
            Allocation.objects.filter(pk__in=closed, ends_at__gt=now).update(ends_at=now)
            Allocation.objects.filter(pk__in=closed).update(units_cut=True)
            allocations = [a for a in allocations if a.pk not in closed]
            if not allocations:
                return 0
        # The cars as they are now, seconds after the round (a scheduled round stores none: Allocation.car is empty).
        vehicle_ids = sorted({a.vehicle_id for a in allocations if not a.car})
        now_cars = CarInfo(book.records_of(vehicle_ids), now=time.time()) if vehicle_ids else {}
        if vehicle_ids:
            now_cars.load(vehicle_ids)  # in a few queries for all of them
        cars = [
            sizing_of(a.car or car_sizing(now_cars[a.vehicle_id], a.pool), bids[a.bid_id].variant.sha256)
            for a in allocations
        ]
        handed = units_cut(allocations=allocations, bids=bids, cars=cars)
        Allocation.objects.filter(pk__in=[a.pk for a in allocations]).update(units_cut=True)
    return handed


def bid_raise(bid: Bid, ch: float) -> bool:
    """A round sold the bid (locked) `ch` more: it holds it and runs. True when that was its first compute (it was
    waiting). The auction trades whole nano-CH: what is left below one is not worth (or able to be) sold, so a bid that
    close to its total holds its total."""
    allocated = bid.ch_allocated + ch
    bid.ch_allocated = bid.ch_total if bid.ch_total - allocated < auction.CH_QUANTUM else allocated
    first = bid.status == Bid.Status.WAITING
    if first:
        bid.status = Bid.Status.RUNNING
    return first


def _sale_store(sale: RoundSale, rows: np.ndarray, bids: dict[int, Bid]) -> list[int]:
    """A batch of a round's sales (`rows`) becomes Allocation rows, in the order the round made them, not yet cut;
    its open bids (in `bids`, locked) hold what they bought and run. Returns the bids that sold their first compute."""
    ids, position = np.unique(rows["bid"], return_inverse=True)
    won, raised = [], []
    for bid_id, ch in zip(ids.tolist(), np.bincount(position, weights=rows["ch"]).tolist(), strict=True):
        bid = bids[bid_id]
        if bid.status not in (*Bid.OPEN_STATUSES, Bid.Status.PAUSED):
            continue  # closed since the round: its allocations end unused (allocations_cut)
        if bid_raise(bid, ch):
            won.append(bid_id)
        raised.append(bid)
    Bid.objects.bulk_update(raised, ["ch_allocated", "status"], batch_size=500)
    if connection.vendor == "postgresql":
        columns = ", ".join(connection.ops.quote_name(c) for c in _ALLOCATION_COLUMNS)
        data = allocations_copy_binary(
            round_id=sale.round_id, bid=rows["bid"], car=rows["car"], pool=rows["pool"], ch=rows["ch"],
            price=rows["price"], ends_ts=rows["ends"],
        )  # fmt: skip
        copying = f"COPY {Allocation._meta.db_table} ({columns}) FROM STDIN WITH (FORMAT BINARY)"
        with connection.cursor() as cursor, cursor.cursor.copy(copying) as copy:
            copy.write(data)
    else:
        pools = [auction.POOLS[i] for i in rows["pool"].tolist()]
        allocations = [
            Allocation(round_id=sale.round_id, bid_id=bid, vehicle_id=car, pool=pool, ch=ch, price_mcents_per_ch=price,
                       ends_at=datetime.fromtimestamp(ends, tz=UTC), units_cut=False)
            for bid, car, pool, ch, price, ends in zip(
                rows["bid"].tolist(), rows["car"].tolist(), pools, rows["ch"].tolist(), rows["price"].tolist(),
                rows["ends"].tolist(), strict=True,
            )
        ]  # fmt: skip
        Allocation.objects.bulk_create(allocations, batch_size=5000)
    sale.stored, sale.rows = True, b""  # the allocations hold them now: the table keeps no second copy
    sale.save(update_fields=["stored", "rows"])
    cars, ends = rows["car"].copy(), rows["ends"].copy()
    transaction.on_commit(lambda: cars_work_mark(cars, ends))
    return won


def cars_work_mark(cars: np.ndarray, ends_ts: np.ndarray) -> None:
    """Cars just given work (one entry per sale, `ends_ts` when its sold time ends) heartbeat often from their next
    heartbeat on, until the last of their sold time ends and for at least a minute (fleet.offers)."""
    order = np.argsort(cars, kind="stable")
    sold, first = np.unique(cars[order], return_index=True)
    if len(sold):
        latest = np.maximum.reduceat(ends_ts[order], first)
        book.work_mark_until(sold, np.maximum(latest, time.time() + 60))


_ALLOCATION_COLUMNS = ("round_id", "bid_id", "vehicle_id", "pool", "ch", "price_mcents_per_ch", "ends_at", "car",
                       "for_verification", "units_cut")  # fmt: skip
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC).timestamp()  # PostgreSQL counts timestamps from here, in µs


def allocations_copy_binary(*, round_id, bid, car, pool, ch, price, ends_ts) -> bytes:
    """Allocations not yet cut, as PostgreSQL's binary COPY stream (_ALLOCATION_COLUMNS), built by NumPy at once:
    every field is fixed-width but the pool's name, so the rows go out in one block per name length."""
    blocks = [b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")]
    names = [name.encode() for name in auction.POOLS]
    for length in sorted({len(name) for name in names}):
        rows = np.flatnonzero(np.isin(pool, [i for i, name in enumerate(names) if len(name) == length]))
        if not len(rows):
            continue
        fields = [("n", ">i2")]
        for column, kind in (("round", ">i8"), ("bid", ">i8"), ("car", ">i8"), ("pool", f"S{length}"), ("ch", ">f8"),
                             ("price", ">i8"), ("ends", ">i8"), ("json", "S3"), ("verification", "u1"),
                             ("cut", "u1")):  # fmt: skip
            fields += [(f"{column}_len", ">i4"), (column, kind)]
        out = np.zeros(len(rows), dtype=np.dtype(fields))
        out["n"] = len(_ALLOCATION_COLUMNS)
        for column, width in (("round", 8), ("bid", 8), ("car", 8), ("pool", length), ("ch", 8), ("price", 8),
                              ("ends", 8), ("json", 3), ("verification", 1), ("cut", 1)):  # fmt: skip
            out[f"{column}_len"] = width
        out["round"], out["bid"], out["car"] = round_id, bid[rows], car[rows]
        out["pool"] = np.array(names, dtype=f"S{max(len(n) for n in names)}")[pool[rows]].astype(f"S{length}")
        out["ch"], out["price"] = ch[rows], price[rows]
        out["ends"] = np.round((ends_ts[rows] - _PG_EPOCH) * 1e6).astype(np.int64)
        out["json"] = b"\x01{}"  # jsonb's binary form: version 1, then the text
        blocks.append(out.tobytes())
    blocks.append((-1).to_bytes(2, "big", signed=True))
    return b"".join(blocks)


def sizing_of(car: dict[str, Any], sha256: str) -> dict[str, Any]:
    """How units_cut sees an allocation's car (Allocation.car, rounds.car_sizing) for a bid that runs model file
    `sha256`: its measured speed on that file (its rating before it ran it) and whether it holds the file."""
    return {
        "ch_per_hour": car["measured"].get(sha256) or car["rated"],
        "parked_seconds_left": car["parked_seconds_left"],
        "down_mbps": car["down_mbps"],
        "up_mbps": car["up_mbps"],
        "model_cached": sha256 in car["held"],
        "hardware_id": car["hardware_id"],
    }


def allocations_uncut(*, older_than: datetime) -> list[int]:
    """The bids of sales a round made before `older_than` that are still packed (a lost cutting task): the sweeper
    cuts them. (Allocation rows are cut in the transaction that stores them.)"""
    packed = RoundSale.objects.filter(stored=False, round__started_at__lt=older_than).values_list("rows", flat=True)
    return sorted({bid for rows in packed for bid in _unpacked(rows)["bid"].tolist()})


# What differs between the units a round cuts; every other column holds its default. The cars excluded from a
# reissued unit stay excluded from the units its rest is cut into, and its price cap holds for them too.
# excluded_vehicles is last (the COPY below adapts it apart).
_CUT_COLUMNS = (
    "bid_id", "variant_id", "index", "item_start", "item_end", "ch", "assigned_vehicle_id", "allocation_id",
    "price_cap_mcents", "excluded_vehicles",
)  # fmt: skip


def _units_insert(rows: list[tuple]) -> None:
    """Insert newly cut units, given as rows of _CUT_COLUMNS; every other column takes its default. On PostgreSQL
    with one COPY: bulk_create would build a model and prepare each of its 27 columns one value at a time."""
    if connection.vendor != "postgresql" or not rows:
        WorkUnit.objects.bulk_create([WorkUnit(**dict(zip(_CUT_COLUMNS, row, strict=True))) for row in rows], 1000)
        return
    fields = [f for f in WorkUnit._meta.concrete_fields if not f.primary_key]
    fresh = WorkUnit()
    defaults = [f.get_db_prep_save(getattr(fresh, f.attname), connection) for f in fields]
    at = {name: i for i, name in enumerate(f.attname for f in fields)}
    where = [at[name] for name in _CUT_COLUMNS]
    excluded_field = WorkUnit._meta.get_field("excluded_vehicles")
    excluded_at = at[excluded_field.attname]
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    with (
        connection.cursor() as cursor,
        cursor.cursor.copy(f"COPY {WorkUnit._meta.db_table} ({columns}) FROM STDIN") as copy,
    ):
        for row in rows:
            values = defaults.copy()
            for i, value in zip(where, row, strict=True):
                values[i] = value
            # JSON is adapted for the database, but only the rare non-empty list: the rest keep the default's.
            values[excluded_at] = (
                excluded_field.get_db_prep_save(row[-1], connection) if row[-1] else defaults[excluded_at]
            )
            copy.write_row(values)


# --- Leasing -----------------------------------------------------------------------------------------------------


def vehicle_work_refusal(*, vehicle: Vehicle, state: dict[str, Any] | None) -> str | None:
    """Why the car may not take or keep work now, in the owner's words; None when it may (or its state is not known:
    vehicles_silent_release deals with a car that stopped heartbeating). `vehicle` with its status read fresh,
    `state` its last heartbeat."""
    if vehicle.status == Vehicle.Status.PAUSED:
        return "paused by its owner"
    if vehicle.status == Vehicle.Status.SUSPENDED:
        return "suspended by Idlefleet"
    if state is None:
        return None  # Redis lost it (a restart): the car's next heartbeat tells; the sweeper acts on its silence
    if not state.get("parked"):
        return "leaving" if state.get("departure_announced_at") else "driving"
    if state.get("network") not in protocol.WORK_NETWORKS:
        return f"on {state.get('network')}: work only runs on WiFi"
    return None


def unit_lease(*, vehicle: Vehicle, now: datetime | None = None) -> WorkUnit | SelfTest | None:
    """Hand the car its next queued unit under a fresh lease; None when it has none. Safe under concurrency: the
    row is claimed with SELECT ... FOR UPDATE SKIP LOCKED inside the transaction.

    Refused (409, nothing changes but that the car's work goes back to the market) to a car that is paused,
    suspended, driving or off WiFi. A car that never ran the unit's variant gets a self-test of it first
    (marketplace/selftests.py); one whose self-test missed the variant's tolerance gives its units of it back. The
    lease lasts the unit's predicted run time on this car plus a margin (sizing.lease_seconds); the agent renews it.
    """
    now = now or timezone.now()
    vehicle = Vehicle.objects.select_related("hardware").get(pk=vehicle.pk)
    state = state_store.state_get(vehicle.pk)
    refusal = vehicle_work_refusal(vehicle=vehicle, state=state)
    if refusal is not None:
        if WorkUnit.objects.filter(assigned_vehicle=vehicle, status=WorkUnit.Status.QUEUED).exists():
            vehicle_units_release(vehicle=vehicle, reason=f"the car cannot work: {refusal}")
        raise ApplicationError(f"This car cannot take work now: {refusal}.", code="cannot_work", status=409)
    measured = {
        row.workload: row for row in VehicleThroughput.objects.filter(vehicle=vehicle).only(
            "workload", "items_per_s")
    }  # fmt: skip
    with transaction.atomic():
        while True:
            unit = (
                WorkUnit.objects.select_for_update(skip_locked=True, of=("self",))
                # What lease_payload reads, in the same query.
                .select_related("variant", "bid__inference_model", "bid__dataset__inference_model")
                .filter(assigned_vehicle=vehicle, status=WorkUnit.Status.QUEUED)
                .filter(work_wanted())
                .order_by("bid__created_at", "index")
                .first()
            )
            if unit is None:
                return None
            if unit.variant.sha256 in measured:
                break
            if not selftests.self_test_failed(vehicle=vehicle, variant=unit.variant):
                book.lost_after_reset(vehicle.pk)  # it heartbeats often while it works
                return selftests.self_test_issue(vehicle=vehicle, unit=unit, now=now)
            units_of_variant_release(
                vehicle=vehicle, variant=unit.variant,
                reason=f"the {unit.variant.precision.upper()} variant missed the model's tolerance on this car",
            )  # fmt: skip
        unit.probes = verdicts.probes_pick(unit=unit)
        predicted = (unit.items + len(unit.probes)) / measured[unit.variant.sha256].items_per_s
        unit.status = WorkUnit.Status.LEASED
        unit.lease_id = str(uuid.uuid4())
        unit.leased_at = now
        unit.predicted_seconds = predicted
        unit.lease_expires_at = now + timedelta(seconds=_lease_seconds(unit, state))
        unit.save(update_fields=["status", "lease_id", "leased_at", "lease_expires_at", "probes", "predicted_seconds"])
    book.lost_after_reset(vehicle.pk)  # it heartbeats often while it works
    return unit


def _transfer_seconds(unit: WorkUnit, state: dict[str, Any] | None) -> float:
    """Seconds the unit's downloads and upload take at the car's measured bandwidth (the model only if it lacks it)."""
    state = state or {}
    down, up = float(state.get("bandwidth_down_mbps") or 0), float(state.get("bandwidth_up_mbps") or 0)
    dataset = unit.bid.dataset
    items = unit.items + len(unit.probes)
    size_in = items * dataset.size_bytes / max(dataset.item_count, 1)
    if unit.variant.sha256 not in (state.get("models_cached") or []):
        size_in += unit.variant.size_bytes or 0
    seconds = sizing.transfer_seconds(size_in, down) + sizing.transfer_seconds(items * ITEM_OUTPUT_BYTES, up)
    return seconds if math.isfinite(seconds) else float(settings.WORK_LEASE_SECONDS)


def _lease_seconds(unit: WorkUnit, state: dict[str, Any] | None) -> float:
    transfer = _transfer_seconds(unit, state)
    return selftests.lease_seconds_for(predicted_s=unit.predicted_seconds or 0.0, transfer_s=transfer)


def lease_payload(unit: WorkUnit | SelfTest, *, vehicle: Vehicle) -> dict[str, Any]:
    """The lease JSON the agent's WorkUnit.from_lease reads (fleet/agent/executor.py): a unit's, or a self-test's."""
    if isinstance(unit, SelfTest):
        return selftests.self_test_payload(unit, vehicle=vehicle, batch_size=LEASE_BATCH_SIZE)
    leased = leased_items(unit, storage.dataset_items(unit.bid.dataset).items)
    payload = variant_payload(unit.variant, vehicle=vehicle, items=leased, batch_size=LEASE_BATCH_SIZE)
    lease = (unit.lease_expires_at - unit.leased_at).total_seconds() if unit.lease_expires_at else None
    payload.update(unit_id=str(unit.pk), lease_id=unit.lease_id, ch=unit.ch, lease_seconds=lease)
    return payload


def lease_renew(*, vehicle: Vehicle, unit_id: str, lease_id: str, now: datetime | None = None) -> float:
    """The car is still working on its unit: its lease runs for another lease length from now (returned, seconds).

    409 when the lease is no longer the car's, when the car may no longer work (paused, suspended, driving, off
    WiFi: its work goes back to the market), or when it has held the unit HOLD_RUN_FACTOR times longer than its
    measured speed predicts (the unit goes to another car; the car's measured speed follows its timing). What a
    refusal gives back is committed before the 409 is raised."""
    now = now or timezone.now()
    if selftests.is_self_test(unit_id):
        return selftests.self_test_renew(vehicle=vehicle, unit_id=unit_id, lease_id=lease_id, now=now)
    refused = None
    with transaction.atomic():
        unit = _leased_unit(vehicle=vehicle, unit_id=unit_id, lease_id=lease_id)
        fresh = Vehicle.objects.only("status").get(pk=vehicle.pk)
        state = state_store.state_get(vehicle.pk)
        refusal = vehicle_work_refusal(vehicle=fresh, state=state)
        lease = _lease_seconds(unit, state)
        held = (now - (unit.leased_at or now)).total_seconds()
        limit = sizing.hold_limit_seconds(
            predicted_s=unit.predicted_seconds or 0.0, transfer_s=_transfer_seconds(unit, state), lease_s=lease
        )
        if refusal is not None:
            unit_release(unit, error=f"the car cannot work: {refusal}", count_attempt=False)
            refused = f"this car cannot work now ({refusal}): the unit went back to the market"
        elif held > limit:
            unit_release(unit, error=f"held {held:.0f} s, far past its predicted {unit.predicted_seconds or 0:.0f} s",
                     count_attempt=True)  # fmt: skip
            refused = "this unit took far longer than the car's measured speed predicts: it went to another car"
        else:
            unit.lease_expires_at = now + timedelta(seconds=lease)
            unit.save(update_fields=["lease_expires_at"])
    if refused is not None:
        raise lease_lost(refused)
    return lease


def _leased_unit(*, vehicle: Vehicle, unit_id: str, lease_id: str) -> WorkUnit:
    try:
        # Only the unit's row: FOR UPDATE over the join would lock the bid too, and every result of the bid would
        # wait for the one before it to commit (bid_finish_if_done locks the bid, briefly, at the end).
        unit = (
            WorkUnit.objects.select_for_update(of=("self",))
            # What judging a result reads: the model, the dataset, the variant, and the car's record.
            .select_related("bid__inference_model", "bid__dataset", "variant", "assigned_vehicle")
            .get(pk=int(unit_id))
        )
    except (ValueError, WorkUnit.DoesNotExist):
        raise no_such_unit() from None
    if unit.status != WorkUnit.Status.LEASED or unit.lease_id != lease_id or unit.assigned_vehicle_id != vehicle.pk:
        raise lease_lost()
    return unit


# --- Results and failures ----------------------------------------------------------------------------------------


# What a result sets on its unit.
_RESULT_FIELDS = (
    "output_sha256", "status", "done_by", "completed_at", "seconds", "energy_wh", "emulated", "runtime_version",
)  # fmt: skip


@transaction.atomic
def unit_result(*, vehicle: Vehicle, data: dict[str, Any], now: datetime | None = None) -> WorkUnit | None:
    """Take a car's outputs for a leased unit: checked (checksum, one output per item, finite, the known answers
    right), stored, counted once; the unit's timing updates the car's measured speed; then judged (verdicts). None
    when the result was refused for a wrong known answer: it is thrown away, never stored, paid or shown, and the
    unit goes to another car (never this one again). A self-test's outputs go to selftests.self_test_result; then
    the car's queued units of the variant are cut to its measured speed, or given back when the variant missed the
    tolerance there."""
    now = now or timezone.now()
    if selftests.is_self_test(str(data["unit_id"])):
        test = selftests.self_test_result(vehicle=vehicle, data=data, now=now)
        if test.status == SelfTest.Status.PASSED:
            units_fit(vehicle=vehicle, variant=test.variant, now=now)
        else:
            units_of_variant_release(
                vehicle=vehicle, variant=test.variant,
                reason=f"the {test.variant.precision.upper()} variant missed the model's tolerance on this car",
            )  # fmt: skip
        return None
    unit = _leased_unit(vehicle=vehicle, unit_id=data["unit_id"], lease_id=data["lease_id"])
    leased = unit.items + len(unit.probes)
    outputs, raw = outputs_checked(data, expected=leased)
    throughput_record(
        vehicle=vehicle, workload=unit.variant.sha256, precision=unit.variant.precision,
        ch_per_item=unit.variant.ch_per_item or 0.0, items=leased, seconds=data.get("seconds"),
        energy_wh=data.get("energy_wh") or 0.0, at=now,
    )  # fmt: skip
    if unit.probes:
        outputs, probes_ok = verdicts.probes_check(unit=unit, outputs=outputs)
        if not probes_ok:
            unit.excluded_vehicles = sorted(set(unit.excluded_vehicles) | {vehicle.pk})
            if unit.replica_of_id is None and unit.allocation is not None:
                # Sold again in a later round, maybe dearer: the customer still pays this allocation's price at most.
                prices = (unit.price_cap_mcents, unit.allocation.price_mcents_per_ch)
                unit.price_cap_mcents = min(price for price in prices if price is not None)
            unit_release(unit, error="a known-answer check failed: given to another car", count_attempt=False)
            verdicts.probe_failed(unit=unit, vehicle_id=vehicle.pk, now=now)
            return None
        raw, _ = encode_npy(outputs)
    streak = unit.assigned_vehicle.valid_streak  # the car's record, read with the unit's lock
    unit.output_sha256 = storage.artifact_save(raw)
    unit.status, unit.done_by_id, unit.completed_at = WorkUnit.Status.DONE, vehicle.pk, now
    unit.seconds, unit.energy_wh = data.get("seconds"), data.get("energy_wh")
    unit.emulated, unit.runtime_version = bool(data.get("emulated")), str(data.get("runtime_version", ""))[:40]
    unit.save(update_fields=_RESULT_FIELDS)
    judgement = verdicts.result_recorded(unit=unit, outputs=outputs, streak=streak, now=now)
    for spare in judgement.spares:  # copies of the slice that no car needs to run any more
        _unit_withdraw(spare, reason="not needed: the results already agree")
    if judgement.unresolved:
        _bid_fail(unit.bid_id, now=now)
    if judgement.validated:
        bid_progress_announce(bid=unit.bid, newly_validated=judgement.validated)
    if not bid_finish_if_done(bid=unit.bid):
        bid_reassemble_if_audited(bid=unit.bid, now=now)
    return unit


@transaction.atomic
def unit_failure(*, vehicle: Vehicle, unit_id: str, lease_id: str, error: str) -> WorkUnit | SelfTest:
    if selftests.is_self_test(unit_id):
        return selftests.self_test_failure(vehicle=vehicle, unit_id=unit_id, lease_id=lease_id, error=error)
    unit = _leased_unit(vehicle=vehicle, unit_id=unit_id, lease_id=lease_id)
    unit_release(unit, error=error[:2000], count_attempt=True)
    return unit


def unit_release(unit: WorkUnit, *, error: str, count_attempt: bool) -> None:
    """Give a unit back: to be reissued to the car of a later allocation, or failed for good after too many tries.

    Its CH go back to the bid, so the bid enters the next rounds for them; a failed unit is never billed.
    """
    unit.attempts += 1 if count_attempt else 0
    unit.error = error
    unit.lease_id, unit.leased_at, unit.lease_expires_at = "", None, None
    unit.assigned_vehicle, unit.allocation = None, None
    if unit.attempts >= MAX_UNIT_ATTEMPTS:
        unit.status = WorkUnit.Status.FAILED
        unit.save()
        if unit.replica_of_id:
            # A copy that no car could run: another car of the class checks the result instead.
            primary = WorkUnit.objects.select_for_update().get(pk=unit.replica_of_id)
            group = list(WorkUnit.objects.filter(Q(pk=primary.pk) | Q(replica_of=primary), status=WorkUnit.Status.DONE))
            if verdicts.replica_ensure(primary=primary, group=group or [primary], now=timezone.now()):
                return
        _bid_fail(unit.bid_id, now=timezone.now())
        return
    unit.status = WorkUnit.Status.QUEUED
    unit.save()
    if unit.replica_of_id is None:  # a replica's CH are bought by verification, not the customer's bid
        Bid.objects.filter(pk=unit.bid_id).update(ch_allocated=F("ch_allocated") - unit.ch)


def _unit_withdraw(unit: WorkUnit, *, reason: str) -> None:
    """A queued unit that nobody needs to run any more fails, saying why (it has no result: it is never billed)."""
    unit.status, unit.error, unit.assigned_vehicle = WorkUnit.Status.FAILED, reason, None
    unit.save(update_fields=["status", "error", "assigned_vehicle"])


def bid_work_withdraw(*, bid: Bid, reason: str, now: datetime) -> int:
    """A bid the customer cancelled while it ran: every unit of it not done yet (queued, or running on a car) fails
    with `reason` and is never billed; a car running one loses its lease (its next renewal or result gets 409: stop).
    The cars' sold time for the bid ends now, so the next round can sell it again. Results already returned stay
    as they are (validated ones are the customer's and paid for). Returns how many units were withdrawn; call it in
    the transaction that closes the bid."""
    units = list(
        WorkUnit.objects.select_for_update(of=("self",)).filter(
            bid=bid, status__in=(WorkUnit.Status.QUEUED, WorkUnit.Status.LEASED)
        )
    )
    for unit in units:
        unit.status, unit.error = WorkUnit.Status.FAILED, reason
        unit.lease_id, unit.leased_at, unit.lease_expires_at, unit.assigned_vehicle = "", None, None, None
        unit.save(update_fields=["status", "error", "lease_id", "leased_at", "lease_expires_at", "assigned_vehicle"])
    Allocation.objects.filter(bid=bid, ends_at__gt=now).update(ends_at=now)
    return len(units)


def _bid_fail(bid_id: int, *, now: datetime) -> None:
    """A bid whose work cannot be finished (a unit failed too often, a slice no car can settle) fails; its customer
    pays only for what was validated."""
    if Bid.objects.filter(pk=bid_id, status__in=Bid.OPEN_STATUSES).update(status=Bid.Status.FAILED, closed_at=now):
        bid_closed_announce(bid_id)


def leases_expire(*, now: datetime | None = None) -> int:
    """The sweeper: every lease past its expiry is a lost car; its unit is reissued. Safe to run twice."""
    now = now or timezone.now()
    count = 0
    for unit_id in WorkUnit.objects.filter(status=WorkUnit.Status.LEASED, lease_expires_at__lt=now).values_list(
        "pk", flat=True
    ):
        with transaction.atomic():
            unit = WorkUnit.objects.select_for_update().get(pk=unit_id)
            if unit.status == WorkUnit.Status.LEASED and unit.lease_expires_at < now:
                unit_release(unit, error="lease expired: the car went silent", count_attempt=True)
                count += 1
    return count


@transaction.atomic
def vehicle_units_release(*, vehicle: Vehicle, reason: str = "the car left") -> int:
    """A car that can no longer work (it left, was paused or suspended, drives, is off WiFi or went silent) gives back
    at once every unit it holds or was given; none counts as its failure. Its sold time ends."""
    units = list(
        WorkUnit.objects.select_for_update().filter(
            assigned_vehicle=vehicle, status__in=(WorkUnit.Status.QUEUED, WorkUnit.Status.LEASED)
        )
    )
    for unit in units:
        unit_release(unit, error=reason, count_attempt=False)
    SelfTest.objects.filter(vehicle=vehicle, status=SelfTest.Status.LEASED).update(status=SelfTest.Status.LOST)
    Allocation.objects.filter(vehicle=vehicle, ends_at__gt=timezone.now()).update(ends_at=timezone.now())
    return len(units)


@transaction.atomic
def units_of_variant_release(*, vehicle: Vehicle, variant: PrecisionVariant, reason: str) -> int:
    """The car may not run `variant` (its self-test missed the tolerance): its queued units of it go back to the
    market, without counting as its failure. Returns how many."""
    units = list(
        WorkUnit.objects.select_for_update().filter(
            assigned_vehicle=vehicle, variant=variant, status=WorkUnit.Status.QUEUED
        )
    )
    for unit in units:
        unit_release(unit, error=reason, count_attempt=False)
    return len(units)


# Of its predicted stay, the share a car's queued work may fill once its speed is measured: the rest absorbs a run
# slower than measured or a departure earlier than predicted.
STAY_SHARE = 0.75


@transaction.atomic
def units_fit(*, vehicle: Vehicle, variant: PrecisionVariant, now: datetime) -> tuple[int, int]:
    """The car's speed on `variant` was just measured (its self-test): cut its queued units of the variant to what it
    can finish. Each unit is sized for the measured speed (sizing.items_per_unit: compute within a quarter of the
    predicted stay, so within its lease too), and the car keeps work for at most STAY_SHARE of its predicted stay
    (the CH it sold take longer than its rating said); the rest goes back to its bid, whose next rounds sell it
    again. A replica is never split (it
    must cover its slice): one too big goes back whole. Returns (units kept, units given back)."""
    vehicle = Vehicle.objects.select_related("hardware", "policy").get(pk=vehicle.pk)
    units = list(
        WorkUnit.objects.select_for_update(of=("self",))
        .select_related("bid__dataset", "allocation")
        .filter(assigned_vehicle=vehicle, status=WorkUnit.Status.QUEUED, variant=variant)
        .order_by("bid__created_at", "index")
    )
    live = vehicles_live([vehicle], now=now)[0]
    figures = live.measured.get(variant.sha256)
    if not units or figures is None:
        return len(units), 0
    stay_car_s = live.availability.hours_offered * 3600 if live.availability.available else 0.0
    # Real seconds of computing the car has for this work, and the items that fill them at its measured speed.
    seconds = STAY_SHARE * stay_car_s / live.clock_rate
    budget = initial = math.floor(seconds * figures.items_per_s)
    state = live.state or {}
    kept = given_back = 0
    for unit in units:
        per_unit = sizing.items_per_unit(
            ch_per_item=variant.ch_per_item or 0.0, car_ch_per_hour=figures.ch_per_hour / live.clock_rate,
            parked_seconds_left=stay_car_s, down_mbps=float(state.get("bandwidth_down_mbps") or 0),
            up_mbps=float(state.get("bandwidth_up_mbps") or 0),
            item_bytes_in=unit.bid.dataset.size_bytes / max(unit.bid.dataset.item_count, 1),
            item_bytes_out=ITEM_OUTPUT_BYTES, model_bytes=variant.size_bytes or 0, model_cached=True,
            max_items=settings.WORK_UNIT_MAX_ITEMS,
        )  # fmt: skip
        size = min(per_unit, budget)
        if unit.replica_of_id is not None:
            if unit.items > size:
                _give_back(unit)
                given_back += 1
            else:
                budget -= unit.items
                kept += 1
            continue
        if size <= 0:
            _give_back(unit)
            given_back += 1
            continue
        if unit.items > size:
            rest = unit_split(unit, at=unit.item_start + size)
            _give_back(rest)
            given_back += 1
        budget -= unit.items
        kept += 1
    # The car's sold time ends when its kept work should: it is busy while it holds units anyway.
    work_s = (initial - budget) / figures.items_per_s
    Allocation.objects.filter(vehicle=vehicle, ends_at__gt=now + timedelta(seconds=work_s)).update(
        ends_at=now + timedelta(seconds=work_s)
    )
    return kept, given_back


def unit_split(unit: WorkUnit, *, at: int) -> WorkUnit:
    """Cut a queued primary unit in two at item `at`: `unit` keeps [item_start, at), the new unit (returned, queued,
    assigned like `unit`) holds [at, item_end). Their CH add up to the unit's."""
    splittable = unit.replica_of_id is None and unit.status == WorkUnit.Status.QUEUED
    if not splittable or not unit.item_start < at < unit.item_end:
        raise ValueError("only a queued primary unit is split, strictly inside its items")
    per_item = unit.ch / unit.items
    index = WorkUnit.objects.filter(bid_id=unit.bid_id).count()
    rest = WorkUnit.objects.create(
        bid_id=unit.bid_id, variant_id=unit.variant_id, index=index, item_start=at, item_end=unit.item_end,
        ch=unit.ch - per_item * (at - unit.item_start), assigned_vehicle_id=unit.assigned_vehicle_id,
        allocation=unit.allocation, attempts=unit.attempts, excluded_vehicles=unit.excluded_vehicles,
        price_cap_mcents=unit.price_cap_mcents,
    )  # fmt: skip
    unit.item_end, unit.ch = at, per_item * (at - unit.item_start)
    unit.save(update_fields=["item_end", "ch"])
    return rest


def _give_back(unit: WorkUnit) -> None:
    """A queued unit the car will not run goes back to its bid (no attempt counted): the next rounds sell its CH
    again (a replica's CH were never the customer's: verification finds it another car)."""
    unit.assigned_vehicle, unit.allocation = None, None
    unit.save(update_fields=["assigned_vehicle", "allocation"])
    if unit.replica_of_id is None:
        Bid.objects.filter(pk=unit.bid_id).update(ch_allocated=F("ch_allocated") - unit.ch)


def vehicles_silent_release(*, now: datetime | None = None) -> int:
    """The sweeper's other half: every car holding work whose heartbeats stopped (none for HEARTBEAT_LOST_AFTER_S,
    1.5 heartbeat intervals), or whose last heartbeat says it cannot work (driving, off WiFi), or that is no longer
    active, gives its work back at once. With the sweep every third of an interval, a silent car's units are back on
    the market within two heartbeat intervals of its last heartbeat. Returns the number of cars released."""
    now = now or timezone.now()
    holders = set(
        WorkUnit.objects.filter(status__in=(WorkUnit.Status.QUEUED, WorkUnit.Status.LEASED),
                                assigned_vehicle__isnull=False)
        .values_list("assigned_vehicle_id", flat=True)
        .distinct()
    )  # fmt: skip
    holders |= set(SelfTest.objects.filter(status=SelfTest.Status.LEASED).values_list("vehicle_id", flat=True))
    if not holders:
        return 0
    seen = state_store.last_seen(holders)
    states = state_store.states_get(holders)
    released = 0
    for vehicle in Vehicle.objects.filter(pk__in=holders).only("pk", "status"):
        last = seen.get(vehicle.pk)
        silent_s = now.timestamp() - last if last is not None else math.inf
        # A car sold while it heartbeat rarely (fleet.offers.heartbeat_interval_car_s) is given its own interval.
        lost_after = float((states.get(vehicle.pk) or {}).get("lost_after_s") or 0)
        if silent_s > max(lost_after, availability.HEARTBEAT_LOST_AFTER_S):
            reason = f"no heartbeat for {silent_s:.0f} s" if last is not None else "no heartbeat"
        else:
            reason = vehicle_work_refusal(vehicle=vehicle, state=states.get(vehicle.pk))
        if reason is not None:
            vehicle_units_release(vehicle=vehicle, reason=f"the car cannot work: {reason}")
            released += 1
    return released


def vehicle_stopped_working_received(sender, *, vehicle: Vehicle, reason: str, **kwargs) -> int:
    """fleet.signals.vehicle_stopped_working: the car's work goes back to the market."""
    return vehicle_units_release(vehicle=vehicle, reason=reason)


# --- Assembling ---------------------------------------------------------------------------------------------------


def work_wanted() -> Q:
    """The queued units worth running: those of open bids, and the replicas auditing a completed bid (a caught car's
    result being judged again, verdicts.audit_open), which the customer's results wait for."""
    return Q(bid__status__in=Bid.OPEN_STATUSES) | Q(
        bid__status=Bid.Status.COMPLETED, replica_of__verification=WorkUnit.Verification.PENDING
    )


def _outputs_assembled(bid: Bid, *, fill_missing: bool) -> np.ndarray | None:
    """The bid's outputs in item order, each slice from its canonical (validated) result, whichever car returned
    it. None when a slice has none, unless `fill_missing`: an audited slice no quorum could settle is then NaN."""
    canonical = {
        u.primary_id: u
        for u in bid.units.filter(canonical=True, verification=WorkUnit.Verification.VALID, status=WorkUnit.Status.DONE)
    }
    primaries = list(bid.units.filter(replica_of__isnull=True).order_by("item_start"))
    if not primaries or (not fill_missing and any(p.pk not in canonical for p in primaries)):
        return None
    parts, shape, dtype = [], None, None
    for primary in primaries:
        unit = canonical.get(primary.pk)
        part = None if unit is None else decode_npy(storage.artifact_read(unit.output_sha256))
        if part is not None:
            shape, dtype = part.shape[1:], part.dtype
        parts.append((primary, part))
    if shape is None:
        return None
    outputs = np.concatenate([
        part if part is not None else np.full((primary.items, *shape), np.nan, dtype=dtype) for primary, part in parts
    ])  # fmt: skip
    return outputs if outputs.shape[0] == bid.items else None


def bid_reassemble_if_audited(*, bid: Bid, now: datetime) -> bool:
    """A completed bid whose audited results have all been judged again gets its results file assembled anew: a new
    version when an output changed (a wrong result replaced, or removed as NaN when no quorum could settle it). Its
    audits close, and the apps above hear of it (signals.bid_audited: billing corrects the charge and the earnings,
    and tells the customer). False while results are still being judged, or when the bid has no open audit."""
    bid = Bid.objects.select_for_update().get(pk=bid.pk)
    if bid.status != Bid.Status.COMPLETED or not bid.audits.filter(closed_at__isnull=True).exists():
        return False
    if bid.units.filter(replica_of__isnull=True, verification=WorkUnit.Verification.PENDING,
                        replicas__status__in=(WorkUnit.Status.QUEUED, WorkUnit.Status.LEASED)).exists():  # fmt: skip
        return False
    outputs = _outputs_assembled(bid, fill_missing=True)
    if outputs is None:
        return False
    data, _ = encode_npy(outputs)
    sha256 = storage.artifact_save(data)
    if sha256 != bid.result_sha256:
        bid.result_sha256, bid.result_version = sha256, bid.result_version + 1
        bid.save(update_fields=["result_sha256", "result_version"])
    closed = verdicts.audits_conclude(bid=bid, now=now, result_version=bid.result_version)
    if closed:
        bid_audited_announce(bid.pk, [audit.pk for audit in closed])
    return bool(closed)


PROGRESS_MILESTONES = (25, 50, 75)


def bid_progress_announce(*, bid: Bid, newly_validated: int) -> list[int]:
    """A slice of an open bid was just validated (`newly_validated` items): announce each progress milestone (percent
    of its items validated) that this slice crossed, once the result commits (signals.bid_progressed). Returns them.
    Counted only when a slice is validated, in one indexed query, not on every result."""
    if bid.status not in Bid.OPEN_STATUSES or not bid.items:
        return []
    done = bid.units.filter(
        canonical=True, verification=WorkUnit.Verification.VALID, status=WorkUnit.Status.DONE
    ).aggregate(items=Sum(F("item_end") - F("item_start"), default=0))["items"]
    before = done - newly_validated
    crossed = [m for m in PROGRESS_MILESTONES if before * 100 < m * bid.items <= done * 100]
    for percent in crossed:
        bid_progressed_announce(bid.pk, percent)
    return crossed


def bid_finish_if_done(*, bid: Bid) -> bool:
    """When every item of a bid has a done unit, assemble the outputs in item order and complete the bid."""
    # The bid's row alone: FOR UPDATE over a join would also lock its inference model, which every bid on a
    # catalogue model shares, and so make every result of every such bid wait for the one before it.
    bid = Bid.objects.select_for_update().get(pk=bid.pk)
    if bid.status not in Bid.OPEN_STATUSES or bid.items_unitised < bid.items:
        return False
    # Every result asks: answer "not yet" from one indexed query that stops at the first unresolved slice, rather
    # than loading every unit of the bid each time (quadratic over a job).
    resolved = WorkUnit.objects.filter(
        Q(pk=OuterRef("pk")) | Q(replica_of=OuterRef("pk")),
        canonical=True, verification=WorkUnit.Verification.VALID, status=WorkUnit.Status.DONE,
    )  # fmt: skip
    if bid.units.filter(replica_of__isnull=True).exclude(Exists(resolved)).exists():
        return False
    # Each slice of items counts once, by its canonical (validated) result, whichever car returned it.
    outputs = _outputs_assembled(bid, fill_missing=False)
    if outputs is None:
        return False
    data, _ = encode_npy(outputs)
    bid.result_sha256 = storage.artifact_save(data)
    bid.status, bid.closed_at = Bid.Status.COMPLETED, timezone.now()
    bid.save(update_fields=["result_sha256", "status", "closed_at"])
    # Audits of its results that ended before it did: nothing wrong was delivered, the page still tells of them.
    verdicts.audits_conclude(bid=bid, now=bid.closed_at, result_version=bid.result_version)
    bid_closed_announce(bid.pk)
    return True
