from celery import shared_task
from django.utils import timezone

from . import services
from .models import InferenceModel, PrecisionVariant


@shared_task(ignore_result=True, soft_time_limit=600, time_limit=660)
def inference_model_validate(model_id: int) -> None:
    model = InferenceModel.objects.filter(pk=model_id).first()
    if model is not None:
        services.inference_model_validate(model=model)


@shared_task(ignore_result=True, soft_time_limit=1200, time_limit=1260)
def variant_build(variant_id: int) -> None:
    variant = PrecisionVariant.objects.select_related("inference_model", "evaluated_on").filter(pk=variant_id).first()
    if variant is not None and variant.status in (PrecisionVariant.Status.QUEUED, PrecisionVariant.Status.BUILDING):
        services.variant_build(variant=variant)


@shared_task(ignore_result=True, soft_time_limit=50, time_limit=55)
def auction_round() -> None:
    from .rounds import auction_round_run

    auction_round_run()


@shared_task(ignore_result=True, soft_time_limit=50, time_limit=55)
def leases_sweep() -> None:
    from .dispatch import leases_expire, vehicles_silent_release
    from .selftests import self_tests_expire

    vehicles_silent_release()
    leases_expire()
    self_tests_expire(now=timezone.now())
