"""The installed `idlefleet` command and regional markets: `bid --region` sends the region (the server judges it), and
`bids` and `status` say where each job may run."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from knox.models import AuthToken

from marketplace.models import Bid, Dataset, InferenceModel, PrecisionVariant
from tests.factories import CustomerFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def alice():
    return CustomerFactory(username="alice")


@pytest.fixture
def alice_token(live_server, alice):
    _, token = AuthToken.objects.create(alice)
    return {"IDLEFLEET_URL": live_server.url, "IDLEFLEET_TOKEN": token}


@pytest.fixture
def digits(alice):
    """alice's ready digits model and a dataset of it (rows only: no file is read before the region is judged)."""
    model = InferenceModel.objects.create(
        owner=alice, name="digits", kind="tensor", onnx_sha256="0" * 64, onnx_size=1, output_name="probabilities",
        status=InferenceModel.Status.READY,
    )  # fmt: skip
    dataset = Dataset.objects.create(
        owner=alice, inference_model=model, name="digits.npy", sha256="1" * 64, size_bytes=1, format="npy",
        item_count=10,
    )  # fmt: skip
    return model, dataset


def test_bid_sends_the_region_and_a_region_without_a_market_is_named(idlefleet, alice_token, digits):
    model, dataset = digits

    result = idlefleet(
        "bid", str(model.pk), str(dataset.pk), "--max-price", "0.05", "--budget", "1.00", "--region", "atlantis",
        env=alice_token,
    )  # fmt: skip

    assert result.code == 2
    assert result.err.startswith("Error: region: No market in region ATLANTIS")
    assert "  region: No market in region ATLANTIS" in result.err
    assert not Bid.objects.exists()


def test_bids_and_status_say_where_each_job_runs(idlefleet, alice_token, alice, digits):
    model, dataset = digits
    variant = PrecisionVariant.objects.create(inference_model=model, precision="fp32", status="ready", ch_per_item=0.1)
    terms = {"customer": alice, "inference_model": model, "dataset": dataset, "variant": variant, "pool": "fp32",
             "precision_requested": "auto", "max_price_mcents_per_ch": 5000, "budget_cents": 100, "items": 10,
             "ch_total": 1.0, "deadline": timezone.now() + timedelta(hours=2)}  # fmt: skip
    pinned, anywhere = (Bid.objects.create(**terms, region=region) for region in ("DE", ""))

    listed = idlefleet("bids", env=alice_token)
    shown = idlefleet("status", str(pinned.pk), env=alice_token)
    shown_anywhere = idlefleet("status", str(anywhere.pk), env=alice_token)

    assert listed.code == 0, listed.err
    assert "Region" in listed.out
    rows = {line.split("│")[1].strip(): line for line in listed.out.splitlines() if line.count("│") > 5}
    assert "DE" in rows[str(pinned.pk)] and "any" in rows[str(anywhere.pk)]
    assert shown.code == 0, shown.err
    assert "region DE only" in shown.out
    assert "any region" in shown_anywhere.out
