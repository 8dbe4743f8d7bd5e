from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
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


class AuditEvent(models.Model):
    """Who did what to which object: staff changing prices, suspending cars, refunding payments (ops/audit.py).

    Append-only: rows are written by `audit_record` and only read afterwards (the admin shows them read-only). The
    target is named by type, id and its text at the time, not by a foreign key, so the event outlives the object and
    can name any model; the actor's username is kept too, for the same reason.
    """

    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="audit_events",
        help_text="Empty: the platform itself (a task, an automatic check).",
    )  # fmt: skip
    actor_username = models.CharField(max_length=150, blank=True)
    action = models.CharField(max_length=64, db_index=True, help_text="What happened, e.g. vehicle.suspend.")
    target_type = models.CharField(max_length=100, db_index=True, help_text="app_label.model, e.g. fleet.vehicle.")
    target_id = models.CharField(max_length=64, blank=True)
    target_repr = models.CharField(max_length=200, blank=True)
    details = models.JSONField(default=dict, blank=True, encoder=DjangoJSONEncoder)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["target_type", "target_id"], name="ops_audit_target")]

    def __str__(self) -> str:
        who = self.actor_username or "platform"
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {who}: {self.action} {self.target_type} {self.target_id}"
