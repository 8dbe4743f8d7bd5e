"""Events the marketplace announces, for the apps above it to act on (the marketplace never imports them).

`bid_placing(bid)`: a bid is being placed, sent inside the transaction that creates it (status AUTHORIZING). Billing
checks the customer can pay and stores the bid's card authorization with its idempotency key (billing.apps), so the
bid and its authorization commit together or not at all: a listener refuses the bid by raising ApplicationError,
which rolls the bid back and reaches the customer as it is.

`bid_placed(bid_id)`: that transaction has committed, sent in the placing request before it answers. Billing holds the
budget on the card (billing.apps): the bid is then WAITING, or DECLINED, and billing's reply is Stripe's reason for a
decline. Stripe is called only after the commit, so a request that dies during the call leaves both rows on record,
and billing's sweeper finishes the authorization with the same key.

`bid_closed(bid_id)`: a bid closed (completed, failed, expired or cancelled), sent once the transaction that closed
it has committed. Billing charges the bid's validated work and releases the rest of its hold (billing.apps).

`bid_won(bid_id)`: a round sold a waiting bid its first compute and the bid turned RUNNING (dispatch, when it cuts a
scheduled round's sales; rounds, when a round cuts at once), sent once that has committed.
`bid_progressed(bid_id, percent)`: a newly validated slice took the bid's validated items past `percent` (25, 50 or
75), sent once per milestone crossed, after the result's commit (dispatch.unit_result). The
notifications app tells the customer (webhooks), and records each (bid, event, milestone) once.

`bid_audited(bid_id, audit_ids)`: results of a car caught lying were judged again (ResultAudit) and the bid's
results file assembled anew, sent once that has committed. Billing corrects the charge (a refund through Stripe) and
the owners' earnings, and tells the customer.

`bid_charges_wanted(bids)`: a question, not an event: what each of these bids has cost its customer so far, in n¢
(a page or the API shows it). Billing answers {bid id: n¢}: a settled job's charge net of refunds, an open one's
validated work at its prices (billing.selectors.bid_charges_nc).

And work the marketplace's services want done in a worker, for marketplace.tasks to queue (marketplace.apps), so that
the services never import the tasks that call them: `model_check_wanted(model_id)`, an uploaded model waits for its
check; `variant_build_wanted(variant_id)`, a new build of a variant waits for a worker; `units_cut_wanted(bid_ids)`,
a scheduled round sold these bids compute, and their work waits to be cut into units for the cars (dispatch). All are
sent inside the transaction that stored the rows, and the task is queued once it commits.
"""

from django.db import transaction
from django.dispatch import Signal

bid_placing = Signal()
bid_placed = Signal()
bid_closed = Signal()
bid_won = Signal()
bid_progressed = Signal()
bid_audited = Signal()
bid_charges_wanted = Signal()
model_check_wanted = Signal()
variant_build_wanted = Signal()
units_cut_wanted = Signal()


def bid_placed_announce(bid_id: int) -> str:
    """Announce that bid `bid_id` and what `bid_placing`'s listeners stored with it have committed; call it after the
    commit. Returns why a listener declined the bid ("" when none did), to tell the customer."""
    replies = bid_placed.send(sender="marketplace", bid_id=bid_id)
    return next((reply for _, reply in replies if reply), "")


def bid_charges(bids) -> dict[int, int]:
    """What each of `bids` has cost its customer so far, n¢ by bid id, as billing answers `bid_charges_wanted` (0 for
    a bid it knows nothing of)."""
    charges = {bid.pk: 0 for bid in bids}
    for _, reply in bid_charges_wanted.send(sender="marketplace", bids=list(bids)):
        charges.update(reply or {})
    return charges


def bid_closed_announce(bid_id: int) -> None:
    """Announce that bid `bid_id` closed, once the current transaction commits (at once outside one)."""
    transaction.on_commit(lambda: bid_closed.send(sender="marketplace", bid_id=bid_id))


def bid_audited_announce(bid_id: int, audit_ids: list[int]) -> None:
    """Announce that audits of bid `bid_id` closed, once the current transaction commits (at once outside one)."""
    transaction.on_commit(lambda: bid_audited.send(sender="marketplace", bid_id=bid_id, audit_ids=audit_ids))


def bids_won_announce(bid_ids: list[int]) -> None:
    """bid_won_announce for many bids at once (a round of thousands): one callback once the transaction commits."""
    if bid_ids:
        transaction.on_commit(lambda: [bid_won.send(sender="marketplace", bid_id=bid_id) for bid_id in bid_ids])


def bid_won_announce(bid_id: int) -> None:
    """Announce that a round sold bid `bid_id` its first compute, once the current transaction commits."""
    transaction.on_commit(lambda: bid_won.send(sender="marketplace", bid_id=bid_id))


def bid_progressed_announce(bid_id: int, percent: int) -> None:
    """Announce that bid `bid_id`'s validated items reached `percent` (a milestone), once the transaction commits."""
    transaction.on_commit(lambda: bid_progressed.send(sender="marketplace", bid_id=bid_id, percent=percent))
