"""The sweeper of long tasks: a model validation or a variant build that outlived its time limit is queued again, a
bounded number of times, then failed with a reason its owner reads (like leases_expire for work units).

The database holds the truth and the broker is only a wake-up signal (RELIABILITY.md, "Celery with Redis"). A task
whose worker was SIGKILLed is redelivered only after Redis's visibility timeout (an hour), and not at all if Redis
restarted empty; a task killed by its hard time limit is acknowledged as failed. Either way its row stays
`validating`, or `queued` / `building`, for good unless something looks at the clock.

The sweep only decides: it returns the rows due for a retry, and its task (marketplace.tasks.long_tasks_sweep) queues
them again.

When a row is stale. A task runs at most its hard time limit L (MODEL_VALIDATION_TIME_LIMIT_SECONDS,
VARIANT_BUILD_TIME_LIMIT_SECONDS) and is then killed, so a row still pending a window W = L + margin after it was
queued cannot be running any more. Each window after that allows one retry; past (1 + retries) windows it has failed.
The count is by age, so it survives a Redis restart; Redis only keeps a retry from being queued on every tick of the
same window (a lost mark queues one more retry at worst, and each task is safe to run twice). A retry queued on the
first tick of a window ends, killed or not, before the next window begins, because the margin exceeds the sweep
interval: a retry that is running is never failed.

The clock starts when the work is queued, not when a worker takes it (no column records that): work that waits in a
long queue uses up its windows too. Its retries are then duplicates, which change nothing; and an owner whose model
waited (1 + retries) windows learns it failed, rather than waiting for good.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone

from . import services
from .models import InferenceModel, PrecisionVariant

PENDING = (PrecisionVariant.Status.QUEUED, PrecisionVariant.Status.BUILDING)


@dataclass
class Swept:
    """What a sweep found: the models to check again and the variants to build again (their task queues them), and
    how many of each it failed."""

    validations_retried: list[int] = field(default_factory=list)
    validations_failed: int = 0
    builds_retried: list[int] = field(default_factory=list)
    builds_failed: int = 0

    def counts(self) -> dict[str, int]:
        return {
            "validations_retried": len(self.validations_retried), "validations_failed": self.validations_failed,
            "builds_retried": len(self.builds_retried), "builds_failed": self.builds_failed,
        }  # fmt: skip


def long_tasks_sweep(*, now: datetime | None = None) -> Swept:
    """Fail every stranded validation and variant build past its retries, and return those due for a retry (each once
    per window: see _retry_due). Safe to run twice (and from two beats)."""
    now = now or timezone.now()
    validations_retried, validations_failed = validations_sweep(now=now)
    builds_retried, builds_failed = variant_builds_sweep(now=now)
    return Swept(validations_retried, validations_failed, builds_retried, builds_failed)


def validations_sweep(*, now: datetime) -> tuple[list[int], int]:
    """Models still `validating` past their window: to be queued again, then rejected with a reason. Returns the
    models due for a retry and how many were rejected."""
    limit_s = settings.MODEL_VALIDATION_TIME_LIMIT_SECONDS
    window = _window(limit_s)
    retried, failed = [], 0
    stale = InferenceModel.objects.filter(status=InferenceModel.Status.VALIDATING, created_at__lt=now - window)
    for model_id, queued_at in stale.values_list("pk", "created_at"):
        if _exhausted(queued_at, now=now, window=window):
            failed += validation_fail(model_id=model_id, reason=validation_failure_reason(limit_s))
        elif _retry_due("validation", model_id, window=window):
            retried.append(model_id)
    return retried, failed


def variant_builds_sweep(*, now: datetime) -> tuple[list[int], int]:
    """Builds still `queued` or `building` past their window: to be queued again, then failed with a reason. Returns
    the builds due for a retry and how many failed.

    A build's window counts from `updated_at`, the time it was queued: its progress is written with UPDATEs, which
    leave that stamp alone. Superseded builds (retired) are left to their workers, which drop them."""
    limit_s = settings.VARIANT_BUILD_TIME_LIMIT_SECONDS
    window = _window(limit_s)
    retried, failed = [], 0
    stale = PrecisionVariant.objects.filter(status__in=PENDING, retired_at__isnull=True, updated_at__lt=now - window)
    for variant_id, queued_at in stale.values_list("pk", "updated_at"):
        if _exhausted(queued_at, now=now, window=window):
            # variant_decide locks the row and leaves a build that its worker decided meanwhile as it is.
            variant = services.variant_decide(
                variant_id=variant_id, status=PrecisionVariant.Status.FAILED, error=build_failure_reason(limit_s)
            )
            failed += variant.status == PrecisionVariant.Status.FAILED
        elif _retry_due("variant", variant_id, window=window):
            retried.append(variant_id)
    return retried, failed


def validation_fail(*, model_id: int, reason: str) -> int:
    """Reject a model still validating, with `reason` for its owner; 1 if this call did, 0 if it was decided already.

    One conditional UPDATE, so a validation finishing at the same moment is never overwritten. Unlike a model the
    check refused, its file is kept: a late run of the check that finds it good may still make it ready."""
    return InferenceModel.objects.filter(pk=model_id, status=InferenceModel.Status.VALIDATING).update(
        status=InferenceModel.Status.REJECTED, rejection_reason=reason
    )


def validation_failure_reason(limit_s: float) -> str:
    tries = 1 + settings.TASK_SWEEP_RETRIES
    return (
        f"The check did not finish within {_minutes(limit_s)} ({_times(tries)}: the worker stopped or the check ran "
        "out of time). Upload the model again; if this happens again, the model is too large or too slow to check."
    )


def validation_too_slow_reason() -> str:
    """For a check that reached its soft time limit: it would only be as slow again."""
    limit_s = settings.MODEL_VALIDATION_TIME_LIMIT_SECONDS
    return f"The check did not finish within {_minutes(limit_s)}: the model is too large or too slow to check."


def build_failure_reason(limit_s: float) -> str:
    tries = 1 + settings.TASK_SWEEP_RETRIES
    return (
        f"The build did not finish within {_minutes(limit_s)} ({_times(tries)}: the worker stopped or the build ran "
        "out of time). Upload the dataset again to rebuild."
    )


def _window(limit_s: float) -> timedelta:
    """How long after it was queued a task of this hard limit (seconds) may still be running."""
    return timedelta(seconds=limit_s + settings.TASK_SWEEP_MARGIN_SECONDS)


def _exhausted(queued_at: datetime, *, now: datetime, window: timedelta) -> bool:
    """The first run and every retry have had their window."""
    return now - queued_at > window * (1 + settings.TASK_SWEEP_RETRIES)


def _retry_due(kind: str, pk: int, *, window: timedelta) -> bool:
    """True once per window per row: the first tick of the window queues the retry, the next ones wait for it."""
    return cache.add(f"long-task-retry:{kind}:{pk}", 1, timeout=max(int(window.total_seconds()), 1))


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _times(tries: int) -> str:
    return "tried once" if tries == 1 else f"tried {tries} times"
