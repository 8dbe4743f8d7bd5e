"""The precision names, defined once. A car runs work of these precisions, the platform builds a variant of each
inference model in each, and the auction has one pool per precision; everything that names them imports them from here.

It imports nothing, so that the car's agent (which may import only itself), the pure cores (no Django) and the
platform's models can all take the names from the same place. Where a different order is a policy (cheapest first for
"auto", the choice lists' order), the module that holds the policy builds it from these names and says why.
"""

INT8 = "int8"
FP8 = "fp8"
FP16 = "fp16"
FP32 = "fp32"

# Every precision, scarcest first: the order in which the auction clears its pools (a car sold in one pool is not
# offered in the next). A precision's place here is its pool's number in the auction's arrays (`Supply.pool`,
# `Demand.pool`) and in a round's supply rows, so `marketplace.auction.POOLS` and `fleet.availability.PRECISIONS` are
# this tuple itself, and reordering it renumbers the pools.
PRECISIONS = (FP8, FP32, FP16, INT8)
