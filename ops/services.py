from django.db.models import F
from django.utils import timezone

from .models import PlatformHeartbeat


def platform_heartbeat_record(*, worker: str) -> PlatformHeartbeat:
    """Record that `worker` ran a beat-scheduled heartbeat now. Safe to run twice (it only moves time forward)."""
    now = timezone.now()
    heartbeat, created = PlatformHeartbeat.objects.get_or_create(
        worker=worker, defaults={"last_seen_at": now, "ticks": 1}
    )
    if not created:
        PlatformHeartbeat.objects.filter(pk=heartbeat.pk).update(last_seen_at=now, ticks=F("ticks") + 1)
        heartbeat.refresh_from_db()
    return heartbeat
