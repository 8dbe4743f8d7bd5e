from celery import shared_task

from .services import platform_heartbeat_record


@shared_task(bind=True, ignore_result=True)
def platform_heartbeat(self) -> None:
    platform_heartbeat_record(worker=self.request.hostname or "unknown")
