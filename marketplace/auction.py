"""The auction: a sealed-bid, uniform-price clearing per precision pool (a "frequent batch auction").

A pure module (no Django), vectorized with NumPy so that a round of a million supply rows clears in a fraction of a
second; `clear_reference` is the same rule written as a plain per-bid loop, the oracle of the tests and the baseline
of the benchmarks. PRODUCT.md, "The auction", is the source of the rule; the worked example is in AUCTION.md.

Units
-----
- Quantities are compute-hours (CH, one hour of 100 dense INT8 TOPS), given as float64. Inside a round they are
  counted in whole nano-CH (`CH_QUANTUM` = 1e-9 CH, 3.6 µs of 100 TOPS): each quantity is rounded to the nearest
  nano-CH that is not above it. Integer sums are exact, so both implementations take the same decisions (which bid
  is filled, which car is exhausted) and no float drift accumulates over a million rows. That rounding is the only
  epsilon: an allocation is never above what its bid wanted or its car offered (each is clipped down to the grid),
  and a quantity under one nano-CH is dust and takes no part.
- Prices are integers in milli-cents per CH ("m¢/CH"; 1 cent = `MILLICENTS_PER_CENT` m¢), never floats.

The rule, per pool, in `POOLS` order (scarcest first)
-----------------------------------------------------
1. Demand: the pool's bids with price >= the pool's reserve (and a quantity of at least one nano-CH), sorted by price
   descending; ties: earlier `placed` first, then smaller bid id.
2. Supply: the pool's rows of cars that sold nothing in an earlier pool, sorted by ask ascending; ties: higher
   reliability (the car's reputation) first, then a car that already holds a model file the pool's bids run (no
   download), then smaller car id. A car appears once per pool it supports (with that pool's CH); one that
   sold anything in a pool is not offered again (no car is sold twice), one that sold nothing may sell in the next.
   Asks above the best bid cannot trade and are skipped (they still count in `supply_ch`).
3. Volume Q: demand and supply are step functions of cumulative CH (bid price falls, ask price rises); Q is the
   largest quantity where the marginal bid >= the marginal ask. Bids and asks are matched in that order up to Q:
   the best bids take the cheapest asks, the marginal bid may be partly filled and the marginal car partly sold.
4. Price: p* = max(reserve, last accepted ask, h), where h, "the highest bid not fully filled", is the price of the
   first bid in demand order that did not get all it wanted: the marginal bid when it is partly filled, else the
   best bid that got nothing (every demand bid is at or above reserve); no such bid (all demand filled): h is absent.
   Every winner pays p* per CH; every sold car earns p* per CH, gross (billing applies the platform fee).
5. Published: p* (None when nothing traded), volume, unfilled demand (demand CH minus volume), offered supply.

Why nobody pays above their bid and no car earns below its ask. Let b be the marginal (last winning) bid price:
reserve <= b (demand rule), last accepted ask <= b (it crossed at Q), h <= b (h comes at or after the marginal bid in
demand order), so p* <= b <= every winner's bid. And p* >= last accepted ask >= every accepted ask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fleet.agent.precisions import PRECISIONS

# The clearing order: scarcest pool first. `Supply.pool` and `Demand.pool` index into it. One pool per precision, in
# the precisions' own order, so that a pool's number here is the one every other module gives it.
POOLS = PRECISIONS
MILLICENTS_PER_CENT = 1000
PRICE_UNIT = "m¢/CH"
NANO_CH_PER_CH = 1_000_000_000
CH_QUANTUM = 1 / NANO_CH_PER_CH
# Keeps every sum of nano-CH far inside int64 (9.2e18): 4e9 CH is 4e18 nano-CH.
MAX_TOTAL_CH = 4e9


def _column(value, kind: str, dtype, name: str) -> np.ndarray:
    array = np.asarray(value)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a one-dimensional array.")
    if array.size == 0:
        return np.zeros(0, dtype=dtype)
    if kind == "int" and not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{name} must hold integers, not {array.dtype}.")
    if kind == "float" and not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise TypeError(f"{name} must hold numbers, not {array.dtype}.")
    return array.astype(dtype, copy=False)


def _check_lengths(columns: dict[str, np.ndarray]) -> None:
    lengths = {name: column.size for name, column in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"Columns differ in length: {lengths}.")


def _pool_column(value, name: str) -> np.ndarray:
    pool = _column(value, "int", np.int64, name)  # checked before the cast to int8 could wrap a bad value around
    if pool.size and (pool.min() < 0 or pool.max() >= len(POOLS)):
        raise ValueError(f"{name} must index POOLS (0 to {len(POOLS) - 1}).")
    return pool.astype(np.int8)


def _check_quantity(ch: np.ndarray, name: str) -> None:
    if ch.size and not (np.isfinite(ch).all() and ch.min() >= 0):
        raise ValueError(f"{name} must be finite and >= 0 CH.")
    if ch.size and float(ch.sum()) > MAX_TOTAL_CH:
        raise ValueError(f"{name} adds up to more than {MAX_TOTAL_CH:.0e} CH.")


def _check_price(price: np.ndarray, name: str) -> None:
    if price.size and price.min() < 0:
        raise ValueError(f"{name} must be >= 0 {PRICE_UNIT}.")


@dataclass(frozen=True)
class Supply:
    """What the cars offer this round: one row per (car, pool it supports).

    car: int64 car (vehicle) id; pool: int8 index into POOLS; ch: float64 CH the car can deliver in that pool before
    it is predicted to leave; ask: int64 m¢/CH; reliability: float64, the car's reputation, higher is better (the
    first tie-break between equal asks); holds_model: bool, the car already holds a model file the pool's bids run
    (the second tie-break: no download; all False when not given).
    Precondition, not checked: a car appears at most once per pool.
    """

    car: np.ndarray
    pool: np.ndarray
    ch: np.ndarray
    ask: np.ndarray
    reliability: np.ndarray
    holds_model: np.ndarray | None = None

    def __post_init__(self):
        columns = {
            "car": _column(self.car, "int", np.int64, "Supply.car"),
            "pool": _pool_column(self.pool, "Supply.pool"),
            "ch": _column(self.ch, "float", np.float64, "Supply.ch"),
            "ask": _column(self.ask, "int", np.int64, "Supply.ask"),
            "reliability": _column(self.reliability, "float", np.float64, "Supply.reliability"),
            "holds_model": (
                np.zeros(np.shape(self.car), dtype=bool)
                if self.holds_model is None
                else np.asarray(self.holds_model, dtype=bool)
            ),
        }
        _check_lengths(columns)
        for name, column in columns.items():
            object.__setattr__(self, name, column)
        _check_quantity(self.ch, "Supply.ch")
        _check_price(self.ask, "Supply.ask")
        if self.reliability.size and not np.isfinite(self.reliability).all():
            raise ValueError("Supply.reliability must be finite.")


@dataclass(frozen=True)
class Demand:
    """The open bids this round: one row per bid.

    bid: int64 bid id; pool: int8 index into POOLS; ch: float64 CH wanted; price: int64 maximum price in m¢/CH;
    placed: int64 order key (earlier = smaller), the tie-break between equal prices.
    """

    bid: np.ndarray
    pool: np.ndarray
    ch: np.ndarray
    price: np.ndarray
    placed: np.ndarray

    def __post_init__(self):
        columns = {
            "bid": _column(self.bid, "int", np.int64, "Demand.bid"),
            "pool": _pool_column(self.pool, "Demand.pool"),
            "ch": _column(self.ch, "float", np.float64, "Demand.ch"),
            "price": _column(self.price, "int", np.int64, "Demand.price"),
            "placed": _column(self.placed, "int", np.int64, "Demand.placed"),
        }
        _check_lengths(columns)
        for name, column in columns.items():
            object.__setattr__(self, name, column)
        _check_quantity(self.ch, "Demand.ch")
        _check_price(self.price, "Demand.price")


@dataclass(frozen=True)
class PoolResult:
    """The published outcome of one pool: clearing price in m¢/CH (None when nothing traded), quantities in CH."""

    pool: str
    clearing_price: int | None
    volume_ch: float
    unfilled_demand_ch: float  # CH wanted by the bids at or above reserve that was not filled
    supply_ch: float  # CH offered by the cars still unsold when the pool cleared
    bids_considered: int
    cars_considered: int


@dataclass(frozen=True)
class Result:
    """Per-pool outcomes in POOLS order, and the allocations: row i gives `alloc_ch[i]` CH (> 0) of car
    `alloc_car[i]` to bid `alloc_bid[i]` in pool `POOLS[alloc_pool[i]]` at that pool's clearing price. Rows come pool
    by pool, in matching order (best bid first, cheapest ask first)."""

    pools: tuple[PoolResult, ...]
    alloc_bid: np.ndarray
    alloc_car: np.ndarray
    alloc_pool: np.ndarray
    alloc_ch: np.ndarray

    def pool(self, name: str) -> PoolResult:
        return self.pools[POOLS.index(name)]


def _reserve_column(reserve) -> np.ndarray:
    reserve = _column(reserve, "int", np.int64, "reserve")
    if reserve.size != len(POOLS):
        raise ValueError(f"reserve needs one price per pool, in POOLS order {POOLS}.")
    _check_price(reserve, "reserve")
    return reserve


def _to_nano_ch(ch: np.ndarray) -> np.ndarray:
    """CH to whole nano-CH: the nearest grid point, stepped down where it would be above the quantity."""
    nano = np.rint(ch * NANO_CH_PER_CH)
    nano -= nano / NANO_CH_PER_CH > ch
    return nano.astype(np.int64)


def _pool_result(name: str, price, volume: int, demand: int, supply: int, bids: int, cars: int) -> PoolResult:
    return PoolResult(
        pool=name,
        clearing_price=None if price is None else int(price),
        volume_ch=volume / NANO_CH_PER_CH,
        unfilled_demand_ch=(demand - volume) / NANO_CH_PER_CH,
        supply_ch=supply / NANO_CH_PER_CH,
        bids_considered=bids,
        cars_considered=cars,
    )


def _result(pools: list[PoolResult], bid: list, car: list, pool: list, nano: list) -> Result:
    def joined(parts, dtype):
        return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype=dtype)

    return Result(
        pools=tuple(pools),
        alloc_bid=joined(bid, np.int64),
        alloc_car=joined(car, np.int64),
        alloc_pool=joined(pool, np.int8),
        alloc_ch=joined(nano, np.int64) / NANO_CH_PER_CH,
    )


class _SoldCars:
    """The cars that sold in an earlier pool. Car ids are usually database keys in a narrow range: then a table of
    flags answers membership in O(1) per row; otherwise a sorted array and binary search."""

    def __init__(self, every_car: np.ndarray):
        self.low = int(every_car.min()) if every_car.size else 0
        span = int(every_car.max()) - self.low + 1 if every_car.size else 0
        self.table = np.zeros(span, dtype=bool) if span <= 4 * every_car.size + 1024 else None
        self.sorted = np.zeros(0, dtype=np.int64)

    def add(self, cars: np.ndarray) -> None:
        if self.table is not None:
            self.table[cars - self.low] = True
        else:
            self.sorted = np.sort(np.concatenate((self.sorted, np.sort(cars))), kind="stable")

    def contains(self, cars: np.ndarray) -> np.ndarray:
        if self.table is not None:
            return self.table[cars - self.low]
        if not self.sorted.size:
            return np.zeros(cars.size, dtype=bool)
        at = np.minimum(np.searchsorted(self.sorted, cars), self.sorted.size - 1)
        return self.sorted[at] == cars


def clear(supply: Supply, demand: Demand, reserve) -> Result:
    """Clear one auction round: every pool in POOLS order, by the rule of the module docstring.

    reserve: int64[len(POOLS)], the reserve price of each pool in m¢/CH. No Python loop over bids or cars: sorts,
    cumulative sums and binary searches, O((n + m) log(n + m)) for n supply rows and m bids.
    """
    reserve = _reserve_column(reserve)
    supply_nano = _to_nano_ch(supply.ch)
    demand_nano = _to_nano_ch(demand.ch)
    sold = _SoldCars(supply.car)
    pools, out_bid, out_car, out_pool, out_nano = [], [], [], [], []
    for index, name in enumerate(POOLS):
        rows = np.flatnonzero((supply.pool == index) & (supply_nano > 0))
        rows = rows[~sold.contains(supply.car[rows])]
        offered = int(supply_nano[rows].sum())
        bids = np.flatnonzero((demand.pool == index) & (demand.price >= reserve[index]) & (demand_nano > 0))
        wanted = int(demand_nano[bids].sum())
        nothing = _pool_result(name, None, 0, wanted, offered, bids.size, rows.size)
        if not bids.size or not rows.size:
            pools.append(nothing)
            continue

        bids = bids[np.lexsort((demand.bid[bids], demand.placed[bids], -demand.price[bids]))]
        bid_price = demand.price[bids]
        bid_nano = demand_nano[bids]
        bid_end = np.cumsum(bid_nano)  # cumulative CH at the end of each bid's step

        asks = rows[supply.ask[rows] <= bid_price[0]]
        asks = asks[
            np.lexsort((supply.car[asks], ~supply.holds_model[asks], -supply.reliability[asks], supply.ask[asks]))
        ]
        ask_price = supply.ask[asks]
        ask_end = np.cumsum(supply_nano[asks])
        if not asks.size:
            pools.append(nothing)
            continue

        # A bid trades iff the ask covering the quantity just after its start is at or below its price. Starts rise
        # and prices fall along demand order, so the bids that trade are a prefix of it: the first `n_bids`.
        covering = np.searchsorted(ask_end, bid_end - bid_nano, side="right")
        trades = covering < asks.size
        trades[trades] = ask_price[covering[trades]] <= bid_price[trades]
        n_bids = int(np.count_nonzero(trades))
        if n_bids == 0:
            pools.append(nothing)
            continue
        marginal = bid_price[n_bids - 1]
        acceptable = int(np.searchsorted(ask_price, marginal, side="right"))  # asks at or below the marginal bid
        volume = min(int(bid_end[n_bids - 1]), int(ask_end[acceptable - 1]))
        n_cars = int(np.searchsorted(ask_end, volume, side="left")) + 1

        if volume < bid_end[n_bids - 1]:
            highest_not_filled = marginal
        elif n_bids < bids.size:
            highest_not_filled = bid_price[n_bids]
        else:
            highest_not_filled = reserve[index]  # every demand bid filled: h is absent
        price = max(reserve[index], ask_price[n_cars - 1], highest_not_filled)

        # Merge the two step sequences: each breakpoint of either side ends one (bid, car) allocation.
        bid_cut = bid_end[:n_bids].copy()
        bid_cut[-1] = volume
        car_cut = ask_end[:n_cars].copy()
        car_cut[-1] = volume
        ends = np.sort(np.concatenate((bid_cut, car_cut)), kind="stable")  # two sorted runs: a linear merge
        ends = ends[np.concatenate(([True], ends[1:] != ends[:-1]))]
        out_bid.append(demand.bid[bids[np.searchsorted(bid_cut, ends, side="left")]])
        out_car.append(supply.car[asks[np.searchsorted(car_cut, ends, side="left")]])
        out_pool.append(np.full(ends.size, index, dtype=np.int8))
        out_nano.append(np.diff(ends, prepend=0))
        pools.append(_pool_result(name, price, volume, wanted, offered, bids.size, rows.size))
        sold.add(supply.car[asks[:n_cars]])
    return _result(pools, out_bid, out_car, out_pool, out_nano)


def clear_reference(supply: Supply, demand: Demand, reserve) -> Result:
    """The same rule as `clear`, written as a plain loop over bids: the tests' oracle and the benchmarks' baseline.

    Independent of `clear` on purpose (it shares only the input classes and the nano-CH rounding rule); O(n log n)
    sorts plus a walk over bids and asks in Python, some ten times slower.
    """
    reserve = [int(price) for price in _reserve_column(reserve)]

    def nano(ch: float) -> int:
        grid = round(ch * NANO_CH_PER_CH)
        return grid - 1 if grid / NANO_CH_PER_CH > ch else grid

    cars = list(
        zip(
            supply.car.tolist(),
            supply.pool.tolist(),
            [nano(ch) for ch in supply.ch.tolist()],
            supply.ask.tolist(),
            supply.reliability.tolist(),
            supply.holds_model.tolist(),
            strict=True,
        )
    )
    bids = list(
        zip(
            demand.bid.tolist(),
            demand.pool.tolist(),
            [nano(ch) for ch in demand.ch.tolist()],
            demand.price.tolist(),
            demand.placed.tolist(),
            strict=True,
        )
    )
    sold: set[int] = set()
    pools, out_bid, out_car, out_pool, out_nano = [], [], [], [], []
    for index, name in enumerate(POOLS):
        floor = reserve[index]
        pool_bids = sorted(
            (-price, placed, bid, quantity)
            for bid, pool, quantity, price, placed in bids
            if pool == index and price >= floor and quantity > 0
        )
        pool_asks = sorted(
            (ask, -reliability, not holds, car, quantity)
            for car, pool, quantity, ask, reliability, holds in cars
            if pool == index and quantity > 0 and car not in sold
        )
        wanted = sum(bid[3] for bid in pool_bids)
        offered = sum(ask[-1] for ask in pool_asks)
        next_ask, left = 0, pool_asks[0][-1] if pool_asks else 0
        volume, last_ask, highest_not_filled = 0, None, None
        for minus_price, _placed, bid, quantity in pool_bids:
            want = quantity
            while want and next_ask < len(pool_asks) and pool_asks[next_ask][0] <= -minus_price:
                ask, _minus_reliability, _not_holds, car, _quantity = pool_asks[next_ask]
                take = min(want, left)
                out_bid.append(bid)
                out_car.append(car)
                out_pool.append(index)
                out_nano.append(take)
                want -= take
                left -= take
                volume += take
                last_ask = ask
                sold.add(car)
                if not left:
                    next_ask += 1
                    left = pool_asks[next_ask][-1] if next_ask < len(pool_asks) else 0
            if want and highest_not_filled is None:
                highest_not_filled = -minus_price
        price = None
        if volume:
            price = max(floor, last_ask, floor if highest_not_filled is None else highest_not_filled)
        pools.append(_pool_result(name, price, volume, wanted, offered, len(pool_bids), len(pool_asks)))
    return _result(
        pools,
        [np.array(out_bid, dtype=np.int64)],
        [np.array(out_car, dtype=np.int64)],
        [np.array(out_pool, dtype=np.int8)],
        [np.array(out_nano, dtype=np.int64)],
    )


def smoothed_index(
    previous: float | None, price: int | None, *, alpha: float = 0.2, floor: int | None = None
) -> float | None:
    """The pool's price index for the history chart, in m¢/CH: an exponential moving average of clearing prices.

    A round where nothing traded (price None) leaves the index unchanged; the first traded price starts it.
    alpha in (0, 1] is the weight of the new price. `floor` is the pool's reserve in this round: nothing trades
    below it, so an index below it (prices from before staff raised the reserve) restarts from it. Without this the
    index lagged a raised reserve for a dozen rounds (INT8 cleared at 3,000 after the reserve went from 1,000 to 3,000,
    and the index crept 1,000 → 1,400 → 1,720 → …), a price nobody could trade at.
    """
    if not 0 < alpha <= 1:
        raise ValueError("alpha must be in (0, 1].")
    if price is None:
        return previous
    if previous is None:
        return float(price)
    previous = float(previous)  # a stored index may come back as a Decimal
    if floor is not None:
        previous = max(previous, float(floor))
    return previous + alpha * (price - previous)
