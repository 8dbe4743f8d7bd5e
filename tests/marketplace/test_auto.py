""" "Auto" runs where the cars are: it picks among the precisions the fleet's cars can run within the customer's
tolerance, is decided again every round, and a bid nothing can run is refused before it is placed."""

import json
import tempfile
import threading
from datetime import datetime, timedelta

import numpy as np
import pytest
from django.core.management import call_command
from django.utils import timezone

from fleet.agent.runner import DEPARTURE_PATH
from fleet.agent.simulation import make_fleet
from fleet.management.commands.simulate_fleet import Command as SimulateFleet
from fleet.management.commands.simulate_fleet import simulated_agents
from fleet.models import HardwareProfile, Vehicle
from marketplace import storage
from marketplace.inference.accuracy import cosine_per_item
from marketplace.models import Bid, WorkUnit
from marketplace.rounds import auction_round_run
from tests.factories import ensure_hardware_profiles
from tests.marketplace.agents import catalogue_minilm, night_zone, parked_agent
from tests.waiting import wait_for


def place(client, model, **overrides) -> dict:
    body = {
        "inference_model": model.pk, "dataset": model.datasets.first().pk, "max_price_usd_per_ch": "0.05",
        "budget_usd": "1.00",
        "deadline": (timezone.now() + timedelta(hours=1)).isoformat(), **overrides,
    }  # fmt: skip
    return client.post("/api/v1/bids/", body, content_type="application/json")


def trusted(settings, *vehicles) -> None:
    """These tests are about where work runs, not about checking it: each car's result stands alone."""
    settings.VERIFICATION_SPOT_CHECK_RATE = 0.0
    Vehicle.objects.filter(pk__in=[v.pk for v in vehicles]).update(valid_streak=settings.VERIFICATION_TRUSTED_AFTER)


def rounds_until_done(bid, agents, *, settings, rounds: int = 12) -> int:
    """Run rounds, each followed by a step of every agent, until the bid is closed; how many rounds it took."""
    settings.AUCTION_INTERVAL_SECONDS = 1
    for number in range(1, rounds + 1):
        assert auction_round_run(now=timezone.now() + timedelta(seconds=number)) is not None
        for _ in range(3):  # a new car's self-test, then its units
            for agent in agents:
                agent.step()
        bid.refresh_from_db()
        if bid.status not in Bid.OPEN_STATUSES:
            return number
    return rounds


@pytest.mark.django_db(transaction=True)
def test_the_catalogue_minilm_on_auto_completes_on_cars_that_run_int8_and_fp16_but_not_fp8(
    client, live_server, tmp_path, settings, card_for, alice
):
    tz = night_zone()
    model = catalogue_minilm(documents=100)
    hw4, a = parked_agent(live_server, tmp_path, name="ana", hardware_name="HW4", tz=tz)
    hw3, b = parked_agent(live_server, tmp_path, name="ben", hardware_name="HW3", tz=tz, seed=6)
    trusted(settings, hw4, hw3)
    for agent in (a, b):
        agent.step()
    card_for(alice)
    client.force_login(alice)

    outlook = {pool["precision"]: pool for pool in client.get(f"/api/v1/models/{model.pk}/").json()["outlook"]}
    assert outlook["fp8"]["problem"] == "no car runs FP8"  # HW3 and HW4 have no FP8
    assert outlook["int8"]["runnable"] and outlook["int8"]["cars"] == 2
    response = place(client, model)  # "precision" left out: auto
    assert response.status_code == 201, response.content
    bid = Bid.objects.get(pk=response.json()["id"])
    assert (bid.precision_requested, bid.pool) == ("auto", "int8")

    assert rounds_until_done(bid, [a, b], settings=settings) <= 3
    assert bid.status == "completed"
    lines = client.get(f"/customer/bids/{bid.pk}/result/").content.decode().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [row["index"] for row in rows] == list(range(100))
    from fleet.agent.inference import ModelRunner, ModelSpec
    from marketplace.inference.catalogue import MINILM_OUTPUT, minilm_paths

    onnx_path, tokenizer_path = minilm_paths()
    fp32 = ModelRunner(onnx_path.read_bytes(), ModelSpec("text", MINILM_OUTPUT, tokenizer_path.read_text())).run(
        [row["text"] for row in rows]
    )
    assert cosine_per_item(fp32, np.array([row["vector"] for row in rows])).min() >= 0.99


@pytest.mark.django_db(transaction=True)
def test_an_auto_bid_whose_pool_empties_moves_to_one_that_runs_and_completes(
    client, live_server, tmp_path, settings, digits_with_variants
):
    """An INT8-only car takes the job, then drives off; the only other car runs FP16 only. Rather than wait in an
    INT8 pool no car offers, the bid moves to FP16 in the next round, and that car finishes it."""
    tz = night_zone()
    profile = {"int8_tops": 50.0, "typical_power_w": 60, "max_power_w": 100, "runtime_version": "1.32"}
    HardwareProfile.objects.create(name="NPU-I8", factor_int8=1.0, **profile)
    HardwareProfile.objects.create(name="GPU-F16", factor_int8=0.0, factor_fp16=0.5, **profile)
    npu, a = parked_agent(live_server, tmp_path, name="ivy", hardware_name="NPU-I8", tz=tz)
    gpu, b = parked_agent(live_server, tmp_path, name="gus", hardware_name="GPU-F16", tz=tz, seed=6)
    Vehicle.objects.filter(owner__username="fleet").update(status="paused")  # only these two are in the market
    trusted(settings, npu, gpu)
    for agent in (a, b):
        agent.step()
    response = place(client, digits_with_variants)
    assert response.status_code == 201, response.content
    bid = Bid.objects.get(pk=response.json()["id"])
    assert bid.pool == "int8"

    settings.AUCTION_INTERVAL_SECONDS = 1
    assert auction_round_run() is not None
    assert set(WorkUnit.objects.filter(bid=bid).values_list("assigned_vehicle", flat=True)) == {npu.pk}
    a.step()  # its self-test; then, before it runs the unit, the car leaves
    assert a.client.post(DEPARTURE_PATH, {"observed_at": a.clock.now().isoformat()})[1] == {"released_work_units": 1}

    rounds = rounds_until_done(bid, [b], settings=settings)

    assert bid.status == "completed" and rounds <= 2
    assert bid.pool == "fp16"  # decided again: the pool its remaining work could run in
    done = WorkUnit.objects.filter(bid=bid, status="done")
    assert {(u.done_by_id, u.variant.precision) for u in done} == {(gpu.pk, "fp16")}
    outputs = np.load(storage.artifact_open(bid.result_sha256))
    assert outputs.shape == (200, 10)


@pytest.mark.django_db(transaction=True)
def test_the_demos_seeded_bids_complete_in_the_first_rounds(live_server, settings, stripe_server):
    """`make demo`, minus the processes: its accounts, its catalogue, its simulated fleet of 8 cars at 60× (the real
    agent, each car's work run on this machine's CPU, its chip's energy), then its two seeded bids, which must
    complete within the first rounds, whatever this machine's CPU. Time is compressed as in the demo: a round every
    5 s (the demo's every 60 s) and a heartbeat every real second (the demo's every 5 s)."""
    settings.AUCTION_INTERVAL_SECONDS = 5
    tz = night_zone()
    ensure_hardware_profiles()  # (a transactional test starts without the migration's rows)
    call_command("seed_demo")
    call_command("catalogue_sync")
    start = datetime.now(tz).replace(microsecond=0)
    cars = make_fleet(8, 1, start=start, tz=tz)
    vehicles, credentials = SimulateFleet()._register(cars, tz)
    stop = threading.Event()
    with tempfile.TemporaryDirectory() as cache_root:
        agents = simulated_agents(cars, vehicles, credentials, server=live_server.url, start=start, speed=60.0,
                                  heartbeat_seconds=60.0, cache_root=cache_root, stop=stop)  # fmt: skip
        threads = [threading.Thread(target=agent.run, daemon=True) for agent in agents]
        for thread in threads:
            thread.start()
        try:
            assert wait_for(lambda: Vehicle.objects.filter(compute_reported_at__isnull=False).count() == 8, 30)
            call_command("seed_demo_bids")
            bids = list(Bid.objects.order_by("customer__username"))
            assert [(b.customer.username, b.pool) for b in bids] == [("alice", "int8"), ("bob", "int8")]
            rounds = 0
            while rounds < 10 and Bid.objects.filter(status__in=Bid.OPEN_STATUSES).exists():
                auction_round_run()
                rounds += 1
                wait_for(lambda: not Bid.objects.filter(status__in=Bid.OPEN_STATUSES).exists(),
                         timeout=settings.AUCTION_INTERVAL_SECONDS, interval=0.25)  # fmt: skip
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=30)
    assert [b.status for b in Bid.objects.order_by("customer__username")] == ["completed", "completed"]
    assert rounds <= 6, rounds  # 3 here (2-core AMD EPYC, AVX2 without VNNI)


@pytest.mark.django_db
def test_a_bid_nothing_can_run_is_refused_before_it_is_placed_saying_why(client, digits_with_variants, alice):
    Vehicle.objects.update(status="paused")  # no car that could run it takes work

    response = place(client, digits_with_variants)

    assert response.status_code == 400
    message = response.json()["fields"]["precision"][0]
    assert message.startswith("Nothing can run this model within your tolerance: INT8: no car runs INT8;")
    assert "FP8: no car runs FP8" in message
    fp8 = place(client, digits_with_variants, precision="fp8", max_price_usd_per_ch="0.05")
    assert fp8.json()["fields"]["precision"] == ["FP8 cannot run: no car runs FP8. Choose auto, or another precision."]
    assert not Bid.objects.exists()

    page = client.get(f"/customer/models/{digits_with_variants.pk}/bid/").content.decode()
    assert "Nothing can run this model now" in page
    form = client.post(
        f"/customer/models/{digits_with_variants.pk}/bid/",
        {"dataset": digits_with_variants.datasets.get().pk, "precision": "auto", "max_price_usd_per_ch": "0.05",
         "budget_usd": "1", "deadline": (timezone.now() + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M")},
    )  # fmt: skip
    assert form.status_code == 400
    assert "Nothing can run this model within your tolerance" in form.content.decode()
    assert not Bid.objects.exists()
