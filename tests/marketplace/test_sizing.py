"""Work-unit sizing: units fit well inside the car's parked time and carry little data next to their compute."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from marketplace.sizing import items_per_unit, transfer_seconds

MINUTE, HOUR = 60.0, 3600.0
MB = 1_000_000

# An HW4 car in INT8 (2.45 CH per hour) on good home WiFi, running a model of 1e-4 CH per item (0.147 s per item),
# with small items and the model already on the car.
UNIT = dict(
    ch_per_item=1e-4,
    car_ch_per_hour=2.45,
    parked_seconds_left=8 * HOUR,
    down_mbps=300.0,
    up_mbps=40.0,
    item_bytes_in=4_000,
    item_bytes_out=1_500,
    model_bytes=90 * MB,
    model_cached=True,
    max_items=1_000_000,
)
STARLINK = dict(down_mbps=25.0, up_mbps=5.0)


def size(**changes):
    return items_per_unit(**{**UNIT, **changes})


def test_transfer_seconds_is_bytes_over_megabits():
    assert transfer_seconds(1 * MB, 8.0) == pytest.approx(1.0)
    assert transfer_seconds(0, 0.0) == 0.0
    assert transfer_seconds(1, 0.0) == math.inf
    with pytest.raises(ValueError, match="negative"):
        transfer_seconds(-1, 8.0)


def test_a_car_leaving_in_half_an_hour_gets_a_smaller_unit_than_one_staying_eight_hours():
    soon, late = size(parked_seconds_left=30 * MINUTE), size(parked_seconds_left=8 * HOUR)
    assert 0 < soon < late
    # A quarter of the parked time of compute at 0.147 s per item: 450 s and 7,200 s.
    assert soon == 3062
    assert late == 49_000


def test_compute_takes_at_most_a_quarter_of_the_parked_time_and_transfer_a_fifth_of_compute():
    items = size(parked_seconds_left=2 * HOUR)
    compute = items * 1e-4 / 2.45 * HOUR
    transfer = items * (transfer_seconds(4_000, 300.0) + transfer_seconds(1_500, 40.0))
    assert compute <= 0.25 * 2 * HOUR
    assert transfer <= 0.2 * compute


def test_an_uncached_big_model_on_a_starlink_like_link_shrinks_then_refuses_units():
    big_model = dict(model_bytes=800 * MB, model_cached=False, **STARLINK)  # 256 s to download at 25 Mbps
    assert 0 < size(parked_seconds_left=30 * MINUTE, **big_model) < size(parked_seconds_left=30 * MINUTE)
    # Leaving in 10 minutes: 150 s of compute budget plus 30 s for transfers is not enough for the download.
    assert size(parked_seconds_left=10 * MINUTE) > 0
    assert size(parked_seconds_left=10 * MINUTE, **big_model) == 0
    # Once the car holds the model, only the slow uplink is left to pay for.
    assert size(parked_seconds_left=10 * MINUTE, model_cached=True, **STARLINK) > 0


def test_a_model_download_too_big_for_the_ratio_still_gets_a_unit_that_fits_the_parked_time():
    # 400 MB at 25 Mbps is 128 s: more than a fifth of the compute of any unit that fits 30 minutes (450 s at most).
    items = size(parked_seconds_left=30 * MINUTE, model_bytes=400 * MB, model_cached=False, **STARLINK)
    assert items > 0
    compute = items * 1e-4 / 2.45 * HOUR
    transfer = transfer_seconds(400 * MB, 25.0) + items * (transfer_seconds(4_000, 25.0) + transfer_seconds(1_500, 5.0))
    assert transfer > 0.2 * compute
    assert compute + transfer <= (1 + 0.2) * 0.25 * 30 * MINUTE


def test_no_unit_exceeds_max_items():
    assert size(max_items=10_000) == 10_000
    assert size(ch_per_item=0.0, max_items=500) == 500


def test_nothing_fits_gives_zero():
    assert size(parked_seconds_left=0) == 0
    assert size(parked_seconds_left=-5 * MINUTE) == 0
    assert size(car_ch_per_hour=0.0) == 0
    assert size(ch_per_item=1.0, parked_seconds_left=30 * MINUTE) == 0  # one item is 1,469 s of compute
    assert size(parked_seconds_left=30 * MINUTE, min_items=5_000) == 0
    assert size(up_mbps=0.0) == 0  # results cannot be uploaded


def test_bad_input_gets_a_clear_error():
    with pytest.raises(ValueError, match="ch_per_item"):
        size(ch_per_item=-1.0)
    with pytest.raises(ValueError, match="down_mbps"):
        size(down_mbps=math.nan)
    with pytest.raises(ValueError, match="min_items"):
        size(min_items=10, max_items=5)
    with pytest.raises(ValueError, match="safety"):
        size(safety=0.9, transfer_ratio=0.2)


@settings(max_examples=300, deadline=None)
@given(
    ch_per_item=st.floats(1e-9, 1.0),
    car_ch_per_hour=st.floats(0.01, 20.0),
    parked_seconds_left=st.floats(0, 24 * HOUR),
    down_mbps=st.floats(0.1, 1000.0),
    up_mbps=st.floats(0.1, 100.0),
    item_bytes_in=st.integers(0, 10 * MB),
    item_bytes_out=st.integers(0, 10 * MB),
    model_bytes=st.integers(0, 2_000 * MB),
    model_cached=st.booleans(),
    min_items=st.integers(1, 100),
    max_items=st.integers(100, 100_000),
)
def test_every_unit_fits_its_bounds(**unit):
    items = items_per_unit(**unit)
    assert items == 0 or unit["min_items"] <= items <= unit["max_items"]
    budget = 0.25 * unit["parked_seconds_left"]
    compute = items * unit["ch_per_item"] / unit["car_ch_per_hour"] * HOUR
    assert compute <= budget * (1 + 1e-9)
    if items:
        transfer = items * (
            transfer_seconds(unit["item_bytes_in"], unit["down_mbps"])
            + transfer_seconds(unit["item_bytes_out"], unit["up_mbps"])
        ) + (0 if unit["model_cached"] else transfer_seconds(unit["model_bytes"], unit["down_mbps"]))
        assert compute + transfer <= 1.2 * budget * (1 + 1e-9)
    # A car that stays longer never gets a smaller unit.
    assert items_per_unit(**{**unit, "parked_seconds_left": 2 * unit["parked_seconds_left"]}) >= items
