import io

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from config.celery import app
from marketplace.inference.catalogue import DIGITS_OUTPUT, digits_items
from marketplace.models import InferenceModel


@pytest.fixture
def run_tasks_inline(monkeypatch):
    """Tasks queued "after commit" run at once, in this process (the test's transaction never commits)."""
    monkeypatch.setattr(app.Task, "delay_on_commit", lambda task, *args, **kwargs: task.apply(args, kwargs))


@pytest.fixture(scope="session")
def digits_onnx():
    from marketplace.inference.catalogue import build_digits_classifier

    return build_digits_classifier()


@pytest.fixture
def digits_with_variants(client, alice, run_tasks_inline, digits_onnx):
    client.force_login(alice)
    model_id = client.post(
        "/api/v1/models/",
        {
            "name": "digits",
            "onnx_file": SimpleUploadedFile("d.onnx", digits_onnx),
            "output_name": DIGITS_OUTPUT,
            "metric": "top1",
            "tolerance": 0.9,
        },
    ).json()["id"]
    buffer = io.BytesIO()
    np.save(buffer, digits_items(200), allow_pickle=False)
    response = client.post(
        f"/api/v1/models/{model_id}/datasets/", {"file": SimpleUploadedFile("digits.npy", buffer.getvalue())}
    )
    assert response.status_code == 201, response.content
    assert response.json()["item_count"] == 200
    return InferenceModel.objects.get(pk=model_id)
