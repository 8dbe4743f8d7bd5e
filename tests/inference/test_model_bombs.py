"""Models that are small files but ask for terabytes, or more memory than a car has, at run time: refused when checked,
with a reason their owner can act on, by shape inference where it can tell and a bounded trial run where it cannot."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from marketplace.inference.catalogue import build_digits_classifier
from marketplace.inference.validation import ModelRejected, validate_onnx

LIMIT = 100_000_000


def constant_of_shape(length: int) -> bytes:
    """y = x + sum(ones(length)): a 300-byte model whose one ConstantOfShape makes `length` float32 ones."""
    shape = numpy_helper.from_array(np.array([length], dtype=np.int64), "shape")
    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["ones"], value=one, name="fill"),
        helper.make_node("ReduceSum", ["ones"], ["total"], keepdims=1),
        helper.make_node("Add", ["x", "total"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "bomb", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1])], initializer=[shape],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def shape_from_input(extra: int) -> bytes:
    """ConstantOfShape of (input + extra) float32 values: its size depends on a value fed at run time, which shape
    inference cannot know."""
    nodes = [
        helper.make_node("Add", ["n", "extra"], ["shape"]),
        helper.make_node(
            "ConstantOfShape", ["shape"], ["ones"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1])
        ),
        helper.make_node("ReduceSum", ["ones"], ["y"], keepdims=1),
    ]
    graph = helper.make_graph(
        nodes, "late bomb", [helper.make_tensor_value_info("n", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        initializer=[numpy_helper.from_array(np.array([extra], dtype=np.int64), "extra")],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_a_model_that_allocates_4_tib_is_rejected_from_its_shapes_naming_the_node_and_the_limit():
    data = constant_of_shape(2**40)
    assert len(data) < 1000

    with pytest.raises(ModelRejected) as rejected:
        validate_onnx(data, max_bytes=LIMIT, max_peak_bytes=1024**3)

    assert str(rejected.value) == (
        "running one item would allocate about 4.4 TB: the output 'ones' of a ConstantOfShape node has shape "
        "[1099511627776] (float32, 4.4 TB); the limit is 1.1 GB (MAX_MODEL_PEAK_BYTES): export the model with the "
        "sizes it needs"
    )


def test_the_same_model_within_the_limit_is_accepted():
    assert validate_onnx(constant_of_shape(1000), max_bytes=LIMIT).kind == "tensor"


def test_a_model_whose_allocation_depends_on_its_input_is_caught_by_the_bounded_trial():
    # 2^31 + 0 float32 values at run time: 8.6 GB, twice the trial's 4 GiB.
    with pytest.raises(ModelRejected) as rejected:
        validate_onnx(shape_from_input(2**31), max_bytes=LIMIT, trial_memory_bytes=4 * 1024**3)

    assert str(rejected.value) == (
        "a trial run of one item ran out of its 4.3 GB of memory (MODEL_TRIAL_MEMORY_BYTES) in a ConstantOfShape "
        "node: export the model with the sizes it needs"
    )


def test_a_trial_that_outlasts_its_time_is_rejected():
    with pytest.raises(ModelRejected, match=r"did not finish within 0.001 s \(MODEL_TRIAL_SECONDS\)"):
        validate_onnx(build_digits_classifier(), max_bytes=LIMIT, trial_seconds=0.001)


def test_a_trial_that_dies_is_rejected(monkeypatch):
    from marketplace.inference import validation

    # A trial process killed outright (as the kernel's OOM killer would) says nothing on its way out.
    monkeypatch.setattr(validation, "TRIAL_SCRIPT", validation.TRIAL_SCRIPT.with_name("no_such_trial.py"))

    with pytest.raises(ModelRejected, match=r"a trial run of one item died \(exit code 2\) within its 4.3 GB"):
        validate_onnx(build_digits_classifier(), max_bytes=LIMIT)
