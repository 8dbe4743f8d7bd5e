"""The periodic auction round of each market region: read supply from the region's book and demand from the bids,
clear with the pure auction, store it in one transaction."""

from __future__ import annotations

import logging
import math
import time
import zlib
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import numpy as np
from django.db import connection, transaction
from django.db.models import Exists, F, OuterRef, Q
from django.utils import timezone

from fleet import book, offers
from fleet.models import OptInPolicy, Vehicle

from . import auction, verdicts
from .dispatch import (
    CarInfo,
    allocations_cut_wanted,
    bid_raise,
    car_sizing,
    cars_work_mark,
    sales_held,
    sales_pack,
    sizing_of,
    sold_cars_waiting,
    units_cut,
    work_wanted,
)
from .models import Allocation, Bid, PoolClearing, Round, RoundSale, SelfTest, WorkUnit
from .selectors import pricing_current
from .signals import bid_closed_announce, bid_won_announce

log = logging.getLogger(__name__)

# Any number that is ours alone: the PostgreSQL advisory lock that lets one round run at a time.
ROUND_LOCK_KEY = 0x1D1E_F1EE


def round_slot(now: datetime) -> datetime:
    interval = pricing_current().auction_interval_seconds
    return datetime.fromtimestamp(int(now.timestamp()) // interval * interval, tz=now.tzinfo)


def _lock_rounds(region: str) -> None:
    """Serialise the rounds of one region across processes; other regions' rounds run beside it. SQLite's IMMEDIATE
    transactions already admit one writer at a time."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [ROUND_LOCK_KEY, _region_lock_id(region)])


def _region_lock_id(region: str) -> int:
    # A 32-bit key of the region for PostgreSQL's two-key advisory lock: the same in every process.
    return zlib.crc32(region.encode()) - 2**31


def busy_cars(*, now: datetime) -> np.ndarray:
    """The cars whose sold time still runs or that still hold work: never sold twice. What was sold, not the fleet."""
    # Sold by a round whose sales are not stored yet: read first, so that a batch stored in between is read twice
    # (packed, then stored), never missed.
    busy = set(sold_cars_waiting(now=now).tolist())
    busy.update(Allocation.objects.filter(ends_at__gt=now).values_list("vehicle_id", flat=True).distinct())
    busy |= set(
        WorkUnit.objects.filter(
            status__in=(WorkUnit.Status.QUEUED, WorkUnit.Status.LEASED), assigned_vehicle__isnull=False
        )
        .values_list("assigned_vehicle_id", flat=True)
        .distinct()
    )
    return np.fromiter(busy, dtype=np.int64, count=len(busy))


def unsellable_cars(*, now: datetime) -> np.ndarray:
    """Cars not to sell whatever their offer says: busy ones (busy_cars), and those paused, suspended or opted out in
    the database now, so that a change made by any route (the admin, a bulk update) holds from the next round even
    before the car's offer is rebuilt. Both sets are small next to the fleet (indexed: status, enabled)."""
    inactive = Vehicle.objects.exclude(status=Vehicle.Status.ACTIVE).values_list("pk", flat=True)
    opted_out = OptInPolicy.objects.filter(enabled=False).values_list("vehicle_id", flat=True)
    return np.unique(
        np.concatenate([busy_cars(now=now), np.fromiter(inactive, np.int64), np.fromiter(opted_out, np.int64)])
    )


def supply_snapshot(*, now: datetime, region: str = "") -> tuple[auction.Supply, CarInfo]:
    """One row per (available car of the region, pool it offers): the CH it can deliver before it must stop, its ask,
    its reputation and whether it holds a model file the pool's bids run. Read from the region's supply book
    (fleet.book, kept up to date by the cars' heartbeats) in one pass, evaluated at `now` (fleet.offers.rows_at).

    A car's speed in a pool is its slowest measured on that precision (its hardware's rating before it ran any), its
    energy per CH the most it used; the ask never runs an owner at a loss: max(the owner's minimum, energy cost per CH
    ÷ (1 − platform fee)). A car whose last self-test of every model file a pool's bids run missed the tolerance is
    not offered there. Returns the supply and, for the cars the round goes on to sell, what dispatch needs (CarInfo).
    """
    records = book.read(region)
    fee = pricing_current().platform_fee_pct / 100
    # The model files open bids of each pool run. Between equal asks and reputations, a car that already holds one wins.
    wanted_models: dict[str, set[str]] = {}
    for pool, sha in Bid.objects.filter(status__in=Bid.OPEN_STATUSES).values_list("pool", "variant__sha256").distinct():
        wanted_models.setdefault(pool, set()).add(sha)
    bits = [offers.held_bits(sorted(wanted_models.get(pool, ()))) for pool in auction.POOLS]
    rows = offers.rows_at(records, now=now.timestamp(), fee=fee, wanted=bits, exclude=unsellable_cars(now=now))
    keep = np.ones(len(rows.car), dtype=bool)
    for car, shas in self_tests_failed(wanted_models).items():
        for pool_index, pool in enumerate(auction.POOLS):
            wanted = wanted_models.get(pool, set())
            if wanted and wanted <= shas:
                keep &= ~((rows.car == car) & (rows.pool == pool_index))
    supply = auction.Supply(
        car=rows.car[keep], pool=rows.pool[keep], ch=rows.ch[keep], ask=rows.ask[keep],
        reliability=rows.reliability[keep], holds_model=rows.holds_model[keep],
    )  # fmt: skip
    return supply, CarInfo(records, now=now.timestamp())


def self_tests_failed(wanted_models: dict[str, set[str]]) -> dict[int, set[str]]:
    """Per car, the model files among `wanted_models` (pool -> sha256s) whose last self-test on it missed the
    tolerance: failures not followed by a pass, so the query reads the failures, not every car's self-tests."""
    shas = {sha for group in wanted_models.values() for sha in group}
    if not shas:
        return {}
    passed_since = SelfTest.objects.filter(
        vehicle_id=OuterRef("vehicle_id"), variant_id=OuterRef("variant_id"), status=SelfTest.Status.PASSED,
        completed_at__gt=OuterRef("completed_at"),
    )  # fmt: skip
    rows = (
        SelfTest.objects.filter(status=SelfTest.Status.FAILED, variant__sha256__in=shas)
        .exclude(Exists(passed_since))
        .values_list("vehicle_id", "variant__sha256")
    )
    failed: dict[int, set[str]] = {}
    for vehicle_id, sha in rows:
        failed.setdefault(vehicle_id, set()).add(sha)
    return failed


def demand_snapshot(*, now: datetime, region: str = "", regions: list[str] | None = None) -> auction.Demand:
    """The open bids this region's round may serve: those pinned to it, and its share of those that accept any region
    (bids_unpinned_here)."""
    open_bids = Bid.objects.filter(status__in=Bid.OPEN_STATUSES, deadline__gt=now)
    if regions is None or len(regions) <= 1:
        # One market: every bid that accepts it (a bid pinned elsewhere waits for a car of its region).
        open_bids = open_bids.filter(region__in=["", region])
    else:
        open_bids = open_bids.filter(Q(region=region) | Q(region=""))
    # What earlier rounds sold that is not stored yet counts as sold (sales_held): read before the bids, so that a
    # batch stored in between is counted twice (this round sells the bid less), never missed (sold twice).
    held = sales_held()
    bids = list(
        open_bids.values_list(
            "pk", "pool", "ch_total", "ch_allocated", "max_price_mcents_per_ch", "created_at", "region"
        )
    )
    bids = [(*b[:3], b[3] + held.get(b[0], 0.0), *b[4:]) for b in bids]
    # The auction counts whole nano-CH: a remainder smaller than that is done.
    bids = [b for b in bids if b[2] - b[3] >= auction.CH_QUANTUM]
    if regions is not None and len(regions) > 1:
        here = bids_unpinned_here([(b[0], b[1]) for b in bids if not b[6]], region=region, regions=regions, now=now)
        bids = [b for b in bids if b[6] or b[0] in here]
    return auction.Demand(
        bid=np.array([b[0] for b in bids], dtype=np.int64),
        pool=np.array([auction.POOLS.index(b[1]) for b in bids], dtype=np.int8),
        ch=np.array([b[2] - b[3] for b in bids], dtype=np.float64),
        price=np.array([b[4] for b in bids], dtype=np.int64),
        placed=np.array([int(b[5].timestamp() * 1e6) for b in bids], dtype=np.int64),
    )


def bids_unpinned_here(bids: list[tuple[int, str]], *, region: str, regions: list[str], now: datetime) -> set[int]:
    """Which of the bids that accept any region (id, pool) this region's round serves in this slot. Each such bid is
    in exactly one region's round per slot, so parallel rounds never sell it twice: drawn for the slot (the same draw
    in every region's round) with weights that follow where its pool had capacity to spare in the last rounds (its
    unsold CH; all regions alike before any round), so demand spreads like supply. A bid not filled in one region is
    drawn again the next slot, and may land in another."""
    spare: dict[tuple[str, str], float] = {}
    since = now - timedelta(seconds=3 * pricing_current().auction_interval_seconds)
    latest = (
        PoolClearing.objects.filter(round__slot__gte=since, round__slot__lt=round_slot(now), round__region__in=regions)
        .order_by("round__region", "pool", "-round__slot")
        .values_list("round__region", "pool", "supply_ch", "volume_ch")
    )
    for row_region, pool, supply_ch, volume_ch in latest:
        spare.setdefault((row_region, pool), max(supply_ch - volume_ch, 0.0))
    slot = int(round_slot(now).timestamp())
    here = set()
    for bid_id, pool in bids:
        weights = np.array([spare.get((r, pool), 0.0) for r in regions])
        if weights.sum() <= 0:
            weights = np.ones(len(regions))
        draw = _uniform(bid_id, slot) * weights.sum()
        chosen = regions[min(int(np.searchsorted(np.cumsum(weights), draw, side="right")), len(regions) - 1)]
        if chosen == region:
            here.add(bid_id)
    return here


def _uniform(bid_id: int, slot: int) -> float:
    """A number in [0, 1) that every process draws alike for this bid and slot."""
    digest = zlib.crc32(f"{bid_id}:{slot}".encode())
    return digest / 2**32


def clear_all_or_none(*, supply: auction.Supply, demand: auction.Demand, reserve: np.ndarray) -> auction.Result:
    """Clear, then drop every all-or-none bid that was only partly filled and clear again, until none is.

    An all-or-none bid either gets all the CH it still wants in one round or takes no part in it; dropping it can
    only lower the price for the others, and each pass removes at least one bid, so this ends.
    """
    # The open all-or-none bids (few), then those of them in this demand: no list of every bid sent to the database.
    candidates = Bid.objects.filter(status__in=Bid.OPEN_STATUSES, all_or_none=True).values_list("pk", flat=True)
    aon = set(np.intersect1d(np.fromiter(candidates, np.int64), demand.bid).tolist())
    while True:
        result = auction.clear(supply=supply, demand=demand, reserve=reserve)
        if not aon:
            return result
        filled = dict.fromkeys(aon, 0.0)
        for bid_id, ch in zip(result.alloc_bid.tolist(), result.alloc_ch.tolist(), strict=True):
            if bid_id in filled:
                filled[bid_id] += ch
        wanted = dict(zip(demand.bid.tolist(), demand.ch.tolist(), strict=True))
        partial = {b for b, ch in filled.items() if 0 < ch < wanted.get(b, 0) - auction.CH_QUANTUM}
        if not partial:
            return result
        keep = ~np.isin(demand.bid, list(partial))
        demand = auction.Demand(
            bid=demand.bid[keep], pool=demand.pool[keep], ch=demand.ch[keep], price=demand.price[keep],
            placed=demand.placed[keep],
        )  # fmt: skip
        aon -= partial


def auto_bids_redecide(*, supply: auction.Supply, now: datetime) -> int:
    """ "Auto" is decided again every round, so a bid is never stranded in a pool no car offers now: an auto bid with
    work left whose pool has no offer it could trade with (an ask at or below its maximum price) moves to the
    cheapest precision that has one and that the fleet can run for its model (selectors.pools_outlook: ready, within
    the tolerance, cars that run it, the reserve within the maximum). Its work not yet on a car moves with it; units
    already on cars, or done, keep their variant. The CH per item are a model's at every precision, so the bid's work
    and its hold on the card do not change. Returns the number of bids moved."""
    from .selectors import fleet_capability, pools_outlook

    bids = list(
        Bid.objects.filter(status__in=Bid.OPEN_STATUSES, precision_requested="auto", deadline__gt=now)
        .select_related("variant", "inference_model", "dataset")
        .order_by("pk")
    )
    if not bids:
        return 0
    offered = [(pool, supply.ask[supply.pool == i]) for i, pool in enumerate(auction.POOLS)]
    cheapest = {pool: int(asks.min()) for pool, asks in offered if len(asks)}
    moved = 0
    fleet, outlooks = None, {}  # read once per round, for the models of the bids that need it
    held = sales_held()
    for bid in bids:
        if bid.pk in held:
            continue  # a round sold it cars of its pool that are not cut yet: its units will be of that pool
        if bid.ch_total - bid.ch_allocated < auction.CH_QUANTUM:
            continue  # all of it is on cars already
        if cheapest.get(bid.pool, math.inf) <= bid.max_price_mcents_per_ch:
            continue  # its pool can trade it this round
        # One outlook per model and dataset: a bid is judged on the builds made on its own dataset (variants_in_force).
        scope = (bid.inference_model_id, bid.dataset_id)
        if scope not in outlooks:
            fleet = fleet_capability() if fleet is None else fleet
            outlooks[scope] = pools_outlook(model=bid.inference_model, dataset=bid.dataset, fleet=fleet)
        for pool in outlooks[scope]:
            if (
                pool.runnable
                and pool.reserve_mcents <= bid.max_price_mcents_per_ch
                and pool.precision != bid.pool
                and cheapest.get(pool.precision, math.inf) <= bid.max_price_mcents_per_ch
                and math.isclose(pool.variant.ch_per_item, bid.variant.ch_per_item, rel_tol=1e-9)
            ):
                log.info("auto bid %s moves from %s to %s: no car offers %s it can buy now", bid.pk, bid.pool,
                         pool.precision, bid.pool.upper())  # fmt: skip
                Bid.objects.filter(pk=bid.pk).update(variant=pool.variant, pool=pool.precision)
                WorkUnit.objects.filter(
                    bid=bid, status=WorkUnit.Status.QUEUED, assigned_vehicle__isnull=True, replica_of__isnull=True
                ).update(variant=pool.variant)
                moved += 1
                break
    return moved


def bids_expire(*, now: datetime) -> int:
    """Bids past their deadline close as expired; work not yet handed to a car is released (never billed), and no
    further unit of theirs is leased. Units already running may still report, but the bid is not completed late."""
    expired = list(
        Bid.objects.filter(status__in=(*Bid.OPEN_STATUSES, Bid.Status.PAUSED), deadline__lte=now).values_list(
            "pk", flat=True
        )
    )
    if expired:
        Bid.objects.filter(pk__in=expired).update(status=Bid.Status.EXPIRED, closed_at=now)
        WorkUnit.objects.filter(bid__in=expired, status=WorkUnit.Status.QUEUED).update(assigned_vehicle=None)
        for bid_id in expired:
            bid_closed_announce(bid_id)
    return len(expired)


def auction_round_run(
    *, now: datetime | None = None, region: str | None = None, regions: list[str] | None = None, cut_units: bool = True
) -> Round | None:
    """Run the round of the current slot for one market region, once: a duplicate (two beats, a retried task)
    returns None. Rounds of other regions run beside it (each region has its own lock). Without a region, every
    region's round runs here, one after another (a caller that wants the whole market now: tests, scripts), and the
    first region's round is returned.

    `regions`: every region with a market this slot (fleet.book.regions()); the bids that accept any region are
    shared out among them (bids_unpinned_here). `cut_units`: cut the sold work into units in this transaction, as a
    caller that leases at once wants; the scheduled round leaves that to the dispatch queue (allocations_cut_wanted),
    so its own time grows with what it sold, not with the units it sells."""
    now = now or timezone.now()
    if region is None:
        regions = book.regions() or [""]
        ran = [auction_round_run(now=now, region=r, regions=regions, cut_units=cut_units) for r in regions]
        return next((r for r in ran if r is not None), None)
    started = time.perf_counter()
    with transaction.atomic():
        _lock_rounds(region)
        round_, created = Round.objects.get_or_create(slot=round_slot(now), region=region)
        if not created:
            return None
        bids_expire(now=now)
        supply, cars = supply_snapshot(now=now, region=region)
        auto_bids_redecide(supply=supply, now=now)
        demand = demand_snapshot(now=now, region=region, regions=regions)
        pricing = pricing_current()
        reserves = pricing.reserves  # staff's latest change applies from this round on
        round_.platform_fee_pct = Decimal(str(pricing.platform_fee_pct))
        reserve = np.array([reserves[p] for p in auction.POOLS], dtype=np.int64)
        result = clear_all_or_none(supply=supply, demand=demand, reserve=reserve)
        _store(round_, result, reserve, cars, now, cut_units=cut_units)
        verification_allocate(round_=round_, supply=supply, result=result, reserve=reserve, rates=cars, now=now)
        round_.cars_offered = len(np.unique(supply.car))
        round_.bids_considered = len(demand.bid)
        round_.finished_at = timezone.now()
        round_.seconds = time.perf_counter() - started
        round_.save(update_fields=["cars_offered", "bids_considered", "finished_at", "seconds", "platform_fee_pct"])
        _demand_publish(region, result, demand, fee=float(pricing.platform_fee_pct) / 100)
    return round_


def _demand_publish(region: str, result, demand: auction.Demand, *, fee: float) -> None:
    """Tell the region's cars how much demand went unfilled, at what best price per pool: a car whose ask meets it
    heartbeats often, as the next round is likely to sell it (fleet.offers.heartbeat_interval_car_s)."""
    order = np.argsort(demand.bid, kind="stable")
    filled = np.zeros(len(demand.bid))
    if len(result.alloc_bid):
        position = order[np.searchsorted(demand.bid[order], result.alloc_bid)]
        np.add.at(filled, position, result.alloc_ch)
    unfilled = demand.ch - filled > auction.CH_QUANTUM
    signal: dict = {"fee": fee}
    for pool_index, pool in enumerate(auction.POOLS):
        prices = demand.price[unfilled & (demand.pool == pool_index)]
        if len(prices):
            signal[pool] = int(prices.max())
    transaction.on_commit(lambda: book.demand_publish(region, signal))


def _store(round_: Round, result, reserve, cars: CarInfo, now: datetime, *, cut_units: bool = True) -> None:
    # Every round publishes every pool, so the region's last round holds the last index and the last trade of each.
    last = Round.objects.filter(region=round_.region, slot__lt=round_.slot).order_by("-slot").first()
    fields = ("pool", "index_mcents", "last_trade_mcents", "last_trade_at")
    previous = {row[0]: row[1:] for row in last.pools.values_list(*fields)} if last else {}
    for pool_result in result.pools:
        pool = pool_result.pool
        pool_reserve = int(reserve[auction.POOLS.index(pool)])
        index, last_trade_mcents, last_trade_at = previous.get(pool, (None, None, None))
        if pool_result.clearing_price is not None:
            last_trade_mcents, last_trade_at = pool_result.clearing_price, round_.slot
        PoolClearing.objects.create(
            round=round_,
            pool=pool,
            clearing_price_mcents=pool_result.clearing_price,
            reserve_mcents=pool_reserve,
            volume_ch=pool_result.volume_ch,
            unfilled_demand_ch=pool_result.unfilled_demand_ch,
            supply_ch=pool_result.supply_ch,
            index_mcents=auction.smoothed_index(index, pool_result.clearing_price, floor=pool_reserve),
            last_trade_mcents=last_trade_mcents,
            last_trade_at=last_trade_at,
        )
    prices = {p.pool: p.clearing_price for p in result.pools}
    if not len(result.alloc_bid):
        return
    # How long each sale keeps its car busy: its CH at the car's speed in the pool, in real time (its clock).
    rate, clock = cars.rates_of(result.alloc_car, result.alloc_pool)
    hours = result.alloc_ch / rate / clock
    ends_ts = now.timestamp() + hours * 3600
    if cut_units:
        cars.load(result.alloc_car.tolist())
        rows = [
            (bid_id, car_id, auction.POOLS[pool_index], ch, prices[auction.POOLS[pool_index]],
             now + timedelta(hours=h), car_sizing(cars[car_id], auction.POOLS[pool_index]))
            for bid_id, car_id, pool_index, ch, h in zip(
                result.alloc_bid.tolist(), result.alloc_car.tolist(), result.alloc_pool.tolist(),
                result.alloc_ch.tolist(), hours.tolist(), strict=True,
            )
        ]  # fmt: skip
        _allocations_store_and_cut(round_, rows)
        cars_work_mark(result.alloc_car, ends_ts)
    else:
        _sales_store(round_, result, prices, ends_ts)  # the cutting marks the cars (a million sold: 3.7 s of Redis)


def _allocations_store_and_cut(round_: Round, rows: list[tuple]) -> None:
    """Store the round's allocations with the ORM and cut their units now, for a caller that leases at once."""
    totals: dict[int, float] = {}
    for bid_id, _, _, ch, *_ in rows:
        totals[bid_id] = totals.get(bid_id, 0.0) + ch
    # Locked in pk order, in one query, so two writers of the same bids cannot deadlock.
    bids = {
        bid.pk: bid
        for bid in Bid.objects.select_for_update(of=("self",))
        .select_related("variant", "dataset")
        .filter(pk__in=totals)
        .order_by("pk")
    }
    allocations = [
        Allocation(
            round=round_,
            bid_id=bid_id,
            vehicle_id=car_id,
            pool=pool,
            ch=ch,
            price_mcents_per_ch=price,
            ends_at=ends_at,
            car=car,
        )
        for bid_id, car_id, pool, ch, price, ends_at, car in rows
    ]
    Allocation.objects.bulk_create(allocations, batch_size=5000)  # sets their pks, in order (PostgreSQL, SQLite ≥ 3.35)
    for bid_id, total in totals.items():
        if bid_raise(bids[bid_id], total):
            bid_won_announce(bid_id)  # sold its first compute: the customer hears of it (signals.bid_won)
    Bid.objects.bulk_update(list(bids.values()), ["ch_allocated", "status"], batch_size=1000)
    sizing = [sizing_of(a.car, bids[a.bid_id].variant.sha256) for a in allocations]
    units_cut(allocations=allocations, bids=bids, cars=sizing)


def _sales_store(round_: Round, result, prices: dict, ends_ts: np.ndarray) -> None:
    """The scheduled round's store: what it sold, packed in batches of bids (RoundSale), in one binary COPY whatever
    it sold; the dispatch queue's cutting tasks turn each batch into allocations, raise its bids and cut their
    units, seconds later (dispatch.allocations_cut). Until then the next round counts the batch's cars as busy and its
    CH as sold. (Writing a million-car round's allocations here, with their indexes and foreign keys checked at
    commit, took over 40 s of its 60 s interval; raising its 100,000 bids took 3 s more.)"""
    price_of = np.array([prices[p] or 0 for p in auction.POOLS], dtype=np.int64)
    batches = sales_pack(
        bid=result.alloc_bid, car=result.alloc_car, ch=result.alloc_ch, ends_ts=ends_ts,
        price=price_of[result.alloc_pool], pool=result.alloc_pool,
    )  # fmt: skip
    sales = [
        RoundSale(
            round=round_, bid_min=int(rows["bid"][0]), bid_max=int(rows["bid"][-1]), allocations=len(rows),
            ends_max=datetime.fromtimestamp(float(rows["ends"].max()), tz=UTC), rows=rows.tobytes(),
        )
        for rows in batches
    ]  # fmt: skip
    if connection.vendor == "postgresql":
        # A million sales are 41 MB: one binary COPY sends them as they are (an INSERT would send them as hex text),
        # and the column is stored uncompressed (migration 0015: compressing random floats gains nothing).
        columns = ("round_id", "bid_min", "bid_max", "allocations", "ends_max", "rows", "stored")
        copying = f"COPY {RoundSale._meta.db_table} ({', '.join(columns)}) FROM STDIN WITH (FORMAT BINARY)"
        with connection.cursor() as cursor, cursor.cursor.copy(copying) as copy:
            copy.set_types(["int8", "int8", "int8", "int4", "timestamptz", "bytea", "bool"])
            for sale in sales:
                copy.write_row([getattr(sale, column) for column in columns])
    else:
        RoundSale.objects.bulk_create(sales, batch_size=20)
    allocations_cut_wanted(np.unique(result.alloc_bid).tolist())


def verification_allocate(*, round_: Round, supply: auction.Supply, result, reserve, rates, now: datetime) -> int:
    """Find cars for the replicas waiting for one (marketplace/verdicts.py): the auction cannot, since a replica needs
    a car of a given hardware class whose owner has not run its items. Each goes to an available car this round did not
    sell, of the right class, cheapest ask first, at the pool's clearing price (or the reserve) but never below the
    car's ask; the platform pays for it, not the customer.

    So do the units a car was refused for (it got one of their known answers wrong): the auction does not know
    which cars a unit may not go to, and would sell the bid that car again and again (it asks the least) while the
    unit waits. Such a unit is the customer's work, at no more than the price they first bought it at
    (`WorkUnit.price_cap_mcents`; settling charges the rest to verification). Returns the number of units placed.

    The candidates are read from the supply's arrays, and only the few a unit looks at are read further (owners,
    speeds): its cost grows with the units waiting, not with the fleet."""
    waiting = list(
        WorkUnit.objects.filter(status=WorkUnit.Status.QUEUED, assigned_vehicle__isnull=True)
        .filter(Q(replica_of__isnull=False) | ~Q(excluded_vehicles=[]))
        .filter(work_wanted())
        .select_related("bid")
        .order_by("bid__created_at", "index")
    )  # fmt: skip
    if not waiting:
        return 0
    unsold = ~np.isin(supply.car, result.alloc_car)
    cars, pools, ch_left, asks = supply.car[unsold], supply.pool[unsold], supply.ch[unsold].copy(), supply.ask[unsold]
    hardware = rates.hardware_of(cars)
    order = np.argsort(asks, kind="stable")
    prices = {p.pool: p.clearing_price for p in result.pools}
    placed = 0
    for unit in waiting:
        pool = unit.bid.pool
        mask = (pools[order] == auction.POOLS.index(pool)) & (ch_left[order] >= unit.ch)
        if unit.requires_hardware_id:
            mask &= hardware[order] == unit.requires_hardware_id
        candidates = order[mask]
        for start in range(0, len(candidates), 64):
            batch = candidates[start : start + 64]
            # Never a car of an owner who already ran the replica's slice: the owners of both sides, in one query.
            owners = verdicts.owners_of([*(int(c) for c in cars[batch]), *unit.excluded_vehicles])
            chosen = next(
                (i for i in batch.tolist()
                 if not verdicts.vehicle_refused(unit=unit, vehicle_id=int(cars[i]), owners=owners)),
                None,
            )  # fmt: skip
            if chosen is None:
                continue
            car, ask = int(cars[chosen]), int(asks[chosen])
            market = prices.get(pool) or int(reserve[auction.POOLS.index(pool)])
            price = max(market, ask)
            info = rates[car]
            hours = unit.ch / info["ch_per_hour"][pool] / info["clock_rate"]
            primary = unit.replica_of_id is None
            allocation = Allocation.objects.create(
                round=round_, bid=unit.bid, vehicle_id=car, pool=pool, ch=unit.ch, price_mcents_per_ch=price,
                ends_at=now + timedelta(hours=hours), for_verification=not primary,
            )  # fmt: skip
            placed_fields = {"assigned_vehicle_id": car, "allocation": allocation}
            if primary:
                # The customer's work again: never above their first price, nor this round's (or their maximum).
                cap = min(c for c in (unit.price_cap_mcents, market, unit.bid.max_price_mcents_per_ch) if c)
                placed_fields["price_cap_mcents"] = cap
                Bid.objects.filter(pk=unit.bid_id).update(ch_allocated=F("ch_allocated") + unit.ch)
            WorkUnit.objects.filter(pk=unit.pk).update(**placed_fields)
            book.work_mark({car: max(hours * 3600, 60)})
            ch_left[chosen] -= unit.ch
            placed += 1
            break
    return placed
