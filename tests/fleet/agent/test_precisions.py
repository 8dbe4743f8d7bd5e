"""fleet/agent/precisions.py: the precision names are defined once, and every list of them is built from them."""

from fleet.agent.precisions import FP8, FP16, FP32, INT8, PRECISIONS
from fleet.models import Precision
from marketplace import auction, services, verification
from marketplace.forms import BidForm
from marketplace.inference import costing, quantization


def test_the_pools_are_the_precisions_and_keep_their_numbers():
    # A pool's number is its place in the tuple (the auction's arrays, a round's supply rows): it must not move.
    assert auction.POOLS is PRECISIONS
    assert PRECISIONS == ("fp8", "fp32", "fp16", "int8")


def test_every_list_of_precisions_names_the_same_four():
    every = {INT8, FP8, FP16, FP32}

    assert len(PRECISIONS) == 4 and set(PRECISIONS) == every
    assert set(Precision.values) == every
    assert sorted(costing.AUTO_ORDER) == sorted(services.PRECISIONS_BUILT) == sorted(every)
    assert quantization.PRECISIONS is verification.PRECISIONS is PRECISIONS
    assert [value for value, _ in BidForm.PRECISIONS] == ["auto", *Precision.values]


def test_the_choices_keep_their_values_labels_and_cheapest_first_order():
    assert Precision.choices == [("int8", "INT8"), ("fp8", "FP8"), ("fp16", "FP16"), ("fp32", "FP32")]
    assert Precision.values == list(costing.AUTO_ORDER)
