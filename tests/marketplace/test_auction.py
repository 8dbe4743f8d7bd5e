"""The auction clearing: PRODUCT.md's promises hold on random markets, and the fast clearing agrees with the loop."""

from collections import defaultdict
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from marketplace.auction import (
    POOLS,
    Demand,
    PoolResult,
    Supply,
    clear,
    clear_reference,
    smoothed_index,
)

FP8, FP32, FP16, INT8 = (POOLS.index(name) for name in ("fp8", "fp32", "fp16", "int8"))
TOLERANCE_CH = 1e-9
# CH on a 0.1 grid (sums such as 0.1 + 0.2 are not exact in floats), zero included; prices on a coarse grid so that
# bids and asks tie often.
QUANTITIES = st.integers(0, 40).map(lambda tenths: tenths / 10)
PRICES = st.integers(0, 12).map(lambda hundreds: hundreds * 100)


def columns(rows, width=5):
    return [[row[i] for row in rows] for i in range(width)]


@st.composite
def markets(draw, max_cars=30, max_bids=30):
    """A small random market: cars offering in one to four pools, bids, reserves; many ties of price and key."""
    n_cars = draw(st.integers(0, max_cars))
    rows = []
    for car in draw(st.permutations(range(100, 100 + n_cars))):
        reliability = draw(st.sampled_from([0.5, 0.9, 0.99, 1.0]))
        for pool in draw(st.sets(st.integers(0, len(POOLS) - 1), min_size=1)):
            rows.append((car, pool, draw(QUANTITIES), draw(PRICES), reliability, draw(st.booleans())))
    rows = draw(st.permutations(rows))
    n_bids = draw(st.integers(0, max_bids))
    bids = [
        (bid, draw(st.integers(0, len(POOLS) - 1)), draw(QUANTITIES), draw(PRICES), draw(st.integers(0, 4)))
        for bid in draw(st.permutations(range(1, n_bids + 1)))
    ]
    reserve = np.array(draw(st.lists(PRICES.map(lambda p: p // 2), min_size=len(POOLS), max_size=len(POOLS))))
    return Supply(*columns(rows)), Demand(*columns(bids)), reserve


def allocations(result):
    return list(
        zip(
            result.alloc_bid.tolist(),
            result.alloc_car.tolist(),
            result.alloc_pool.tolist(),
            result.alloc_ch.tolist(),
            strict=True,
        )
    )


def bid_rows(demand):
    """bid -> (pool, ch, price)."""
    return {bid: rest for bid, *rest in zip(*columns_of(demand, "bid pool ch price"), strict=True)}


def supply_rows(supply):
    """(car, pool) -> (ch, ask)."""
    return {(car, pool): (ch, ask) for car, pool, ch, ask in zip(*columns_of(supply, "car pool ch ask"), strict=True)}


def columns_of(table, names):
    return [getattr(table, name).tolist() for name in names.split()]


# --- The worked example of marketplace/AUCTION.md ----------------------------------------------------------------

CAR_A, CAR_B, CAR_C, CAR_D, CAR_E = 1, 2, 3, 4, 5


def test_worked_example_of_auction_md():
    supply = Supply(
        car=[CAR_A, CAR_A, CAR_B, CAR_C, CAR_D, CAR_D, CAR_E],
        pool=[FP16, INT8, INT8, INT8, FP16, INT8, INT8],
        ch=[4.0, 8.0, 6.0, 5.0, 5.0, 10.0, 4.0],
        ask=[1800, 900, 700, 1100, 1000, 500, 1100],
        reliability=[0.99, 0.99, 0.95, 0.90, 0.97, 0.97, 0.99],
    )
    demand = Demand(
        bid=[1, 2, 3, 4, 5, 6],
        pool=[FP16, FP16, INT8, INT8, INT8, INT8],
        ch=[3.0, 4.0, 5.0, 6.0, 4.0, 3.0],
        price=[2000, 1500, 1400, 1200, 1200, 700],
        placed=[1, 2, 3, 1, 2, 4],
    )
    reserve = [5000, 3000, 1200, 800]

    result = clear(supply, demand, reserve)

    # FP16: D (1,000) fills bid 1 and 2 CH of bid 2; A asks 1,800 > 1,500, so bid 2 stays partly filled and sets p*.
    assert result.pool("fp16") == PoolResult("fp16", 1500, 5.0, 2.0, 9.0, bids_considered=2, cars_considered=2)
    # INT8: D sold in FP16 and is not offered; A, unsold in FP16, is. E beats C on reliability; E's ask sets p*.
    assert result.pool("int8") == PoolResult("int8", 1100, 15.0, 0.0, 23.0, bids_considered=3, cars_considered=4)
    assert result.pool("fp8").clearing_price is None
    assert result.pool("fp32").clearing_price is None
    assert allocations(result) == [
        (1, CAR_D, FP16, 3.0),
        (2, CAR_D, FP16, 2.0),
        (3, CAR_B, INT8, 5.0),
        (4, CAR_B, INT8, 1.0),
        (4, CAR_A, INT8, 5.0),
        (5, CAR_A, INT8, 3.0),
        (5, CAR_E, INT8, 1.0),
    ]
    assert smoothed_index(1000.0, result.pool("int8").clearing_price) == pytest.approx(1020.0)
    assert allocations(clear_reference(supply, demand, reserve)) == allocations(result)


# --- Each term of the price ----------------------------------------------------------------------------------


def one_pool(cars, bids, reserve=0):
    """A market in INT8 only: cars as (id, ch, ask), bids as (id, ch, price); placed in the given order."""
    supply = Supply(
        car=[car for car, _, _ in cars],
        pool=[INT8] * len(cars),
        ch=[ch for _, ch, _ in cars],
        ask=[ask for _, _, ask in cars],
        reliability=[1.0] * len(cars),
    )
    demand = Demand(
        bid=[bid for bid, _, _ in bids],
        pool=[INT8] * len(bids),
        ch=[ch for _, ch, _ in bids],
        price=[price for _, _, price in bids],
        placed=list(range(len(bids))),
    )
    return supply, demand, [0, 0, 0, reserve]


def test_the_best_bid_left_out_sets_the_price_when_it_is_above_the_last_ask():
    market = one_pool(cars=[(1, 1.0, 500)], bids=[(10, 1.0, 1000), (11, 1.0, 900)])
    result = clear(*market)
    assert result.pool("int8").clearing_price == 900
    assert allocations(result) == [(10, 1, INT8, 1.0)]


def test_the_reserve_sets_the_price_when_it_is_the_highest_term():
    market = one_pool(cars=[(1, 2.0, 500)], bids=[(10, 1.0, 1000), (11, 1.0, 600)], reserve=800)
    result = clear(*market)
    # Bid 11 is below reserve: it takes no part and does not set the price.
    assert result.pool("int8") == PoolResult("int8", 800, 1.0, 0.0, 2.0, bids_considered=1, cars_considered=1)


def test_nothing_trades_when_every_ask_is_above_every_bid():
    result = clear(*one_pool(cars=[(1, 2.0, 1500)], bids=[(10, 1.0, 1000)]))
    assert result.pool("int8") == PoolResult("int8", None, 0.0, 1.0, 2.0, bids_considered=1, cars_considered=1)
    assert allocations(result) == []


def test_an_empty_market_publishes_every_pool_with_no_price():
    result = clear(Supply([], [], [], [], []), Demand([], [], [], [], []), [0, 0, 0, 0])
    assert [pool.pool for pool in result.pools] == list(POOLS)
    assert all(pool.clearing_price is None and pool.volume_ch == 0 for pool in result.pools)
    assert allocations(result) == []


def test_quantities_that_floats_cannot_add_exactly_still_fill_exactly():
    result = clear(*one_pool(cars=[(1, 0.3, 500), (2, 0.7, 600)], bids=[(10, 0.1, 900), (11, 0.2, 900)]))
    # 0.1 + 0.2 != 0.3 in floats; in whole nano-CH car 1 covers both bids exactly, and car 2 sells nothing.
    assert allocations(result) == [(10, 1, INT8, 0.1), (11, 1, INT8, 0.2)]
    assert result.pool("int8").unfilled_demand_ch == 0
    assert result.pool("int8").clearing_price == 500


def test_a_car_partly_sold_in_a_scarcer_pool_is_not_offered_in_the_next():
    supply = Supply(car=[1, 1, 2], pool=[FP8, INT8, INT8], ch=[5.0, 9.0, 1.0], ask=[100, 100, 800], reliability=[1] * 3)
    demand = Demand(bid=[10, 11], pool=[FP8, INT8], ch=[1.0, 3.0], price=[1000, 1000], placed=[0, 0])
    result = clear(supply, demand, [0, 0, 0, 0])
    assert allocations(result) == [(10, 1, FP8, 1.0), (11, 2, INT8, 1.0)]
    assert result.pool("int8").supply_ch == 1.0


def test_between_equal_asks_reputation_comes_first_then_holding_the_model():
    # Cars 1-3 ask the same; car 1 holds the model but has the worst record; cars 2 and 3 have the same record, and
    # car 3 holds the model. One bid takes exactly one car's CH.
    supply = Supply(
        car=[1, 2, 3], pool=[INT8] * 3, ch=[4.0] * 3, ask=[500] * 3, reliability=[0.5, 0.9, 0.9],
        holds_model=[True, False, True],
    )  # fmt: skip
    demand = Demand(bid=[1, 2], pool=[INT8, INT8], ch=[4.0, 4.0], price=[900, 900], placed=[0, 1])

    result = clear(supply, demand, np.array([100] * len(POOLS)))

    assert [car for _bid, car, _pool, _ch in allocations(result)] == [3, 2]
    assert allocations(clear_reference(supply, demand, np.array([100] * len(POOLS)))) == allocations(result)


def test_bad_input_gets_a_clear_error():
    with pytest.raises(ValueError, match="differ in length"):
        Supply(car=[1, 2], pool=[INT8], ch=[1.0], ask=[100], reliability=[1.0])
    with pytest.raises(ValueError, match="index POOLS"):
        Demand(bid=[1], pool=[4], ch=[1.0], price=[100], placed=[0])
    with pytest.raises(ValueError, match="index POOLS"):
        Supply(car=[1], pool=[259], ch=[1.0], ask=[100], reliability=[1.0])  # not wrapped around to int8's 3
    with pytest.raises(ValueError, match="finite and >= 0"):
        Demand(bid=[1], pool=[INT8], ch=[-1.0], price=[100], placed=[0])
    with pytest.raises(TypeError, match="integers"):
        Demand(bid=[1], pool=[INT8], ch=[1.0], price=[100.5], placed=[0])
    with pytest.raises(ValueError, match="one price per pool"):
        clear(Supply([], [], [], [], []), Demand([], [], [], [], []), [0, 0])


# --- Properties on random markets -------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(markets())
def test_clear_agrees_with_the_reference_loop(market):
    fast, slow = clear(*market), clear_reference(*market)
    assert fast.pools == slow.pools  # prices exactly, quantities too: both count in whole nano-CH
    assert fast.alloc_bid.tolist() == slow.alloc_bid.tolist()
    assert fast.alloc_car.tolist() == slow.alloc_car.tolist()
    assert fast.alloc_pool.tolist() == slow.alloc_pool.tolist()
    np.testing.assert_allclose(fast.alloc_ch, slow.alloc_ch, rtol=0, atol=TOLERANCE_CH)


@settings(max_examples=200, deadline=None)
@given(markets())
def test_nobody_pays_above_their_bid_and_no_car_earns_below_its_ask(market):
    supply, demand, _reserve = market
    result = clear(*market)
    bids, rows = bid_rows(demand), supply_rows(supply)
    for bid, car, pool, ch in allocations(result):
        price = result.pools[pool].clearing_price
        assert ch > 0
        assert bids[bid][2] >= price >= rows[car, pool][1]


@settings(max_examples=200, deadline=None)
@given(markets())
def test_no_car_sells_more_than_it_offered_nor_in_two_pools(market):
    supply = market[0]
    result = clear(*market)
    rows = supply_rows(supply)
    sold = defaultdict(float)
    pools_of_car = defaultdict(set)
    for _bid, car, pool, ch in allocations(result):
        sold[car, pool] += ch
        pools_of_car[car].add(pool)
    assert all(len(pools) == 1 for pools in pools_of_car.values())
    for (car, pool), ch in sold.items():
        assert ch <= rows[car, pool][0] + TOLERANCE_CH


@settings(max_examples=200, deadline=None)
@given(markets())
def test_no_bid_gets_more_than_it_asked_and_reserves_hold(market):
    _supply, demand, reserve = market
    result = clear(*market)
    bids = bid_rows(demand)
    got = defaultdict(float)
    for bid, _car, pool, ch in allocations(result):
        got[bid] += ch
        assert bids[bid][0] == pool
        assert bids[bid][2] >= reserve[pool]
    for bid, ch in got.items():
        assert ch <= bids[bid][1] + TOLERANCE_CH
    for index, pool in enumerate(result.pools):
        assert pool.clearing_price is None or pool.clearing_price >= reserve[index]


@settings(max_examples=200, deadline=None)
@given(markets())
def test_one_price_per_pool_and_the_published_quantities_add_up(market):
    supply, demand, reserve = market
    result = clear(*market)
    volume = defaultdict(float)
    for _bid, _car, pool, ch in allocations(result):
        volume[pool] += ch
    sold_before = set()
    for index, pool in enumerate(result.pools):
        assert pool.pool == POOLS[index]
        assert (pool.clearing_price is None) == (pool.volume_ch == 0)
        assert pool.volume_ch == pytest.approx(volume[index], abs=TOLERANCE_CH)
        wanted = sum(
            ch
            for _bid, bid_pool, ch, price in zip(*columns_of(demand, "bid pool ch price"), strict=True)
            if bid_pool == index and price >= reserve[index]
        )
        assert pool.volume_ch + pool.unfilled_demand_ch == pytest.approx(wanted, abs=TOLERANCE_CH)
        offered = sum(
            ch
            for car, row_pool, ch in zip(*columns_of(supply, "car pool ch"), strict=True)
            if row_pool == index and car not in sold_before
        )
        assert pool.supply_ch == pytest.approx(offered, abs=TOLERANCE_CH)
        sold_before |= {car for _bid, car, alloc_pool, _ch in allocations(result) if alloc_pool == index}


def with_price(demand, position, price):
    return replace(demand, price=np.where(np.arange(demand.bid.size) == position, price, demand.price))


def winners_of(demand, supply, reserve):
    return set(clear(supply, demand, reserve).alloc_bid.tolist())


@settings(max_examples=100, deadline=None)
@given(markets())
def test_raising_a_losing_bid_above_the_clearing_price_makes_it_win(market):
    supply, demand, reserve = market
    result = clear(*market)
    got, sold = defaultdict(float), defaultdict(float)
    pool_of_car = {}
    for bid, car, pool, ch in allocations(result):
        got[bid] += ch
        sold[car, pool] += ch
        pool_of_car[car] = pool
    bids = bid_rows(demand)
    for position, bid in enumerate(demand.bid.tolist()):
        pool, ch, _price = bids[bid]
        if bid in got or ch == 0 or result.pools[pool].clearing_price is None:
            continue
        raised_price = result.pools[pool].clearing_price + 1
        # It wins, unless every winner of its pool was filled and no car has CH left at or below the new price.
        a_winner_partly_filled = any(
            got[winner] < bids[winner][1] - TOLERANCE_CH for winner in got if bids[winner][0] == pool
        )
        ch_left_at_new_price = any(
            row_ch - sold[car, pool] > TOLERANCE_CH and ask <= raised_price
            for (car, row_pool), (row_ch, ask) in supply_rows(supply).items()
            if row_pool == pool and pool_of_car.get(car, pool) >= pool  # not sold in an earlier pool
        )
        if a_winner_partly_filled or ch_left_at_new_price:
            assert bid in winners_of(with_price(demand, position, raised_price), supply, reserve)
        # Above every bid of its pool, it always wins.
        assert bid in winners_of(with_price(demand, position, 10**6), supply, reserve)


def test_clear_agrees_with_the_reference_loop_on_a_larger_market():
    rng = np.random.default_rng(7)
    n_cars, n_bids = 3000, 800
    car = np.repeat(np.arange(n_cars), 2)
    supply = Supply(
        car=car,
        pool=np.tile([FP16, INT8], n_cars),
        ch=rng.uniform(0, 8, car.size),
        ask=rng.integers(5, 40, car.size) * 100,
        reliability=rng.integers(90, 100, car.size) / 100,
    )
    demand = Demand(
        bid=rng.permutation(n_bids),
        pool=rng.choice([FP16, INT8], n_bids),
        ch=rng.uniform(0, 30, n_bids),
        price=rng.integers(5, 50, n_bids) * 100,
        placed=rng.integers(0, 50, n_bids),
    )
    reserve = [0, 0, 1000, 800]
    fast, slow = clear(supply, demand, reserve), clear_reference(supply, demand, reserve)
    assert fast.pool("int8").volume_ch > 0 and fast.pool("fp16").volume_ch > 0
    assert fast.pools == slow.pools
    assert allocations(fast) == allocations(slow)


# --- The price index --------------------------------------------------------------------------------------------


def test_smoothed_index_starts_at_the_first_price_and_stays_put_when_nothing_trades():
    assert smoothed_index(None, None) is None
    assert smoothed_index(None, 1200) == 1200.0
    assert smoothed_index(1000.0, None) == 1000.0
    assert smoothed_index(1000.0, 2000, alpha=0.5) == 1500.0
    with pytest.raises(ValueError, match="alpha"):
        smoothed_index(1000.0, 2000, alpha=0)


def test_smoothed_index_follows_the_trades_when_staff_raise_the_reserve():
    # INT8 cleared at the 1,000 reserve; staff raised it to 3,000 and every trade since clears at 3,000. The old rule
    # smoothed from the sub-reserve index (1,400, then 1,720: a price nobody could trade at).
    index = smoothed_index(None, 1000, floor=1000)
    for _ in range(2):
        index = smoothed_index(index, 3000, floor=3000)
        assert index == 3000.0
    # Above the reserve it smooths as before, and a lower reserve changes nothing.
    assert smoothed_index(3000.0, 4000, floor=1000) == 3200.0
    assert smoothed_index(1000.0, None, floor=3000) == 1000.0  # no trade: the index only moves with trades
