"""A trial run of an uploaded model on one item, in a process of its own (started by validation.py, never imported).

Its address space is limited before anything is loaded (argv[1], bytes), so a model that allocates more than it may
fails here, not in the worker. The model's bytes come on stdin; one JSON line on stdout says how far it got:
{"stage": "load" | "run", "error": "..."} when ONNX Runtime refused, {"stage": "ran", "shapes": {output: [dims]}}
(each output's shape for the item) or {"stage": "skipped"} (an input a plain tensor cannot feed) when it did not.
No output at all means the process died. Imports only what a car's runtime does (NumPy, ONNX Runtime), so it starts
in a fraction of a second.
"""

import json
import resource
import sys

DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int16)": "int16",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


def main() -> None:
    limit = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    data = sys.stdin.buffer.read()

    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as error:  # ONNX Runtime raises its own exception types, or MemoryError
        return _say(stage="load", error=str(error) or type(error).__name__)
    feeds = {}
    for value in session.get_inputs():
        if value.type not in DTYPES:
            return _say(stage="skipped")
        # One item: every dimension that is not fixed (the batch, a sequence length) is 1.
        shape = [dim if isinstance(dim, int) and dim > 0 else 1 for dim in value.shape]
        feeds[value.name] = np.zeros(shape, dtype=DTYPES[value.type])
    try:
        results = session.run(None, feeds)
    except Exception as error:
        return _say(stage="run", error=str(error) or type(error).__name__)
    # The shape each output had for the one item: what a symbolic dimension ("Concat461_dim_1") really is.
    names = [value.name for value in session.get_outputs()]
    shapes = {name: list(getattr(result, "shape", ())) for name, result in zip(names, results, strict=True)}
    _say(stage="ran", shapes=shapes)


def _say(**report) -> None:
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
