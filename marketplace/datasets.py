"""Parsing and checking a customer's dataset against a model's inputs (pure: no Django).

Text models take JSON lines, each a string or an object with a "text" field. Tensor models take a `.npy` array, or
a `.npz` with an `items` array (or a single array), shaped [items, ...the model input without its batch axis].
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np

MAX_TEXT_CHARS = 100_000
MAX_HOLDOUT = 64


class DatasetRejected(ValueError):
    """The dataset cannot be used with this model; the message says why and where."""


@dataclass(frozen=True)
class ParsedDataset:
    items: list[str] | np.ndarray
    count: int


def parse_dataset(data: bytes, *, fmt: str, kind: str, inputs: list[dict[str, Any]]) -> ParsedDataset:
    if not data:
        raise DatasetRejected("the file is empty")
    if kind == "text":
        if fmt != "jsonl":
            raise DatasetRejected("a text model takes JSON lines (.jsonl): one text per line")
        return _parse_jsonl(data)
    if fmt not in ("npy", "npz"):
        raise DatasetRejected("a tensor model takes a NumPy array file (.npy or .npz)")
    return _parse_array(data, fmt=fmt, inputs=inputs)


def _parse_jsonl(data: bytes) -> ParsedDataset:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DatasetRejected(f"not UTF-8 text (byte {error.start})") from None
    items = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            raise DatasetRejected(f"line {number}: not JSON ({error.msg})") from None
        if isinstance(value, dict):
            value = value.get("text")
        if not isinstance(value, str) or not value.strip():
            raise DatasetRejected(f'line {number}: expected a string or an object with a "text" string')
        if len(value) > MAX_TEXT_CHARS:
            raise DatasetRejected(f"line {number}: a text may have at most {MAX_TEXT_CHARS:,} characters")
        items.append(value)
    if not items:
        raise DatasetRejected("no texts found: put one JSON string per line")
    return ParsedDataset(items=items, count=len(items))


def _parse_array(data: bytes, *, fmt: str, inputs: list[dict[str, Any]]) -> ParsedDataset:
    try:
        if fmt == "npy":
            array = np.load(io.BytesIO(data), allow_pickle=False)
        else:
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                names = archive.files
                if not names:
                    raise DatasetRejected("the .npz archive holds no array")
                array = archive["items"] if "items" in names else archive[names[0]]
    except DatasetRejected:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise DatasetRejected(f"not a readable NumPy {fmt} file ({error})") from None
    if not np.issubdtype(array.dtype, np.number):
        raise DatasetRejected(f"the array holds {array.dtype}, not numbers")
    if len(inputs) != 1:
        raise DatasetRejected(f"this model has {len(inputs)} inputs; array datasets feed models with one input")
    expected = inputs[0].get("shape", [])[1:]
    if array.ndim != len(expected) + 1:
        raise DatasetRejected(
            f"items have shape {list(array.shape[1:])} but the model's input "
            f"'{inputs[0]['name']}' takes {_shape_text(expected)} per item"
        )
    for axis, (got, want) in enumerate(zip(array.shape[1:], expected, strict=True), start=1):
        if isinstance(want, int) and want > 0 and got != want:
            raise DatasetRejected(
                f"items have shape {list(array.shape[1:])} but the model's input "
                f"'{inputs[0]['name']}' takes {_shape_text(expected)} per item (axis {axis})"
            )
    if array.shape[0] == 0:
        raise DatasetRejected("the array has no items")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise DatasetRejected("the array holds NaN or infinite values")
    return ParsedDataset(items=array, count=int(array.shape[0]))


def _shape_text(shape: list) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) and d > 0 else "any" for d in shape) + "]"


def holdout_indices(count: int) -> list[int]:
    """The items kept for the accuracy gate: evenly spread, at most MAX_HOLDOUT, deterministic."""
    size = min(MAX_HOLDOUT, max(1, count // 10 if count >= 80 else count))
    step = count / size
    return sorted({int(i * step) for i in range(size)})
