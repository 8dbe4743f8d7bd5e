"""Running an inference model over work items, the same way on the platform (accuracy checks) and in the car.

No Django here: the car imports this. Two kinds of model:
- "text": items are strings; a `tokenizer.json` (Hugging Face `tokenizers` format) turns them into the model's
  integer inputs (`input_ids`, `attention_mask`, `token_type_ids`: whichever the model declares), padded per batch.
- "tensor": items are float32 arrays of the model's one input shape without the batch axis; a batch is stacked.

The result of a run is one float32 array [items, ...] taken from the model's chosen output.
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

TEXT = "text"
TENSOR = "tensor"
MAX_TOKENS = 128


@dataclass(frozen=True)
class ModelSpec:
    """What a runner needs besides the ONNX file: the kind of items, which output to keep, and the tokenizer."""

    kind: str  # TEXT or TENSOR
    output_name: str
    tokenizer_json: str | None = None  # the tokenizer file's text, for TEXT models
    max_tokens: int = MAX_TOKENS


class ModelRunner:
    """One ONNX Runtime session for one model file; `run(items)` returns the chosen output for every item."""

    def __init__(self, model: bytes | str | Path, spec: ModelSpec, *, threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # A car shares its computer with the car: keep to the threads it was given, and be repeatable.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])
        self.spec = spec
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.tokenizer = None
        if spec.kind == TEXT:
            from tokenizers import Tokenizer

            if not spec.tokenizer_json:
                raise ValueError("a text model needs its tokenizer.json")
            self.tokenizer = Tokenizer.from_str(spec.tokenizer_json)
            self.tokenizer.enable_truncation(spec.max_tokens)
            self.tokenizer.enable_padding()

    def feeds(self, items: Sequence[Any]) -> dict[str, np.ndarray]:
        if self.spec.kind == TEXT:
            encodings = self.tokenizer.encode_batch([str(item) for item in items])
            arrays = {
                "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
                "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
            }
            return {name: arrays[name] for name in self.input_names}
        return {self.input_names[0]: np.stack([np.asarray(item, dtype=np.float32) for item in items])}

    def run_batch(self, items: Sequence[Any]) -> np.ndarray:
        (output,) = self.session.run([self.spec.output_name], self.feeds(items))
        return np.asarray(output, dtype=np.float32)

    def run(
        self, items: Sequence[Any], *, batch_size: int = 32, between_batches: Callable[[float], None] | None = None
    ) -> np.ndarray:
        """The chosen output for every item, in `batch_size` batches. `between_batches(seconds)` is called after each
        batch with the seconds it took: it may raise to stop the run (the car leaves, the lease is lost) or sleep."""
        parts = []
        for batch in batches(items, batch_size):
            started = time.perf_counter()
            parts.append(self.run_batch(batch))
            if between_batches is not None:
                between_batches(time.perf_counter() - started)
        return np.concatenate(parts) if parts else np.zeros((0,), dtype=np.float32)


def batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def encode_npy(array: np.ndarray) -> tuple[bytes, str]:
    """Outputs as `.npy` bytes (deterministic: no pickle, fixed dtype) and their sha256 hex."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    data = buffer.getvalue()
    return data, hashlib.sha256(data).hexdigest()


def decode_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)
