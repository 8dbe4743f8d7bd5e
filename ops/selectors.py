from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db.models import Count
from django.utils import timezone

from accounts.models import User

from .models import PlatformHeartbeat

# A worker is "alive" if it ran a tick within this many heartbeat intervals.
STALE_AFTER_INTERVALS = 3


@dataclass(frozen=True)
class WorkerHealth:
    worker: str
    last_seen_at: datetime
    age_seconds: float
    ticks: int
    alive: bool


@dataclass(frozen=True)
class PlatformHealth:
    interval_seconds: int
    workers: list[WorkerHealth]

    @property
    def alive(self) -> bool:
        return any(w.alive for w in self.workers)

    @property
    def summary(self) -> str:
        if not self.workers:
            return "No heartbeat yet: is Celery beat running, and a worker?"
        if self.alive:
            live = sum(w.alive for w in self.workers)
            return f"Beat and {live} worker{'s' if live != 1 else ''} alive."
        newest = min(w.age_seconds for w in self.workers)
        return f"No heartbeat for {newest:.0f} s: beat or every worker is down."


def platform_health_get(*, now: datetime | None = None) -> PlatformHealth:
    now = now or timezone.now()
    interval = settings.PLATFORM_HEARTBEAT_SECONDS
    workers = []
    for hb in PlatformHeartbeat.objects.all()[:20]:
        age = (now - hb.last_seen_at).total_seconds()
        workers.append(
            WorkerHealth(
                worker=hb.worker,
                last_seen_at=hb.last_seen_at,
                age_seconds=max(age, 0.0),
                ticks=hb.ticks,
                alive=age <= interval * STALE_AFTER_INTERVALS,
            )
        )
    return PlatformHealth(interval_seconds=interval, workers=workers)


def user_counts_by_role() -> dict[str, int]:
    return dict(User.objects.values_list("role").annotate(n=Count("id")).order_by())
