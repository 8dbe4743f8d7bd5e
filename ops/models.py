from django.db import models


class PlatformHeartbeat(models.Model):
    """The last tick of the platform heartbeat that each Celery worker ran.

    Celery beat enqueues `ops.tasks.platform_heartbeat` every PLATFORM_HEARTBEAT_SECONDS with an expiry of one
    interval, and a worker records it here: a recent row proves that beat, the broker and that worker all work.
    """

    worker = models.CharField(max_length=255, unique=True, help_text="Celery worker hostname.")
    first_seen_at = models.DateTimeField(auto_now_add=True)
    last_seen_at = models.DateTimeField()
    ticks = models.PositiveBigIntegerField(default=0)

    class Meta:
        ordering = ["-last_seen_at"]

    def __str__(self) -> str:
        return f"{self.worker} @ {self.last_seen_at:%Y-%m-%d %H:%M:%S}"
