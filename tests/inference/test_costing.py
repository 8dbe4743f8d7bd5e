"""Compute-hours per item and the precision an "auto" job runs at."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from fleet.agent.inference import TEXT, ModelRunner, ModelSpec
from marketplace.inference.catalogue import build_digits_classifier, demo_documents, digits_items, minilm_paths
from marketplace.inference.costing import AUTO_ORDER, PER_ITEM_OVERHEAD_S, ch_per_item, macs_per_item, pick_auto
from marketplace.inference.quantization import build_variant

ALL = set(AUTO_ORDER)
# Metrics shaped like the bench's for MiniLM: fp16 nearly exact, int8 and emulated fp8 close.
MEASURED = {
    "int8": {"cosine_min": 0.9942, "cosine_mean": 0.997, "max_abs_error": 0.08},
    "fp8": {"cosine_min": 0.985, "cosine_mean": 0.99, "max_abs_error": 0.2},
    "fp16": {"cosine_min": 0.999999, "cosine_mean": 1.0, "max_abs_error": 0.001},
}


def test_auto_picks_int8_when_the_tolerance_is_loose():
    assert pick_auto(MEASURED, metric="cosine", tolerance=0.99, available=ALL) == "int8"


def test_auto_picks_fp16_when_only_it_is_close_enough():
    assert pick_auto(MEASURED, metric="cosine", tolerance=0.9999, available=ALL) == "fp16"


def test_auto_falls_back_to_fp32_when_nothing_else_is_close_enough():
    assert pick_auto(MEASURED, metric="cosine", tolerance=0.9999999, available=ALL) == "fp32"


def test_auto_skips_precisions_no_car_offers():
    assert pick_auto(MEASURED, metric="cosine", tolerance=0.98, available={"fp8", "fp16", "fp32"}) == "fp8"


def test_auto_does_not_pick_a_precision_that_was_not_measured():
    assert pick_auto({"fp16": MEASURED["fp16"]}, metric="cosine", tolerance=0.9, available=ALL) == "fp16"


def test_auto_finds_nothing_when_no_offered_precision_passes():
    assert pick_auto(MEASURED, metric="cosine", tolerance=0.9999999, available={"int8", "fp8"}) is None


def test_auto_with_top1_metrics():
    variants = {"int8": {"top1_agreement": 0.96, "max_abs_error": 0.03}, "fp16": {"top1_agreement": 1.0}}

    assert pick_auto(variants, metric="top1", tolerance=0.95, available=ALL) == "int8"
    assert pick_auto(variants, metric="top1", tolerance=0.99, available=ALL) == "fp16"


def test_ch_per_item_is_two_ops_per_mac_at_100_tops_and_30_percent_utilisation():
    assert ch_per_item(54_000_000_000) == pytest.approx(1e-6)
    assert ch_per_item(5_400_000_000) == pytest.approx(1e-7)


def test_a_tiny_model_still_costs_the_per_item_overhead():
    floor = PER_ITEM_OVERHEAD_S / 3600
    assert ch_per_item(0) == pytest.approx(floor)
    assert ch_per_item(4_736) == pytest.approx(floor)  # the digits classifier
    assert ch_per_item(10**12) > floor


def test_digits_macs_are_the_two_dense_layers_at_every_precision():
    fp32 = build_digits_classifier()
    feeds = {"pixels": digits_items(32)}

    counts = {
        precision: macs_per_item(build_variant(fp32, precision), example_feeds=feeds)
        for precision in ("fp32", "fp16", "fp8", "int8")
    }

    assert counts == dict.fromkeys(counts, 64 * 64 + 64 * 10)
    assert ch_per_item(counts["fp32"]) > 0


def test_minilm_macs_follow_the_padded_sequence_length():
    onnx_path, tokenizer_path = minilm_paths()
    runner = ModelRunner(onnx_path, ModelSpec(kind=TEXT, output_name="461", tokenizer_json=tokenizer_path.read_text()))
    feeds = runner.feeds(demo_documents(8))
    length = feeds["input_ids"].shape[1]

    macs = macs_per_item(onnx_path.read_bytes(), example_feeds=feeds)

    # Three layers of: Q, K, V and output projections (384×384), the 384→1536→384 feed-forward, and attention.
    hidden, inner = 384, 1536
    assert macs == 3 * (4 * length * hidden * hidden + 2 * length * hidden * inner + 2 * length * length * hidden)


def _single_node_model(node, inputs, output, initializers=()):
    graph = helper.make_graph([node], "m", inputs, [output], initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_conv_macs_are_output_elements_times_kernel_volume():
    weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    model = _single_node_model(
        helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]),
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
        helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
        [weight],
    )

    macs = macs_per_item(model, example_feeds={"x": np.zeros((2, 3, 8, 8), np.float32)})

    assert macs == (4 * 8 * 8) * (3 * 3 * 3)


def test_gemm_macs_respect_transposition():
    weight = numpy_helper.from_array(np.ones((10, 64), np.float32), "w")
    model = _single_node_model(
        helper.make_node("Gemm", ["x", "w"], ["y"], transB=1),
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
        helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
        [weight],
    )

    assert macs_per_item(model, example_feeds={"x": np.zeros((5, 64), np.float32)}) == 64 * 10


def test_einsum_macs_are_the_product_of_every_index():
    model = _single_node_model(
        helper.make_node("Einsum", ["a", "b"], ["y"], equation="bij,bjk->bik"),
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", 3, 4]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["n", 4, 5]),
        ],
        helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
    )
    feeds = {"a": np.zeros((2, 3, 4), np.float32), "b": np.zeros((2, 4, 5), np.float32)}

    assert macs_per_item(model, example_feeds=feeds) == 3 * 4 * 5
