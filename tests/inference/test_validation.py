"""Uploaded ONNX files: every kind of bad upload is refused with a message the customer can act on."""

import hashlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import set_external_data

from marketplace.inference.catalogue import DIGITS_OUTPUT, build_digits_classifier, minilm_paths
from marketplace.inference.validation import ModelRejected, validate_onnx

LIMIT = 100_000_000
TRAVERSAL = "../../etc/passwd"
NOT_ONNX = "not an ONNX model: the file is truncated or not a protobuf"


def _model(nodes, *, inputs=None, outputs=None, initializers=(), sparse=(), opsets=(("", 17),)) -> onnx.ModelProto:
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])] if inputs is None else inputs
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])] if outputs is None else outputs
    graph = helper.make_graph(
        nodes, "upload", inputs, outputs, initializer=list(initializers), sparse_initializer=list(sparse)
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid(domain, v) for domain, v in opsets])


def _external(name: str, location: str = TRAVERSAL) -> TensorProto:
    tensor = numpy_helper.from_array(np.ones(4, dtype=np.float32), name)
    set_external_data(tensor, location=location)
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    return tensor


def _reject(model: onnx.ModelProto | bytes, *, max_bytes: int = LIMIT) -> str:
    data = model if isinstance(model, bytes) else model.SerializeToString()
    with pytest.raises(ModelRejected) as rejected:
        validate_onnx(data, max_bytes=max_bytes)
    return str(rejected.value)


@pytest.fixture
def refuse_deep_checks(monkeypatch):
    """An external-data model must be refused before the checker or ONNX Runtime could open the path."""
    import onnxruntime

    def must_not_run(*args, **kwargs):
        raise AssertionError("an external-data model reached the checker or ONNX Runtime")

    monkeypatch.setattr(onnx.checker, "check_model", must_not_run)
    monkeypatch.setattr(onnxruntime, "InferenceSession", must_not_run)


def test_it_accepts_a_tensor_model_and_describes_it():
    data = build_digits_classifier()

    info = validate_onnx(data, max_bytes=LIMIT)

    assert info.kind == "tensor"
    assert info.opset == 17
    assert info.inputs == [{"name": "pixels", "dtype": "float32", "shape": ["?", 64]}]
    # Each output as declared, and as it came out of the trial run of one item.
    assert {"name": DIGITS_OUTPUT, "dtype": "float32", "shape": ["?", 10], "run_shape": [1, 10]} in info.outputs
    assert info.size_bytes == len(data)
    assert info.sha256 == hashlib.sha256(data).hexdigest()


def test_it_accepts_a_text_model_and_guesses_its_kind():
    onnx_path, _ = minilm_paths()

    info = validate_onnx(onnx_path.read_bytes(), max_bytes=LIMIT)

    assert info.kind == "text"
    assert [(i["name"], i["dtype"], i["shape"]) for i in info.inputs] == [
        ("input_ids", "int64", ["batch_size", "sequence_length"]),
        ("attention_mask", "int64", ["batch_size", "sequence_length"]),
    ]
    # The pooled embedding's size is symbolic in the graph ("Concat461_dim_1"); the trial run of one item says 384.
    pooled = next(output for output in info.outputs if output["name"] == "461")
    assert pooled["shape"] == ["Concat461_dim_0", "Concat461_dim_1"] and pooled["run_shape"] == [1, 384]


def test_it_rejects_an_oversized_file_before_parsing_it():
    message = _reject(b"\x00" * 101, max_bytes=100)

    assert "101 bytes, over the 100-byte upload limit" in message


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10\x00\x00\x00\x10\x08\x06", id="png"),
        pytest.param(b"id,text\n1,hello world\n2,parked cars\n", id="csv"),
        pytest.param(b'{"model": "resnet"}', id="json"),
        pytest.param(b"", id="empty"),
    ],
)
def test_it_rejects_files_that_are_not_onnx(data):
    assert _reject(data) == NOT_ONNX


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.999])
def test_it_rejects_a_truncated_model(keep):
    data = build_digits_classifier()

    assert _reject(data[: int(len(data) * keep)]) == NOT_ONNX


def test_it_rejects_an_initializer_with_external_data_without_opening_it(refuse_deep_checks):
    model = _model([helper.make_node("Add", ["x", "w"], ["y"])], initializers=[_external("w")])

    message = _reject(model)

    assert f"tensor 'w' (initializer in graph) points to external data '{TRAVERSAL}'" in message
    assert "upload a self-contained model (onnx.save with save_as_external_data=False)" in message


def test_it_rejects_a_constant_with_external_data(refuse_deep_checks):
    constant = helper.make_node("Constant", [], ["w"], value=_external("c"))
    model = _model([constant, helper.make_node("Add", ["x", "w"], ["y"])])

    assert f"tensor 'c' (Constant in graph) points to external data '{TRAVERSAL}'" in _reject(model)


def test_it_rejects_a_sparse_initializer_with_external_data(refuse_deep_checks):
    indices = numpy_helper.from_array(np.array([0], dtype=np.int64), "w_indices")
    sparse = helper.make_sparse_tensor(_external("w_values"), indices, [4])
    model = _model([helper.make_node("Add", ["x", "w_values"], ["y"])], sparse=[sparse])

    assert "tensor 'w_values' (sparse initializer in graph)" in _reject(model)


def test_it_rejects_external_data_inside_an_if_branch(refuse_deep_checks):
    def branch(name, initializers=()):
        out = helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [4])
        node = helper.make_node("Identity", [f"{name}_w"], [f"{name}_out"])
        return helper.make_graph([node], name, [], [out], initializer=list(initializers))

    plain = numpy_helper.from_array(np.zeros(4, dtype=np.float32), "then_w")
    choose = helper.make_node(
        "If", ["cond"], ["y"], then_branch=branch("then", [plain]), else_branch=branch("else", [_external("else_w")])
    )
    model = _model(
        [choose],
        inputs=[helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
    )

    message = _reject(model)

    assert "tensor 'else_w' (initializer in subgraph 'else_branch' of If node ''" in message
    assert TRAVERSAL in message


def test_it_rejects_external_data_inside_a_loop_body(refuse_deep_checks):
    body_inputs = [
        helper.make_tensor_value_info("i", TensorProto.INT64, []),
        helper.make_tensor_value_info("keep_going", TensorProto.BOOL, []),
        helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [4]),
    ]
    body_outputs = [
        helper.make_tensor_value_info("keep_going_out", TensorProto.BOOL, []),
        helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [4]),
    ]
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["keep_going"], ["keep_going_out"]),
            helper.make_node("Constant", [], ["step"], value=_external("step", "/etc/shadow")),
            helper.make_node("Add", ["acc_in", "step"], ["acc_out"]),
        ],
        "body",
        body_inputs,
        body_outputs,
    )
    loop = helper.make_node("Loop", ["trips", "", "x"], ["y"], body=body, name="accumulate")
    model = _model(
        [loop],
        inputs=[
            helper.make_tensor_value_info("trips", TensorProto.INT64, []),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [4]),
        ],
        outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
    )

    message = _reject(model)

    assert "tensor 'step'" in message
    assert "subgraph 'body' of Loop node 'accumulate'" in message
    assert "'/etc/shadow'" in message


def test_it_rejects_a_model_without_inputs():
    constant = helper.make_node("Constant", [], ["y"], value=numpy_helper.from_array(np.ones((1, 4), np.float32)))

    assert "declares no inputs" in _reject(_model([constant], inputs=[]))


def test_weights_listed_as_inputs_are_not_inputs():
    weight = numpy_helper.from_array(np.ones((1, 4), np.float32), "w")
    model = _model(
        [helper.make_node("Identity", ["w"], ["y"])],
        inputs=[helper.make_tensor_value_info("w", TensorProto.FLOAT, [1, 4])],
        initializers=[weight],
    )

    assert "declares no inputs" in _reject(model)


def test_it_rejects_a_model_without_outputs():
    assert "declares no outputs" in _reject(_model([helper.make_node("Relu", ["x"], ["y"])], outputs=[]))


def test_it_rejects_a_model_the_checker_refuses():
    # An output nothing produces.
    model = _model([helper.make_node("Relu", ["x"], ["z"])])

    message = _reject(model)

    assert message.startswith("the model is not valid ONNX: ")


def test_it_rejects_mismatched_types_found_by_the_full_check():
    model = _model(
        [helper.make_node("Add", ["x", "k"], ["y"])],
        inputs=[
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4]),
            helper.make_tensor_value_info("k", TensorProto.INT64, ["n", 4]),
        ],
    )

    assert _reject(model).startswith("the model is not valid ONNX: ")


def test_it_rejects_an_unknown_standard_operator():
    message = _reject(_model([helper.make_node("FooOp", ["x"], ["y"])]))

    assert "FooOp" in message


def test_it_rejects_a_custom_operator_onnx_runtime_cannot_load():
    model = _model(
        [helper.make_node("FooOp", ["x"], ["y"], domain="com.example")], opsets=[("", 17), ("com.example", 1)]
    )

    message = _reject(model)

    assert "operator 'FooOp' in domain 'com.example' is not supported by ONNX Runtime's CPU provider" in message


def test_it_rejects_an_operator_the_cpu_provider_has_no_kernel_for():
    matrix = [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, [4, 4])]
    model = _model(
        [helper.make_node("MatMul", ["x", "x"], ["y"], name="scores")],
        inputs=matrix,
        outputs=[helper.make_tensor_value_info("y", TensorProto.BFLOAT16, [4, 4])],
    )

    message = _reject(model)

    assert "operator 'MatMul' (domain 'ai.onnx', version 13) has no ONNX Runtime CPU kernel" in message
    assert "[ONNXRuntimeError]" not in message
