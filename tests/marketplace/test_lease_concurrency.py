"""Many cars' threads claiming work at the same moment never get the same unit twice."""

from datetime import timedelta

import pytest
from django.utils import timezone

from marketplace.dispatch import unit_lease
from marketplace.models import Bid, WorkUnit
from tests.concurrency import at_once
from tests.factories import OwnerFactory, vehicle_with_credential
from tests.marketplace.conftest import measured_here


@pytest.mark.django_db(transaction=True)
def test_concurrent_leases_hand_out_each_unit_once(digits_with_variants):
    model = digits_with_variants
    car, _ = vehicle_with_credential(OwnerFactory(username="olivia"))
    variant = model.variants.get(precision="int8")
    bid = Bid.objects.create(
        customer=model.owner, inference_model=model, dataset=model.datasets.get(), variant=variant,
        precision_requested="int8", pool="int8", max_price_mcents_per_ch=5000, budget_cents=100,
        deadline=timezone.now() + timedelta(hours=1), items=200, ch_total=200 * variant.ch_per_item,
        status=Bid.Status.RUNNING, items_unitised=200,
    )  # fmt: skip
    WorkUnit.objects.bulk_create(
        WorkUnit(
            bid=bid, variant=variant, index=i, item_start=10 * i, item_end=10 * i + 10, ch=1e-9, assigned_vehicle=car
        )
        for i in range(20)
    )
    measured_here(car, variant)  # it ran this variant before: no self-test first
    leased: list[int] = []

    def car_thread():
        while (unit := unit_lease(vehicle=car)) is not None:
            leased.append(unit.pk)

    at_once(car_thread, 8, timeout=60)

    assert sorted(leased) == sorted(WorkUnit.objects.values_list("pk", flat=True))  # each exactly once
    assert WorkUnit.objects.filter(status="leased").count() == 20
