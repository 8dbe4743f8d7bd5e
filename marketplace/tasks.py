from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.utils import timezone

from . import services, sweeps
from .dispatch import leases_expire, vehicles_silent_release
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
    auction_round_run()


@shared_task(ignore_result=True, soft_time_limit=50, time_limit=55)
def leases_sweep() -> None:
    vehicles_silent_release()
    leases_expire()
    self_tests_expire(now=timezone.now())


@shared_task(ignore_result=True, soft_time_limit=50, time_limit=55)
def long_tasks_sweep() -> dict[str, int]:
    """Queue again what the sweep found stranded (marketplace/sweeps.py); how many were queued again and failed."""
    swept = sweeps.long_tasks_sweep()
    for model_id in swept.validations_retried:
        inference_model_validate.delay(model_id)
    for variant_id in swept.builds_retried:
        variant_build.delay(variant_id)
    return swept.counts()
