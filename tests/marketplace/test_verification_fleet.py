"""A simulated fleet with 10 % cheating cars runs a job through the real rounds, dispatch and verification: no wrong
result is accepted, no honest result is rejected, and the replication overhead is reported.

The cars are driven in-process (lease → compute → result through the dispatch services, heartbeats through the
signed agent API); honest cars run the real ONNX model, cheaters return random vectors of the right shape.
"""

import base64
import json
import random
from datetime import timedelta

import numpy as np
import pytest
from django.db.models import Q, Sum
from django.utils import timezone

from core.exceptions import ApplicationError
from fleet import availability
from fleet.agent.inference import ModelRunner, ModelSpec, decode_npy, encode_npy
from fleet.models import OptInPolicy, Vehicle
from marketplace import storage
from marketplace.dispatch import lease_payload, unit_lease, unit_result
from marketplace.inference.catalogue import DIGITS_OUTPUT
from marketplace.models import Bid, PrecisionVariant, ResultFault, WorkUnit
from marketplace.rounds import auction_round_run
from tests.factories import OwnerFactory, vehicle_with_credential
from tests.fleet.agent_requests import heartbeat, signed_post

pytestmark = pytest.mark.django_db
CARS, CHEATERS = 20, 2  # 10 %


def lease_or_none(vehicle):
    """The car's next lease; None when it has none, or may not work (a suspended cheater is refused)."""
    try:
        return unit_lease(vehicle=vehicle)
    except ApplicationError:
        return None


def test_a_fleet_with_ten_percent_cheaters_accepts_no_wrong_result(client, digits_with_variants, settings,
                                                                     monkeypatch, capsys):  # fmt: skip
    settings.AUCTION_INTERVAL_SECONDS = 10
    settings.VERIFICATION_TRUSTED_AFTER = 5  # honest cars earn trust during the run: adaptive replication shows
    settings.VERIFICATION_SPOT_CHECK_RATE = 0.1
    settings.VERIFICATION_SUSPEND_AFTER_FAULTS = 2
    settings.VERIFICATION_PROBE_RATE = 0.2  # and known answers hidden in a fifth of the leases
    random.seed(0)  # which leases carry probes, and which cars are spot-checked: the same every run
    monkeypatch.setattr(availability, "HEARTBEAT_LOST_AFTER_S", 3600.0)  # rounds run on a fast clock here
    model = digits_with_variants
    # Heavy items (as if each were a long document): the job needs most of the fleet, a few items per unit.
    PrecisionVariant.objects.filter(inference_model=model).update(ch_per_item=0.05)
    cars = []
    for n in range(CARS):
        hardware = "HW3" if n % 4 == 3 else "HW4"  # two hardware classes: replicas stay within a class
        vehicle, credential = vehicle_with_credential(OwnerFactory(username=f"owner{n}"), name=f"car {n}",
                                                      hardware_name=hardware)  # fmt: skip
        cars.append((vehicle, credential, n % (CARS // CHEATERS) == 1))  # cars 1 and 11 cheat
    OptInPolicy.objects.update(min_price_mcents_per_ch=3000, battery_floor_pct=10, max_energy_kwh_per_day=24)
    # Cheaters ask the least, so the auction sells them first: the worst case for the customer.
    OptInPolicy.objects.filter(vehicle__in=[v for v, _, cheats in cars if cheats]).update(min_price_mcents_per_ch=1000)
    Vehicle.objects.filter(pk__in=[v.pk for v, _, cheats in cars if cheats]).update(energy_price_cents_per_kwh=0)
    model.owner.exposure_cap_cents = 200_000  # a customer staff trust with more than the default's $500
    model.owner.save(update_fields=["exposure_cap_cents"])
    response = client.post(
        "/api/v1/bids/",
        {"inference_model": model.pk, "dataset": model.datasets.get().pk, "precision": "int8",
         "max_price_usd_per_ch": "0.05", "budget_usd": "2000.00",
         "deadline": (timezone.now() + timedelta(hours=6)).isoformat()},
        content_type="application/json",
    )  # fmt: skip
    assert response.status_code == 201, response.content
    bid = Bid.objects.get(pk=response.json()["id"])
    runner = ModelRunner(storage.artifact_read(bid.variant.sha256), ModelSpec("tensor", DIGITS_OUTPUT))
    rng = np.random.default_rng(3)

    for step in range(80):
        for _vehicle, credential, _ in cars:
            signed_post(client, credential, "/api/v1/agent/heartbeat/", heartbeat(battery_pct=95))
        auction_round_run(now=timezone.now() + timedelta(seconds=15 * step))
        for vehicle, _, cheats in cars:
            while (unit := lease_or_none(vehicle)) is not None:
                lease = lease_payload(unit, vehicle=vehicle)
                items = decode_npy(base64.b64decode(lease["items_npy_b64"]))
                outputs = runner.run(list(items))
                # A cheater behaves where it can tell it is being tested: its self-test on a new variant.
                if cheats and not lease["unit_id"].startswith("selftest-"):
                    outputs = rng.normal(size=outputs.shape).astype(outputs.dtype)
                data, sha = encode_npy(outputs)
                unit_result(vehicle=vehicle, data={
                    "unit_id": lease["unit_id"], "lease_id": lease["lease_id"], "output_sha256": sha,
                    "output_npy_b64": base64.b64encode(data).decode(), "items": len(items), "seconds": 0.01,
                    "energy_wh": 0.1, "runtime_version": "1.23",
                })  # fmt: skip
        bid.refresh_from_db()
        if bid.status != Bid.Status.RUNNING and bid.status != Bid.Status.WAITING:
            break

    units = WorkUnit.objects.filter(bid=bid)
    assert bid.status == Bid.Status.COMPLETED, list(units.values_list("status", "verification", "assigned_vehicle"))
    cheaters = [v.pk for v, _, cheats in cars if cheats]
    done = WorkUnit.objects.filter(bid=bid, status=WorkUnit.Status.DONE)
    wrong_accepted = done.filter(done_by__in=cheaters).exclude(verification="invalid").count()
    honest = done.exclude(done_by__in=cheaters)
    false_rejections = honest.filter(verification="invalid").count()
    canonical_ch = done.filter(canonical=True).aggregate(ch=Sum("ch"))["ch"]
    replica_ch = done.filter(~Q(canonical=True)).aggregate(ch=Sum("ch"))["ch"] or 0.0
    report = {
        "cars": CARS, "cheaters": CHEATERS, "slices": bid.units.filter(replica_of__isnull=True).count(),
        "results": done.count(), "wrong_results_accepted": wrong_accepted, "cheater_results": done.filter(
            done_by__in=cheaters).count(),
        "honest_results": honest.count(), "honest_false_rejections": false_rejections,
        "replication_overhead": round(replica_ch / canonical_ch, 3),
        "cheaters_suspended": Vehicle.objects.filter(pk__in=cheaters, status="suspended").count(),
        "known_answer_catches": ResultFault.objects.filter(kind="known_answer").count(),
        "rounds": step + 1,
    }  # fmt: skip
    with capsys.disabled():
        print("\nverification fleet:", json.dumps(report))
    assert wrong_accepted == 0
    assert report["cheater_results"] > 0  # the cheaters did return work: they were caught, not idle
    assert false_rejections / honest.count() < 0.01
    assert not ResultFault.objects.exclude(vehicle_id__in=cheaters).exists()  # no honest car has a fault
    # Every cheater caught twice is suspended (and then gets no more work).
    caught = [c for c in cheaters if ResultFault.objects.filter(vehicle_id=c).count() >= 2]
    assert caught and report["cheaters_suspended"] == len(caught)
    # The customer's results are the model's own outputs, item for item (INT8 outputs depend a little on the batch
    # they ran in: compare as two honest cars are compared).
    from marketplace.storage import dataset_items
    from marketplace.verification import Tolerance, results_agree

    result = decode_npy(storage.artifact_read(bid.result_sha256))
    reference = runner.run(list(dataset_items(bid.dataset).items))
    assert results_agree(result, reference, Tolerance.for_precision("top1", "int8"))
