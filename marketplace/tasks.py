from datetime import timedelta

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.utils import timezone

from fleet import book

from . import services, sweeps
from .dispatch import allocations_cut, allocations_uncut, leases_expire, vehicles_silent_release
from .models import InferenceModel, PrecisionVariant
from .rounds import auction_round_run
from .selftests import self_tests_expire


def _soft_limit(hard_s: int) -> int:
    """A minute before the hard limit (a tenth of it, for a short one): time for the task to record why it stopped."""
    return hard_s - min(60, max(hard_s // 10, 1))


@shared_task(
    ignore_result=True,
    soft_time_limit=_soft_limit(settings.MODEL_VALIDATION_TIME_LIMIT_SECONDS),
    time_limit=settings.MODEL_VALIDATION_TIME_LIMIT_SECONDS,
)
def inference_model_validate(model_id: int) -> None:
    model = InferenceModel.objects.filter(pk=model_id).first()
    if model is None:
        return
    try:
        services.inference_model_validate(model=model)
    except SoftTimeLimitExceeded:
        # A check this slow is as slow when retried: its owner learns it now, not after the sweeper's retries.
        sweeps.validation_fail(model_id=model_id, reason=sweeps.validation_too_slow_reason())


def model_check_wanted_received(sender, *, model_id: int, **kwargs) -> None:
    """signals.model_check_wanted: the model is checked in a worker once its upload commits."""
    inference_model_validate.delay_on_commit(model_id)


@shared_task(
    ignore_result=True,
    soft_time_limit=_soft_limit(settings.VARIANT_BUILD_TIME_LIMIT_SECONDS),
    time_limit=settings.VARIANT_BUILD_TIME_LIMIT_SECONDS,
)
def variant_build(variant_id: int) -> None:
    variant = PrecisionVariant.objects.select_related("inference_model", "evaluated_on").filter(pk=variant_id).first()
    if variant is not None and variant.status in (PrecisionVariant.Status.QUEUED, PrecisionVariant.Status.BUILDING):
        services.variant_build(variant=variant)


def variant_build_wanted_received(sender, *, variant_id: int, **kwargs) -> None:
    """signals.variant_build_wanted: the variant is built in a worker once the transaction that queued it commits."""
    variant_build.delay_on_commit(variant_id)


@shared_task(ignore_result=True, soft_time_limit=50, time_limit=55)
def auction_round() -> None:
    """Beat's tick: one round per market region (every region with a supply book), each its own task on the `rounds`
    queue, so as many workers as regions run them side by side (each region's round holds its own lock). A single
    market's round runs in this task."""
    regions = book.regions() or [""]
    if len(regions) == 1:
        auction_round_region(regions[0], regions)
        return
    for region in regions:
        auction_round_region.delay(region, regions)


@shared_task(ignore_result=True, soft_time_limit=50, time_limit=55)
def auction_round_region(region: str, regions: list[str]) -> None:
    auction_round_run(region=region, regions=regions, cut_units=False)


@shared_task(ignore_result=True, soft_time_limit=50, time_limit=55)
def units_cut(bid_ids: list[int]) -> int:
    """Cut the work a round sold these bids into units for the cars (dispatch.allocations_cut)."""
    return allocations_cut(bid_ids=bid_ids)


def units_cut_wanted_received(sender, *, bid_ids: list[int], **kwargs) -> None:
    """signals.units_cut_wanted: cut once the round commits, on the dispatch queue."""
    units_cut.delay_on_commit(list(bid_ids))


# A round's cutting task not done after this long was lost (a worker killed, a broker restart): the sweep redoes it.
UNCUT_AFTER = timedelta(seconds=30)


@shared_task(ignore_result=True, soft_time_limit=50, time_limit=55)
def leases_sweep() -> None:
    vehicles_silent_release()
    leases_expire()
    self_tests_expire(now=timezone.now())
    uncut = allocations_uncut(older_than=timezone.now() - UNCUT_AFTER)
    for start in range(0, len(uncut), 500):
        units_cut.delay(uncut[start : start + 500])


@shared_task(ignore_result=True, soft_time_limit=50, time_limit=55)
def long_tasks_sweep() -> dict[str, int]:
    """Queue again what the sweep found stranded (marketplace/sweeps.py); how many were queued again and failed."""
    swept = sweeps.long_tasks_sweep()
    for model_id in swept.validations_retried:
        inference_model_validate.delay(model_id)
    for variant_id in swept.builds_retried:
        variant_build.delay(variant_id)
    return swept.counts()
