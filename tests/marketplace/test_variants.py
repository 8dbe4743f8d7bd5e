"""Precision variants: built in tasks, priced in CH per item, judged against FP32 on the customer's own data."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from fleet.agent.inference import ModelRunner, ModelSpec
from marketplace import storage
from marketplace.inference.catalogue import DIGITS_OUTPUT, digits_items
from marketplace.models import InferenceModel
from marketplace.selectors import variant_pick_auto

pytestmark = pytest.mark.django_db


def test_every_variant_is_built_priced_and_judged(client, digits_with_variants):
    model = digits_with_variants
    variants = {v.precision: v for v in model.variants.all()}

    assert set(variants) == {"fp32", "fp16", "int8", "fp8"}
    for variant in variants.values():
        assert variant.status == "ready", variant.error
        assert variant.progress == 100
        assert variant.ch_per_item > 0
        assert storage.artifact_exists(variant.sha256)
        assert variant.metrics["top1_agreement"] >= 0.9
    assert len({v.ch_per_item for v in variants.values()}) == 1  # the same work whatever the precision
    assert variants["fp8"].emulated and not variants["int8"].emulated
    assert variants["fp32"].metrics["top1_agreement"] == 1.0
    # The variant file really is what was measured: it runs and agrees with FP32 on the held-out items.
    runner = ModelRunner(storage.artifact_read(variants["int8"].sha256), ModelSpec("tensor", DIGITS_OUTPUT))
    assert runner.run(digits_items(20)).shape == (20, 10)

    body = client.get(f"/api/v1/models/{model.pk}/").json()
    assert body["auto_precision"] == "int8"
    assert {v["precision"]: v["meets_tolerance"] for v in body["variants"]}["int8"] is True


def test_auto_picks_int8_when_the_tolerance_allows_and_a_wider_precision_when_not(client, digits_with_variants):
    model = digits_with_variants
    assert variant_pick_auto(model=model).precision == "int8"  # loose: top-1 agreement of at least 90 %

    # Tight: outputs within 1e-7 of FP32. Quantized weights cannot meet it; FP32 itself can.
    response = client.post(f"/customer/models/{model.pk}/tolerance/", {"metric": "max_abs", "tolerance": 1e-7})
    assert response.status_code == 302
    model.refresh_from_db()
    assert model.variants.get(precision="int8").metrics["max_abs_error"] > 1e-7
    picked = variant_pick_auto(model=model)
    assert picked.precision in ("fp16", "fp32")
    page = client.get(f"/customer/models/{model.pk}/").content.decode()
    assert f"Auto precision picks {picked.get_precision_display()}" in page


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"metric": "cosine", "tolerance": 5}, "tolerance: Between 0 and 1, e.g. 0.99."),
        ({"metric": "max_abs", "tolerance": -1}, "tolerance: An error bound of 0 or more."),
        ({"metric": "cosine", "tolerance": "high"}, "Give a metric and a number for the tolerance."),
    ],
)
def test_a_bad_tolerance_is_refused_and_changes_nothing(client, alice, data, message, digits_onnx, run_tasks_inline):
    client.force_login(alice)
    model_id = client.post(
        "/api/v1/models/", {"name": "d", "onnx_file": SimpleUploadedFile("d.onnx", digits_onnx), "metric": "top1"}
    ).json()["id"]

    response = client.post(f"/customer/models/{model_id}/tolerance/", data, follow=True)

    assert message in response.content.decode()
    model = InferenceModel.objects.get(pk=model_id)
    assert (model.metric, model.tolerance) == ("top1", 0.99)


def test_catalogue_models_are_read_only_to_customers(client, alice):
    from django.core.management import call_command

    call_command("catalogue_sync", no_variants=True, documents=20)
    catalogue = InferenceModel.objects.get(is_catalogue=True, kind="tensor")
    client.force_login(alice)

    assert client.get(f"/customer/models/{catalogue.pk}/").status_code == 200
    assert (
        client.post(f"/customer/models/{catalogue.pk}/tolerance/", {"metric": "top1", "tolerance": 0.5}).status_code
        == 404
    )
    catalogue.refresh_from_db()
    assert catalogue.tolerance == 0.98
