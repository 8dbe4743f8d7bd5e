"""Every page the journeys visit fits a 390 px phone and a 1280 px window: none scrolls sideways.

The journeys check this on each page they visit, at 1280 px (`assert_accessible_basics`). Re-running them all on a
phone would take minutes, so this test builds what they build (a running bid sold to a car, a settled job, a model
with long ONNX output names, an owner's car) and, as each role, visits their pages at both widths."""

from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from billing.services import authorizations, settling
from marketplace.models import Bid, InferenceModel
from tests.billing import builders
from tests.factories import PASSWORD, StaffFactory
from tests.marketplace.conftest import bid, cars, running_bid  # noqa: F401 - the marketplace's fixtures

from .journeys import assert_no_sideways_scroll, log_in

WIDTHS = (390, 1280)

# The outputs that MiniLM's ONNX export declares: long generated names and symbolic dimensions (what made the model
# page 1,497 px wide).
MINILM_OUTPUTS = [
    {"name": "output", "dtype": "int64", "shape": ["batch_size", "sequence_length"]},
    {"name": "463", "dtype": "int64", "shape": ["Identity463_dim_0", "Identity463_dim_1"]},
    {"name": "onnx::Shape_422", "dtype": "float32",
     "shape": ["LayerNormalizationonnx::Shape_422_dim_0", "LayerNormalizationonnx::Shape_422_dim_1", 384]},
    {"name": "461", "dtype": "float32", "shape": ["Concat461_dim_0", "Concat461_dim_1"], "run_shape": [1, 384]},
]  # fmt: skip
TEXT_INPUTS = [{"name": name, "dtype": "int64", "shape": ["batch_size", "sequence_length"]}
               for name in ("input_ids", "attention_mask")]  # fmt: skip


def pages_by_role(*, model, minilm, running, ended, car) -> dict[str | None, list[str]]:
    return {
        None: ["/", "/market/", "/login/", "/signup/", "/password_reset/", "/api/docs/"],
        "alice": [
            "/customer/", "/customer/models/", f"/customer/models/{model.pk}/", f"/customer/models/{minilm.pk}/",
            f"/customer/models/{model.pk}/bid/", "/customer/models/new/", f"/customer/bids/{running.pk}/",
            "/customer/billing/", f"/customer/billing/receipts/{ended.pk}/", "/market/", "/account/",
            "/account/tokens/", "/account/webhooks/",
        ],
        "olivia": [
            "/owner/", "/owner/vehicles/new/", f"/owner/vehicles/{car.pk}/", f"/owner/vehicles/{car.pk}/policy/",
            "/owner/earnings/", "/owner/payouts/",
        ],
        "staff": ["/staff/", "/staff/fleet/", "/staff/finance/", "/admin/marketplace/pricingpolicy/add/"],
    }  # fmt: skip


def test_no_page_scrolls_sideways_on_a_phone_or_a_laptop(
    page,
    live_server,
    running_bid,  # noqa: F811 - the fixture imported above
    cars,  # noqa: F811
    alice,
):
    (olivias_car, _), _ = cars
    StaffFactory(username="staff")
    minilm = InferenceModel.objects.create(
        owner=alice, name="MiniLM-L3 sentence embeddings", kind="text", onnx_sha256="1" * 64, onnx_size=17_000_000,
        inputs=TEXT_INPUTS, outputs=MINILM_OUTPUTS, output_name="461", status=InferenceModel.Status.READY,
    )  # fmt: skip
    # An ended job with validated work, settled: its receipt has the widest table of her pages.
    variant = running_bid.variant
    ended = Bid.objects.create(
        customer=alice, inference_model=variant.inference_model, dataset=running_bid.dataset, variant=variant,
        precision_requested="int8", pool="int8", max_price_mcents_per_ch=5000, budget_cents=100,
        funding=Bid.Funding.CARD, deadline=timezone.now() + timedelta(hours=12), items=200,
        ch_total=200 * variant.ch_per_item, status=Bid.Status.AUTHORIZING,
    )  # fmt: skip
    with transaction.atomic():
        authorization = authorizations.authorization_prepare(bid=ended)
    authorizations.authorization_confirm(authorization_id=authorization.pk)
    builders.validate(builders.sell(ended, olivias_car, ch=100 * variant.ch_per_item, price_mcents=2000))
    builders.close(ended, "completed")
    assert settling.bid_settle(bid_id=ended.pk).status == "settled"

    pages = pages_by_role(
        model=variant.inference_model, minilm=minilm, running=running_bid, ended=ended, car=olivias_car
    )
    for role, paths in pages.items():
        page.context.clear_cookies()
        if role:
            log_in(page, username=role, password=PASSWORD)
        for width in WIDTHS:
            page.set_viewport_size({"width": width, "height": 900})
            for path in paths:
                response = page.goto(path)
                assert response.status == 200, f"{path} as {role}: {response.status}"
                page.wait_for_load_state()
                assert_no_sideways_scroll(page)


@pytest.fixture(autouse=True)
def _four_slices(settings):
    settings.WORK_UNIT_MAX_ITEMS = 50
