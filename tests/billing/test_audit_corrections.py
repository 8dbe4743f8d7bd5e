"""A caught car's results that a settled job was charged for: the audit's corrections, booked and at Stripe.

The live sleepers (tests/marketplace/test_sleepers.py) show a completed job's wrong results replaced by other cars'
at the customer's own price. Here, the jobs that ended without completing: nobody runs their items again, so the
caught car's unchecked results are taken off the charge, refunded through Stripe, and its owner's earnings reversed.
"""

from datetime import timedelta

import pytest
from django.core import mail
from django.utils import timezone

from billing import ledger, reconciliation, stripe_gateway
from billing.models import LedgerTransaction, PaymentAuthorization
from billing.services import corrections, settling
from billing.services.payouts import earnings_release_due
from core.money import NC_PER_CENT
from marketplace import verdicts
from marketplace.models import Bid, ResultAudit, ResultFault, WorkUnit
from tests.billing import builders
from tests.factories import OwnerFactory, vehicle_with_credential

pytestmark = pytest.mark.django_db


def judged_alone(unit: WorkUnit) -> WorkUnit:
    """As a trusted car's result that no spot check picked: its slice's one result, never run by another car."""
    WorkUnit.objects.filter(pk=unit.pk).update(quorum=1)
    unit.refresh_from_db()
    return unit


@pytest.fixture
def failed_job(alice, alice_card):
    """A job that failed half-way and was charged for its one validated slice: a trusted car's result (judged alone)
    at 8 ¢/CH, and a slice confirmed by two honest cars at 6 ¢/CH."""
    sleeper, _ = vehicle_with_credential(OwnerFactory(username="sam"), name="Sam's car")
    honest, _ = vehicle_with_credential(OwnerFactory(username="hana"), name="Hana's car")
    checker, _ = vehicle_with_credential(OwnerFactory(username="hugo"), name="Hugo's car")
    bid = builders.bid_authorized(alice, budget_cents=900)
    unchecked = judged_alone(builders.validate(builders.sell(bid, sleeper, ch=0.5, price_mcents=8000)))
    confirmed = builders.validate(builders.sell(bid, honest, ch=0.5, price_mcents=6000))
    WorkUnit.objects.filter(pk=confirmed.pk).update(quorum=2)
    builders.confirm(confirmed, checker, price_mcents=6000)
    builders.fail(builders.sell(bid, honest, ch=0.5, price_mcents=6000))
    builders.close(bid, Bid.Status.FAILED)
    auth = settling.bid_settle(bid_id=bid.pk)
    assert (auth.charged_nc, auth.captured_cents) == (7 * NC_PER_CENT, 7)  # 0.5 CH × 8 ¢ + 0.5 CH × 6 ¢
    return bid, sleeper, unchecked


def test_a_caught_cars_unchecked_result_in_a_failed_job_is_refunded_and_its_earnings_reversed(
    failed_job, django_capture_on_commit_callbacks
):
    bid, sleeper, unchecked = failed_job
    assert ledger.balance(kind="owner_pending", user_id=sleeper.owner_id) == 3_400_000_000  # 4 ¢ less the 15 % fee

    # The car fails a known answer elsewhere: caught.
    with django_capture_on_commit_callbacks(execute=False) as announced:
        verdicts.reputation_record(vehicle_id=sleeper.pk, valid=False, now=timezone.now(),
                                   fault=ResultFault.Kind.KNOWN_ANSWER)  # fmt: skip
    assert announced  # billing hears of the audit (bid_audited), once it commits
    audit = ResultAudit.objects.get(bid=bid)
    assert (audit.vehicle_id, audit.evidence, audit.units, audit.items_removed) == (
        sleeper.pk,
        "known_answer",
        [unchecked.pk],
        unchecked.items,
    )
    assert audit.closed_at is not None  # the job ended: nobody runs its items again
    unchecked.refresh_from_db()
    assert (unchecked.verification, unchecked.canonical) == ("invalid", False)
    # The slice two cars confirmed is not the caught car's and stays as it was.
    assert bid.units.filter(quorum=2, verification="valid", canonical=True).count() == 1

    assert corrections.corrections_due() == [bid.pk]
    auth = corrections.audit_correct(bid_id=bid.pk)
    corrections.audit_correct(bid_id=bid.pk)  # twice changes nothing
    assert corrections.corrections_due() == []

    # The customer pays for the confirmed slice only: 3 ¢. The 4 ¢ for the caught car's result went back to the card
    # (whole cents: nothing is left over for the balance).
    assert (auth.captured_cents, auth.refunded_cents) == (7, 4)
    assert auth.charged_nc == auth.settlement["charge_nc"] == 3 * NC_PER_CENT
    refunds = [r for r in stripe_gateway.refunds(payment_intent_id=auth.stripe_payment_intent_id) if r.payment_intent]
    assert [r.amount for r in refunds] == [4]
    assert ledger.balance(kind="customer_spend", user_id=bid.customer_id) == 3 * NC_PER_CENT
    assert ledger.balance(kind="customer_balance", user_id=bid.customer_id) == 0
    # The caught car's owner is owed nothing; the honest owners keep their earnings.
    assert ledger.balance(kind="owner_pending", user_id=sleeper.owner_id) == 0
    assert f"{sleeper.pk}:{sleeper.owner_id}" not in auth.settlement["cars"]
    assert LedgerTransaction.objects.filter(kind="correction", bid=bid).count() == 1
    # The books balance, and agree with Stripe object by object (this job's: the session shares Stripe's server).
    report = reconciliation.reconciliation_report()
    ours = {auth.stripe_payment_intent_id, refunds[0].id}
    assert report.unbalanced_transaction_ids == [] and report.stripe_reachable, report
    assert [d for d in report.differences if d.object_id in ours] == []
    assert ledger.balance(kind="customer_spend", user_id=bid.customer_id) + ledger.balance(
        kind="verification_cost"
    ) == sum(
        ledger.balance(kind="owner_pending", user_id=user) for user in auth_owners(auth, sleeper)
    ) + ledger.balance(kind="platform_fee")
    # The customer is told by email, and on the job's page.
    (message,) = [m for m in mail.outbox if f"job {bid.pk} were corrected" in m.subject]
    assert "you are not charged for them" in message.body and "$0.04 to your card refunded" in message.body
    assert "prepaid balance" not in message.body


def auth_owners(auth: PaymentAuthorization, sleeper) -> set[int]:
    owners = {int(key.split(":")[1]) for key in auth.settlement["cars"]}
    return owners | {sleeper.owner_id}


def test_the_job_page_tells_the_customer_what_the_audit_changed(client, failed_job):
    bid, sleeper, _ = failed_job
    verdicts.reputation_record(vehicle_id=sleeper.pk, valid=False, now=timezone.now())
    client.force_login(bid.customer)
    page = " ".join(client.get(f"/customer/bids/{bid.pk}/").content.decode().split())
    assert "Results re-checked" in page and "disagreed with other cars" in page
    assert "The job had ended, so nobody ran them again" in page and "are taken off your charge" in page


def test_earnings_stay_held_while_an_audit_of_their_job_is_open_and_leave_net_of_its_correction(
    alice, alice_card, django_capture_on_commit_callbacks
):
    sleeper, _ = vehicle_with_credential(OwnerFactory(username="sam"), name="Sam's car")
    bid = builders.bid_authorized(alice, budget_cents=900)
    judged_alone(builders.validate(builders.sell(bid, sleeper, ch=0.5, price_mcents=8000)))
    builders.close(bid)
    settling.bid_settle(bid_id=bid.pk)
    # The car is caught: its unchecked result in this completed job is run again (a replica waits for a car).
    audit = verdicts.audit_open(vehicle_id=sleeper.pk, evidence="outvoted", now=timezone.now())[0]
    assert audit.closed_at is None
    replica = WorkUnit.objects.get(replica_of_id=audit.units[0])
    assert replica.excluded_vehicles == [sleeper.pk] and replica.status == "queued"

    assert earnings_release_due(now=timezone.now() + timedelta(hours=500)) == 0
    assert ledger.balance(kind="owner_available", user_id=sleeper.owner_id) == 0
    ResultAudit.objects.filter(pk=audit.pk).update(closed_at=timezone.now())
    assert earnings_release_due(now=timezone.now() + timedelta(hours=500)) == 1


def test_an_audit_leaves_alone_what_another_car_confirmed_and_what_is_older_than_its_window(alice, alice_card,
                                                                                             settings):  # fmt: skip
    sleeper, _ = vehicle_with_credential(OwnerFactory(username="sam"), name="Sam's car")
    checker, _ = vehicle_with_credential(OwnerFactory(username="hugo"), name="Hugo's car")
    bid = builders.bid_authorized(alice, budget_cents=900)
    old = judged_alone(builders.validate(builders.sell(bid, sleeper, ch=0.2, price_mcents=8000)))
    WorkUnit.objects.filter(pk=old.pk).update(
        completed_at=timezone.now() - timedelta(hours=settings.VERIFICATION_AUDIT_WINDOW_HOURS + 1)
    )
    confirmed = builders.validate(builders.sell(bid, sleeper, ch=0.2, price_mcents=8000))
    WorkUnit.objects.filter(pk=confirmed.pk).update(quorum=2)
    builders.confirm(confirmed, checker, price_mcents=8000)
    recent = judged_alone(builders.validate(builders.sell(bid, sleeper, ch=0.2, price_mcents=8000)))

    (audit,) = verdicts.audit_open(vehicle_id=sleeper.pk, evidence="outvoted", now=timezone.now())

    assert audit.units == [recent.pk]
    assert WorkUnit.objects.get(pk=recent.pk).verification == "pending"
    assert {WorkUnit.objects.get(pk=u.pk).verification for u in (old, confirmed)} == {"valid"}
    assert verdicts.audit_open(vehicle_id=sleeper.pk, evidence="outvoted", now=timezone.now()) == []  # once


def test_an_audit_replica_never_runs_on_another_car_of_the_caught_cars_owner(alice, alice_card):
    sam = OwnerFactory(username="sam")
    sleeper, _ = vehicle_with_credential(sam, name="Sam's car")
    second, _ = vehicle_with_credential(sam, name="Sam's other car")
    stranger, _ = vehicle_with_credential(OwnerFactory(username="hana"), name="Hana's car")
    bid = builders.bid_authorized(alice, budget_cents=900)
    judged_alone(builders.validate(builders.sell(bid, sleeper, ch=0.5, price_mcents=8000)))
    builders.close(bid)

    (audit,) = verdicts.audit_open(vehicle_id=sleeper.pk, evidence="outvoted", now=timezone.now())

    replica = WorkUnit.objects.get(replica_of_id=audit.units[0])
    owners = verdicts.owners_of([sleeper.pk, second.pk, stranger.pk])
    assert verdicts.vehicle_refused(unit=replica, vehicle_id=second.pk, owners=owners)
    assert not verdicts.vehicle_refused(unit=replica, vehicle_id=stranger.pk, owners=owners)


def test_a_job_that_ends_while_an_audit_of_it_runs_is_charged_once_the_audit_closes(alice, alice_card):
    sleeper, _ = vehicle_with_credential(OwnerFactory(username="sam"), name="Sam's car")
    bid = builders.bid_authorized(alice, budget_cents=900)
    judged_alone(builders.validate(builders.sell(bid, sleeper, ch=0.5, price_mcents=8000)))
    (audit,) = verdicts.audit_open(vehicle_id=sleeper.pk, evidence="outvoted", now=timezone.now())
    builders.close(bid, Bid.Status.EXPIRED)

    assert settling.bid_settle(bid_id=bid.pk).status == PaymentAuthorization.Status.AUTHORIZED  # not yet
    assert bid.pk not in settling.settlements_due()
    ResultAudit.objects.filter(pk=audit.pk).update(closed_at=timezone.now())
    assert settling.settlements_due() == [bid.pk]
    auth = settling.bid_settle(bid_id=bid.pk)
    # The caught car's result is still pending (its replica never ran): the job is charged nothing for it.
    assert (auth.status, auth.captured_cents, auth.settlement["audits"]) == ("settled", 0, [audit.pk])
    assert corrections.corrections_due() == []  # that audit is in the settlement already


def test_a_refund_that_is_not_whole_cents_goes_to_the_card_in_cents_and_the_rest_onto_the_balance(alice, alice_card):
    """Work is charged to the n¢, a card refunds whole cents: the rest of a correction's refund is kept on the
    customer's prepaid balance, and both sides still agree with Stripe."""
    sleeper, _ = vehicle_with_credential(OwnerFactory(username="sam"), name="Sam's car")
    honest, _ = vehicle_with_credential(OwnerFactory(username="hana"), name="Hana's car")
    checker, _ = vehicle_with_credential(OwnerFactory(username="hugo"), name="Hugo's car")
    bid = builders.bid_authorized(alice, budget_cents=900)
    judged_alone(builders.validate(builders.sell(bid, sleeper, ch=0.5, price_mcents=8001)))  # 4.0005 ¢
    confirmed = builders.validate(builders.sell(bid, honest, ch=0.5, price_mcents=6000))  # 3 ¢
    WorkUnit.objects.filter(pk=confirmed.pk).update(quorum=2)
    builders.confirm(confirmed, checker, price_mcents=6000)
    builders.close(bid, Bid.Status.FAILED)
    auth = settling.bid_settle(bid_id=bid.pk)
    # 7.0005 ¢ of work: 8 whole cents from the card, the other 0.9995 ¢ onto the balance.
    assert (auth.charged_nc, auth.captured_cents, auth.settlement["carried_nc"]) == (7_000_500_000, 8, 999_500_000)
    assert ledger.balance(kind="customer_balance", user_id=alice.pk) == 999_500_000

    verdicts.reputation_record(vehicle_id=sleeper.pk, valid=False, now=timezone.now(),
                               fault=ResultFault.Kind.KNOWN_ANSWER)  # fmt: skip
    auth = corrections.audit_correct(bid_id=bid.pk)

    # 4.0005 ¢ is no longer owed: 4 ¢ back to the card through Stripe, 0.0005 ¢ onto the balance.
    assert auth.charged_nc == auth.settlement["charge_nc"] == 3 * NC_PER_CENT
    assert (auth.captured_cents, auth.refunded_cents) == (8, 4)
    refunds = [r for r in stripe_gateway.refunds(payment_intent_id=auth.stripe_payment_intent_id) if r.payment_intent]
    assert [r.amount for r in refunds] == [4]
    assert ledger.balance(kind="customer_spend", user_id=alice.pk) == 3 * NC_PER_CENT
    assert ledger.balance(kind="customer_balance", user_id=alice.pk) == 999_500_000 + 500_000  # one cent in all
    assert ledger.balance(kind="prepaid_cash", user_id=alice.pk) == NC_PER_CENT
    assert ledger.balance(kind="owner_pending", user_id=sleeper.owner_id) == 0
    # The books balance, and this job's capture and refund agree with Stripe (its server is shared by the session).
    report = reconciliation.reconciliation_report()
    ours = {auth.stripe_payment_intent_id, refunds[0].id}
    assert report.unbalanced_transaction_ids == [] and report.stripe_reachable, report
    assert [d for d in report.differences if d.object_id in ours] == []
    (message,) = [m for m in mail.outbox if f"job {bid.pk} were corrected" in m.subject]
    assert "$0.04 to your card and $0.000005 to your prepaid balance refunded" in message.body
