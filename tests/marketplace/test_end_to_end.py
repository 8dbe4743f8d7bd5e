"""A customer's bid, end to end: a real Celery worker builds the variants, a round sells the cars' compute, real
agents (the code that runs in a car) lease the units over signed HTTP, run ONNX Runtime and return the outputs, and
the assembled results equal local inference. Then the money: the job is captured at the local Stripe server for
exactly its work at the clearing price, the owners see their earnings, a payout run transfers them, Stripe's
webhooks reach the platform, and the books reconcile with Stripe."""

import io
import threading
import zoneinfo
from datetime import datetime, timedelta

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db.models import Q
from django.utils import timezone

from fleet.agent.client import AgentClient
from fleet.agent.executor import ArtifactCache, Executor
from fleet.agent.inference import ModelRunner, ModelSpec, decode_npy
from fleet.agent.runner import Agent
from fleet.agent.simulation import SimulatedCar
from marketplace import storage
from marketplace.inference.catalogue import DIGITS_OUTPUT, digits_items
from marketplace.models import Bid, InferenceModel, PrecisionVariant, SelfTest, WorkUnit
from marketplace.rounds import auction_round_run
from tests.factories import CustomerFactory, OwnerFactory, vehicle_with_credential
from tests.waiting import wait_for

TZ = zoneinfo.ZoneInfo("America/Los_Angeles")
SUNDAY_NIGHT = datetime(2026, 11, 22, 23, 0, tzinfo=TZ)  # every car is home, parked on WiFi


class StillClock:
    rate = 1.0

    def __init__(self, now):
        self.current = now

    def now(self):
        return self.current

    def sleep(self, car_seconds, stop: threading.Event) -> bool:
        return stop.is_set()


@pytest.mark.worker
def test_a_bid_is_won_run_by_real_agents_and_its_results_equal_local_inference(
    client, live_server, celery_worker_thread, digits_onnx, tmp_path, settings, card_for, onboarded, stripe_server
):
    from billing.localstripe_dev import webhook_register

    webhook_register(stripe_server, url=f"{live_server.url}/billing/stripe/webhook/",
                     secret=settings.STRIPE_WEBHOOK_SECRET)  # fmt: skip
    settings.AUCTION_INTERVAL_SECONDS = 10
    settings.VERIFICATION_PROBE_RATE = 1.0  # every lease hides known answers: the real agent must answer them too
    alice = CustomerFactory(username="alice")
    card_for(alice)
    client.force_login(alice)
    model_id = client.post(
        "/api/v1/models/",
        {"name": "digits", "onnx_file": SimpleUploadedFile("d.onnx", digits_onnx), "output_name": DIGITS_OUTPUT,
         "metric": "top1", "tolerance": 0.95},
    ).json()["id"]  # fmt: skip
    assert wait_for(lambda: InferenceModel.objects.get(pk=model_id).status == "ready", timeout=60)
    items = digits_items(300)
    buffer = io.BytesIO()
    np.save(buffer, items, allow_pickle=False)
    dataset_id = client.post(
        f"/api/v1/models/{model_id}/datasets/", {"file": SimpleUploadedFile("d.npy", buffer.getvalue())}
    ).json()["id"]
    model = InferenceModel.objects.get(pk=model_id)
    assert wait_for(lambda: model.variants.filter(status="ready").count() == 4, timeout=120)
    # A digit costs a few nano-CH: make each one as heavy as a long document, so the job is worth a few cents.
    PrecisionVariant.objects.filter(inference_model=model).update(ch_per_item=0.01)

    agents, owners = [], []
    for n, seed in enumerate((21, 22, 23)):
        owners.append(OwnerFactory(username=f"owner{n}"))
        _, credential = vehicle_with_credential(owners[-1], time_zone=str(TZ))
        http = AgentClient(live_server.url, credential)
        cache = ArtifactCache(tmp_path / f"car{n}", max_bytes=50_000_000)
        car = SimulatedCar("homebody", seed, SUNDAY_NIGHT, TZ)
        agents.append(Agent(http, car, StillClock(SUNDAY_NIGHT), executor=Executor(http, cache)))
    for agent in agents:
        agent.step()  # heartbeats: the platform now knows three parked cars on WiFi

    bid = client.post(
        "/api/v1/bids/",
        {"inference_model": model_id, "dataset": dataset_id, "precision": "auto", "max_price_usd_per_ch": "0.05",
         "budget_usd": "1.00", "deadline": (timezone.now() + timedelta(hours=1)).isoformat()},
        content_type="application/json",
    ).json()  # fmt: skip
    assert bid["precision"] == "int8"
    assert auction_round_run() is not None

    # New cars have no record: each slice of items runs on two cars and the results are compared, so it takes a
    # few more rounds and steps (each step leases and runs at most one unit per car).
    for step in range(1, 30):
        for agent in agents:
            agent.step()
        if Bid.objects.get(pk=bid["id"]).status == "completed":
            break
        auction_round_run(now=timezone.now() + timedelta(seconds=settings.AUCTION_INTERVAL_SECONDS * step))

    done = Bid.objects.get(pk=bid["id"])
    assert done.status == "completed", list(WorkUnit.objects.values("status", "error"))
    units = WorkUnit.objects.filter(bid=done)
    # Each car ran a self-test of the variant first (its speed and accuracy on its own hardware), then its units.
    self_tests = SelfTest.objects.filter(status="passed")
    assert set(self_tests.values_list("vehicle", flat=True)) == set(units.values_list("done_by", flat=True))
    assert sum(a.units_done for a in agents) == units.filter(status="done").count() + self_tests.count()
    # Every slice was checked by a second car of the same hardware, and no result was rejected.
    assert {u.verification for u in units.filter(status="done")} == {"valid"}
    for primary in units.filter(replica_of__isnull=True):
        copies = units.filter(status="done").filter(Q(pk=primary.pk) | Q(replica_of=primary))
        assert copies.count() >= 2 and len({c.done_by_id for c in copies}) == copies.count()
    outputs = decode_npy(client.get(f"/customer/bids/{done.pk}/result/").content)
    local = ModelRunner(storage.artifact_read(done.variant.sha256), ModelSpec("tensor", DIGITS_OUTPUT)).run(list(items))
    assert outputs.shape == (300, 10)
    # Known answers hidden in the leases change which items share a batch, and INT8 outputs depend a little on their
    # batch: compare as two honest cars' results are compared.
    from marketplace.verification import Tolerance, results_agree

    assert results_agree(outputs, local, Tolerance.for_precision("max_abs", "int8"))
    assert (outputs.argmax(axis=1) == local.argmax(axis=1)).mean() > 0.99
    money_follows_the_work(client, done, owners, onboarded, settings)


def money_follows_the_work(client, bid, owners, onboarded, settings):
    from decimal import Decimal

    from billing import ledger, reconciliation, stripe_gateway
    from billing.models import PaymentAuthorization, StripeEvent
    from billing.services.payouts import earnings_release_due, payouts_run
    from core.money import NC_PER_CENT, cents_ceil, nc_from_mcents, usd

    # The worker settles the job once it completes (the task is queued when the bid closes).
    assert wait_for(lambda: PaymentAuthorization.objects.get(bid=bid).status == "settled", timeout=30)
    auth = PaymentAuthorization.objects.get(bid=bid)
    billed = bid.units.filter(canonical=True).select_related("allocation")
    work = sum(Decimal(repr(u.ch)) * u.allocation.price_mcents_per_ch for u in billed)
    # Charged exactly, to the n¢; the card paid the fewest whole cents covering it, the rest onto the balance.
    assert auth.charged_nc == nc_from_mcents(work) > 0
    assert auth.captured_cents == cents_ceil(auth.charged_nc)
    assert auth.released_cents == auth.amount_cents - auth.captured_cents
    assert ledger.balance(kind="customer_balance", user_id=bid.customer_id) == (
        auth.captured_cents * NC_PER_CENT - auth.charged_nc
    )
    # Every slice ran on two cars, but the customer sees and pays for each item once: the job page's progress and the
    # receipt count the canonical results only, and the receipt adds up to the charge.
    from billing.selectors import receipt_get

    page = " ".join(client.get(f"/customer/bids/{bid.pk}/").content.decode().split())
    assert f"{bid.items} of {bid.items} items done" in page
    receipt = receipt_get(bid=bid)
    assert abs(receipt.ch - bid.ch_total) < 1e-9
    assert abs(receipt.work_mcents - auth.work_mcents) < 1  # m¢
    assert receipt.work_nc == receipt.charged_nc == auth.charged_nc
    intent = stripe_gateway.payment_retrieve(auth.stripe_payment_intent_id)
    assert (intent.status, intent.amount_received) == ("succeeded", auth.captured_cents)
    # Stripe's webhooks (payment_intent.succeeded and the like) reached the live server and were processed.
    assert wait_for(lambda: StripeEvent.objects.filter(object_id=auth.stripe_payment_intent_id,
                                                       processed_at__isnull=False).exists(), timeout=15)  # fmt: skip

    earners = [o for o in owners if ledger.balance(kind="owner_pending", user_id=o.pk) > 0]
    assert earners
    for owner in owners:
        client.force_login(owner)
        page = client.get("/owner/earnings/").content.decode()
        pending = ledger.balance(kind="owner_pending", user_id=owner.pk)
        if pending:
            assert usd(pending) in page

    for owner in owners:
        onboarded(owner)
    settings.MIN_PAYOUT_CENTS = 1
    earnings_release_due(now=timezone.now() + timedelta(hours=73))
    payouts = payouts_run(force=True)
    # Whole cents sent; the sub-cent rest of each owner's earnings stays available, carried to the next payout.
    assert sorted((p.owner_id, p.amount_cents * NC_PER_CENT, p.status) for p in payouts) == sorted(
        (o.pk, ledger.balance(kind="owner_paid_out", user_id=o.pk), "paid") for o in earners
    )
    carried = {o.pk: ledger.balance(kind="owner_available", user_id=o.pk) for o in owners}
    assert all(0 <= rest < NC_PER_CENT for rest in carried.values()), carried
    fee, replicas = ledger.balance(kind="platform_fee"), ledger.balance(kind="verification_cost")
    assert replicas > 0  # the platform paid the cars that checked the results
    paid = sum(p.amount_cents * NC_PER_CENT for p in payouts)
    assert auth.charged_nc + replicas == fee + paid + sum(carried.values())

    report = reconciliation.reconciliation_report()
    ours = {auth.stripe_payment_intent_id, *(p.stripe_transfer_id for p in payouts)}
    assert report.stripe_errors == [] and report.unbalanced_transaction_ids == []
    assert [d for d in report.differences if d.object_id in ours] == []
