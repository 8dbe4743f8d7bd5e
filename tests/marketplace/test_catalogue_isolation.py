"""Catalogue models are shared and read-only to customers: one customer's data never changes what another runs, sees
or is gated on, and a rebuild never changes a file a running bid or a leased unit uses."""

import hashlib
import io

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from marketplace import services, storage
from marketplace.models import Dataset, InferenceModel, PrecisionVariant
from tests.factories import CustomerFactory
from tests.fleet.agent_requests import signed_headers, signed_post
from tests.marketplace.test_dispatch import LEASE

pytestmark = pytest.mark.django_db


@pytest.fixture
def catalogue_digits(digits_with_variants):
    """The digits classifier as a catalogue model: offered to every customer, owned by nobody, its shared builds
    judged on the platform's own sample dataset."""
    InferenceModel.objects.filter(pk=digits_with_variants.pk).update(owner=None, is_catalogue=True)
    Dataset.objects.filter(inference_model=digits_with_variants).update(owner=None)
    digits_with_variants.refresh_from_db()
    return digits_with_variants


def shared_builds(model) -> dict[str, tuple]:
    """What a customer of the shared builds depends on: per precision, the build's row, file, metrics and status."""
    rows = PrecisionVariant.objects.filter(inference_model=model, dataset=None, retired_at=None)
    return {v.precision: (v.pk, v.sha256, v.metrics, v.status, v.evaluated_on_id) for v in rows}


def upload(client, model, items: np.ndarray, name: str):
    buffer = io.BytesIO()
    np.save(buffer, items.astype(np.float32), allow_pickle=False)
    file = SimpleUploadedFile(f"{name}.npy", buffer.getvalue(), content_type="application/octet-stream")
    return client.post(f"/api/v1/models/{model.pk}/datasets/", {"name": name, "file": file})


def fetch_artifact(client, credential, sha256: str) -> bytes | None:
    path = f"/api/v1/agent/artifacts/{sha256}/"
    response = client.get(path, **signed_headers(credential, path, b"", method="GET"))
    return b"".join(response.streaming_content) if response.status_code == 200 else None


def test_another_customers_upload_leaves_alices_builds_auto_choice_bid_and_leased_unit_unchanged(
    client, catalogue_digits, running_bid, cars
):
    model = catalogue_digits
    (_, olivias_key), _ = cars
    lease = signed_post(client, olivias_key, LEASE, {}).json()  # a car holds a unit of alice's bid
    assert lease["model_sha256"] == running_bid.variant.sha256
    before = shared_builds(model)
    alices_view = client.get(f"/api/v1/models/{model.pk}/").json()
    assert alices_view["auto_precision"] == "int8"

    # bob's own data for the same catalogue model: images far from the sample's, which calibrate INT8 differently.
    bob = CustomerFactory(username="bob")
    bobs_client = Client()
    bobs_client.force_login(bob)
    rng = np.random.default_rng(7)
    response = upload(bobs_client, model, rng.uniform(0, 16, size=(300, 64)) * 4, "bob's scans")
    assert response.status_code == 201, response.content
    bobs = Dataset.objects.get(pk=response.json()["id"])

    # alice's builds, their files and metrics, her auto choice and her running bid: all as they were.
    assert shared_builds(model) == before
    after = client.get(f"/api/v1/models/{model.pk}/").json()
    assert after["auto_precision"] == alices_view["auto_precision"]
    assert after["variants"] == alices_view["variants"]
    running_bid.refresh_from_db()
    assert running_bid.variant.sha256 == lease["model_sha256"] and running_bid.variant.retired_at is None
    assert "bob's scans" not in client.get(f"/customer/models/{model.pk}/").content.decode()

    # bob got his own report and his own INT8, calibrated on his items: another file than the shared one.
    own = {v.precision: v for v in PrecisionVariant.objects.filter(dataset=bobs)}
    assert set(own) == {"fp32", "fp16", "int8", "fp8"}
    assert all(v.status == "ready" and v.evaluated_on_id == bobs.pk for v in own.values()), own
    assert own["int8"].sha256 != before["int8"][1]
    bobs_datasets = bobs_client.get(f"/api/v1/models/{model.pk}/datasets/").json()
    listed = next(d for d in bobs_datasets if d["id"] == bobs.pk)
    assert {v["precision"] for v in listed["own_variants"]} == {"fp32", "fp16", "int8", "fp8"}
    bobs_page = bobs_client.get(f"/customer/models/{model.pk}/").content.decode()
    assert "On your dataset “bob’s scans”" in bobs_page or "On your dataset “bob&#x27;s scans”" in bobs_page

    # The car that leased alice's unit before any of this still gets the file it was sent to run.
    model_bytes = fetch_artifact(client, olivias_key, lease["model_sha256"])
    assert model_bytes is not None and hashlib.sha256(model_bytes).hexdigest() == lease["model_sha256"]


def test_a_rebuild_of_the_shared_builds_keeps_the_running_bid_and_the_leased_unit_on_their_files(
    client, catalogue_digits, running_bid, cars
):
    model = catalogue_digits
    (_, olivias_key), _ = cars
    lease = signed_post(client, olivias_key, LEASE, {}).json()
    old = running_bid.variant

    # The platform rebuilds its shared builds on a new sample (what a catalogue update does).
    sample = Dataset.objects.get(inference_model=model, owner=None)
    services.variants_queue(inference_model=model, dataset=sample)

    old.refresh_from_db()
    assert old.retired_at is not None and old.sha256 == lease["model_sha256"]  # replaced, but kept as it was
    running_bid.refresh_from_db()
    assert running_bid.variant_id == old.pk
    assert running_bid.units.exclude(variant=old).count() == 0
    model_bytes = fetch_artifact(client, olivias_key, lease["model_sha256"])
    assert model_bytes is not None and hashlib.sha256(model_bytes).hexdigest() == lease["model_sha256"]
    # New bids run the new builds: one in force per precision.
    in_force = PrecisionVariant.objects.filter(inference_model=model, dataset=None, retired_at=None)
    assert sorted(v.precision for v in in_force) == ["fp16", "fp32", "fp8", "int8"]
    assert old.pk not in {v.pk for v in in_force}


def test_while_a_rebuild_is_on_its_way_the_builds_in_force_keep_serving(client, digits_with_variants, monkeypatch):
    """The probe saw auto flip to FP32 while the variants rebuilt: the old builds serve until the new ones are
    ready."""
    from config.celery import app

    model = digits_with_variants
    before = client.get(f"/api/v1/models/{model.pk}/").json()
    assert before["auto_precision"] == "int8"
    monkeypatch.setattr(app.Task, "delay_on_commit", lambda task, *args, **kwargs: None)  # the worker is busy

    response = upload(client, model, np.asarray(storage.dataset_items(model.datasets.get()).items), "more digits")
    assert response.status_code == 201, response.content

    during = client.get(f"/api/v1/models/{model.pk}/").json()
    assert during["auto_precision"] == "int8"
    assert during["variants"] == before["variants"]
    assert PrecisionVariant.objects.filter(inference_model=model, status="queued").count() == 4
    page = client.get(f"/customer/models/{model.pk}/").content.decode()
    assert "Auto precision picks INT8" in page and "Building on new data" in page


def test_a_second_run_of_a_build_task_changes_nothing(digits_with_variants):
    int8 = PrecisionVariant.objects.get(inference_model=digits_with_variants, precision="int8", retired_at=None)
    again = services.variant_build(variant=int8)
    assert (again.pk, again.sha256, again.status) == (int8.pk, int8.sha256, "ready")
    assert PrecisionVariant.objects.filter(inference_model=digits_with_variants).count() == 4


def test_a_rebuild_that_fails_leaves_the_ready_build_serving_and_says_why(client, digits_with_variants, monkeypatch):
    from config.celery import app

    model = digits_with_variants
    ready = PrecisionVariant.objects.get(inference_model=model, precision="int8", retired_at=None)
    monkeypatch.setattr(app.Task, "delay_on_commit", lambda task, *args, **kwargs: None)
    pending = services.variants_queue(inference_model=model, dataset=model.datasets.get())
    int8 = next(v for v in pending if v.precision == "int8")

    services.variant_decide(variant_id=int8.pk, status="failed", error="The worker stopped.")  # what the sweep does

    body = client.get(f"/api/v1/models/{model.pk}/").json()
    assert body["auto_precision"] == "int8"
    assert {v["precision"]: v["id"] for v in body["variants"]}["int8"] == ready.pk
    page = client.get(f"/customer/models/{model.pk}/").content.decode()
    assert "The rebuild of INT8 failed: The worker stopped." in page
