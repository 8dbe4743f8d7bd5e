"""Self-tests: a car's first run of a variant, measured where the work runs.

Before a car runs any unit of a variant it has never run, its next lease is a self-test instead: up to
SELF_TEST_ITEMS of the held-out items of the customer's dataset (the items the accuracy gate scores), run exactly as
a unit is run. The platform then knows, on this car's own hardware:
- its speed on this variant (fleet.models.VehicleThroughput, from the run's compute seconds): sizing, the CH it offers
  and its energy-based ask use it from now on, instead of the hardware profile's rating;
- whether the variant meets the customer's tolerance there (its outputs against FP32 on the same items): a car that
  misses it gets none of the variant's work, and the result counts for its compute class (VariantAccuracy).

Then dispatch cuts the car's queued units of that variant to what it can really finish (dispatch.units_fit). A self-test
is not paid, like the benchmark a host runs before renting out a machine elsewhere; it costs the car seconds.
The car knows a self-test only by its unit id (SELF_TEST_PREFIX): it leases, renews and reports it like any unit.
"""

from __future__ import annotations

import functools
import uuid
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from fleet.models import Vehicle
from fleet.services import throughput_record

from . import sizing
from .accuracies import accuracy_record
from .datasets import holdout_indices
from .inference.accuracy import compare, passes
from .models import SELF_TEST_PREFIX, Dataset, PrecisionVariant, SelfTest, WorkUnit
from .payloads import LEASE_BATCH_SIZE, lease_lost, no_such_unit, outputs_checked, variant_payload
from .storage import dataset_items
from .verdicts import runner_for

# Held-out items a self-test runs at most: a second or two of a CPU, a few minutes on a car a hundred times slower.
SELF_TEST_ITEMS = 32
# How long a car may take over its self-test, renewals included (seconds): longer, and it is not worth selling.
SELF_TEST_MAX_SECONDS = 900


def is_self_test(unit_id: str) -> bool:
    return unit_id.startswith(SELF_TEST_PREFIX)


def self_test_items(item_count: int) -> list[int]:
    """The dataset items a self-test runs: held-out items, evenly spread, at most SELF_TEST_ITEMS."""
    held_out = holdout_indices(item_count)
    if len(held_out) <= SELF_TEST_ITEMS:
        return held_out
    return [held_out[i * len(held_out) // SELF_TEST_ITEMS] for i in range(SELF_TEST_ITEMS)]


def self_test_issue(*, vehicle: Vehicle, unit: WorkUnit, now: datetime) -> SelfTest:
    """A self-test of `unit`'s variant for the car, on the held-out items of `unit`'s dataset. A self-test of the same
    variant the car still held is lost: the car asks again only once it gave up on it."""
    SelfTest.objects.filter(vehicle=vehicle, variant_id=unit.variant_id, status=SelfTest.Status.LEASED).update(
        status=SelfTest.Status.LOST
    )
    dataset = unit.bid.dataset
    lease = settings.WORK_LEASE_MIN_SECONDS
    return SelfTest.objects.create(
        vehicle=vehicle, variant_id=unit.variant_id, dataset=dataset, items=self_test_items(dataset.item_count),
        lease_id=str(uuid.uuid4()), leased_at=now, lease_expires_at=now + timedelta(seconds=lease),
    )  # fmt: skip


def self_test_payload(test: SelfTest, *, vehicle: Vehicle, batch_size: int) -> dict[str, Any]:
    """The lease JSON of a self-test: the same fields as a unit's (fleet/agent/executor.py, WorkUnit.from_lease)."""
    variant = test.variant
    items = dataset_items(test.dataset).items
    chosen = [items[index] for index in test.items]
    payload = variant_payload(variant, vehicle=vehicle, items=chosen, batch_size=batch_size)
    payload.update(
        unit_id=test.unit_id, lease_id=test.lease_id, ch=len(chosen) * (variant.ch_per_item or 0.0),
        lease_seconds=settings.WORK_LEASE_MIN_SECONDS,
    )  # fmt: skip
    return payload


def _leased_test(*, vehicle: Vehicle, unit_id: str, lease_id: str) -> SelfTest:
    try:
        test = (
            SelfTest.objects.select_for_update()
            .select_related("variant__inference_model", "dataset")
            .get(pk=int(unit_id.removeprefix(SELF_TEST_PREFIX)))
        )
    except (ValueError, SelfTest.DoesNotExist):
        raise no_such_unit() from None
    if test.status != SelfTest.Status.LEASED or test.lease_id != lease_id or test.vehicle_id != vehicle.pk:
        raise lease_lost()
    return test


@transaction.atomic
def self_test_result(*, vehicle: Vehicle, data: dict[str, Any], now: datetime | None = None) -> SelfTest:
    """The car's outputs for its self-test: checked like a unit's, compared with FP32 on the same items, timed. The
    variant's accuracy on the car's hardware is recorded, and its speed when it passed (a car that failed runs none
    of the variant's work). Returns the self-test, PASSED or FAILED."""
    now = now or timezone.now()
    test = _leased_test(vehicle=vehicle, unit_id=data["unit_id"], lease_id=data["lease_id"])
    outputs, _ = outputs_checked(data, expected=len(test.items))
    variant = test.variant
    model = variant.inference_model
    metrics = compare(_reference(test), outputs, metric=model.metric)
    ok = passes(metrics, metric=model.metric, tolerance=model.tolerance)
    compute_class = Vehicle.objects.values_list("compute_class", flat=True).get(pk=vehicle.pk) or "other"
    test.status = SelfTest.Status.PASSED if ok else SelfTest.Status.FAILED
    test.metrics = {key: float(value) for key, value in metrics.items()}
    test.seconds, test.energy_wh = data.get("seconds"), data.get("energy_wh")
    test.runtime_version, test.compute_class = str(data.get("runtime_version", ""))[:40], compute_class
    test.completed_at = now
    test.save()
    vehicle.compute_class = compute_class
    accuracy_record(variant=variant, compute_class=compute_class, metrics=test.metrics)
    if ok:
        throughput_record(
            vehicle=vehicle, workload=variant.sha256, precision=variant.precision,
            ch_per_item=variant.ch_per_item or 0.0, items=len(test.items), seconds=test.seconds,
            energy_wh=test.energy_wh or 0.0, at=now, first=True,
        )  # fmt: skip
    return test


@transaction.atomic
def self_test_failure(*, vehicle: Vehicle, unit_id: str, lease_id: str, error: str) -> SelfTest:
    """The car could not run its self-test (a download, the model): it is lost, and asked again at its next lease."""
    test = _leased_test(vehicle=vehicle, unit_id=unit_id, lease_id=lease_id)
    test.status, test.metrics, test.completed_at = SelfTest.Status.LOST, {"error": error[:300]}, timezone.now()
    test.save(update_fields=["status", "metrics", "completed_at"])
    return test


def self_test_renew(*, vehicle: Vehicle, unit_id: str, lease_id: str, now: datetime) -> float:
    """Extend a running self-test's lease; a car may take SELF_TEST_MAX_SECONDS in all (else 409, and it is lost)."""
    lease = settings.WORK_LEASE_MIN_SECONDS
    with transaction.atomic():
        test = _leased_test(vehicle=vehicle, unit_id=unit_id, lease_id=lease_id)
        too_long = (now - test.leased_at).total_seconds() > SELF_TEST_MAX_SECONDS
        if too_long:
            test.status = SelfTest.Status.LOST
            test.save(update_fields=["status"])
        else:
            test.lease_expires_at = now + timedelta(seconds=lease)
            test.save(update_fields=["lease_expires_at"])
    if too_long:  # (after the commit: the self-test stays lost)
        raise lease_lost(f"a self-test may take {SELF_TEST_MAX_SECONDS} s at most; this one is given up")
    return lease


def self_tests_expire(*, now: datetime) -> int:
    """Self-tests past their lease are lost (the car asks again at its next lease). Safe to run twice."""
    return SelfTest.objects.filter(status=SelfTest.Status.LEASED, lease_expires_at__lt=now).update(
        status=SelfTest.Status.LOST
    )


def self_test_failed(*, vehicle: Vehicle, variant: PrecisionVariant) -> bool:
    """Whether the car's last self-test of the variant missed the tolerance (it gets none of its work)."""
    last = (
        SelfTest.objects.filter(vehicle=vehicle, variant=variant, status__in=(SelfTest.Status.PASSED,
                                                                               SelfTest.Status.FAILED))
        .order_by("-completed_at")
        .values_list("status", flat=True)
        .first()
    )  # fmt: skip
    return last == SelfTest.Status.FAILED


def lease_seconds_for(*, predicted_s: float, transfer_s: float) -> float:
    """A unit's lease length (real seconds) from its predicted run: marketplace/sizing.py, within the settings."""
    return sizing.lease_seconds(
        predicted_s=predicted_s, transfer_s=transfer_s, floor_s=settings.WORK_LEASE_MIN_SECONDS,
        ceiling_s=max(settings.WORK_LEASE_SECONDS, settings.WORK_LEASE_MIN_SECONDS),
    )  # fmt: skip


def _reference(test: SelfTest) -> np.ndarray:
    """FP32's outputs for the self-test's items, in the batches the car ran them in (kept in this process for the
    next car's self-test on the same items)."""
    model = test.variant.inference_model
    return _reference_run(model.onnx_sha256, model.pk, test.dataset_id, tuple(test.items))


@functools.lru_cache(maxsize=16)
def _reference_run(onnx_sha256: str, model_id: int, dataset_id: int, indices: tuple[int, ...]) -> np.ndarray:
    items = dataset_items(Dataset.objects.select_related("inference_model").get(pk=dataset_id)).items
    return runner_for(onnx_sha256, model_id).run([items[i] for i in indices], batch_size=LEASE_BATCH_SIZE)
