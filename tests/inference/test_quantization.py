"""Quantized variants stay close enough to FP32 for the accuracy gate, and run on a CPU."""

import re

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from fleet.agent import hardware
from fleet.agent.inference import TENSOR, TEXT, ModelRunner, ModelSpec
from marketplace.inference.accuracy import compare, cosine_per_item
from marketplace.inference.catalogue import (
    DIGITS_OUTPUT,
    MINILM_OUTPUT,
    build_digits_classifier,
    demo_documents,
    digits_items,
    minilm_paths,
)
from marketplace.inference.quantization import (
    FP8_E4M3_MAX,
    INT8_U8S7,
    INT8_U8S8,
    INT8_U8U8,
    build_variant,
    int8_recipes,
    round_through_e4m3,
    to_fp8_emulated,
    to_fp16,
    to_int8_dynamic,
    to_int8_static,
    variant_method,
)
from marketplace.inference.validation import ModelRejected, validate_onnx

DOCUMENTS = 64
HELD_OUT_DIGITS = 597


@pytest.fixture(scope="module")
def minilm():
    onnx_path, tokenizer_path = minilm_paths()
    spec = ModelSpec(kind=TEXT, output_name=MINILM_OUTPUT, tokenizer_json=tokenizer_path.read_text())
    fp32 = onnx_path.read_bytes()
    documents = demo_documents(DOCUMENTS)
    variants = {precision: build_variant(fp32, precision) for precision in ("fp32", "fp16", "int8", "fp8")}
    outputs = {precision: ModelRunner(data, spec).run(documents) for precision, data in variants.items()}
    return {"variants": variants, "outputs": outputs}


@pytest.fixture(scope="module")
def digits():
    fp32 = build_digits_classifier()
    items = digits_items(1797)
    held_out, training = items[:HELD_OUT_DIGITS], items[HELD_OUT_DIGITS:]
    calibration = [{"pixels": training[start : start + 32]} for start in range(0, 256, 32)]
    spec = ModelSpec(kind=TENSOR, output_name=DIGITS_OUTPUT)
    return {
        "fp32": fp32,
        "held_out": held_out,
        "calibration": calibration,
        "spec": spec,
        "reference": ModelRunner(fp32, spec).run(held_out),
    }


@pytest.mark.parametrize(
    ("classes", "recipes"),
    [
        ({hardware.VNNI}, (INT8_U8S8, INT8_U8U8)),  # exact everywhere it runs: full range, the fastest kernels
        ({hardware.ARM_DOTPROD, hardware.VNNI}, (INT8_U8S8, INT8_U8U8)),
        ({hardware.AVX2}, (INT8_U8S7, INT8_U8U8)),  # U8S8 would saturate there: 7-bit weights first
        ({hardware.VNNI, hardware.AVX2}, (INT8_U8S7, INT8_U8U8)),  # one car without VNNI decides for all
        ({hardware.OTHER}, (INT8_U8S7, INT8_U8U8)),  # an unknown CPU is taken for the worst
        (set(), (INT8_U8S7, INT8_U8U8)),
    ],
)
def test_the_int8_recipe_is_exact_on_every_class_it_is_sent_to(classes, recipes):
    assert int8_recipes(classes) == recipes


@pytest.mark.parametrize("cpu_class", [hardware.VNNI, hardware.AVX2])
def test_minilm_int8_as_the_platform_sends_it_to_either_class_stays_within_cosine_0_99(minilm, cpu_class):
    """The platform builds for the cars' class and its own (it computes the known answers): the recipe it picks is
    exact here, whichever CPU runs the test, so what is measured here is what the cars compute."""
    here = hardware.compute_class(hardware.detect())
    recipe = int8_recipes({cpu_class, here})[0]
    onnx_path, tokenizer_path = minilm_paths()
    spec = ModelSpec(kind=TEXT, output_name=MINILM_OUTPUT, tokenizer_json=tokenizer_path.read_text())

    int8 = ModelRunner(build_variant(onnx_path.read_bytes(), "int8", recipe=recipe), spec).run(
        demo_documents(DOCUMENTS)
    )

    assert cosine_per_item(minilm["outputs"]["fp32"], int8).min() >= 0.99


def test_each_int8_recipe_says_how_it_was_made(digits):
    methods = {r: variant_method(build_variant(digits["fp32"], "int8", method="dynamic", recipe=r)) for r in
               (INT8_U8S8, INT8_U8S7, INT8_U8U8)}  # fmt: skip

    assert methods[INT8_U8S8] == "INT8 dynamic quantization (per-channel INT8 weights, activations scaled per batch)"
    assert "7-bit INT8 weights, exact on every CPU" in methods[INT8_U8S7]
    assert "UINT8 weights, exact on every CPU" in methods[INT8_U8U8]
    with pytest.raises(ValueError, match="unknown int8 recipe"):
        build_variant(digits["fp32"], "int8", recipe="u4s4")


def test_minilm_int8_keeps_every_document_embedding_within_cosine_0_99(minilm):
    reference, int8 = minilm["outputs"]["fp32"], minilm["outputs"]["int8"]

    assert variant_method(minilm["variants"]["int8"]).startswith("INT8 dynamic")  # "auto" for a text model
    assert len(reference) == DOCUMENTS
    assert cosine_per_item(reference, int8).min() >= 0.99
    assert len(minilm["variants"]["int8"]) < 0.8 * len(minilm["variants"]["fp32"])


def test_minilm_fp16_is_nearly_identical(minilm):
    metrics = compare(minilm["outputs"]["fp32"], minilm["outputs"]["fp16"], metric="cosine")

    assert metrics["cosine_min"] >= 0.9999
    assert len(minilm["variants"]["fp16"]) < 0.6 * len(minilm["variants"]["fp32"])


def test_minilm_emulated_fp8_runs_on_cpu_and_stays_close(minilm):
    metrics = compare(minilm["outputs"]["fp32"], minilm["outputs"]["fp8"], metric="cosine")

    assert 0.95 <= metrics["cosine_min"] < 1.0
    assert np.isfinite(minilm["outputs"]["fp8"]).all()


def test_emulated_fp8_keeps_float32_storage_with_fp8_values(minilm):
    model = onnx.load_from_string(minilm["variants"]["fp8"])

    floats = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
    assert floats
    for tensor in floats:
        # float8 e4m3fn has 253 finite values; after one per-tensor scale a weight can take no more.
        assert len(np.unique(numpy_helper.to_array(tensor))) <= 253
    assert variant_method(minilm["variants"]["fp8"]).startswith("FP8 E4M3 weights, emulated")


def test_fp8_rounding_matches_the_float8_e4m3_grid():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    weights = np.random.default_rng(7).standard_normal(20_000).astype(np.float32) * 0.05
    weights[:4] = [0.0, 1e-12, -0.3, 0.3]

    rounded = round_through_e4m3(weights)

    scale = np.abs(weights.astype(np.float64)).max() / FP8_E4M3_MAX
    grid = (weights.astype(np.float64) / scale).astype(ml_dtypes.float8_e4m3fn).astype(np.float64)
    np.testing.assert_allclose(rounded.astype(np.float64) / scale, grid, rtol=1e-6, atol=1e-9)
    assert rounded.dtype == np.float32
    # The largest magnitude maps to e4m3's maximum, which it holds exactly.
    assert np.abs(rounded).max() == pytest.approx(0.3)


def test_fp8_rounding_leaves_an_all_zero_tensor_alone():
    assert (round_through_e4m3(np.zeros((2, 3), np.float32)) == 0).all()


def test_digits_static_int8_with_calibration_keeps_top1(digits):
    variant = to_int8_static(digits["fp32"], digits["calibration"])

    candidate = ModelRunner(variant, digits["spec"]).run(digits["held_out"])

    assert compare(digits["reference"], candidate, metric="top1")["top1_agreement"] >= 0.95
    assert "QuantizeLinear" in {node.op_type for node in onnx.load_from_string(variant).graph.node}
    assert variant_method(variant).startswith("INT8 static QDQ")


def test_digits_auto_int8_keeps_top1_and_passes_upload_validation(digits):
    variant = build_variant(digits["fp32"], "int8", calibration=digits["calibration"])

    candidate = ModelRunner(variant, digits["spec"]).run(digits["held_out"])

    assert compare(digits["reference"], candidate, metric="top1")["top1_agreement"] >= 0.95
    assert validate_onnx(variant, max_bytes=10_000_000).kind == "tensor"


@pytest.mark.parametrize("precision", ["fp16", "fp8"])
def test_digits_float_variants_keep_top1(digits, precision):
    variant = build_variant(digits["fp32"], precision)

    candidate = ModelRunner(variant, digits["spec"]).run(digits["held_out"])

    assert compare(digits["reference"], candidate, metric="top1")["top1_agreement"] >= 0.98


def test_fp32_variant_is_the_model_itself(digits):
    assert build_variant(digits["fp32"], "fp32") == digits["fp32"]
    assert variant_method(digits["fp32"]) == "original"


def test_unknown_precisions_and_methods_are_refused(digits):
    with pytest.raises(ValueError, match="unknown precision 'int4'"):
        build_variant(digits["fp32"], "int4")
    with pytest.raises(ValueError, match="unknown int8 method"):
        build_variant(digits["fp32"], "int8", method="gptq")
    with pytest.raises(ValueError, match="needs calibration"):
        build_variant(digits["fp32"], "int8", method="static")


@pytest.mark.parametrize("build", [to_fp16, to_int8_dynamic, to_fp8_emulated], ids=lambda f: f.__name__)
def test_quantization_refuses_a_model_with_external_data(build):
    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    onnx.external_data_helper.set_external_data(weight, location="../../etc/passwd")
    weight.ClearField("raw_data")
    weight.data_location = onnx.TensorProto.EXTERNAL
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 4])],
        initializer=[weight],
    )

    with pytest.raises(ModelRejected, match=re.escape("points to external data '../../etc/passwd'")):
        build(onnx.helper.make_model(graph).SerializeToString())
