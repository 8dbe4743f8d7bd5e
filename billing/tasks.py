"""Thin tasks: take ids, re-fetch, call a service. Each is safe to run twice (the services are idempotent).

Also the receivers of the marketplace's events (billing.apps connects them), as thin: each calls a service or queues
a task. The marketplace never imports billing; it announces, and billing acts here.
"""

from celery import shared_task

from . import reconciliation, selectors, webhooks
from .models import PaymentAuthorization
from .services import authorizations, corrections, settling, topups
from .services import payouts as payouts_service


@shared_task(ignore_result=True, soft_time_limit=60, time_limit=70)
def authorization_confirm(authorization_id: int) -> None:
    authorizations.authorization_confirm(authorization_id=authorization_id)


@shared_task(ignore_result=True, soft_time_limit=60, time_limit=70, autoretry_for=(Exception,),
             retry_backoff=5, retry_backoff_max=300, max_retries=10)  # fmt: skip
def bid_settle(bid_id: int) -> None:
    settling.bid_settle(bid_id=bid_id)


def bid_placing_received(sender, *, bid, **kwargs) -> None:
    """marketplace.signals.bid_placing (inside the transaction that creates the bid): check the customer can pay and
    store the bid's card authorization with its idempotency key, so both rows commit together. A refusal (no card,
    a budget Stripe would not take, the exposure cap) raises ApplicationError, which rolls the bid back."""
    authorizations.authorization_prepare(bid=bid)


def bid_placed_received(sender, *, bid_id: int, **kwargs) -> str:
    """marketplace.signals.bid_placed (after that commit, in the placing request): hold the budget on the card; the
    bid is then WAITING, or DECLINED. Returns Stripe's reason for a decline ("" otherwise), for the customer."""
    authorization_id = PaymentAuthorization.objects.values_list("pk", flat=True).get(bid_id=bid_id)
    return authorizations.authorization_confirm(authorization_id=authorization_id).failure_message


def bid_charges_received(sender, *, bids, **kwargs) -> dict[int, int]:
    """marketplace.signals.bid_charges_wanted (a page or the API asks): what each bid has cost so far, n¢."""
    return selectors.bid_charges_nc(bids=bids)


def bid_closed_received(sender, *, bid_id: int, **kwargs) -> None:
    """marketplace.signals.bid_closed (sent after the closing commit): settle the bid in a worker."""
    bid_settle.delay(bid_id)


@shared_task(ignore_result=True, soft_time_limit=60, time_limit=70, autoretry_for=(Exception,),
             retry_backoff=5, retry_backoff_max=300, max_retries=10)  # fmt: skip
def audit_correct(bid_id: int) -> None:
    corrections.audit_correct(bid_id=bid_id)


def bid_audited_received(sender, *, bid_id: int, **kwargs) -> None:
    """marketplace.signals.bid_audited (after the commit): a caught car's results in this bid were judged again.
    Settle the bid if it was waiting for that, or correct its settlement, in a worker."""
    bid_settle.delay(bid_id)
    audit_correct.delay(bid_id)


@shared_task(ignore_result=True, soft_time_limit=50, time_limit=55)
def billing_sweep() -> None:
    """What lost messages or crashes left behind: bids to settle or to correct after an audit, authorizations,
    top-ups and refunds of unused balance to finish, paused bids a balance now covers, earnings out of hold."""
    authorizations.authorizations_resume()
    topups.topups_resume()
    topups.balance_refunds_resume()
    for bid_id in settling.settlements_due():
        settling.bid_settle(bid_id=bid_id)
    for bid_id in corrections.corrections_due():
        corrections.audit_correct(bid_id=bid_id)
    payouts_service.earnings_release_due()


@shared_task(ignore_result=True, soft_time_limit=600, time_limit=660)
def payouts() -> None:
    payouts_service.payouts_run()


@shared_task(ignore_result=True, soft_time_limit=60, time_limit=70, autoretry_for=(Exception,),
             retry_backoff=5, retry_backoff_max=600, max_retries=12)  # fmt: skip
def stripe_event_process(event_id: str) -> None:
    webhooks.event_process(event_id=event_id)


@shared_task(ignore_result=True, soft_time_limit=120, time_limit=130)
def reconciliation_refresh() -> None:
    """Keep the finance page's reconciliation recent, so that no page view reconciles the books itself."""
    reconciliation.reconciliation_refresh()
