"""A model upload that would allocate terabytes at run time is rejected with its reason, and nothing of it kept."""

from html import escape

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from marketplace import storage
from marketplace.models import InferenceModel
from tests.inference.test_model_bombs import constant_of_shape

pytestmark = pytest.mark.django_db


def test_a_model_allocating_4_tib_is_rejected_with_a_reason_its_owner_reads(client, alice, run_tasks_inline):
    client.force_login(alice)

    response = client.post(
        "/api/v1/models/",
        {"name": "bomb", "onnx_file": SimpleUploadedFile("bomb.onnx", constant_of_shape(2**40)), "metric": "max_abs",
         "tolerance": 0.1},
    )  # fmt: skip

    assert response.status_code == 202
    model = InferenceModel.objects.get()
    assert model.status == "rejected"
    assert "would allocate about 4.4 TB" in model.rejection_reason
    assert "(MAX_MODEL_PEAK_BYTES)" in model.rejection_reason
    assert not storage.artifact_exists(model.onnx_sha256)
    assert not model.variants.exists()
    assert escape(model.rejection_reason) in client.get(f"/customer/models/{model.pk}/").content.decode()
    assert client.get("/customer/").status_code == 200
