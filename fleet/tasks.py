from celery import shared_task

from .services import vehicle_states_snapshot as snapshot


@shared_task(ignore_result=True)
def vehicle_states_snapshot() -> None:
    snapshot()
