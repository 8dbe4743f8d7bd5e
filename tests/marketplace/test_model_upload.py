"""Uploading models and datasets: a corpus of bad uploads is refused with clear messages and nothing kept."""

import io
import json
from html import escape

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from marketplace import storage
from marketplace.models import Dataset, InferenceModel
from tests.marketplace.onnx_corpus import tiny_model

pytestmark = pytest.mark.django_db


def upload(client, data: bytes, name="model.onnx", **fields):
    payload = {"name": "My model", "onnx_file": SimpleUploadedFile(name, data), "metric": "top1", "tolerance": 0.98}
    payload.update(fields)
    return client.post("/api/v1/models/", payload)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (tiny_model(external="../../etc/passwd"), "points to external data '../../etc/passwd'"),
        (tiny_model()[:40], "truncated or not a protobuf"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "not an ONNX model"),
        (tiny_model(op="FooOp", domain="com.example"), "FooOp"),
    ],
    ids=["external-data", "truncated", "not-onnx", "unknown-operator"],
)
def test_a_bad_model_is_rejected_with_its_reason_and_its_file_is_not_kept(
    client, alice, run_tasks_inline, data, reason
):
    client.force_login(alice)

    response = upload(client, data)

    assert response.status_code == 202
    model = InferenceModel.objects.get()
    assert model.status == "rejected"
    assert reason in model.rejection_reason
    assert not storage.artifact_exists(model.onnx_sha256)
    assert not model.variants.exists()
    assert escape(reason) in client.get(f"/customer/models/{model.pk}/").content.decode()


def test_an_oversized_model_is_refused_before_it_is_read(client, alice, settings):
    settings.MAX_MODEL_UPLOAD_BYTES = 1000
    client.force_login(alice)

    response = upload(client, b"x" * 5000)

    assert response.status_code == 413
    # Refused while it streamed in, as soon as it passed the cap (core/uploads.py): its full size is never read.
    assert response.json()["fields"] == {"onnx_file": ["The file is larger than the 1.0 kB limit."]}
    assert not InferenceModel.objects.exists()


def test_a_good_model_is_introspected(client, alice, run_tasks_inline, digits_onnx):
    client.force_login(alice)

    response = upload(client, digits_onnx)

    model = InferenceModel.objects.get(pk=response.json()["id"])
    assert model.status == "ready", model.rejection_reason
    assert model.kind == "tensor"
    assert model.inputs[0]["name"] == "pixels"
    assert model.inputs[0]["shape"][1] == 64
    page = client.get(f"/customer/models/{model.pk}/").content.decode()
    assert "pixels" in page


def test_a_text_model_needs_its_tokenizer(client, alice, run_tasks_inline):
    from marketplace.inference.catalogue import minilm_paths

    onnx_path, _ = minilm_paths()
    client.force_login(alice)
    upload(client, onnx_path.read_bytes(), metric="cosine", tolerance=0.99)

    model = InferenceModel.objects.get()
    assert model.status == "rejected"
    assert "upload its tokenizer.json" in model.rejection_reason


@pytest.fixture
def digits_model(client, alice, run_tasks_inline, digits_onnx):
    client.force_login(alice)
    return InferenceModel.objects.get(pk=upload(client, digits_onnx).json()["id"])


def npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        (
            "items.npy",
            npy(np.zeros((10, 63), dtype=np.float32)),
            "items have shape [63] but the model's input 'pixels'",
        ),
        ("items.npy", npy(np.array(["a", "b"])), "not numbers"),
        ("items.npy", b"not numpy", "not a readable NumPy npy file"),
        ("items.jsonl", json.dumps("hello").encode(), "a tensor model takes a NumPy array file"),
        ("items.csv", b"1,2,3", "Use .jsonl for texts, .npy or .npz for arrays."),
        ("items.npy", npy(np.full((3, 64), np.nan, dtype=np.float32)), "NaN or infinite"),
    ],
)
def test_a_dataset_that_does_not_fit_the_model_is_refused_and_nothing_stored(client, digits_model, name, data, message):
    response = client.post(
        f"/api/v1/models/{digits_model.pk}/datasets/", {"file": SimpleUploadedFile(name, data), "name": "bad"}
    )

    assert response.status_code == 400
    assert message in response.json()["message"]
    assert response.json()["message"].startswith("file:")
    assert not Dataset.objects.exists()
    assert not digits_model.variants.exists()


def test_another_customers_model_is_404_and_owners_may_not_upload(client, digits_model, bob, olivia):
    client.force_login(bob)
    assert client.get(f"/api/v1/models/{digits_model.pk}/").status_code == 404
    assert client.get(f"/customer/models/{digits_model.pk}/").status_code == 404
    assert client.post(f"/api/v1/models/{digits_model.pk}/datasets/", {}).status_code == 404
    assert client.get("/api/v1/models/").json() == []
    client.force_login(olivia)
    assert client.get("/api/v1/models/").status_code == 403
