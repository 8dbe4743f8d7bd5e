"""Parsing and checking a customer's dataset against a model's inputs (pure: no Django).

Text models take JSON lines, each a string or an object with a "text" field. Tensor models take a `.npy` array, or
a `.npz` with an `items` array (or a single array), shaped [items, ...the model input without its batch axis].

A small file can stand for a huge dataset: a 1 MB `.npz` of zeros inflates to gigabytes. So the caps
(`DatasetLimits`: items, and bytes once in memory) are checked from what the file declares, the `.npy` header and
the zip directory, before anything is inflated; the data are then read in bounded chunks, never more than the header
promised. `check_dataset` (the web request) never holds more than one chunk; `parse_dataset` (the workers) holds the
items it returns.
"""

from __future__ import annotations

import io
import json
import math
import re
import struct
import sys
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np

from core.units import human_bytes

MAX_TEXT_CHARS = 100_000
MAX_HOLDOUT = 64
# Arrays are read, converted and checked this many bytes at a time (the most check_dataset holds of them).
CHUNK_BYTES = 4 * 1024 * 1024
# A .npz holds one array, perhaps a few: a zip directory of thousands of entries would cost memory before any check.
MAX_NPZ_MEMBERS = 64
MAX_ZIP_DIRECTORY_BYTES = 1024 * 1024
# NumPy's own bound on a .npy header (numpy.lib.format refuses larger ones as unsafe).
MAX_NPY_HEADER_BYTES = 10_000
_SURROGATE = re.compile("[\ud800-\udfff]")


class DatasetRejected(ValueError):
    """The dataset cannot be used with this model; the message says why and where."""


class DatasetTooLarge(DatasetRejected):
    """The dataset is over a size cap (items, or bytes once in memory); the message names the cap and its setting."""


@dataclass(frozen=True)
class DatasetLimits:
    """What one dataset may become in memory: `max_items` items (MAX_DATASET_ITEMS) and `max_inflated_bytes` bytes
    (MAX_DATASET_INFLATED_BYTES) once parsed, an array counted as float32 (or its own wider type) and a text as the
    Python string it becomes."""

    max_items: int = 1_000_000
    max_inflated_bytes: int = 256 * 1024 * 1024


@dataclass(frozen=True)
class ParsedDataset:
    items: list[str] | np.ndarray
    count: int
    nbytes: int = 0  # the memory the items take (bytes): what the dataset cache counts


def parse_dataset(
    data: bytes, *, fmt: str, kind: str, inputs: list[dict[str, Any]], limits: DatasetLimits = DatasetLimits()
) -> ParsedDataset:
    """The dataset's items: texts, or a float32 array [items, ...]. Raises `DatasetTooLarge` before allocating them
    when they would pass `limits`, and `DatasetRejected` for anything else that does not fit the model."""
    _check_format(data, fmt=fmt, kind=kind)
    if kind == "text":
        texts = list(_texts(data, limits))
        if not texts:
            raise DatasetRejected("no texts found: put one JSON string per line")
        nbytes = sum(sys.getsizeof(text) for text in texts) + sys.getsizeof(texts)
        return ParsedDataset(items=texts, count=len(texts), nbytes=nbytes)
    array = _open_array(data, fmt=fmt, inputs=inputs, limits=limits)
    items = np.empty(array.shape, dtype=np.float32)
    done = 0
    for chunk in array.chunks():
        items[done : done + len(chunk)] = chunk
        done += len(chunk)
    return ParsedDataset(items=items, count=int(items.shape[0]), nbytes=int(items.nbytes))


def check_dataset(
    data: bytes, *, fmt: str, kind: str, inputs: list[dict[str, Any]], limits: DatasetLimits = DatasetLimits()
) -> int:
    """What `parse_dataset` checks, without keeping the items: returns their count. The web request uses it, so an
    upload costs the request its file's bytes and one chunk, not the whole inflated array."""
    _check_format(data, fmt=fmt, kind=kind)
    if kind == "text":
        count = sum(1 for _ in _texts(data, limits))
        if not count:
            raise DatasetRejected("no texts found: put one JSON string per line")
        return count
    array = _open_array(data, fmt=fmt, inputs=inputs, limits=limits)
    for _ in array.chunks():
        pass
    return array.shape[0]


def _check_format(data: bytes, *, fmt: str, kind: str) -> None:
    if not data:
        raise DatasetRejected("the file is empty")
    if kind == "text" and fmt != "jsonl":
        raise DatasetRejected("a text model takes JSON lines (.jsonl): one text per line")
    if kind != "text" and fmt not in ("npy", "npz"):
        raise DatasetRejected("a tensor model takes a NumPy array file (.npy or .npz)")


# --- Texts ------------------------------------------------------------------------------------------------------------


def _texts(data: bytes, limits: DatasetLimits) -> Iterator[str]:
    """The texts of a JSON-lines file, one line at a time, refusing the first line that passes a cap."""
    count = inflated = offset = 0
    for number, raw in enumerate(io.BytesIO(data), start=1):
        start, offset = offset, offset + len(raw)
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise DatasetRejected(f"line {number}: not UTF-8 text (byte {start + error.start})") from None
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            raise DatasetRejected(f"line {number}: not JSON ({error.msg})") from None
        except RecursionError:
            raise DatasetRejected(f"line {number}: JSON nested too deep") from None
        if isinstance(value, dict):
            value = value.get("text")
        if not isinstance(value, str) or not value.strip():
            raise DatasetRejected(f'line {number}: expected a string or an object with a "text" string')
        if len(value) > MAX_TEXT_CHARS:
            raise DatasetRejected(f"line {number}: a text may have at most {MAX_TEXT_CHARS:,} characters")
        # JSON's \ud800 escapes decode to lone surrogates, which are not characters: no tokenizer or database takes
        # them. (ASCII, nearly every text, is checked at C speed.)
        if not value.isascii() and (surrogate := _SURROGATE.search(value)):
            raise DatasetRejected(
                f"line {number}: holds a lone surrogate (U+{ord(surrogate.group()):04X}), which is not a character: "
                "write the text as UTF-8"
            )
        if "\x00" in value:
            raise DatasetRejected(f"line {number}: holds a NUL character (\\u0000)")
        count += 1
        if count > limits.max_items:
            raise DatasetTooLarge(
                f"line {number}: more than {limits.max_items:,} texts; the limit is {limits.max_items:,} "
                "(MAX_DATASET_ITEMS)"
            )
        inflated += sys.getsizeof(value) + 8  # the string and its slot in the list
        if inflated > limits.max_inflated_bytes:
            raise DatasetTooLarge(
                f"line {number}: the texts take more than {human_bytes(limits.max_inflated_bytes)} in memory; the "
                f"limit is {human_bytes(limits.max_inflated_bytes)} (MAX_DATASET_INFLATED_BYTES)"
            )
        yield value


# --- Arrays ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Array:
    """An array known from its header, its data not read yet: `chunks()` reads them, at most CHUNK_BYTES at a time,
    as float32 rows checked to be finite."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    read: Callable[[int], bytes]  # reads up to n bytes of the data, in order
    finish: Callable[[], None]  # after the data: refuses trailing bytes or a bad checksum

    def chunks(self) -> Iterator[np.ndarray]:
        row_bytes = math.prod(self.shape[1:]) * self.dtype.itemsize
        if self.fortran_order:
            # Column-major data cannot be read by rows: read it whole (its size was checked against the caps).
            raw = self._read_exactly(self.shape[0] * row_bytes)
            self.finish()
            array = np.frombuffer(raw, dtype=self.dtype).reshape(self.shape, order="F")
            rows = max(1, CHUNK_BYTES // max(row_bytes, 1))
            for start in range(0, self.shape[0], rows):
                yield _finite(array[start : start + rows])
            return
        rows = max(1, CHUNK_BYTES // max(row_bytes, 1))
        for start in range(0, self.shape[0], rows):
            count = min(rows, self.shape[0] - start)
            raw = self._read_exactly(count * row_bytes)
            yield _finite(np.frombuffer(raw, dtype=self.dtype).reshape((count, *self.shape[1:])))
        self.finish()

    def _read_exactly(self, size: int) -> bytes:
        data = self.read(size)
        if len(data) != size:
            raise DatasetRejected("the array's data are shorter than its header says: the file is truncated")
        return data


def _finite(chunk: np.ndarray) -> np.ndarray:
    converted = chunk.astype(np.float32)
    if not np.isfinite(converted).all():
        raise DatasetRejected("the array holds NaN or infinite values")
    return converted


def _open_array(data: bytes, *, fmt: str, inputs: list[dict[str, Any]], limits: DatasetLimits) -> _Array:
    try:
        if fmt == "npy":
            stream = io.BytesIO(data)
            shape, dtype, fortran_order = _npy_header(stream)
            _check_array(shape, dtype, inputs=inputs, limits=limits)
            size = math.prod(shape) * dtype.itemsize
            if len(data) - stream.tell() != size:
                raise DatasetRejected(
                    f"the header says {size:,} bytes of data, the file holds {len(data) - stream.tell():,}: the file "
                    "is truncated or damaged"
                )
            return _Array(shape, dtype, fortran_order, read=stream.read, finish=lambda: None)
        return _open_npz(data, inputs=inputs, limits=limits)
    except DatasetRejected:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, struct.error, NotImplementedError) as error:
        raise DatasetRejected(f"not a readable NumPy {fmt} file ({error})") from None


def _npy_header(stream) -> tuple[tuple[int, ...], np.dtype, bool]:
    """Shape, dtype and order from a .npy header, reading no more of `stream` than the header."""
    prefix = stream.read(8)
    if len(prefix) < 8:
        raise DatasetRejected("not a readable NumPy npy file (too short for a header)")
    major, _minor = np.lib.format.read_magic(io.BytesIO(prefix))
    length_format = "<H" if major == 1 else "<I"
    length_bytes = stream.read(struct.calcsize(length_format))
    (length,) = struct.unpack(length_format, length_bytes)
    if length > MAX_NPY_HEADER_BYTES:
        # Read nothing more: a header "length" of gigabytes would otherwise be read (or inflated) as asked.
        raise DatasetRejected(
            f"its header says it is {length:,} bytes long; a NumPy header has at most {MAX_NPY_HEADER_BYTES:,}"
        )
    header = io.BytesIO(length_bytes + stream.read(length))
    if major == 1:
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(header)
    else:  # 3.0 differs from 2.0 only in how it encodes field names, which arrays of numbers lack
        shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(header)
    if any(dimension < 0 for dimension in shape):
        raise DatasetRejected(f"its header gives a negative dimension: {list(shape)}")
    return tuple(shape), dtype, fortran_order


def _check_array(shape: tuple[int, ...], dtype: np.dtype, *, inputs: list[dict[str, Any]], limits: DatasetLimits):
    """Everything the header tells: numbers, the model's item shape, and the caps, before any data is read."""
    if dtype.hasobject or not np.issubdtype(dtype, np.number):
        raise DatasetRejected(f"the array holds {dtype}, not numbers")
    if np.issubdtype(dtype, np.complexfloating):
        raise DatasetRejected(f"the array holds {dtype}, not real numbers")
    if len(inputs) != 1:
        raise DatasetRejected(f"this model has {len(inputs)} inputs; array datasets feed models with one input")
    expected = (inputs[0].get("shape") or [None])[1:]
    if len(shape) != len(expected) + 1:
        raise DatasetRejected(
            f"items have shape {list(shape[1:])} but the model's input "
            f"'{inputs[0]['name']}' takes {_shape_text(expected)} per item"
        )
    for axis, (got, want) in enumerate(zip(shape[1:], expected, strict=True), start=1):
        if isinstance(want, int) and want > 0 and got != want:
            raise DatasetRejected(
                f"items have shape {list(shape[1:])} but the model's input "
                f"'{inputs[0]['name']}' takes {_shape_text(expected)} per item (axis {axis})"
            )
    if shape[0] == 0:
        raise DatasetRejected("the array has no items")
    if shape[0] > limits.max_items:
        raise DatasetTooLarge(
            f"the array has {shape[0]:,} items; the limit is {limits.max_items:,} (MAX_DATASET_ITEMS)"
        )
    # Parsed, the items are float32; a wider stored type is inflated as it is before it is converted.
    inflated = math.prod(shape) * max(dtype.itemsize, 4)
    if inflated > limits.max_inflated_bytes:
        raise DatasetTooLarge(
            f"the array inflates to {human_bytes(inflated)}; the limit is {human_bytes(limits.max_inflated_bytes)} "
            "(MAX_DATASET_INFLATED_BYTES)"
        )


def _open_npz(data: bytes, *, inputs: list[dict[str, Any]], limits: DatasetLimits) -> _Array:
    entries, directory_bytes = _zip_directory(data)
    if entries > MAX_NPZ_MEMBERS or directory_bytes > MAX_ZIP_DIRECTORY_BYTES:
        raise DatasetRejected(
            f"the .npz archive lists {entries:,} members in {directory_bytes:,} bytes; a dataset has one array "
            f"(at most {MAX_NPZ_MEMBERS} members)"
        )
    archive = zipfile.ZipFile(io.BytesIO(data))
    members = archive.infolist()
    if not members:
        raise DatasetRejected("the .npz archive holds no array")
    member = next((m for m in members if m.filename in ("items.npy", "items")), members[0])
    stream = archive.open(member)
    shape, dtype, fortran_order = _npy_header(stream)
    _check_array(shape, dtype, inputs=inputs, limits=limits)
    # The zip directory states the member's size; its header states the array's. A member whose two sizes disagree
    # lies about one of them: refuse it rather than trust either.
    size = math.prod(shape) * dtype.itemsize
    if member.file_size != stream.tell() + size:
        raise DatasetRejected(
            f"the archive says '{member.filename}' holds {member.file_size:,} bytes but its array needs "
            f"{stream.tell() + size:,}: the archive is damaged"
        )

    def finish() -> None:
        # Reading past the end makes zipfile check the member's CRC; any byte left over is a lie about its size.
        if stream.read(1):
            raise DatasetRejected(f"'{member.filename}' holds more bytes than its header says: the archive is damaged")

    return _Array(shape, dtype, fortran_order, read=stream.read, finish=finish)


def _zip_directory(data: bytes) -> tuple[int, int]:
    """(members, directory bytes) from a zip's end record, as zipfile will read them (zip64 included), before
    zipfile reads the directory itself."""
    at = len(data) - 22
    if at < 0 or data[at : at + 4] != b"PK\x05\x06":
        at = data.rfind(b"PK\x05\x06", max(0, len(data) - 22 - 0xFFFF))  # after a comment of up to 64 kB
    if at < 0 or len(data) - at < 22:
        raise DatasetRejected("not a readable NumPy npz file (not a zip archive)")
    entries, directory_bytes = struct.unpack_from("<HI", data, at + 10)
    locator = at - 20
    if locator >= 0 and data[locator : locator + 4] == b"PK\x06\x07":
        record = locator - 56
        if record < 0 or data[record : record + 4] != b"PK\x06\x06":
            raise DatasetRejected("not a readable NumPy npz file (a damaged zip64 directory)")
        entries, directory_bytes = struct.unpack_from("<QQ", data, record + 32)
    return entries, directory_bytes


def _shape_text(shape: list) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) and d > 0 else "any" for d in shape) + "]"


def holdout_indices(count: int) -> list[int]:
    """The items kept for the accuracy gate: evenly spread, at most MAX_HOLDOUT, deterministic."""
    size = min(MAX_HOLDOUT, max(1, count // 10 if count >= 80 else count))
    step = count / size
    return sorted({int(i * step) for i in range(size)})


def calibration_indices(count: int, held_out: Sequence[int], size: int) -> list[int]:
    """The first `size` items the accuracy gate does not score (so calibration does not flatter the gate), or the
    held-out ones when every item is held out. Walks at most `size` + len(held_out) items, whatever `count` is."""
    scored = set(held_out)
    unscored = list(islice((i for i in range(count) if i not in scored), size))
    return unscored or list(held_out)[:size]
