"""Checking a customer's uploaded ONNX file before anything else touches it.

No Django here; run it in a worker, not in the request (the full check and loading into ONNX Runtime take seconds for
a large model). The bytes are parsed as a protobuf and nothing else: no path inside the file is ever opened, which is
why any tensor stored as external data is refused outright (onnx has had external-data path traversal CVEs:
CVE-2022-25882, CVE-2024-27318, CVE-2025-51480).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from onnx import AttributeProto, GraphProto, ModelProto, TensorProto

from core.units import human_bytes

TEXT = "text"
TENSOR = "tensor"
TEXT_INPUTS = frozenset({"input_ids", "attention_mask", "token_type_ids"})
SELF_CONTAINED_HINT = "upload a self-contained model (onnx.save with save_as_external_data=False)"
# The defaults of the settings MAX_MODEL_PEAK_BYTES, MODEL_TRIAL_MEMORY_BYTES and MODEL_TRIAL_SECONDS.
MAX_PEAK_BYTES = 1024**3
TRIAL_MEMORY_BYTES = 4 * 1024**3
TRIAL_SECONDS = 60.0
TRIAL_SCRIPT = Path(__file__).with_name("trial.py")
OUT_OF_MEMORY = re.compile(r"alloc|MemoryError|out of memory", re.IGNORECASE)
NODE_RUNNING = re.compile(r"while running (?P<op>\w+) node")


class ModelRejected(ValueError):
    """An uploaded inference model that the platform will not run; the message tells the customer what to fix."""


@dataclass(frozen=True)
class ModelInfo:
    """What an accepted model declares. Inputs and outputs: [{name, dtype, shape}], dtype a NumPy name ("float32",
    "int64"), shape a list of int (fixed) or str (symbolic: "batch_size", "?" when unnamed), None when the rank is
    unknown. Outputs also have `run_shape` where the trial ran one item: the shape they had then (e.g. [1, 384])."""

    opset: int
    inputs: list[dict] = field(hash=False)
    outputs: list[dict] = field(hash=False)
    size_bytes: int
    sha256: str
    kind: str  # "text" (token ids in) or "tensor"


def validate_onnx(
    data: bytes,
    *,
    max_bytes: int,
    max_peak_bytes: int = MAX_PEAK_BYTES,
    trial_memory_bytes: int = TRIAL_MEMORY_BYTES,
    trial_seconds: float = TRIAL_SECONDS,
) -> ModelInfo:
    """Accept an uploaded ONNX model or raise `ModelRejected` with a message the customer can act on.

    Checks, cheapest first: size (bytes, before parsing), protobuf parse, external data anywhere (main graph,
    Constant and other attribute tensors, sparse initializers, If/Loop/Scan subgraphs, functions, training graphs),
    declared inputs and outputs, `onnx.checker.check_model(full_check=True)`, the largest tensor shape inference
    finds for one item (at most `max_peak_bytes`), and a trial: loading into ONNX Runtime's CPU provider (what cars
    run) and running one item of zeros, in a process of its own limited to `trial_memory_bytes` of address space and
    `trial_seconds` (seconds). A small file can ask for terabytes at run time (ConstantOfShape of 2^40): it is
    refused here, not by the worker or the cars running out of memory.
    """
    if len(data) > max_bytes:
        raise ModelRejected(
            f"the model is {len(data):,} bytes, over the {max_bytes:,}-byte upload limit: upload a smaller FP32 model"
        )
    model = _parse(data)
    _reject_external_data(model)
    inputs = _graph_inputs(model.graph)
    if not inputs:
        raise ModelRejected("the model declares no inputs: export it with at least one graph input")
    if not model.graph.output:
        raise ModelRejected("the model declares no outputs: export it with at least one graph output")
    _check(model)
    _check_peak(model, max_bytes=max_peak_bytes)
    ran = _trial_run(data, model, memory_bytes=trial_memory_bytes, seconds=trial_seconds)
    input_info = [_value_info(value) for value in inputs]
    outputs = [_value_info(value) for value in model.graph.output]
    for output in outputs:
        if output["name"] in ran:
            output["run_shape"] = ran[output["name"]]
    return ModelInfo(
        opset=_default_opset(model),
        inputs=input_info,
        outputs=outputs,
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        kind=guess_kind(input_info),
    )


def guess_kind(inputs: list[dict]) -> str:
    """ "text" when the inputs are a tokenizer's (input_ids, attention_mask and optionally token_type_ids, all int64),
    else "tensor"."""
    names = {value["name"] for value in inputs}
    if {"input_ids", "attention_mask"} <= names <= TEXT_INPUTS and all(v["dtype"] == "int64" for v in inputs):
        return TEXT
    return TENSOR


def model_kind(model: ModelProto) -> str:
    """`guess_kind` for a parsed model (used when choosing how to quantize it)."""
    return guess_kind([_value_info(value) for value in _graph_inputs(model.graph)])


def _parse(data: bytes) -> ModelProto:
    model = ModelProto()
    try:
        # A plain protobuf parse: unlike onnx.load(path), it never looks at external data files.
        model.ParseFromString(data)
    except Exception as error:  # google.protobuf.message.DecodeError, or RuntimeError from some backends
        raise ModelRejected("not an ONNX model: the file is truncated or not a protobuf") from error
    if not model.HasField("graph") or not model.ir_version:
        raise ModelRejected("not an ONNX model: the file is truncated or not a protobuf")
    return model


def _reject_external_data(model: ModelProto) -> None:
    for tensor, where in _all_tensors(model):
        if tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data):
            location = next((entry.value for entry in tensor.external_data if entry.key == "location"), "")
            raise ModelRejected(
                f"tensor {tensor.name or '(unnamed)'!r} ({where}) points to external data {location[:200]!r}: "
                f"{SELF_CONTAINED_HINT}"
            )


def reject_external_data(model: ModelProto) -> None:
    """Raise `ModelRejected` if any tensor anywhere in the model is stored as external data (see `validate_onnx`)."""
    _reject_external_data(model)


def _all_tensors(model: ModelProto) -> Iterator[tuple[TensorProto, str]]:
    yield from _graph_tensors(model.graph, "graph")
    for info in model.training_info:  # ONNX Runtime ignores training graphs; a later tool might not
        yield from _graph_tensors(info.initialization, "training initialization graph")
        yield from _graph_tensors(info.algorithm, "training algorithm graph")
    for function in model.functions:
        for node in function.node:
            yield from _node_tensors(node, f"function {function.name!r}")


def _graph_tensors(graph: GraphProto, where: str) -> Iterator[tuple[TensorProto, str]]:
    for tensor in graph.initializer:
        yield tensor, f"initializer in {where}"
    for sparse in graph.sparse_initializer:
        yield sparse.values, f"sparse initializer in {where}"
        yield sparse.indices, f"sparse initializer in {where}"
    for node in graph.node:
        yield from _node_tensors(node, where)


def _node_tensors(node: onnx.NodeProto, where: str) -> Iterator[tuple[TensorProto, str]]:
    here = f"attribute of {node.op_type} node {node.name!r} in {where}" if node.name else f"{node.op_type} in {where}"
    for attribute in node.attribute:
        if attribute.type == AttributeProto.TENSOR or attribute.HasField("t"):
            yield attribute.t, here
        for tensor in attribute.tensors:
            yield tensor, here
        if attribute.HasField("sparse_tensor"):
            yield attribute.sparse_tensor.values, here
            yield attribute.sparse_tensor.indices, here
        for sparse in attribute.sparse_tensors:
            yield sparse.values, here
            yield sparse.indices, here
        subgraphs = ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs)
        for subgraph in subgraphs:
            yield from _graph_tensors(subgraph, f"subgraph {attribute.name!r} of {node.op_type} node {node.name!r}")


def _graph_inputs(graph: GraphProto) -> list[onnx.ValueInfoProto]:
    # Older exports also list initializers (weights) as graph inputs; those are not inputs a customer feeds.
    weights = {tensor.name for tensor in graph.initializer} | {s.values.name for s in graph.sparse_initializer}
    return [value for value in graph.input if value.name not in weights]


def _check(model: ModelProto) -> None:
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise ModelRejected(f"the model is not valid ONNX: {_first_line(error)}") from error
    except Exception as error:  # the checker raises plain errors for some malformed protos
        raise ModelRejected(f"the model is not valid ONNX: {_first_line(error)}") from error


NOT_REGISTERED = re.compile(r"(?:(?P<domain>[\w.]+):)?(?P<op>\w+)\(-?\d+\) is not a registered function/op")
NO_KERNEL = re.compile(
    r"Could not find an implementation for (?P<op>\w+)\((?P<version>\d+)\) node with name '(?P<n>.*?)'"
)
NO_SCHEMA = re.compile(r"No Op registered for (?P<op>\w+) with domain_version of (?P<version>\d+)")


def _check_peak(model: ModelProto, *, max_bytes: int) -> None:
    """Refuse a model whose largest tensor for one item, as far as ONNX shape inference can tell with every symbolic
    dimension taken as 1, plus its weights, passes `max_bytes`. Tensors whose size depends on input values stay
    unknown here; the trial run catches those."""
    largest = _largest_tensor(model)
    if largest is None:
        return
    size, name, dims, dtype, op_type = largest
    weights = sum(_tensor_bytes(tensor) for tensor in model.graph.initializer)
    if size + weights > max_bytes:
        made_by = f"the output {name!r} of a {op_type} node" if op_type else f"the tensor {name!r}"
        raise ModelRejected(
            f"running one item would allocate about {human_bytes(size + weights)}: {made_by} has shape {dims} "
            f"({dtype}, {human_bytes(size)}); the limit is {human_bytes(max_bytes)} (MAX_MODEL_PEAK_BYTES): export "
            "the model with the sizes it needs"
        )


def _largest_tensor(model: ModelProto) -> tuple[int, str, list[int], str, str] | None:
    """(bytes, name, shape, dtype, producing operator) of the largest tensor of fixed shape, or None."""
    one_item = ModelProto()
    one_item.CopyFrom(model)
    # Weights need only their shapes here: as graph inputs they are not copied through shape inference (seconds for a
    # large model). Small tensors stay, as their values may be shapes (Reshape's, ConstantOfShape's).
    weights = [tensor for tensor in one_item.graph.initializer if math.prod(tensor.dims) > 1024]
    for tensor in weights:
        one_item.graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims))
        one_item.graph.initializer.remove(tensor)
    for value in one_item.graph.input:
        for dim in value.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.dim_value = 1
    try:
        inferred = onnx.shape_inference.infer_shapes(one_item, data_prop=True)
    except Exception:  # a model the checker passed but inference trips on: the trial run still bounds it
        return None
    producers = {output: node.op_type for node in _all_nodes(inferred.graph) for output in node.output}
    largest = None
    for graph in _all_graphs(inferred.graph):
        for value in [*graph.value_info, *graph.output]:
            tensor_type = value.type.tensor_type
            dims = [dim.dim_value if dim.HasField("dim_value") else None for dim in tensor_type.shape.dim]
            if not value.type.HasField("tensor_type") or not tensor_type.HasField("shape") or None in dims:
                continue
            try:
                itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).itemsize
            except (KeyError, ValueError, TypeError):
                continue
            size = math.prod(dims) * itemsize
            if largest is None or size > largest[0]:
                largest = (size, value.name, dims, _dtype_name(tensor_type.elem_type), producers.get(value.name, ""))
    return largest


def _all_graphs(graph: GraphProto) -> Iterator[GraphProto]:
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            for subgraph in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                yield from _all_graphs(subgraph)


def _tensor_bytes(tensor: TensorProto) -> int:
    try:
        return math.prod(tensor.dims) * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, ValueError, TypeError):
        return 0


def _trial_run(data: bytes, model: ModelProto, *, memory_bytes: int, seconds: float) -> dict[str, list[int]]:
    """Load the model in ONNX Runtime and run one item of zeros, in a child process limited to `memory_bytes` of
    address space (RLIMIT_AS) and `seconds`: the worker never loads a model that could exhaust its memory. Returns
    each output's shape for that item ({} when the trial could not run it)."""
    try:
        done = subprocess.run(  # noqa: S603 - our own script, with this interpreter
            [sys.executable, str(TRIAL_SCRIPT), str(memory_bytes)],
            input=data, capture_output=True, timeout=seconds, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise ModelRejected(
            f"a trial run of one item did not finish within {seconds:g} s (MODEL_TRIAL_SECONDS): export a model that "
            "runs an item in less"
        ) from None
    report = _trial_report(done.stdout)
    limit = human_bytes(memory_bytes)
    if report is None:
        how = f"killed by signal {-done.returncode}" if done.returncode < 0 else f"exit code {done.returncode}"
        raise ModelRejected(
            f"a trial run of one item died ({how}) within its {limit} of memory (MODEL_TRIAL_MEMORY_BYTES): the model "
            "needs more memory than the cars can give it"
        )
    if report["stage"] == "load":
        raise ModelRejected(_runtime_message(report["error"], model))
    if report["stage"] == "run" and OUT_OF_MEMORY.search(report["error"]):
        node = NODE_RUNNING.search(report["error"])
        raise ModelRejected(
            f"a trial run of one item ran out of its {limit} of memory (MODEL_TRIAL_MEMORY_BYTES)"
            + (f" in a {node['op']} node" if node else "")
            + ": export the model with the sizes it needs"
        )
    # Any other failure on an item of zeros (an index out of range, say) is no proof the model is bad: its own
    # items are run when its variants are built, and a failure there is reported on the variant.
    shapes = report.get("shapes") if report["stage"] == "ran" else None
    return shapes if isinstance(shapes, dict) else {}


def _trial_report(stdout: bytes) -> dict | None:
    for line in reversed(stdout.decode("utf-8", "replace").splitlines()):
        try:
            report = json.loads(line)
        except ValueError:
            continue
        if isinstance(report, dict) and "stage" in report:
            return report
    return None


def _runtime_message(text: str, model: ModelProto) -> str:
    """Turn an ONNX Runtime load error into a sentence naming the operator and its domain where they can be parsed."""
    if match := NOT_REGISTERED.search(text):
        domain = match["domain"] or _domain_of(model, match["op"])
        return (
            f"operator {match['op']!r} in domain {_domain_name(domain)!r} is not supported by ONNX Runtime's CPU "
            "provider, which the cars run: export the model with standard ONNX operators"
        )
    if match := NO_KERNEL.search(text):
        domain = _domain_of(model, match["op"], node_name=match["n"])
        return (
            f"operator {match['op']!r} (domain {_domain_name(domain)!r}, version {match['version']}) has no ONNX "
            "Runtime CPU kernel for the tensor types it is used with: export it with float32 (or int8/float16) "
            "tensors and standard ONNX operators"
        )
    if match := NO_SCHEMA.search(text):
        return (
            f"operator {match['op']!r} does not exist in ONNX opset {match['version']}: export the model with "
            "standard ONNX operators"
        )
    return f"ONNX Runtime's CPU provider cannot load the model: {_first_line(text)}"


def _domain_of(model: ModelProto, op_type: str, *, node_name: str | None = None) -> str:
    nodes = [node for node in _all_nodes(model.graph) if node.op_type == op_type]
    named = [node for node in nodes if node_name is not None and node.name == node_name]
    return (named or nodes)[0].domain if (named or nodes) else ""


def _all_nodes(graph: GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            for subgraph in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                yield from _all_nodes(subgraph)


def _domain_name(domain: str) -> str:
    return domain or "ai.onnx"


def _first_line(error: object) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    # ORT prefixes its errors with "[ONNXRuntimeError] : 1 : FAIL : "; the customer needs only the reason.
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    return text[:300]


def _default_opset(model: ModelProto) -> int:
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            return int(opset.version)
    return 0


def _value_info(value: onnx.ValueInfoProto) -> dict:
    value_type = value.type
    if value_type.HasField("tensor_type"):
        tensor_type = value_type.tensor_type
        dtype = _dtype_name(tensor_type.elem_type)
        shape = None
        if tensor_type.HasField("shape"):
            shape = [
                dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or "?") for dim in tensor_type.shape.dim
            ]
        return {"name": value.name, "dtype": dtype, "shape": shape}
    # Sequences, maps and optionals (e.g. scikit-learn's ZipMap output): name the container.
    return {"name": value.name, "dtype": value_type.WhichOneof("value") or "undefined", "shape": None}


def _dtype_name(elem_type: int) -> str:
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name
    except (KeyError, ValueError, TypeError):
        return onnx.TensorProto.DataType.Name(elem_type).lower() if elem_type else "undefined"
