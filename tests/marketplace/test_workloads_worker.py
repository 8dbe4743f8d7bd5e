"""End to end with a real Celery worker: an upload is checked and its variants are built by the worker."""

import io

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from marketplace.inference.catalogue import DIGITS_OUTPUT, digits_items
from marketplace.models import InferenceModel, PrecisionVariant
from tests.factories import CustomerFactory, OwnerFactory, vehicle_with_credential
from tests.marketplace.onnx_corpus import tiny_model
from tests.waiting import wait_for


@pytest.mark.worker
def test_the_worker_checks_uploads_and_builds_variants(client, celery_worker_thread, digits_onnx):
    client.force_login(CustomerFactory(username="alice"))

    bad = client.post(
        "/api/v1/models/",
        {"name": "bad", "onnx_file": SimpleUploadedFile("b.onnx", tiny_model(external="/etc/shadow"))},
    )
    good = client.post(
        "/api/v1/models/",
        {"name": "digits", "onnx_file": SimpleUploadedFile("d.onnx", digits_onnx), "output_name": DIGITS_OUTPUT,
         "metric": "top1", "tolerance": 0.95},
    )  # fmt: skip
    assert bad.status_code == good.status_code == 202

    ids = [bad.json()["id"], good.json()["id"]]
    assert wait_for(lambda: not InferenceModel.objects.filter(pk__in=ids, status="validating").exists(), timeout=120)
    assert "external data '/etc/shadow'" in InferenceModel.objects.get(pk=ids[0]).rejection_reason
    model = InferenceModel.objects.get(pk=ids[1])
    assert model.status == "ready"

    buffer = io.BytesIO()
    np.save(buffer, digits_items(120), allow_pickle=False)
    response = client.post(
        f"/api/v1/models/{model.pk}/datasets/", {"file": SimpleUploadedFile("d.npy", buffer.getvalue())}
    )
    assert response.status_code == 201

    ready = PrecisionVariant.Status.READY
    assert wait_for(lambda: model.variants.filter(status=ready).count() == 4, timeout=120), list(
        model.variants.values("precision", "status", "error")
    )
    body = client.get(f"/api/v1/models/{model.pk}/").json()
    assert body["auto_precision"] is None  # no car to run it yet
    assert {pool["problem"] for pool in body["outlook"]} == {"no car runs INT8", "no car runs FP8", "no car runs FP16",
                                                              "no car runs FP32"}  # fmt: skip
    vehicle_with_credential(OwnerFactory(username="olivia"))  # an HW4 car: INT8, FP16 and FP32
    assert client.get(f"/api/v1/models/{model.pk}/").json()["auto_precision"] == "int8"
