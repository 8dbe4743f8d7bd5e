"""The record of each variant's accuracy per compute class (VariantAccuracy): the platform's build of a variant
(services.variant_build) and every car's self-test of it (selftests.self_test_result) fold their measurements in."""

from __future__ import annotations

import math

from django.db import transaction
from django.utils import timezone

from .inference.accuracy import passes
from .models import PrecisionVariant, VariantAccuracy


def closeness(metrics: dict[str, float], metric: str) -> float:
    """One number to rank measurements of a variant by: higher is closer to FP32."""
    if metric == "cosine":
        return metrics.get("cosine_min", -1.0)
    if metric == "top1":
        return metrics.get("top1_agreement", 0.0)
    return -metrics.get("max_abs_error", math.inf)


def accuracy_record(
    *, variant: PrecisionVariant, compute_class: str, metrics: dict[str, float], on_platform: bool = False
) -> VariantAccuracy:
    """Fold one accuracy measurement of `variant` on `compute_class` (the platform's build, or a car's self-test) into
    the class's record: the worst measurement is kept, and the class passes only while every one met the tolerance.
    A (re)build starts the platform's record afresh: its file, and so its numbers, may have changed."""
    model = variant.inference_model
    ok = passes(metrics, metric=model.metric, tolerance=model.tolerance)
    with transaction.atomic():
        records = VariantAccuracy.objects.select_for_update()
        record = records.filter(variant=variant, compute_class=compute_class).first()
        if record is None or on_platform:
            record = record or VariantAccuracy(variant=variant, compute_class=compute_class)
            record.metrics, record.passes, record.cars_tested, record.cars_failed = metrics, ok, 0, 0
            record.platform = on_platform
        else:
            if closeness(metrics, model.metric) < closeness(record.metrics, model.metric):
                record.metrics = metrics
            record.passes = record.passes and ok
        if not on_platform:
            record.cars_tested += 1
            record.cars_failed += 0 if ok else 1
        record.measured_at = timezone.now()
        record.save()
    return record
