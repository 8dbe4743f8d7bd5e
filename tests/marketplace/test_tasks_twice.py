"""Every periodic or queued task is safe to run twice (a duplicate beat, a redelivered message after a worker died):
the second run changes nothing a user would notice."""

from datetime import timedelta

import pytest
from django.utils import timezone

from billing import tasks as billing_tasks
from billing.models import LedgerTransaction, Payout
from fleet import tasks as fleet_tasks
from marketplace import tasks as marketplace_tasks
from marketplace.models import Allocation, Round, WorkUnit
from tests.billing import builders

pytestmark = pytest.mark.django_db


def snapshot():
    return (
        Round.objects.count(), Allocation.objects.count(), WorkUnit.objects.count(),
        sorted(WorkUnit.objects.values_list("pk", "status", "assigned_vehicle_id")),
        LedgerTransaction.objects.count(), Payout.objects.count(),
    )  # fmt: skip


def test_a_round_the_sweeper_and_the_snapshot_run_twice_change_nothing_the_second_time(bid, cars):
    marketplace_tasks.auction_round()
    marketplace_tasks.leases_sweep()
    fleet_tasks.vehicle_states_snapshot()
    first = snapshot()
    assert first[0] == 1 and first[1] >= 1  # the round sold something

    marketplace_tasks.auction_round()  # the same slot: a duplicate beat
    marketplace_tasks.leases_sweep()
    fleet_tasks.vehicle_states_snapshot()

    assert snapshot() == first


def test_settling_and_paying_out_twice_move_money_once(alice, card_for, olivia, olivia_car, onboarded, settings):
    card_for(alice)
    bid = builders.bid_authorized(alice, budget_cents=5_000)
    builders.validate(builders.sell(bid, olivia_car, ch=100.0, price_mcents=5_000))
    builders.close(bid)
    onboarded(olivia)
    settings.EARNINGS_HOLD_HOURS = 0
    settings.MIN_PAYOUT_CENTS = 1
    settings.PAYOUT_SCHEDULE = "daily"

    def run_all():
        billing_tasks.bid_settle(bid.pk)
        billing_tasks.billing_sweep()
        billing_tasks.payouts()

    run_all()
    first = snapshot()
    run_all()  # redelivered, or a second beat

    assert snapshot() == first
    kinds = sorted(LedgerTransaction.objects.values_list("kind", flat=True))
    assert kinds == ["authorize", "capture", "earnings_release", "payout", "release"]
    assert Payout.objects.get().amount_cents == 425


@pytest.fixture
def olivia_car(olivia):
    from tests.factories import vehicle_with_credential

    return vehicle_with_credential(olivia, name="Olivia's car")[0]


def test_an_expired_lease_swept_twice_is_reissued_once(client, bid, cars):
    from marketplace.dispatch import unit_lease

    marketplace_tasks.auction_round()
    vehicle = cars[0][0]
    unit = unit_lease(vehicle=vehicle)
    WorkUnit.objects.filter(pk=unit.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))

    marketplace_tasks.leases_sweep()
    marketplace_tasks.leases_sweep()

    unit.refresh_from_db()
    assert (unit.status, unit.attempts) == ("queued", 1)
