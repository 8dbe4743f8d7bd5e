"""The periodic auction round: snapshot supply and demand, clear with the pure auction, store it in one transaction."""

from __future__ import annotations

import logging
import math
import time
from datetime import datetime, timedelta
from decimal import Decimal

import numpy as np
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from fleet.availability import rated_ch_per_hour
from fleet.models import Vehicle
from fleet.selectors import hardware_of, vehicles_live

from . import auction, verdicts, verification
from .dispatch import units_cut, work_wanted
from .models import Allocation, Bid, PoolClearing, Round, SelfTest, WorkUnit
from .selectors import pricing_current
from .signals import bid_closed_announce, bid_won_announce

log = logging.getLogger(__name__)

# Any number that is ours alone: the PostgreSQL advisory lock that lets one round run at a time.
ROUND_LOCK_KEY = 0x1D1E_F1EE


def round_slot(now: datetime) -> datetime:
    interval = pricing_current().auction_interval_seconds
    return datetime.fromtimestamp(int(now.timestamp()) // interval * interval, tz=now.tzinfo)


def _lock_rounds() -> None:
    """Serialise rounds across processes. SQLite's IMMEDIATE transactions already admit one writer at a time."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [ROUND_LOCK_KEY])


def supply_snapshot(*, now: datetime) -> tuple[auction.Supply, dict[int, dict]]:
    """One row per (available car, precision it can run): the CH it can deliver before it leaves, and its ask.

    Speeds and energy are the car's measured ones (fleet.models.VehicleThroughput) for the variants the pool's open
    bids run, the hardware profile's rating only for a variant the car has not run yet: its CH per hour in a pool is
    the slowest of those, its energy per CH the highest. A car whose self-test missed the tolerance of every variant
    a pool's bids run is not offered there. The ask never runs an owner at a loss: max(the owner's minimum, energy
    cost per CH ÷ (1 − platform fee)). Returns the supply and, per car, what dispatch needs: CH per car hour per pool
    (how long a sale keeps it busy) and per variant it measured (sizing), the predicted seconds it stays, its clock
    rate, its measured bandwidth and the model files it holds.
    """
    # A car is busy while its sold time runs or while it still holds work: it is never sold twice.
    busy = set(Allocation.objects.filter(ends_at__gt=now).values_list("vehicle_id", flat=True))
    busy |= set(
        WorkUnit.objects.filter(
            status__in=(WorkUnit.Status.QUEUED, WorkUnit.Status.LEASED), assigned_vehicle__isnull=False
        )
        .values_list("assigned_vehicle_id", flat=True)
        .distinct()
    )
    vehicles = [
        v
        for v in Vehicle.objects.filter(status=Vehicle.Status.ACTIVE).select_related("hardware", "policy")
        if v.pk not in busy
    ]
    fee = pricing_current().platform_fee_pct / 100
    # The variants (model files) open bids of each pool run. Between equal asks and reputations, a car that already
    # holds one wins: no download.
    wanted_models: dict[str, set[str]] = {}
    for pool, sha in Bid.objects.filter(status__in=Bid.OPEN_STATUSES).values_list("pool", "variant__sha256"):
        wanted_models.setdefault(pool, set()).add(sha)
    failed = self_tests_failed([v.pk for v in vehicles])
    cars, pools, chs, asks, reliabilities, holds_model = [], [], [], [], [], []
    rates: dict[int, dict] = {}
    for item in vehicles_live(vehicles, now=now):
        availability = item.availability
        if not availability.available or availability.hours_offered <= 0:
            continue
        vehicle = item.vehicle
        state = item.state or {}
        clock_rate = item.clock_rate
        hardware = hardware_of(vehicle)
        rates[vehicle.pk] = {
            "hardware_id": vehicle.hardware_id,
            "parked_seconds_left": availability.hours_offered * 3600,
            "clock_rate": clock_rate,
            "down_mbps": float(state.get("bandwidth_down_mbps", 0.0)),
            "up_mbps": float(state.get("bandwidth_up_mbps", 0.0)),
            # The sha256 of each model file the car holds (its heartbeat's "models_cached").
            "model_shas_held": set(state.get("models_cached", [])),
            "ch_per_hour": {},
            # Per variant it ran: CH per car hour (sizing a unit of that variant).
            "measured": {sha: figures.ch_per_hour / clock_rate for sha, figures in item.measured.items()},
            "rated": {},
        }
        for precision, pool_rate in availability.ch_per_hour.items():
            if pool_rate <= 0 or precision not in auction.POOLS:
                continue
            rated = rated_ch_per_hour(hardware, precision, power_w=availability.power_w)
            rates[vehicle.pk]["rated"][precision] = rated
            wanted = wanted_models.get(precision, set())
            runnable = wanted - failed.get(vehicle.pk, set())
            if wanted and not runnable:
                continue  # its self-tests say none of this pool's work meets its customers' tolerance on this car
            # The variants that set its offer: the pool's bids', else whatever it ran of this precision.
            basis = runnable or {sha for sha, figures in item.measured.items() if figures.precision == precision}
            pool_rate = min(
                (item.measured[sha].ch_per_hour / clock_rate if sha in item.measured else rated for sha in basis),
                default=rated,
            )
            wh_per_ch = max(
                (item.measured[sha].wh_per_ch if sha in item.measured else availability.power_w / rated
                 for sha in basis),
                default=availability.power_w / rated,
            )  # fmt: skip
            if pool_rate <= 0:
                continue
            # Wh per CH × ¢ per kWh = m¢ per CH.
            energy_mcents_per_ch = wh_per_ch * float(vehicle.energy_price_cents_per_kwh)
            ask = max(vehicle.policy.min_price_mcents_per_ch, int(np.ceil(energy_mcents_per_ch / (1 - fee))))
            cars.append(vehicle.pk)
            pools.append(auction.POOLS.index(precision))
            chs.append(availability.hours_offered * pool_rate)
            asks.append(ask)
            # Between equal asks the more reliable car sells first: its record of validated results.
            reliabilities.append(
                verification.reputation(results_valid=vehicle.results_valid, results_invalid=vehicle.results_invalid)
            )
            holds_model.append(bool(wanted & rates[vehicle.pk]["model_shas_held"]))
            rates[vehicle.pk]["ch_per_hour"][precision] = pool_rate
    supply = auction.Supply(
        car=np.array(cars, dtype=np.int64),
        pool=np.array(pools, dtype=np.int8),
        ch=np.array(chs, dtype=np.float64),
        ask=np.array(asks, dtype=np.int64),
        reliability=np.array(reliabilities, dtype=np.float64),
        holds_model=np.array(holds_model, dtype=bool),
    )
    return supply, rates


def self_tests_failed(vehicle_ids: list[int]) -> dict[int, set[str]]:
    """Per car, the variants (model files) its last self-test of missed the tolerance on its hardware."""
    last: dict[tuple[int, str], str] = {}
    rows = (
        SelfTest.objects.filter(vehicle_id__in=vehicle_ids, status__in=(SelfTest.Status.PASSED, SelfTest.Status.FAILED))
        .order_by("completed_at")
        .values_list("vehicle_id", "variant__sha256", "status")
    )
    for vehicle_id, sha, status in rows:
        last[(vehicle_id, sha)] = status
    failed: dict[int, set[str]] = {}
    for (vehicle_id, sha), status in last.items():
        if status == SelfTest.Status.FAILED:
            failed.setdefault(vehicle_id, set()).add(sha)
    return failed


def demand_snapshot(*, now: datetime) -> auction.Demand:
    bids = list(
        Bid.objects.filter(status__in=Bid.OPEN_STATUSES, deadline__gt=now).values_list(
            "pk", "pool", "ch_total", "ch_allocated", "max_price_mcents_per_ch", "created_at"
        )
    )
    # The auction counts whole nano-CH: a remainder smaller than that is done.
    bids = [b for b in bids if b[2] - b[3] >= auction.CH_QUANTUM]
    return auction.Demand(
        bid=np.array([b[0] for b in bids], dtype=np.int64),
        pool=np.array([auction.POOLS.index(b[1]) for b in bids], dtype=np.int8),
        ch=np.array([b[2] - b[3] for b in bids], dtype=np.float64),
        price=np.array([b[4] for b in bids], dtype=np.int64),
        placed=np.array([int(b[5].timestamp() * 1e6) for b in bids], dtype=np.int64),
    )


def clear_all_or_none(*, supply: auction.Supply, demand: auction.Demand, reserve: np.ndarray) -> auction.Result:
    """Clear, then drop every all-or-none bid that was only partly filled and clear again, until none is.

    An all-or-none bid either gets all the CH it still wants in one round or takes no part in it; dropping it can
    only lower the price for the others, and each pass removes at least one bid, so this ends.
    """
    aon = set(Bid.objects.filter(pk__in=demand.bid.tolist(), all_or_none=True).values_list("pk", flat=True))
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
    cheapest: dict[str, int] = {}
    for pool_index, ask in zip(supply.pool.tolist(), supply.ask.tolist(), strict=True):
        pool = auction.POOLS[pool_index]
        cheapest[pool] = min(cheapest.get(pool, ask), ask)
    moved = 0
    fleet, outlooks = None, {}  # read once per round, for the models of the bids that need it
    for bid in bids:
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


def auction_round_run(*, now: datetime | None = None) -> Round | None:
    """Run the round of the current slot, once: a duplicate (two beats, a retried task) returns None."""
    now = now or timezone.now()
    started = time.perf_counter()
    with transaction.atomic():
        _lock_rounds()
        round_, created = Round.objects.get_or_create(slot=round_slot(now))
        if not created:
            return None
        bids_expire(now=now)
        supply, rates = supply_snapshot(now=now)
        auto_bids_redecide(supply=supply, now=now)
        demand = demand_snapshot(now=now)
        pricing = pricing_current()
        reserves = pricing.reserves  # staff's latest change applies from this round on
        round_.platform_fee_pct = Decimal(str(pricing.platform_fee_pct))
        reserve = np.array([reserves[p] for p in auction.POOLS], dtype=np.int64)
        result = clear_all_or_none(supply=supply, demand=demand, reserve=reserve)
        _store(round_, result, reserve, rates, now)
        verification_allocate(round_=round_, supply=supply, result=result, reserve=reserve, rates=rates, now=now)
        round_.cars_offered = len(set(supply.car.tolist()))
        round_.bids_considered = len(demand.bid)
        round_.finished_at = timezone.now()
        round_.seconds = time.perf_counter() - started
        round_.save(update_fields=["cars_offered", "bids_considered", "finished_at", "seconds", "platform_fee_pct"])
    return round_


def _store(round_: Round, result, reserve, rates, now: datetime) -> None:
    # Every round publishes every pool, so the last round holds the last index and the last trade of each.
    last = Round.objects.filter(slot__lt=round_.slot).order_by("-slot").first()
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
    allocations = []
    for bid_id, car_id, pool_index, ch in zip(
        result.alloc_bid.tolist(), result.alloc_car.tolist(), result.alloc_pool.tolist(), result.alloc_ch.tolist(),
        strict=True,
    ):  # fmt: skip
        pool = auction.POOLS[pool_index]
        hours = ch / rates[car_id]["ch_per_hour"][pool] / rates[car_id]["clock_rate"]  # real hours of its time
        allocations.append(
            Allocation(
                round=round_,
                bid_id=bid_id,
                vehicle_id=car_id,
                pool=pool,
                ch=ch,
                price_mcents_per_ch=prices[pool],
                ends_at=now + timedelta(hours=hours),
            )
        )
    Allocation.objects.bulk_create(allocations)  # sets their pks, in order, on PostgreSQL and SQLite ≥ 3.35
    totals: dict[int, float] = {}
    for allocation in allocations:
        totals[allocation.bid_id] = totals.get(allocation.bid_id, 0.0) + allocation.ch
    # Locked in pk order, in one query, so two writers of the same bids cannot deadlock.
    bids = {
        bid.pk: bid
        for bid in Bid.objects.select_for_update(of=("self",))
        .select_related("variant", "dataset")
        .filter(pk__in=totals)
        .order_by("pk")
    }
    won = []  # bids sold their first compute: the customer hears of it (signals.bid_won)
    for bid_id, total in totals.items():
        bid = bids[bid_id]
        allocated = bid.ch_allocated + total
        # The auction trades whole nano-CH: what is left below one is not worth (or able to be) sold.
        bid.ch_allocated = bid.ch_total if bid.ch_total - allocated < auction.CH_QUANTUM else allocated
        if bid.status != Bid.Status.RUNNING:
            won.append(bid_id)
        bid.status = Bid.Status.RUNNING
    Bid.objects.bulk_update(bids.values(), ["ch_allocated", "status"], batch_size=1000)
    for bid_id in won:
        bid_won_announce(bid_id)
    cars = []
    for allocation in allocations:
        info = rates[allocation.vehicle_id]
        sha = bids[allocation.bid_id].variant.sha256
        cars.append(
            {
                # Sized at the car's measured speed on this bid's variant (its rating before it ran it).
                "ch_per_hour": info["measured"].get(sha) or info["rated"][allocation.pool],
                "parked_seconds_left": info["parked_seconds_left"],
                "down_mbps": info["down_mbps"],
                "up_mbps": info["up_mbps"],
                "model_cached": sha in info["model_shas_held"],
                "hardware_id": info["hardware_id"],
            }
        )
    units_cut(allocations=allocations, bids=bids, cars=cars)


def verification_allocate(*, round_: Round, supply: auction.Supply, result, reserve, rates, now: datetime) -> int:
    """Find cars for the replicas waiting for one (marketplace/verdicts.py): the auction cannot, since a replica needs
    a car of a given hardware class whose owner has not run its items. Each goes to an available car this round did not
    sell, of the right class, at the pool's clearing price (or the reserve) but never below the car's ask; the
    platform pays for it, not the customer.

    So do the units a car was refused for (it got one of their known answers wrong): the auction does not know
    which cars a unit may not go to, and would sell the bid that car again and again (it asks the least) while the
    unit waits. Such a unit is the customer's work, at no more than the price they first bought it at
    (`WorkUnit.price_cap_mcents`; settling charges the rest to verification). Returns the number of units placed."""
    waiting = list(
        WorkUnit.objects.filter(status=WorkUnit.Status.QUEUED, assigned_vehicle__isnull=True)
        .filter(Q(replica_of__isnull=False) | ~Q(excluded_vehicles=[]))
        .filter(work_wanted())
        .select_related("bid")
        .order_by("bid__created_at", "index")
    )  # fmt: skip
    if not waiting:
        return 0
    sold = set(result.alloc_car.tolist())
    prices = {p.pool: p.clearing_price for p in result.pools}
    unsold = [
        (car, auction.POOLS[pool], ch, ask)
        for car, pool, ch, ask in zip(supply.car.tolist(), supply.pool.tolist(), supply.ch.tolist(),
                                      supply.ask.tolist(), strict=True)
        if car not in sold
    ]  # fmt: skip
    hardware = dict(Vehicle.objects.filter(pk__in={car for car, *_ in unsold}).values_list("pk", "hardware_id"))
    # Never a car of an owner who already ran the replica's slice: the owners of both sides, in one query.
    owners = verdicts.owners_of([*hardware, *(car for unit in waiting for car in unit.excluded_vehicles)])
    # The free offers by (pool, hardware class), so each replica looks only at cars that could run it.
    offers: dict[tuple[str, int | None], list[list]] = {}
    for car, pool, ch, ask in unsold:
        offers.setdefault((pool, hardware.get(car)), []).append([car, ch, ask])
    placed = 0
    for unit in waiting:
        pool = unit.bid.pool
        if unit.requires_hardware_id:
            candidates = offers.get((pool, unit.requires_hardware_id), [])
        else:
            candidates = [offer for (p, _), group in offers.items() if p == pool for offer in group]
        for offer in candidates:
            car, ch_left, ask = offer
            if ch_left < unit.ch or verdicts.vehicle_refused(unit=unit, vehicle_id=car, owners=owners):
                continue
            market = prices.get(pool) or int(reserve[auction.POOLS.index(pool)])
            price = max(market, ask)
            hours = unit.ch / rates[car]["ch_per_hour"][pool] / rates[car]["clock_rate"]
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
            offer[1] -= unit.ch
            placed += 1
            break
    return placed
