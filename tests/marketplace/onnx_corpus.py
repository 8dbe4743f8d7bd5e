"""Bad (and good) ONNX files for upload tests, built with onnx.helper."""

import onnx
from onnx import TensorProto, helper


def tiny_model(*, op: str = "Relu", domain: str = "", external: str | None = None) -> bytes:
    """x[N,4] -> op(x @ W) -> y[N,4]; with `external`, W's data 'lives' in that file."""
    weight = helper.make_tensor("W", TensorProto.FLOAT, [4, 4], [0.1] * 16)
    if external is not None:
        weight = onnx.TensorProto()
        weight.name = "W"
        weight.data_type = TensorProto.FLOAT
        weight.dims.extend([4, 4])
        weight.data_location = TensorProto.EXTERNAL
        entry = weight.external_data.add()
        entry.key, entry.value = "location", external
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node(op, ["h"], ["y"], domain=domain)]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [weight],
    )
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    return model.SerializeToString()
