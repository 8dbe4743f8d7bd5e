"""Thin tasks: take ids, call a service; each is safe to run twice (the services claim their row first).

Also the receivers of the marketplace's events (notifications.apps connects them), as thin: each queues the task that
records the event, so that a car's result or a round never waits on this app.
"""

from celery import shared_task
from django.db import transaction

from . import services
from .models import BidEvent


@shared_task(ignore_result=True, soft_time_limit=60, time_limit=70, autoretry_for=(Exception,),
             retry_backoff=5, retry_backoff_max=300, max_retries=10)  # fmt: skip
def bid_event_record(bid_id: int, event_type: str | None = None, milestone: int = 0, extra: dict | None = None) -> None:
    services.bid_event_record(bid_id=bid_id, event_type=event_type, milestone=milestone, extra=extra)


# The POST's own timeout is WEBHOOK_TIMEOUT_SECONDS (10 s by default); a failure is retried by the service, not here.
@shared_task(ignore_result=True, soft_time_limit=45, time_limit=55)
def webhook_deliver(delivery_id: int) -> None:
    services.delivery_attempt(delivery_id=delivery_id)


@shared_task(ignore_result=True, soft_time_limit=50, time_limit=55)
def webhook_deliveries_sweep() -> None:
    """Deliveries whose next try is due and that no message brings (a long retry delay, a lost message)."""
    for delivery_id in services.deliveries_due():
        webhook_deliver.delay(delivery_id)


@shared_task(ignore_result=True, soft_time_limit=60, time_limit=70, autoretry_for=(Exception,),
             retry_backoff=30, retry_backoff_max=1800, max_retries=8)  # fmt: skip
def bid_email_send(event_pk: int) -> None:
    services.bid_email_send(event_pk=event_pk)


def bid_won_received(sender, *, bid_id: int, **kwargs) -> None:
    """marketplace.signals.bid_won (after the commit that turned the bid RUNNING): a bid won its first compute."""
    bid_event_record.delay(bid_id, BidEvent.Type.WON.value)


def bid_progressed_received(sender, *, bid_id: int, percent: int, **kwargs) -> None:
    """marketplace.signals.bid_progressed (after the result's commit): a milestone of validated items."""
    bid_event_record.delay(bid_id, BidEvent.Type.PROGRESS.value, percent, {"percent": percent})


def bid_closed_received(sender, *, bid_id: int, **kwargs) -> None:
    """marketplace.signals.bid_closed: completed, failed, expired or cancelled, as the bid's status says."""
    bid_event_record.delay(bid_id)


def bid_audited_received(sender, *, bid_id: int, audit_ids: list[int], **kwargs) -> None:
    """marketplace.signals.bid_audited: a caught car's results in the bid were judged again (one event per batch of
    audits closed, keyed by the last one)."""
    bid_event_record.delay(bid_id, BidEvent.Type.RESULTS_CORRECTED.value, max(audit_ids, default=0),
                           {"audit_ids": sorted(audit_ids)})  # fmt: skip


def delivery_wanted_received(sender, *, delivery_id: int, countdown: float = 0, **kwargs) -> None:
    """signals.delivery_wanted: POST the delivery in a worker once its row commits (not `delay_on_commit`: tests that
    run those inline must still see a real worker deliver)."""
    transaction.on_commit(lambda: webhook_deliver.apply_async((delivery_id,), countdown=countdown))


def email_wanted_received(sender, *, event_pk: int, **kwargs) -> None:
    """signals.email_wanted: email the customer in a worker once the event commits."""
    transaction.on_commit(lambda: bid_email_send.delay(event_pk))
