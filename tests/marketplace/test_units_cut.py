"""Cutting a round's allocations into work units, on the rows themselves: what a reissued unit bigger than the car's
units becomes, and that nothing it leaves over is lost to the bid."""

import pytest
from django.db.models import Sum

from marketplace import sizing
from marketplace.dispatch import ITEM_OUTPUT_BYTES, units_cut
from marketplace.models import Bid, WorkUnit
from tests.billing import builders
from tests.factories import OwnerFactory, vehicle_with_credential

pytestmark = pytest.mark.django_db


def test_the_pieces_of_a_reissued_unit_that_no_car_gets_are_sold_again(alice, card_for):
    card_for(alice)
    first, _ = vehicle_with_credential(OwnerFactory(username="olivia"))
    last, _ = vehicle_with_credential(OwnerFactory(username="oscar"))
    bid = builders.bid_authorized(alice, budget_cents=900)
    per_item = bid.variant.ch_per_item
    car = {"ch_per_hour": 0.36, "parked_seconds_left": 3600.0, "down_mbps": 100.0, "up_mbps": 100.0,
           "model_cached": True, "hardware_id": first.hardware_id}  # fmt: skip
    size = sizing.items_per_unit(
        ch_per_item=per_item, car_ch_per_hour=car["ch_per_hour"], parked_seconds_left=car["parked_seconds_left"],
        down_mbps=100.0, up_mbps=100.0, item_bytes_in=bid.dataset.size_bytes / bid.dataset.item_count,
        item_bytes_out=ITEM_OUTPUT_BYTES, model_bytes=0, model_cached=True,
    )  # fmt: skip
    assert 1 <= size <= 100
    # Every item is cut; the last 10 units' worth came back in one unit (a slow car's lease expired): queued, no car.
    WorkUnit.objects.create(bid=bid, variant=bid.variant, index=0, item_start=bid.items - 10 * size,
                            item_end=bid.items, ch=10 * size * per_item)  # fmt: skip
    # This round sells them again: two units' worth to the first car, eight to the last (the bid is sold out).
    allocations = [
        builders.sell(bid, first, ch=2 * size * per_item, price_mcents=5000),
        builders.sell(bid, last, ch=8 * size * per_item, price_mcents=5000),
    ]
    WorkUnit.objects.filter(allocation__in=allocations).delete()  # sell() makes units of its own; the round cuts
    Bid.objects.filter(pk=bid.pk).update(items_unitised=bid.items, ch_allocated=bid.ch_total)
    bid.refresh_from_db()

    units_cut(allocations=allocations, bids={bid.pk: bid}, cars=[car, car])

    units = WorkUnit.objects.filter(bid=bid)
    assert units.aggregate(items=Sum("item_end") - Sum("item_start"))["items"] == 10 * size  # every item, once
    assert sum(u.items for u in units.filter(assigned_vehicle=first)) == 2 * size
    waiting = units.filter(assigned_vehicle__isnull=True, status="queued")
    assert sum(u.items for u in waiting) == 8 * size
    # The last car's allocation cannot see the pieces the first one left: its CH go back to the bid, which buys
    # them again in the next rounds rather than waiting for its deadline with them unsold.
    bid.refresh_from_db()
    assert bid.ch_total - bid.ch_allocated == pytest.approx(8 * size * per_item)
