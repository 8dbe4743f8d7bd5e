"""Thin tasks: take ids, re-fetch, call a service. Each is safe to run twice (the services are idempotent)."""

from celery import shared_task

from . import reconciliation, services, webhooks


@shared_task(ignore_result=True, soft_time_limit=60, time_limit=70)
def authorization_confirm(authorization_id: int) -> None:
    services.authorization_confirm(authorization_id=authorization_id)


@shared_task(ignore_result=True, soft_time_limit=60, time_limit=70, autoretry_for=(Exception,),
             retry_backoff=5, retry_backoff_max=300, max_retries=10)  # fmt: skip
def bid_settle(bid_id: int) -> None:
    services.bid_settle(bid_id=bid_id)


def bid_closed_received(sender, *, bid_id: int, **kwargs) -> None:
    """marketplace.signals.bid_closed (sent after the closing commit): settle the bid in a worker."""
    bid_settle.delay(bid_id)


@shared_task(ignore_result=True, soft_time_limit=50, time_limit=55)
def billing_sweep() -> None:
    """What lost messages or crashes left behind: bids to settle, authorizations to finish, earnings out of hold."""
    services.authorizations_resume()
    for bid_id in services.settlements_due():
        services.bid_settle(bid_id=bid_id)
    services.earnings_release_due()


@shared_task(ignore_result=True, soft_time_limit=600, time_limit=660)
def payouts() -> None:
    services.payouts_run()


@shared_task(ignore_result=True, soft_time_limit=60, time_limit=70, autoretry_for=(Exception,),
             retry_backoff=5, retry_backoff_max=600, max_retries=12)  # fmt: skip
def stripe_event_process(event_id: str) -> None:
    webhooks.event_process(event_id=event_id)


@shared_task(ignore_result=True, soft_time_limit=120, time_limit=130)
def reconciliation_refresh() -> None:
    """Keep the finance page's reconciliation recent, so that no page view reconciles the books itself."""
    reconciliation.reconciliation_refresh()
