"""Building the reduced-precision variants of a customer's FP32 inference model that cars run.

Every function takes the FP32 model's bytes (a model that passed `validation.validate_onnx`) and returns the variant's
bytes; nothing is written outside a temporary directory, and no Django is imported. ONNX Runtime's quantization tools
load the model from a file path, which would follow external-data references: each function refuses such a model
again (`ModelRejected`) rather than trust that validation ran. Which variant a job may use is decided elsewhere, by
the accuracy gate (`accuracy.passes`, `costing.pick_auto`).

Precisions:
- fp16: weights and activations in float16, inputs and outputs kept float32 (`keep_io_types`), so feeds do not change.
- int8: ONNX Runtime quantization, weights per output channel. Dynamic (activation scales computed per batch
  at run time) or static QDQ (activation scales fixed from the customer's calibration feeds); see `build_variant`.
  How the integers are multiplied is a recipe (`int8_recipes`): an INT8 variant must give the same numbers on every
  CPU it is sent to, and on the platform's, which checks the cars' answers with it.
- fp8: *emulated*. ONNX Runtime's CPU provider has no FP8 MatMul, so the variant keeps float32 storage and compute
  but every float initializer has been rounded through float8 e4m3 (per-tensor scale). Its accuracy is what FP8
  weights give; its speed and size are FP32's. Activations are not rounded.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from fleet.agent import hardware
from fleet.agent.precisions import PRECISIONS
from marketplace.inference.accuracy import cosine_per_item
from marketplace.inference.validation import TEXT, model_kind, reject_external_data

INT8_METHODS = ("auto", "dynamic", "static")

# INT8 recipes: how ONNX Runtime's kernels multiply uint8 activations by the weights, and where that is exact.
# - u8s8: int8 weights, full range. The fastest kernels everywhere, but exact only where the CPU sums int8 products
#   into 32 bits (x86 VNNI, ARM); x86 without VNNI adds two products into a saturating int16 (vpmaddubsw), and
#   MiniLM's worst document falls to cosine 0.948 there (fleet/agent/hardware.py).
# - u8s7: int8 weights in 7 bits (reduce_range): two products of 255 × 64 never overflow an int16, so the result is
#   exact on every CPU, and VNNI CPUs keep their fast kernels; one bit less of weight precision.
# - u8u8: uint8 weights: ONNX Runtime's U8U8 kernels widen to 16 bits first, exact on every CPU, 8 bits of weights;
#   on VNNI CPUs slower than the int8-weight kernels.
INT8_U8S8, INT8_U8S7, INT8_U8U8 = "u8s8", "u8s7", "u8u8"
INT8_RECIPES = (INT8_U8S8, INT8_U8S7, INT8_U8U8)

# Dynamic quantization: the weight-bearing operators. The embedding table's Gather is left in FP32 on purpose:
# one per-tensor int8 scale over a 30k-word table cost MiniLM ~0.003 of worst-document cosine (0.991 instead of
# 0.994) and bought no speed, only a smaller file.
DYNAMIC_OP_TYPES = ["MatMul", "Attention", "LSTM", "Conv"]
# Static QDQ: only the operators with weights get quantize/dequantize pairs; the rest (Add, Softmax, the model's
# outputs) stays float, which kept the digits classifier's probabilities closer (top-1 0.998 against 0.997).
STATIC_OP_TYPES = ["MatMul", "Gemm", "Conv"]

FP8_E4M3_MAX = 448.0
FP8_E4M3_MANTISSA_BITS = 3
FP8_E4M3_MIN_NORMAL_EXPONENT = -6
# Each variant says how it was made in its metadata_props, so the method "auto" chose can be shown to the customer.
METHOD_KEY = "idlefleet.method"
FP16_METHOD = "FP16 conversion (FP32 inputs and outputs)"
INT8_DYNAMIC_METHOD = "INT8 dynamic quantization (per-channel {weights}, activations scaled per batch)"
INT8_STATIC_METHOD = "INT8 static QDQ quantization (per-channel {weights}, activations calibrated on customer data)"
_RECIPE_WEIGHTS = {
    INT8_U8S8: "INT8 weights",
    INT8_U8S7: "7-bit INT8 weights, exact on every CPU",
    INT8_U8U8: "UINT8 weights, exact on every CPU",
}


def int8_recipes(compute_classes: Iterable[str]) -> tuple[str, ...]:
    """The INT8 recipes to try, best first, for a variant that runs on every class in `compute_classes`: the cars it
    may be sent to and the platform's own CPU (which computes the known answers it checks cars against).

    Where every class multiplies int8 exactly (VNNI, ARM), full-range u8s8 is exact and fastest; anywhere else u8s8
    could saturate, so a portable recipe comes first: u8s7 (keeps VNNI's speed), then u8u8 (one bit more of weights).
    The variant build keeps the first whose accuracy meets the customer's tolerance (marketplace.services).
    """
    classes = set(compute_classes)
    if classes and all(hardware.int8_exact(compute_class) for compute_class in classes):
        return (INT8_U8S8, INT8_U8U8)
    return (INT8_U8S7, INT8_U8U8)


FP8_METHOD = "FP8 E4M3 weights, emulated (rounded through float8, stored and computed in FP32)"


def build_variant(
    model_bytes: bytes,
    precision: str,
    *,
    method: str = "auto",
    calibration: Sequence[dict[str, np.ndarray]] | None = None,
    recipe: str = INT8_U8S7,
) -> bytes:
    """The `precision` variant ("fp32", "fp16", "int8", "fp8") of an FP32 model.

    For int8, `recipe` is one of INT8_RECIPES (see int8_recipes: the default is exact on every CPU), and `method` is
    "dynamic", "static" (needs `calibration`: a list of feeds, {input name: array}) or "auto":
    - text models (input_ids/attention_mask): dynamic. A transformer's activations (attention scores, GELU) vary
      widely between documents; scales computed per batch follow them, fixed calibrated scales clip the outliers.
    - tensor models with calibration feeds: both are built and the one closer to FP32 on the calibration feeds
      (worst-item cosine over all float outputs) is kept; ties go to static QDQ, which is faster for convolutions.
      (On the digits classifier dynamic wins: top-1 agreement 1.000 against 0.998.)
    - tensor models without calibration: dynamic.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    model = _load(model_bytes)
    if precision == "fp32":
        return model_bytes
    if precision == "fp16":
        return to_fp16(model_bytes)
    if precision == "fp8":
        return to_fp8_emulated(model_bytes)
    if method not in INT8_METHODS:
        raise ValueError(f"unknown int8 method {method!r}; expected one of {', '.join(INT8_METHODS)}")
    if recipe not in INT8_RECIPES:
        raise ValueError(f"unknown int8 recipe {recipe!r}; expected one of {', '.join(INT8_RECIPES)}")
    if method == "dynamic":
        return to_int8_dynamic(model_bytes, recipe=recipe)
    if method == "static":
        if not calibration:
            raise ValueError("static int8 quantization needs calibration feeds")
        return to_int8_static(model_bytes, list(calibration), recipe=recipe)
    if calibration and model_kind(model) != TEXT:
        candidates = {
            "static": to_int8_static(model_bytes, list(calibration), recipe=recipe),
            "dynamic": to_int8_dynamic(model_bytes, recipe=recipe),
        }
        scores = {name: _closeness(model_bytes, variant, calibration) for name, variant in candidates.items()}
        return candidates["static" if scores["static"] >= scores["dynamic"] else "dynamic"]
    return to_int8_dynamic(model_bytes, recipe=recipe)


def to_fp16(model_bytes: bytes) -> bytes:
    """Float16 weights and compute, float32 inputs and outputs.

    Operators for which ONNX Runtime's CPU provider has no float16 kernel stay float32 (found by loading the result
    and adding the operator it names to the block list).
    """
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    blocked = list(DEFAULT_OP_BLOCK_LIST)
    for _ in range(20):
        model = convert_float_to_float16(_load(model_bytes), keep_io_types=True, op_block_list=blocked)
        variant = model.SerializeToString()
        missing = _missing_kernel(variant)
        if missing is None:
            return _with_method(variant, FP16_METHOD)
        if missing in blocked:
            break
        blocked.append(missing)
    raise ValueError("the model cannot run in float16 on ONNX Runtime's CPU provider")


def to_int8_dynamic(model_bytes: bytes, *, recipe: str = INT8_U8S7) -> bytes:
    """INT8 weights (per output channel, as `recipe` says), activations quantized per batch at run time (uint8).

    `quant_pre_process` is not run: on MiniLM it changed neither accuracy nor speed, and its shape inference is one
    more thing that can fail on a customer's export.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    _load(model_bytes)
    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder, "fp32.onnx"), Path(folder, "int8.onnx")
        source.write_bytes(model_bytes)
        quantize_dynamic(
            source,
            target,
            op_types_to_quantize=DYNAMIC_OP_TYPES,
            per_channel=True,
            weight_type=QuantType.QUInt8 if recipe == INT8_U8U8 else QuantType.QInt8,
            reduce_range=recipe == INT8_U8S7,
        )
        return _with_method(target.read_bytes(), INT8_DYNAMIC_METHOD.format(weights=_RECIPE_WEIGHTS[recipe]))


def to_int8_static(model_bytes: bytes, calibration: list[dict[str, np.ndarray]], *, recipe: str = INT8_U8S7) -> bytes:
    """INT8 in QDQ format: weights per channel (as `recipe` says), activation ranges (min/max) fixed from
    `calibration`. u8u8 quantizes activations and weights as uint8; the int8 recipes both as int8 (ONNX Runtime runs
    int8 activations through the same U8S8 kernels, shifted by 128, so they saturate alike without VNNI).

    `calibration` is the customer's own feeds ({input name: array}, a batch each), e.g. a few batches of their data.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    if not calibration:
        raise ValueError("static int8 quantization needs calibration feeds")
    _load(model_bytes)

    class Feeds(CalibrationDataReader):
        def __init__(self) -> None:
            self.remaining = iter([{name: np.asarray(array) for name, array in feed.items()} for feed in calibration])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.remaining, None)

    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder, "fp32.onnx"), Path(folder, "int8.onnx")
        source.write_bytes(model_bytes)
        quantize_static(
            source,
            target,
            Feeds(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=STATIC_OP_TYPES,
            per_channel=True,
            activation_type=QuantType.QUInt8 if recipe == INT8_U8U8 else QuantType.QInt8,
            weight_type=QuantType.QUInt8 if recipe == INT8_U8U8 else QuantType.QInt8,
            reduce_range=recipe == INT8_U8S7,
        )
        return _with_method(target.read_bytes(), INT8_STATIC_METHOD.format(weights=_RECIPE_WEIGHTS[recipe]))


def to_fp8_emulated(model_bytes: bytes) -> bytes:
    """Emulated FP8: every float32 initializer rounded through float8 e4m3 with a per-tensor scale, stored float32.

    Runs on any CPU; outputs show FP8 weights' error, not FP8 speed (see the module docstring).
    """
    model = _load(model_bytes)
    for initializer in model.graph.initializer:
        if initializer.data_type == onnx.TensorProto.FLOAT:
            rounded = round_through_e4m3(numpy_helper.to_array(initializer))
            initializer.CopyFrom(numpy_helper.from_array(rounded, initializer.name))
    _set_method(model, FP8_METHOD)
    return model.SerializeToString()


def variant_method(variant_bytes: bytes) -> str:
    """How a variant was made (one of the *_METHOD sentences), read from its metadata; "original" for the FP32 model."""
    model = onnx.ModelProto()
    model.ParseFromString(variant_bytes)
    return next((entry.value for entry in model.metadata_props if entry.key == METHOD_KEY), "original")


def round_through_e4m3(weights: np.ndarray) -> np.ndarray:
    """float32 weights -> float32 weights that float8 e4m3 (fn) can hold after one per-tensor scale.

    Scale so the largest magnitude maps to 448 (e4m3's maximum), round to 3 mantissa bits (to nearest, ties to even;
    subnormal steps of 2^-9 below 2^-6), scale back. Non-finite values are left as they are.
    """
    values = np.asarray(weights, dtype=np.float64)
    finite = np.isfinite(values)
    amax = float(np.abs(values[finite]).max()) if finite.any() else 0.0
    if amax == 0.0:
        return np.asarray(weights, dtype=np.float32).copy()
    scale = amax / FP8_E4M3_MAX
    scaled = np.where(finite, values / scale, 0.0)
    magnitude = np.abs(scaled)
    with np.errstate(divide="ignore"):
        exponent = np.floor(np.log2(np.where(magnitude > 0, magnitude, 1.0)))
    exponent = np.maximum(exponent, FP8_E4M3_MIN_NORMAL_EXPONENT)
    step = np.exp2(exponent - FP8_E4M3_MANTISSA_BITS)
    rounded = np.minimum(np.round(magnitude / step) * step, FP8_E4M3_MAX)
    result = np.where(finite, np.sign(scaled) * rounded * scale, values)
    return result.astype(np.float32)


def _with_method(model_bytes: bytes, method: str) -> bytes:
    model = onnx.ModelProto()
    model.ParseFromString(model_bytes)
    _set_method(model, method)
    return model.SerializeToString()


def _set_method(model: onnx.ModelProto, method: str) -> None:
    kept = [(entry.key, entry.value) for entry in model.metadata_props if entry.key != METHOD_KEY]
    del model.metadata_props[:]
    for key, value in [*kept, (METHOD_KEY, method)]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def _load(model_bytes: bytes) -> onnx.ModelProto:
    """Parse without following anything, and refuse external data before a quantization tool could."""
    model = onnx.ModelProto()
    model.ParseFromString(model_bytes)
    reject_external_data(model)
    return model


def _missing_kernel(model_bytes: bytes) -> str | None:
    """The operator ONNX Runtime's CPU provider has no kernel for, or None if the model loads."""
    import re

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        ort.InferenceSession(model_bytes, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as error:
        match = re.search(r"Could not find an implementation for (\w+)\(", str(error))
        if match:
            return match[1]
        raise
    return None


def _closeness(reference_bytes: bytes, variant_bytes: bytes, feeds: Sequence[dict[str, np.ndarray]]) -> float:
    """Worst-item cosine of the variant against the reference over every float output and feed (1.0 = identical)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    providers = ["CPUExecutionProvider"]
    reference = ort.InferenceSession(reference_bytes, sess_options=options, providers=providers)
    variant = ort.InferenceSession(variant_bytes, sess_options=options, providers=providers)
    worst = 1.0
    for feed in feeds:
        for expected, actual in zip(reference.run(None, feed), variant.run(None, feed), strict=True):
            expected, actual = np.asarray(expected), np.asarray(actual)
            if expected.dtype.kind == "f" and expected.size:
                cosine = cosine_per_item(expected, actual)
                worst = min(worst, -1.0 if np.isnan(cosine).any() else float(cosine.min()))
    return worst
