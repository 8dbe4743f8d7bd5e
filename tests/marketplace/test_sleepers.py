"""Sleepers: a car that returns honest results until the platform trusts it, then lies, is caught, and nothing it
lied about stays delivered or paid.

Real agents (the code that runs in a car) lease work from Django's live server over signed HTTP and run ONNX Runtime;
one of them is a sleeper. It computes honestly until its record makes it trusted (its results are then judged alone,
without a replica), and from then on returns results with every item's logits shifted by one class: the wrong digit,
in bursts (every unit) or at a low rate (every other unit). Spot checks are off until it has lied in two jobs that
completed and were charged (the worst case: nothing checked its lies, and customers downloaded them), then a spot
check replicates its next result, as the random checks eventually do. Then:
- every customer's results file holds the model's outputs only: the jobs it lied in have a new version;
- the sleeper's owner is credited for its validated results only, nothing for a lie;
- each job's charge is its validated work at the customer's own clearing price, at the local Stripe server too.
"""

import zoneinfo
from datetime import datetime, timedelta
from decimal import Decimal

import numpy as np
import pytest
from django.core import mail
from django.db.models import Q
from django.utils import timezone

from billing import ledger, stripe_gateway
from billing.models import LedgerTransaction, PaymentAuthorization
from billing.services import corrections, settling
from billing.services.payouts import earnings_release_due
from billing.settlement import customer_price_mcents
from core.money import NC_PER_CENT, nc_from_mcents
from fleet.agent.client import AgentClient
from fleet.agent.executor import ArtifactCache, Executor
from fleet.agent.inference import ModelRunner, ModelSpec, decode_npy
from fleet.agent.runner import Agent
from fleet.agent.simulation import SimulatedCar
from fleet.models import OptInPolicy, Vehicle
from marketplace import storage
from marketplace.inference.catalogue import DIGITS_OUTPUT
from marketplace.models import Bid, PrecisionVariant, ResultAudit, WorkUnit
from marketplace.rounds import auction_round_run
from marketplace.storage import dataset_items
from marketplace.verification import Tolerance, results_agree
from tests.factories import OwnerFactory, vehicle_with_credential
from tests.marketplace.conftest import measured_here

TZ = zoneinfo.ZoneInfo("America/Los_Angeles")
SUNDAY_NIGHT = datetime(2026, 11, 22, 23, 0, tzinfo=TZ)  # every car is home, parked on WiFi
JOB_ITEMS = 40


class StillClock:
    rate = 1.0

    def now(self):
        return SUNDAY_NIGHT

    def sleep(self, car_seconds, stop) -> bool:
        return stop.is_set()


class SleeperExecutor(Executor):
    """The real executor, which lies when told to: each item's logits shifted by one class (a confident wrong
    digit), on every unit (`every=1`) or every `every`-th unit once lying. Records the units it lied on."""

    def __init__(self, *args, every: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.every, self.lying, self.since_lying, self.lied = every, False, 0, []

    def _infer(self, runner, unit, cancel=None):
        outputs = super()._infer(runner, unit, cancel)
        if not self.lying:
            return outputs
        self.since_lying += 1
        if (self.since_lying - 1) % self.every:
            return outputs
        self.lied.append(int(unit.unit_id))
        return np.roll(outputs, 1, axis=1)


def cars_parked(live_server, tmp_path, variant, *, every: int):
    """Four cars of four owners on the same hardware, all parked: three honest ones with a long record, and a new
    sleeper that asks the least, so that the auction sells it first (the worst case for the customers)."""
    agents, vehicles, sleeper = [], [], None
    # Seeds of homebodies parked with a well-charged battery on a Sunday night: every car offers its time.
    for name, ask, seed in (("sam", 20_000, 32), ("hana", 30_000, 23), ("hugo", 40_000, 48), ("hedy", 50_000, 33)):
        vehicle, credential = vehicle_with_credential(OwnerFactory(username=name), name=f"{name}'s car",
                                                      time_zone=str(TZ))  # fmt: skip
        OptInPolicy.objects.filter(vehicle=vehicle).update(min_price_mcents_per_ch=ask, max_energy_kwh_per_day=50)
        if name != "sam":
            Vehicle.objects.filter(pk=vehicle.pk).update(valid_streak=50, results_valid=50)
        measured_here(vehicle, variant)  # each car ran this variant before: no self-test
        http = AgentClient(live_server.url, credential)
        cache = ArtifactCache(tmp_path / name, max_bytes=50_000_000)
        if name == "sam":
            executor = sleeper = SleeperExecutor(http, cache, every=every)
        else:
            executor = Executor(http, cache)
        agents.append(Agent(http, SimulatedCar("homebody", seed, SUNDAY_NIGHT, TZ), StillClock(), executor=executor))
        vehicles.append(vehicle)
    return agents, vehicles, sleeper


def job_place(client, model) -> Bid:
    """A customer's job: the model's dataset, at a maximum price well above the cars' asks."""
    response = client.post(
        "/api/v1/bids/",
        {"inference_model": model.pk, "dataset": model.datasets.get().pk, "precision": "int8",
         "max_price_usd_per_ch": "1", "budget_usd": "5.00",
         "deadline": (timezone.now() + timedelta(hours=6)).isoformat()},
        content_type="application/json",
    )  # fmt: skip
    assert response.status_code == 201, response.content
    return Bid.objects.get(pk=response.json()["id"])


class Market:
    """Steps the cars' agents and the rounds together, each round in a slot of its own."""

    def __init__(self, agents, settings):
        self.agents, self.settings, self.rounds = agents, settings, 0

    def run_until(self, done, *, steps: int = 40) -> None:
        for _ in range(steps):
            if done():
                return
            self.rounds += 1
            auction_round_run(now=timezone.now() + timedelta(seconds=self.settings.AUCTION_INTERVAL_SECONDS
                                                             * self.rounds))  # fmt: skip
            for agent in self.agents:
                agent.step()
        assert done(), list(WorkUnit.objects.values_list("bid", "status", "verification", "assigned_vehicle"))


def completed(*bids):
    return lambda: all(Bid.objects.get(pk=b.pk).status == Bid.Status.COMPLETED for b in bids)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("every", [1, 2], ids=["sleeper_in_bursts", "sleeper_at_a_low_rate"])
def test_a_sleeper_caught_after_its_lies_were_delivered_and_charged_keeps_none_of_them(
    every, client, live_server, digits_with_variants, tmp_path, settings
):
    settings.AUCTION_INTERVAL_SECONDS = 1
    settings.VERIFICATION_TRUSTED_AFTER = 3
    settings.VERIFICATION_SPOT_CHECK_RATE = 0.0  # until the sleeper's lies have been delivered: the worst case
    model = digits_with_variants
    # Until sub-cent metering, a job must be worth cents for its charge to show: each digit as heavy as a long
    # document (as in test_end_to_end). Leases are sized by the cars' measured speed, not by this.
    PrecisionVariant.objects.filter(inference_model=model).update(ch_per_item=0.01)
    variant = model.variants.get(precision="int8")
    agents, vehicles, sleeper = cars_parked(live_server, tmp_path, variant, every=every)
    sam = vehicles[0]
    market = Market(agents, settings)
    for agent in agents:
        agent.step()  # heartbeats: four parked cars
    bids = []

    # 1. The sleeper is new: its results are run again on an honest car until its streak makes it trusted.
    while Vehicle.objects.get(pk=sam.pk).valid_streak < settings.VERIFICATION_TRUSTED_AFTER:
        assert len(bids) < 6, "the sleeper never became trusted"
        bids.append(job_place(client, model))
        market.run_until(completed(bids[-1]))
    honest_jobs = list(bids)
    assert WorkUnit.objects.filter(done_by=sam, replica_of__isnull=True, quorum=2, verification="valid").exists()

    # 2. Trusted, it lies. Nothing checks its results, two jobs complete with its lies in them and are charged.
    sleeper.lying = True
    while len([b for b in bids if b not in honest_jobs and WorkUnit.objects.filter(
            bid=b, pk__in=sleeper.lied, canonical=True).exists()]) < 2:  # fmt: skip
        assert len(bids) < 10, "the sleeper's lies were never delivered"
        bids.append(job_place(client, model))
        market.run_until(completed(bids[-1]))
    for bid in bids:
        settling.bid_settle(bid_id=bid.pk)
    delivered = [b for b in bids if WorkUnit.objects.filter(bid=b, pk__in=sleeper.lied, canonical=True).exists()]
    for bid in delivered:
        client.force_login(bid.customer)
        response = client.get(f"/api/v1/bids/{bid.pk}/result/")
        assert response["X-Result-Version"] == "1"
        assert not agrees_with_the_model(decode_npy(response.content), bid)  # the customer downloaded lies
        assert PaymentAuthorization.objects.get(bid=bid).captured_cents > 0  # and was charged for them
    assert ledger.balance(kind="owner_pending", user_id=sam.owner_id) > 0  # its owner was credited for them

    # 3. A spot check at last: the sleeper's next lie runs on other cars too, and is outvoted.
    settings.VERIFICATION_SPOT_CHECK_RATE = 1.0
    while not ResultAudit.objects.filter(vehicle=sam).exists():
        assert len(bids) < 12, "the sleeper was never caught"
        bids.append(job_place(client, model))
        market.run_until(lambda: ResultAudit.objects.filter(vehicle=sam).exists() or completed(bids[-1])())
    # While the audit runs, the hold keeps the earnings of the jobs it audits, whatever the clock says.
    audited = set(ResultAudit.objects.filter(closed_at__isnull=True).values_list("bid_id", flat=True))
    assert set(b.pk for b in delivered) <= audited
    earnings_release_due(now=timezone.now() + timedelta(hours=200))
    for capture in LedgerTransaction.objects.filter(kind="capture", bid_id__in=audited):
        assert not LedgerTransaction.objects.filter(idempotency_key=f"hold_over:{capture.pk}").exists()

    # 4. Its unchecked results run again on honest cars: the audits close, every open job completes.
    market.run_until(lambda: not ResultAudit.objects.filter(closed_at__isnull=True).exists()
                     and completed(*bids)())  # fmt: skip
    for bid in bids:
        settling.bid_settle(bid_id=bid.pk)
    for bid_id in corrections.corrections_due():
        corrections.audit_correct(bid_id=bid_id)
    assert not corrections.corrections_due()

    # The audits bought replicas for its lies only: the platform's own sample of items cleared its honest results.
    for audit in ResultAudit.objects.filter(vehicle=sam):
        honest = [pk for pk in audit.units if pk not in sleeper.lied]
        assert (audit.sampled_right, audit.units_wrong) == (len(honest), len(audit.units) - len(honest))
        assert not WorkUnit.objects.filter(replica_of_id__in=honest).exists()
    if every > 1:
        assert any(pk not in sleeper.lied for audit in ResultAudit.objects.all() for pk in audit.units)

    car = Vehicle.objects.get(pk=sam.pk)
    assert car.status == Vehicle.Status.SUSPENDED and "disagreed with other cars" in car.status_reason
    # No lie is valid or canonical any more; every job's results file is the model's own outputs.
    lies = WorkUnit.objects.filter(pk__in=sleeper.lied)
    assert lies.count() == len(sleeper.lied) >= 2
    assert not lies.filter(Q(canonical=True) | Q(verification="valid")).exists()
    for bid in bids:
        bid.refresh_from_db()
        client.force_login(bid.customer)
        response = client.get(f"/api/v1/bids/{bid.pk}/result/")
        assert agrees_with_the_model(decode_npy(response.content), bid), bid.pk
        expected_version = "2" if bid in delivered else "1"
        assert response["X-Result-Version"] == expected_version
        assert f"results-v{expected_version}.npy" in response["Content-Disposition"]
    # The customers were told, on the job's page and by email.
    for bid in delivered:
        page = " ".join(client.get(f"/customer/bids/{bid.pk}/").content.decode().split())
        assert "now have the other cars' outputs" in page and "version 2" in page
        assert any(f"job {bid.pk} were corrected" in m.subject for m in mail.outbox)

    # The sleeper's owner is credited for its validated results only: nothing for a lie.
    for bid in bids:
        auth = PaymentAuthorization.objects.get(bid=bid)
        sam_key = f"{sam.pk}:{sam.owner_id}"
        validated = WorkUnit.objects.filter(bid=bid, done_by=sam, verification="valid").exists()
        assert (sam_key in auth.settlement["cars"]) == validated, bid.pk
        # Each charge is the job's validated work at the customer's own clearing price, at Stripe too.
        assert auth.settlement["charge_nc"] == auth.charged_nc == honest_charge(bid) > 0
        intent = stripe_gateway.payment_retrieve(auth.stripe_payment_intent_id)
        refunded = sum(r.amount for r in stripe_gateway.refunds(payment_intent_id=auth.stripe_payment_intent_id)
                       if r.payment_intent)  # fmt: skip
        kept = intent.amount_received - refunded
        assert kept == auth.captured_cents - auth.refunded_cents
        # The card paid whole cents: at least the charge, and what it paid beyond is on the customer's balance.
        assert 0 <= kept * NC_PER_CENT - honest_charge(bid) < 2 * NC_PER_CENT
    owed = sum(PaymentAuthorization.objects.get(bid=b).settlement["cars"].get(f"{sam.pk}:{sam.owner_id}", {})
               .get("nc", 0) for b in bids)  # fmt: skip
    earned = ledger.balance(kind="owner_pending", user_id=sam.owner_id) + ledger.balance(
        kind="owner_available", user_id=sam.owner_id
    )
    assert earned == owed
    # The books still balance: what customers paid and the platform spent on checks is what owners earned plus fees.
    spent = ledger.balance(kind="customer_spend", user_id=model.owner_id)
    owners = sum(ledger.balance(kind=k, user_id=v.owner_id) for v in vehicles
                 for k in ("owner_pending", "owner_available", "owner_paid_out"))  # fmt: skip
    assert spent + ledger.balance(kind="verification_cost") == owners + ledger.balance(kind="platform_fee")


def agrees_with_the_model(outputs: np.ndarray, bid: Bid) -> bool:
    local = ModelRunner(storage.artifact_read(bid.variant.sha256), ModelSpec("tensor", DIGITS_OUTPUT)).run(
        list(dataset_items(bid.dataset).items)
    )
    return results_agree(outputs, local, Tolerance.for_precision("top1", "int8"))


def honest_charge(bid: Bid) -> int:
    """The job's validated work at the customer's own prices, in n¢: each slice's canonical result × the price of
    the customer's allocation of it (never a replica's dearer one)."""
    work = Decimal(0)
    for unit in WorkUnit.objects.filter(bid=bid, canonical=True, verification="valid").select_related(
        "allocation", "replica_of__allocation"
    ):
        primary = unit.replica_of.allocation.price_mcents_per_ch if unit.replica_of_id else None
        work += Decimal(repr(unit.ch)) * customer_price_mcents(unit.allocation.price_mcents_per_ch, primary)
    return nc_from_mcents(work)
