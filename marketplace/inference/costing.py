"""What an item of work costs, in compute-hours, and which precision a job runs at when the customer says "auto".

No Django. Customers are billed for work done, not wall time: each (model, precision) gets a cost in CH per item when
the model is registered, computed here from the model's multiply-accumulates (MACs).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import onnx

from fleet.agent.precisions import FP8, FP16, FP32, INT8
from marketplace.inference.accuracy import passes

# One compute-hour (CH) is one hour of 100 dense INT8 TOPS (see PRODUCT.md, "Units").
CH_OPS_PER_SECOND = 100e12
SECONDS_PER_HOUR = 3600
# The share of a chip's peak that real inference reaches (memory traffic, small matrices, non-matmul operators).
UTILISATION = 0.3
# Per-item runtime overhead (I/O, tokenizing, the runtime's own work) on a 100-TOPS car, in seconds.
PER_ITEM_OVERHEAD_S = 50e-6

# Cheapest first (the pools' default reserves never fall along it): a job set to "auto" runs at the first precision
# here that the pool offers and the gate accepts. A policy of its own, not the pools' order (scarcest first,
# fleet.agent.precisions.PRECISIONS), so it lists the names in the order it needs.
AUTO_ORDER = (INT8, FP8, FP16, FP32)

# Operator -> positions of (left operand, right operand) for products, of the weight for convolutions. The integer
# forms are the int8 variants' (dynamic: MatMulInteger, ConvInteger; com.microsoft fused forms; QOperator format),
# so a variant counts the same MACs as its FP32 model.
PRODUCTS = {
    "MatMul": (0, 1),
    "MatMulInteger": (0, 1),
    "QLinearMatMul": (0, 3),
    "DynamicQuantizeMatMul": (0, 1),
    "MatMulIntegerToFloat": (0, 1),
    "FusedMatMul": (0, 1),
}
CONVOLUTIONS = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3}
DOMAINS = ("", "ai.onnx", "com.microsoft")


def macs_per_item(model_bytes: bytes, *, example_feeds: Mapping[str, np.ndarray]) -> int:
    """Multiply-accumulates per item of the model's MatMul, Gemm, Conv and Einsum operators (the main graph's),
    and of their integer forms in int8 variants.

    Shapes are the ones actually seen: the model runs once in ONNX Runtime on `example_feeds` (one batch, item axis
    first) with every operand of those operators fetched as an extra output. That follows dynamic shapes (sequence
    length, reshapes computed in the graph) that static shape inference often cannot. Elementwise operators, norms and
    softmax are small next to the matrix products and are not counted; neither are If/Loop/Scan bodies. Give feeds
    that look like real work: for a text model, MACs grow with the padded sequence length.

    The MACs, and so the CH per item, of a model are the same at every precision: register them from the FP32 model
    (its variants count the same, attention products that stay float included).
    """
    import onnxruntime as ort

    model = onnx.load_from_string(model_bytes)
    graph = model.graph
    counted = {*PRODUCTS, *CONVOLUTIONS, "Gemm", "Einsum"}
    nodes = [node for node in graph.node if node.op_type in counted and node.domain in DOMAINS]
    if not example_feeds:
        raise ValueError("example_feeds is empty: give one batch of the model's inputs")
    feeds = {name: np.asarray(array) for name, array in example_feeds.items()}
    batch = len(next(iter(feeds.values())))
    if batch == 0:
        raise ValueError("example_feeds has no items")

    shapes: dict[str, tuple[int, ...]] = {name: array.shape for name, array in feeds.items()}
    shapes.update({tensor.name: tuple(tensor.dims) for tensor in graph.initializer})
    wanted = {name for node in nodes for name in _operands(node) if name and name not in shapes}
    declared_outputs = {output.name for output in graph.output}
    for name in sorted(wanted - declared_outputs):
        graph.output.append(onnx.ValueInfoProto(name=name))

    if wanted:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        # No fusions: the operands must stay the tensors named in the graph.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(
            model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
        )
        names = sorted(wanted)
        for name, value in zip(names, session.run(names, feeds), strict=True):
            shapes[name] = np.shape(value)

    total = sum(_node_macs(node, shapes) for node in nodes)
    return round(total / batch)


def ch_per_item(macs: int) -> float:
    """Compute-hours per item: 2 × MACs operations at 100 TOPS × UTILISATION, in hours, and never less than
    PER_ITEM_OVERHEAD_S of a 100-TOPS car's time.

    One CH is one hour of 100 dense INT8 TOPS. The figure is the same for every precision of a model: a car's CH rate
    at a precision (int8_tops × factor[p] / 100 per hour) already includes that precision's throughput factor, so a
    slower precision delivers fewer CH per hour rather than costing more CH per item.

    The floor is why a tiny model is not free: reading, tokenizing, running and writing one item costs the car tens of
    microseconds whatever the model's arithmetic (the digits classifier's 4,736 MACs alone would be 9e-14 CH).
    """
    compute = 2 * macs / (CH_OPS_PER_SECOND * SECONDS_PER_HOUR * UTILISATION)
    return max(compute, PER_ITEM_OVERHEAD_S / SECONDS_PER_HOUR)


def pick_auto(
    variants: Mapping[str, Mapping[str, float]], *, metric: str, tolerance: float, available: set[str]
) -> str | None:
    """The first precision of AUTO_ORDER that is `available` and whose measured metrics (against FP32) pass the gate.

    FP32 is the reference and always passes; a precision without metrics does not. None when nothing qualifies.
    """
    for precision in AUTO_ORDER:
        if precision not in available:
            continue
        if precision == "fp32":
            return precision
        metrics = variants.get(precision)
        if metrics is not None and passes(dict(metrics), metric=metric, tolerance=tolerance):
            return precision
    return None


def _operands(node: onnx.NodeProto) -> list[str]:
    if node.op_type in PRODUCTS:
        left, right = PRODUCTS[node.op_type]
        return [node.input[left], node.input[right]]
    if node.op_type in CONVOLUTIONS:
        return [node.input[CONVOLUTIONS[node.op_type]], node.output[0]]
    if node.op_type == "Gemm":
        return list(node.input[:2])
    return list(node.input)  # Einsum


def _node_macs(node: onnx.NodeProto, shapes: Mapping[str, tuple[int, ...]]) -> int:
    operands = [shapes.get(name) for name in _operands(node)]
    if any(shape is None for shape in operands):
        return 0
    if node.op_type in PRODUCTS:
        if node.op_type == "FusedMatMul":
            return _fused_matmul_macs(node, *operands)
        return _matmul_macs(*operands)
    if node.op_type == "Gemm":
        a, b = operands
        attributes = {attribute.name: onnx.helper.get_attribute_value(attribute) for attribute in node.attribute}
        m, k = (a[1], a[0]) if attributes.get("transA", 0) else (a[0], a[1])
        n = b[0] if attributes.get("transB", 0) else b[1]
        return m * k * n
    if node.op_type in CONVOLUTIONS:
        weight, output = operands
        # Each output element is a dot product over (input channels per group × kernel positions).
        return math.prod(output) * math.prod(weight[1:])
    if node.op_type == "Einsum":
        attributes = {attribute.name: onnx.helper.get_attribute_value(attribute) for attribute in node.attribute}
        equation = attributes.get("equation", b"")
        return _einsum_macs(equation.decode() if isinstance(equation, bytes) else equation, operands)
    return 0


def _matmul_macs(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    a = (1, *a) if len(a) == 1 else a
    b = (*b, 1) if len(b) == 1 else b
    batch = np.broadcast_shapes(tuple(a[:-2]), tuple(b[:-2]))
    return math.prod(batch) * a[-2] * a[-1] * b[-1]


def _fused_matmul_macs(node: onnx.NodeProto, a: tuple[int, ...], b: tuple[int, ...]) -> int:
    attributes = {attribute.name: onnx.helper.get_attribute_value(attribute) for attribute in node.attribute}
    if attributes.get("transA", 0) and len(a) >= 2:
        a = (*a[:-2], a[-1], a[-2])
    if attributes.get("transB", 0) and len(b) >= 2:
        b = (*b[:-2], b[-1], b[-2])
    return _matmul_macs(a, b)


def _einsum_macs(equation: str, shapes: list[tuple[int, ...]]) -> int:
    """The naive cost of a product of two or more operands: the product of every index's size."""
    terms = equation.replace(" ", "").split("->")[0].split(",")
    if len(terms) < 2 or len(terms) != len(shapes):
        return 0
    sizes: dict[str, int] = {}
    for term, shape in zip(terms, shapes, strict=True):
        if "..." in term:
            head, tail = term.split("...")
            hidden = len(shape) - len(head) - len(tail)
            # Broadcast dimensions, aligned from the right, get labels that no equation letter can clash with.
            term_labels = list(head) + [f"…{hidden - i}" for i in range(hidden)] + list(tail)
        else:
            term_labels = list(term)
        if len(term_labels) != len(shape):
            return 0
        for label, size in zip(term_labels, shape, strict=True):
            sizes[label] = max(sizes.get(label, 1), int(size))
    return math.prod(sizes.values())
