"""Work units: cut from a round's allocations, leased by signed car requests, returned, reissued, assembled."""

import base64
import hashlib
import json
from datetime import timedelta
from decimal import Decimal

import numpy as np
import pytest
from django.utils import timezone

from fleet.agent.inference import ModelRunner, ModelSpec, decode_npy, encode_npy
from marketplace import storage
from marketplace.dispatch import MAX_UNIT_ATTEMPTS, leases_expire
from marketplace.inference.catalogue import DIGITS_OUTPUT
from marketplace.models import WorkUnit
from marketplace.rounds import auction_round_run
from tests.fleet.agent_requests import signed_headers, signed_post

pytestmark = pytest.mark.django_db
LEASE, RESULT, FAILURE = "/api/v1/agent/lease/", "/api/v1/agent/result/", "/api/v1/agent/failure/"


def run_unit(lease: dict, model_bytes: bytes) -> dict:
    """What an honest car sends back for a lease."""
    items = decode_npy(base64.b64decode(lease["items_npy_b64"]))
    outputs = ModelRunner(model_bytes, ModelSpec("tensor", lease["output_name"])).run(list(items))
    data, sha = encode_npy(outputs)
    return {
        "unit_id": lease["unit_id"], "lease_id": lease["lease_id"], "output_npy_b64": base64.b64encode(data).decode(),
        "output_sha256": sha, "items": len(items), "seconds": 0.01, "energy_wh": 0.0003, "runtime_version": "1.32.0",
    }  # fmt: skip


def test_the_allocated_car_runs_every_item_and_the_customer_downloads_them(client, running_bid, cars, alice):
    (olivias_car, olivias_key), (_, oscars_key) = cars
    assert running_bid.status == "running"
    assert running_bid.items_unitised == running_bid.items
    assert set(running_bid.units.values_list("assigned_vehicle", flat=True)) == {olivias_car.pk}

    assert signed_post(client, oscars_key, LEASE, {}).status_code == 204  # oscar's car sold nothing
    response = signed_post(client, olivias_key, LEASE, {})
    assert response.status_code == 200
    lease = response.json()
    assert lease["model_sha256"] == running_bid.variant.sha256

    # The car downloads the model of the unit it holds; another car may not.
    path = lease["model_url"]
    model = client.get(path, **signed_headers(olivias_key, path, b"", method="GET"))
    assert model.status_code == 200
    model_bytes = b"".join(model.streaming_content)
    assert hashlib.sha256(model_bytes).hexdigest() == lease["model_sha256"]
    assert client.get(path, **signed_headers(oscars_key, path, b"", method="GET")).status_code == 404

    while lease:
        assert signed_post(client, olivias_key, RESULT, run_unit(lease, model_bytes)).json() == {"accepted": True}
        response = signed_post(client, olivias_key, LEASE, {})
        lease = response.json() if response.status_code == 200 else None

    running_bid.refresh_from_db()
    assert running_bid.status == "completed"
    client.force_login(alice)
    download = client.get(f"/customer/bids/{running_bid.pk}/result/")
    assert download.status_code == 200
    outputs = decode_npy(download.content)
    items = running_bid.dataset and _dataset_array(running_bid)
    local = ModelRunner(storage.artifact_read(running_bid.variant.sha256), ModelSpec("tensor", DIGITS_OUTPUT)).run(
        list(items)
    )
    assert outputs.shape == (running_bid.items, 10)
    np.testing.assert_allclose(outputs, local, atol=1e-6)


def _dataset_array(bid):
    from marketplace.storage import dataset_items

    return dataset_items(bid.dataset).items


def test_bad_results_are_refused_and_change_nothing(client, running_bid, cars):
    (_, key), (_, other_key) = cars
    lease = signed_post(client, key, LEASE, {}).json()
    data, sha = encode_npy(np.zeros((3, 10), dtype=np.float32))  # wrong item count
    payload = {"unit_id": lease["unit_id"], "lease_id": lease["lease_id"], "items": 3,
               "output_npy_b64": base64.b64encode(data).decode(), "output_sha256": sha}  # fmt: skip

    wrong_count = signed_post(client, key, RESULT, payload)
    assert wrong_count.status_code == 400
    assert "finite outputs" in wrong_count.json()["message"]

    bad_sum = signed_post(client, key, RESULT, {**payload, "output_sha256": "0" * 64})
    assert bad_sum.json()["fields"] == {"output_sha256": ["Does not match the outputs."]}

    not_base64 = signed_post(client, key, RESULT, {**payload, "output_npy_b64": "AAAA\u00e9AAA"})
    assert not_base64.status_code == 400
    assert not_base64.json()["fields"] == {"output_npy_b64": ["Not base64: only ASCII characters."]}

    not_yours = signed_post(client, other_key, RESULT, payload)
    assert not_yours.status_code == 409
    assert WorkUnit.objects.get(pk=lease["unit_id"]).status == "leased"


def test_a_failed_unit_is_reissued_and_fails_for_good_after_three_tries(client, running_bid, cars, settings):
    settings.AUCTION_INTERVAL_SECONDS = 5
    (_, key), _ = cars
    unit_id = None
    for attempt in range(1, MAX_UNIT_ATTEMPTS + 1):
        # The next rounds sell the released CH again (before the cars' heartbeats are 1.5 intervals old).
        auction_round_run(now=timezone.now() + timedelta(seconds=6 * attempt))
        lease = signed_post(client, key, LEASE, {}).json()
        unit_id = unit_id or lease["unit_id"]
        assert lease["unit_id"] == unit_id
        body = {"unit_id": lease["unit_id"], "lease_id": lease["lease_id"], "error": "inference failed: boom"}
        assert signed_post(client, key, FAILURE, body).status_code == 200
    unit = WorkUnit.objects.get(pk=unit_id)
    assert (unit.status, unit.attempts) == ("failed", MAX_UNIT_ATTEMPTS)
    running_bid.refresh_from_db()
    assert running_bid.status == "failed"


def test_an_expired_lease_is_swept_and_its_unit_goes_back_to_the_bid(client, running_bid, cars):
    (_, key), _ = cars
    lease = signed_post(client, key, LEASE, {}).json()
    unit = WorkUnit.objects.get(pk=lease["unit_id"])

    assert leases_expire(now=unit.lease_expires_at - timedelta(seconds=1)) == 0
    assert leases_expire(now=unit.lease_expires_at + timedelta(seconds=1)) == 1
    assert leases_expire(now=unit.lease_expires_at + timedelta(seconds=2)) == 0  # twice is harmless

    unit.refresh_from_db()
    assert (unit.status, unit.assigned_vehicle, unit.attempts) == ("queued", None, 1)
    running_bid.refresh_from_db()
    assert running_bid.ch_allocated == pytest.approx(running_bid.ch_total - unit.ch)
    data, sha = encode_npy(np.zeros((unit.items, 10), dtype=np.float32))
    late = {"unit_id": lease["unit_id"], "lease_id": lease["lease_id"], "items": unit.items,
            "output_npy_b64": base64.b64encode(data).decode(), "output_sha256": sha}  # fmt: skip
    assert signed_post(client, key, RESULT, late).status_code == 409  # the lease is gone: its result is not taken
    unit.refresh_from_db()
    assert unit.status == "queued"


def test_a_departure_notice_releases_the_cars_units_at_once(client, running_bid, cars, settings):
    settings.AUCTION_INTERVAL_SECONDS = 5  # the next round comes while the other car's heartbeat is fresh
    (car, key), (other_car, _) = cars
    signed_post(client, key, LEASE, {})

    response = signed_post(client, key, "/api/v1/agent/departure/", {"observed_at": timezone.now().isoformat()})

    assert response.json()["released_work_units"] == running_bid.units.count()
    assert not WorkUnit.objects.filter(assigned_vehicle=car).exists()
    assert WorkUnit.objects.get().attempts == 0  # leaving is not a failure
    auction_round_run(now=timezone.now() + timedelta(seconds=6))
    assert set(WorkUnit.objects.values_list("assigned_vehicle", flat=True)) == {other_car.pk}


def test_the_lease_payload_is_what_the_agent_reads(client, running_bid, cars):
    from fleet.agent.executor import WorkUnit as AgentUnit

    (_, key), _ = cars
    lease = signed_post(client, key, LEASE, {}).json()
    unit = AgentUnit.from_lease(json.loads(json.dumps(lease)))
    assert unit.kind == "tensor"
    assert len(unit.items) == WorkUnit.objects.get(pk=lease["unit_id"]).items


def test_a_running_bid_past_its_deadline_expires_and_its_queued_work_is_released(client, running_bid, cars):
    (_, key), _ = cars
    auction_round_run(now=running_bid.deadline + timedelta(seconds=1))

    running_bid.refresh_from_db()
    assert running_bid.status == "expired"
    assert not WorkUnit.objects.filter(assigned_vehicle__isnull=False).exists()
    assert signed_post(client, key, LEASE, {}).status_code == 204


def test_the_results_api_serves_a_completed_bid_only(client, running_bid, cars, alice):
    client.force_login(alice)
    response = client.get(f"/api/v1/bids/{running_bid.pk}/result/")
    assert response.status_code == 404
    assert response.json()["message"] == "The results are not ready yet."


def test_a_round_that_sells_a_bid_to_several_cars_gives_each_the_work_it_bought(bid, cars):
    """Regression (found by bench/chaos.py): the first car used to get every item, since the round had already
    counted all its allocations when the first one was cut."""
    from fleet.models import OptInPolicy
    from fleet.services import policy_update
    from marketplace.models import Allocation, Bid

    bid.variant.__class__.objects.filter(pk=bid.variant_id).update(ch_per_item=0.01)
    Bid.objects.filter(pk=bid.pk).update(ch_total=2.0)
    # Neither car can sell the whole job alone: 0.05 kWh is half an hour at 100 W, 1.2 CH, however long it stays.
    for policy in OptInPolicy.objects.all():
        policy_update(policy=policy, max_energy_kwh_per_day=Decimal("0.05"))

    auction_round_run()

    allocations = list(Allocation.objects.filter(bid=bid).order_by("pk"))
    assert len(allocations) == 2
    for allocation in allocations:
        given = sum(u.ch for u in WorkUnit.objects.filter(allocation=allocation))
        assert given == pytest.approx(allocation.ch, abs=0.01)
