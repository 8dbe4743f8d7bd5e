"""A scheduled round packs its sales in batches of bids (dispatch.sales_pack), one cutting task each: every sale is
kept, once, with each bid's sales in the order the clearing made them, and no bid is split over two batches."""

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from marketplace.dispatch import CUT_BIDS_PER_TASK, SALE_ROW, sales_pack


@settings(max_examples=60, deadline=None)
@given(
    bids=st.integers(min_value=1, max_value=3 * CUT_BIDS_PER_TASK + 7),
    sales=st.integers(min_value=1, max_value=5000),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_every_sale_is_packed_once_in_batches_of_whole_bids(bids, sales, seed):
    rng = np.random.default_rng(seed)
    bid = rng.choice(np.arange(1, 10 * bids, 10), size=sales)
    car = rng.permutation(sales) + 100
    ch, ends = rng.random(sales), 1.8e9 + rng.random(sales) * 3600
    price, pool = rng.integers(1000, 9000, sales), rng.integers(0, 4, sales)

    batches = sales_pack(bid=bid, car=car, ch=ch, ends_ts=ends, price=price, pool=pool)

    rows = np.concatenate(batches)
    assert rows.dtype == SALE_ROW and len(rows) == sales
    assert all(len(np.unique(b["bid"])) <= CUT_BIDS_PER_TASK for b in batches)
    assert all(len(b) for b in batches)
    assert len(batches) == -(-len(np.unique(bid)) // CUT_BIDS_PER_TASK)
    # No bid in two batches: each batch's range of ids lies after the last one's.
    assert all(a["bid"][-1] < b["bid"][0] for a, b in itertools.pairwise(batches))
    # Every sale, with all its fields, exactly once; a bid's sales in the clearing's order.
    by_car = rows[np.argsort(rows["car"])]
    order = np.argsort(car)
    for name, values in (("bid", bid), ("ch", ch), ("ends", ends), ("price", price), ("pool", pool)):
        assert np.array_equal(by_car[name], values[order])
    for b in np.unique(bid):
        assert np.array_equal(rows["car"][rows["bid"] == b], car[bid == b])
