"""Events the marketplace announces, for the apps above it to act on (the marketplace never imports them).

`bid_closed(bid_id)`: a bid closed (completed, failed, expired or cancelled), sent once the transaction that closed
it has committed. Billing charges the bid's validated work and releases the rest of its hold (billing.apps).
"""

from django.db import transaction
from django.dispatch import Signal

bid_closed = Signal()


def bid_closed_announce(bid_id: int) -> None:
    """Announce that bid `bid_id` closed, once the current transaction commits (at once outside one)."""
    transaction.on_commit(lambda: bid_closed.send(sender="marketplace", bid_id=bid_id))
