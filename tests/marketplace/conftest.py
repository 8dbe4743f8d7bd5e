"""Shared marketplace fixtures (the digits model and inline tasks live in tests/conftest.py)."""

from datetime import timedelta

import pytest
from django.utils import timezone

from fleet.models import OptInPolicy, Vehicle
from marketplace.models import Bid, InferenceModel, PrecisionVariant
from tests.factories import vehicle_with_credential
from tests.fleet.agent_requests import heartbeat, signed_post


@pytest.fixture
def cars(client, olivia, oscar, settings):
    """Two parked HW4 cars on WiFi, with their credentials: olivia asks at least $0.02/CH, oscar at least $0.03/CH.

    Both have a long record of validated results and spot checks are off, so each result stands alone: these tests
    are about dispatch (tests/marketplace/test_verdicts.py is about checking results). Their record includes the
    variants built so far: each was run on them before (measured here, on this machine, as a self-test would be;
    tests/marketplace/test_measured_speed.py is about self-tests)."""
    settings.VERIFICATION_SPOT_CHECK_RATE = 0.0
    keys = []
    for owner, min_price in ((olivia, 2000), (oscar, 3000)):
        vehicle, credential = vehicle_with_credential(owner, name=f"{owner.username}'s car")
        Vehicle.objects.filter(pk=vehicle.pk).update(valid_streak=settings.VERIFICATION_TRUSTED_AFTER)
        OptInPolicy.objects.filter(vehicle=vehicle).update(min_price_mcents_per_ch=min_price)
        assert signed_post(client, credential, "/api/v1/agent/heartbeat/", heartbeat(battery_pct=90)).status_code == 200
        for variant in PrecisionVariant.objects.filter(status=PrecisionVariant.Status.READY):
            measured_here(vehicle, variant)
        keys.append((vehicle, credential))
    return keys


def measured_here(vehicle, variant, *, items: int = 32) -> None:
    """Record the car's speed on `variant` as this machine runs it (what the car's self-test would have found)."""
    import time

    from fleet.agent.inference import ModelRunner, ModelSpec
    from fleet.services import throughput_record
    from marketplace import storage
    from marketplace.storage import dataset_items

    model = variant.inference_model
    tokenizer = storage.artifact_read(model.tokenizer_sha256).decode() if model.tokenizer_sha256 else None
    runner = ModelRunner(storage.artifact_read(variant.sha256), ModelSpec(model.kind, model.output_name, tokenizer))
    sample = list(dataset_items(model.datasets.first()).items[:items])
    runner.run(sample)  # warm
    started = time.perf_counter()
    runner.run(sample)
    seconds = time.perf_counter() - started
    throughput_record(
        vehicle=vehicle, workload=variant.sha256, precision=variant.precision, ch_per_item=variant.ch_per_item,
        items=len(sample), seconds=seconds, energy_wh=100 * seconds / 3600, at=timezone.now(), first=True,
    )  # fmt: skip


@pytest.fixture
def bid(client, digits_with_variants):
    """alice's bid for the digits dataset at up to $0.05/CH."""
    response = client.post(
        "/api/v1/bids/",
        {
            "inference_model": digits_with_variants.pk,
            "dataset": digits_with_variants.datasets.get().pk,
            "max_price_usd_per_ch": "0.05",
            "budget_usd": "1.00",
            "deadline": (timezone.now() + timedelta(hours=2)).isoformat(),
        },
        content_type="application/json",
    )
    assert response.status_code == 201
    return Bid.objects.get(pk=response.json()["id"])


@pytest.fixture
def running_bid(bid, cars):
    """`bid` after a round sold it to the cheaper of `cars` (olivia's)."""
    from marketplace.rounds import auction_round_run

    auction_round_run()
    bid.refresh_from_db()
    return bid


@pytest.fixture
def own_artifacts(settings, tmp_path):
    """Artifacts in a folder of this test's: "nothing stored" must not see another test's files."""
    settings.MEDIA_ROOT = tmp_path


PIXELS = [{"name": "pixels", "dtype": "float32", "shape": ["?", 64]}]


@pytest.fixture
def digits_model(alice):
    """alice's ready digits classifier (its checks passed; only its inputs matter to a dataset's)."""
    return InferenceModel.objects.create(
        owner=alice, name="digits", kind="tensor", onnx_sha256="0" * 64, onnx_size=1, inputs=PIXELS,
        output_name="probabilities", status=InferenceModel.Status.READY,
    )  # fmt: skip
