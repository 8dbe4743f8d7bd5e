"""Running one work unit in the car: fetch the model (once), run the items, hand back outputs the platform can check.

No Django here: the car imports this. The pieces:

- ArtifactCache: model and tokenizer files on the car's disk, named by their sha256 and bounded in bytes. A file is
  stored only after its sha256 matched, and a file that does not match its name at start-up is deleted, so nothing
  half-written or tampered with is ever run.
- WorkUnit: the platform's lease, validated (BadWorkUnit names the bad field).
- Executor: downloads what the cache lacks, keeps a few ONNX Runtime sessions warm, runs the items in the unit's
  batches, and turns every failure (download, checksum, load, inference, shapes) into a UnitResult with ok=False:
  a failed unit is reported to the platform, never crashes the agent, and never produces a result.

The lease JSON (the body of a 200 from POST /api/v1/agent/lease/), as WorkUnit.from_lease reads it:

    unit_id           str    the work unit's id
    lease_id          str    this lease of it (a reissued unit has a new lease)
    model_sha256      str    64 lowercase hex: sha256 of the ONNX file
    model_url         str    path on the platform to GET the file from, e.g. "/api/v1/agent/artifacts/<sha256>/"
    model_size        int    the file's size, bytes (the download is refused beyond it)
    kind              str    "text" or "tensor"
    output_name       str    the model output to return
    tokenizer_sha256  str    sha256 of tokenizer.json (text models only; null or absent for tensor models)
    tokenizer_url     str    path to GET tokenizer.json from (text models only)
    items             list   texts (text models) or nested lists of numbers (tensor models) ...
    items_npy_b64     str    ... or, for tensor models, base64 of a .npy float32 array [n, ...]: exactly one of the two
    batch_size        int    1..1024: items per inference call (INT8 dynamic quantization makes outputs depend on
                             the batch, so the platform checks with the same batching)
    precision         str    e.g. "int8", "fp16", "fp8"
    emulated          bool   optional, default false: FP8 run on a car without FP8 hardware (run as delivered)
    lease_seconds     number optional: how long the lease lasts (s); the agent renews it (POST lease/renew/) while
                             the unit runs, every third of that (runner.py)
    ch                number optional: the unit's work in compute-hours (what a simulated car's energy is counted on)

The result (POST /api/v1/agent/result/) and failure (POST /api/v1/agent/failure/) bodies are result_payload() and
failure_payload() below.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import logging
import os
import re
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from .client import AgentHTTPError, AgentUnavailable, DownloadTooLarge
from .inference import TENSOR, TEXT, ModelRunner, ModelSpec, decode_npy, encode_npy

MiB = 1024 * 1024
MAX_MODEL_BYTES = 512 * MiB
MAX_TOKENIZER_BYTES = 32 * MiB
MAX_BATCH_SIZE = 1024
MAX_ITEMS = 100_000
MAX_ID_LENGTH = 200
MAX_LEASE_SECONDS = 7 * 24 * 3600
# Sessions kept warm: each holds a model's weights in memory, and a car shares its memory with the car.
MAX_SESSIONS = 4
# A failure message goes to the platform and the owner's pages: one line, bounded.
MAX_ERROR_LENGTH = 300
_SHA256 = re.compile(r"[0-9a-f]{64}")
# A path on the platform: printable ASCII without spaces (it is signed and sent as is), not "//host" (another server).
_PLATFORM_PATH = re.compile(r"/(?!/)[!-~]*")
_HASH_CHUNK = MiB

log = logging.getLogger("idlefleet.agent")


class ChecksumMismatch(Exception):
    """Bytes whose sha256 is not the one they were announced with; they are not stored and not run."""

    def __init__(self, expected: str, actual: str) -> None:
        self.expected = expected
        self.actual = actual
        super().__init__(f"sha256 mismatch: expected {expected}, got {actual}")


class BadWorkUnit(ValueError):
    """The platform's lease is malformed. `field` names the offending key; the message starts with it."""

    def __init__(self, field_name: str, problem: str) -> None:
        self.field = field_name
        super().__init__(f"{field_name}: {problem}")


def _is_sha256(value: object) -> bool:
    return isinstance(value, str) and _SHA256.fullmatch(value) is not None


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class ArtifactCache:
    """Content-addressed files `<directory>/<sha256>`, at most about `max_bytes` bytes in all, least recently used
    evicted first.

    The one file just written is never evicted, so a single file larger than max_bytes is still kept (alone).
    Recency lives in memory and in each file's modification time, so the order survives a restart. Thread-safe:
    the heartbeat may read holds() while a unit runs.
    """

    def __init__(self, directory: Path | str, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._sizes: OrderedDict[str, int] = OrderedDict()  # sha256 -> bytes, least recently used first
        self.directory.mkdir(parents=True, exist_ok=True)
        self._load()

    def _load(self) -> None:
        """Keep only files named by a sha256 that their content matches; delete the rest (temp files left by a crash
        mid-write, truncated or altered files). Then evict down to max_bytes."""
        found: list[tuple[int, str, int]] = []
        for path in self.directory.iterdir():
            if path.is_symlink():
                # A link could point anywhere on the car's disk: never trusted, never followed.
                path.unlink(missing_ok=True)
                continue
            if not path.is_file():
                continue  # a subdirectory is not ours to judge
            try:
                trusted = _is_sha256(path.name) and _file_sha256(path) == path.name
            except OSError:
                trusted = False
            if not trusted:
                path.unlink(missing_ok=True)
                continue
            stat = path.stat()
            found.append((stat.st_mtime_ns, path.name, stat.st_size))
        for _, sha256, size in sorted(found):
            self._sizes[sha256] = size
        with self._lock:
            self._evict(keep=None)

    def path_for(self, sha256: str) -> Path:
        if not _is_sha256(sha256):
            raise ValueError("not a lowercase sha256 hex digest")
        return self.directory / sha256

    def get(self, sha256: str) -> Path | None:
        """The cached file's path, marked most recently used; None when not cached."""
        path = self.path_for(sha256)
        with self._lock:
            if sha256 not in self._sizes:
                return None
            if not path.is_file():
                # Deleted behind our back: forget it rather than hand out a missing path.
                del self._sizes[sha256]
                return None
            self._sizes.move_to_end(sha256)
            self._touch(path)
            return path

    def put(self, sha256: str, data: bytes) -> Path:
        """Store `data` as `sha256` and return its path.

        Raises ChecksumMismatch, storing nothing, when sha256(data) is not `sha256`. Written to a temp file, flushed
        and renamed (atomic), so a crash leaves either no file or the whole one. Then evicts least recently used
        files until the cache holds at most max_bytes, never the file just stored.
        """
        path = self.path_for(sha256)
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise ChecksumMismatch(sha256, actual)
        with self._lock:
            if sha256 in self._sizes and path.is_file():
                self._sizes.move_to_end(sha256)
                self._touch(path)
                return path
            # The temp name is not a sha256, so start-up deletes it if we crash before the rename.
            handle, temp_name = tempfile.mkstemp(dir=self.directory, prefix=".partial-")
            try:
                with os.fdopen(handle, "wb") as temp:
                    temp.write(data)
                    temp.flush()
                    os.fsync(temp.fileno())
                os.replace(temp_name, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temp_name)
                raise
            self._sizes[sha256] = len(data)
            self._sizes.move_to_end(sha256)
            self._evict(keep=sha256)
            return path

    def discard(self, sha256: str) -> None:
        """Delete a cached file (one found damaged when read)."""
        path = self.path_for(sha256)
        with self._lock:
            self._sizes.pop(sha256, None)
            path.unlink(missing_ok=True)

    def holds(self) -> list[str]:
        """The sha256s of the cached files, sorted (the heartbeat's `models_cached`)."""
        with self._lock:
            return sorted(self._sizes)

    def size_bytes(self) -> int:
        """Bytes held in all."""
        with self._lock:
            return sum(self._sizes.values())

    def _evict(self, keep: str | None) -> None:
        total = sum(self._sizes.values())
        for sha256 in list(self._sizes):
            if total <= self.max_bytes:
                break
            if sha256 == keep:
                continue
            total -= self._sizes.pop(sha256)
            (self.directory / sha256).unlink(missing_ok=True)

    @staticmethod
    def _touch(path: Path) -> None:
        now = time.time_ns()
        with contextlib.suppress(OSError):
            os.utime(path, ns=(now, now))


@dataclass(frozen=True, eq=False)
class WorkUnit:
    """One leased work unit. `items` holds strings (text models) or float32 arrays, one per item without the batch
    axis (tensor models). Build it with from_lease(); not comparable with == (it may hold arrays)."""

    unit_id: str
    lease_id: str
    model_sha256: str
    model_url: str
    model_size: int  # bytes
    kind: str  # "text" or "tensor"
    output_name: str
    tokenizer_sha256: str | None
    tokenizer_url: str | None
    items: list
    batch_size: int
    precision: str
    emulated: bool = False
    lease_seconds: float | None = None
    ch: float | None = None

    @classmethod
    def from_lease(cls, lease: dict) -> WorkUnit:
        """Validate the platform's lease JSON (see the module docstring); BadWorkUnit names the first bad field."""
        if not isinstance(lease, dict):
            raise BadWorkUnit("lease", "must be a JSON object")
        kind = lease.get("kind")
        if kind not in (TEXT, TENSOR):
            raise BadWorkUnit("kind", f'must be "{TEXT}" or "{TENSOR}"')
        tokenizer_sha256 = lease.get("tokenizer_sha256")
        tokenizer_url = lease.get("tokenizer_url")
        if kind == TEXT:
            tokenizer_sha256 = _sha256_field(lease, "tokenizer_sha256")
            tokenizer_url = _path_field(lease, "tokenizer_url")
        elif tokenizer_sha256 is not None or tokenizer_url is not None:
            # A tensor model has no tokenizer: a lease naming one is confused about its model.
            raise BadWorkUnit(
                "tokenizer_sha256" if tokenizer_sha256 is not None else "tokenizer_url",
                "must be null for a tensor model",
            )
        emulated = lease.get("emulated", False)
        if not isinstance(emulated, bool):
            raise BadWorkUnit("emulated", "must be true or false")
        return cls(
            unit_id=_text_field(lease, "unit_id"),
            lease_id=_text_field(lease, "lease_id"),
            model_sha256=_sha256_field(lease, "model_sha256"),
            model_url=_path_field(lease, "model_url"),
            model_size=_int_field(lease, "model_size", 1, None),
            kind=kind,
            output_name=_text_field(lease, "output_name"),
            tokenizer_sha256=tokenizer_sha256,
            tokenizer_url=tokenizer_url,
            items=_items(lease, kind),
            batch_size=_int_field(lease, "batch_size", 1, MAX_BATCH_SIZE),
            precision=_text_field(lease, "precision", max_length=16),
            emulated=emulated,
            lease_seconds=_number_field(lease, "lease_seconds", 0.1, MAX_LEASE_SECONDS),
            ch=_number_field(lease, "ch", 0, 1e6),
        )


def _number_field(lease: dict, name: str, low: float, high: float) -> float | None:
    """An optional number in [low, high]; None when absent."""
    value = lease.get(name)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or not low <= value <= high:
        raise BadWorkUnit(name, f"must be a number from {low:g} to {high:g}")
    return float(value)


def _text_field(lease: dict, name: str, *, max_length: int = MAX_ID_LENGTH) -> str:
    value = lease.get(name)
    if not isinstance(value, str) or not value.strip():
        raise BadWorkUnit(name, "must be a non-empty string")
    if len(value) > max_length:
        raise BadWorkUnit(name, f"must be at most {max_length} characters")
    return value


def _sha256_field(lease: dict, name: str) -> str:
    value = lease.get(name)
    if not _is_sha256(value):
        raise BadWorkUnit(name, "must be a sha256: 64 lowercase hex characters")
    return value


def _path_field(lease: dict, name: str) -> str:
    value = lease.get(name)
    # Only a path on the platform: the signed request must not go to another host or carry a forged header line.
    if not isinstance(value, str) or len(value) > 1000 or not _PLATFORM_PATH.fullmatch(value):
        raise BadWorkUnit(name, 'must be a path on the platform, e.g. "/api/v1/agent/artifacts/<sha256>/"')
    return value


def _int_field(lease: dict, name: str, low: int, high: int | None) -> int:
    value = lease.get(name)
    # bool is an int in Python; true is not a size.
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        raise BadWorkUnit(name, f"must be an integer from {low}" + (f" to {high}" if high is not None else " up"))
    return value


def _items(lease: dict, kind: str) -> list:
    has_list, has_npy = "items" in lease, "items_npy_b64" in lease
    if has_list == has_npy:
        raise BadWorkUnit("items", "give exactly one of items and items_npy_b64")
    if has_npy:
        if kind != TENSOR:
            raise BadWorkUnit("items_npy_b64", "only for tensor models; a text model's items are a list of strings")
        array = _npy_items(lease["items_npy_b64"])
    else:
        items = lease["items"]
        if not isinstance(items, list) or not items:
            raise BadWorkUnit("items", "must be a non-empty list")
        if len(items) > MAX_ITEMS:
            raise BadWorkUnit("items", f"at most {MAX_ITEMS} items")
        if kind == TEXT:
            if not all(isinstance(item, str) for item in items):
                raise BadWorkUnit("items", "a text model's items must all be strings")
            return list(items)
        try:
            array = np.asarray(items, dtype=np.float32)
        except (TypeError, ValueError) as error:
            raise BadWorkUnit("items", "a tensor model's items must be equal-shaped arrays of numbers") from error
    if array.ndim < 1 or len(array) == 0:
        raise BadWorkUnit("items", "must hold at least one item")
    if len(array) > MAX_ITEMS:
        raise BadWorkUnit("items", f"at most {MAX_ITEMS} items")
    return list(array)


def _npy_items(text: object) -> np.ndarray:
    if not isinstance(text, str):
        raise BadWorkUnit("items_npy_b64", "must be a base64 string")
    try:
        array = decode_npy(base64.b64decode(text, validate=True))
    except (binascii.Error, ValueError, OSError, EOFError) as error:
        raise BadWorkUnit("items_npy_b64", "is not base64 of a .npy array") from error
    if array.dtype != np.float32:
        raise BadWorkUnit("items_npy_b64", f"must be float32, not {array.dtype}")
    if array.ndim < 1:
        raise BadWorkUnit("items_npy_b64", "must have a first (item) axis")
    return array


@dataclass(frozen=True)
class UnitResult:
    """What running a unit gave. ok=True: output_npy (.npy bytes of float32 [items, ...]) and its sha256 hex.
    ok=False: `error`, one short line for people, and no output.

    seconds: compute time for the items (s), from the model being ready to the outputs being encoded; downloads and
    session loading are not counted. energy_wh: power_w × seconds / 3600 (Wh).
    """

    unit_id: str
    lease_id: str
    ok: bool
    output_npy: bytes = b""
    output_sha256: str = ""
    items: int = 0
    seconds: float = 0.0
    energy_wh: float = 0.0
    emulated: bool = False
    runtime_version: str = ""
    error: str = ""
    # Stopped on purpose (the car leaves, the lease was lost): the platform already took the unit back, so nothing is
    # reported.
    cancelled: bool = False


def result_payload(result: UnitResult) -> dict:
    """JSON body for POST /api/v1/agent/result/ (output_npy_b64: standard base64 of the .npy bytes)."""
    if not result.ok:
        raise ValueError("a failed unit has no result; send failure_payload()")
    return {
        "unit_id": result.unit_id,
        "lease_id": result.lease_id,
        "output_npy_b64": base64.b64encode(result.output_npy).decode("ascii"),
        "output_sha256": result.output_sha256,
        "items": result.items,
        "seconds": result.seconds,
        "energy_wh": result.energy_wh,
        "emulated": result.emulated,
        "runtime_version": result.runtime_version,
    }


def failure_payload(result: UnitResult) -> dict:
    """JSON body for POST /api/v1/agent/failure/."""
    if result.ok:
        raise ValueError("the unit succeeded; send result_payload()")
    return {"unit_id": result.unit_id, "lease_id": result.lease_id, "error": result.error}


class Downloader(Protocol):
    def get_bytes(self, path: str, *, max_bytes: int) -> bytes: ...


class UnitFailed(Exception):
    """Internal: a unit cannot complete; the message is what the platform is told."""


class UnitCancelled(Exception):
    """Internal: the unit was stopped between two batches (Executor.run's `cancel` was set)."""


def runtime_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


class Executor:
    """Runs work units on this car.

    client: anything with get_bytes (an AgentClient). threads: ONNX Runtime intra-op threads. power_w: the power
    compute draws (W), for energy_wh. clock: monotonic seconds, injectable for tests. max_model_bytes: the largest
    model file (bytes) this car downloads. Keeps up to max_sessions warm sessions, one per model file, precision and
    output (for a registered model the last two are fixed, so in effect one per (model_sha256, precision)).
    Not for concurrent run() calls: a car runs one unit at a time.

    Simulation only: `slowdown` k ≥ 1 makes the car k times slower than this machine (after each batch it waits k - 1
    times the batch's time), as a slower or throttled chip is; `emulated_wh_per_ch` ({precision: Wh per CH}) counts a
    unit's energy as the car's own chip would use it for the unit's CH (the lease's `ch`), instead of this machine's
    power × time: a simulated car runs its work on a host CPU far slower than its chip, and the host's watts say
    nothing of the car's battery (README, "The simulated fleet").
    """

    def __init__(
        self,
        client: Downloader,
        cache: ArtifactCache,
        *,
        threads: int = 1,
        power_w: float = 100.0,
        clock: Callable[[], float] = time.monotonic,
        max_model_bytes: int = MAX_MODEL_BYTES,
        max_sessions: int = MAX_SESSIONS,
        slowdown: float = 1.0,
        emulated_wh_per_ch: dict[str, float] | None = None,
    ) -> None:
        if slowdown < 1:
            raise ValueError("slowdown must be at least 1")
        self.client = client
        self.cache = cache
        self.threads = threads
        self.power_w = power_w
        self.clock = clock
        self.max_model_bytes = max_model_bytes
        self.max_sessions = max_sessions
        self.slowdown = slowdown
        self.emulated_wh_per_ch = dict(emulated_wh_per_ch or {})
        self.runtime_version = runtime_version()
        self._sessions: OrderedDict[tuple, ModelRunner] = OrderedDict()
        # Counters for tests and monitoring.
        self.downloads = 0
        self.sessions_loaded = 0

    def run(self, unit: WorkUnit, *, cancel: threading.Event | None = None) -> UnitResult:
        """Run every item of `unit`; never raises for a failing unit (ok=False with a short error instead). Setting
        `cancel` (from another thread) stops the unit after the batch that runs: cancelled=True, nothing to report."""
        base = {
            "unit_id": unit.unit_id,
            "lease_id": unit.lease_id,
            "emulated": unit.emulated,
            "runtime_version": self.runtime_version,
        }
        try:
            runner = self._runner(unit)
            started = self.clock()
            outputs = self._infer(runner, unit, cancel)
            output_npy, output_sha256 = encode_npy(outputs)
            seconds = max(0.0, self.clock() - started)
        except UnitCancelled:
            return UnitResult(**base, ok=False, error="stopped before the end", cancelled=True)
        except UnitFailed as failure:
            return UnitResult(**base, ok=False, error=_one_line(str(failure)))
        except Exception as error:
            # Anything unforeseen still fails the unit, not the agent: the platform reissues it elsewhere.
            return UnitResult(**base, ok=False, error=_one_line(f"unexpected error: {_describe(error)}"))
        return UnitResult(
            **base,
            ok=True,
            output_npy=output_npy,
            output_sha256=output_sha256,
            items=len(outputs),
            seconds=seconds,
            energy_wh=self._energy_wh(unit, seconds),
        )

    def _energy_wh(self, unit: WorkUnit, seconds: float) -> float:
        """Wh the unit used: this car's power × compute time, or (simulation) its chip's Wh per CH × the unit's CH."""
        emulated = self.emulated_wh_per_ch.get(unit.precision)
        if emulated is not None and unit.ch is not None:
            return emulated * unit.ch
        return self.power_w * seconds / 3600

    def _infer(self, runner: ModelRunner, unit: WorkUnit, cancel: threading.Event | None = None) -> np.ndarray:
        def between_batches(seconds: float) -> None:
            if cancel is not None and cancel.is_set():
                raise UnitCancelled
            if self.slowdown > 1:
                # A slower chip: the batch takes k times as long. Waiting on `cancel` lets a departure cut it short.
                extra = (self.slowdown - 1) * seconds
                if cancel is None:
                    time.sleep(extra)
                elif cancel.wait(extra):
                    raise UnitCancelled

        try:
            outputs = runner.run(unit.items, batch_size=unit.batch_size, between_batches=between_batches)
        except UnitCancelled:
            raise
        except Exception as error:
            # ONNX Runtime's errors (wrong shape, wrong type) are plain Exceptions; numpy's stacking raises ValueError.
            raise UnitFailed(f"inference failed: {_describe(error)}") from error
        if outputs.ndim < 1 or len(outputs) != len(unit.items):
            count = len(outputs) if outputs.ndim else 0
            raise UnitFailed(f"the model gave {count} outputs for {len(unit.items)} items")
        if not np.isfinite(outputs).all():
            # NaN cannot be compared within a tolerance, so such a result could never be validated.
            raise UnitFailed("the model's outputs contain NaN or infinity")
        return outputs

    def _runner(self, unit: WorkUnit) -> ModelRunner:
        key = (unit.model_sha256, unit.precision, unit.kind, unit.output_name, unit.tokenizer_sha256)
        runner = self._sessions.get(key)
        if runner is not None:
            self._sessions.move_to_end(key)
            return runner
        if unit.model_size > self.max_model_bytes:
            raise UnitFailed(f"the model file ({unit.model_size} bytes) is larger than this car takes")
        model = self._artifact("model", unit.model_sha256, unit.model_url, unit.model_size)
        tokenizer_json = None
        if unit.kind == TEXT:
            raw = self._artifact("tokenizer", unit.tokenizer_sha256, unit.tokenizer_url, MAX_TOKENIZER_BYTES)
            try:
                tokenizer_json = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise UnitFailed("the tokenizer file is not UTF-8 text") from error
        spec = ModelSpec(kind=unit.kind, output_name=unit.output_name, tokenizer_json=tokenizer_json)
        try:
            runner = ModelRunner(model, spec, threads=self.threads)
        except Exception as error:
            raise UnitFailed(f"the model could not be loaded: {_describe(error)}") from error
        output_names = [output.name for output in runner.session.get_outputs()]
        if unit.output_name not in output_names:
            raise UnitFailed(f"the model has no output {unit.output_name!r}")
        self.sessions_loaded += 1
        self._sessions[key] = runner
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
        return runner

    def _artifact(self, what: str, sha256: str, url: str, max_bytes: int) -> bytes:
        """The file's bytes, from the cache when it holds them (checked again: disks fail), else downloaded and
        checked before being stored."""
        path = self.cache.get(sha256)
        if path is not None:
            try:
                data = path.read_bytes()
            except OSError:
                data = b""
            if hashlib.sha256(data).hexdigest() == sha256:
                return data
            self.cache.discard(sha256)
        try:
            data = self.client.get_bytes(url, max_bytes=max_bytes)
        except DownloadTooLarge as error:
            raise UnitFailed(f"{what} download refused: larger than {error.max_bytes} bytes") from error
        except (AgentHTTPError, AgentUnavailable) as error:
            raise UnitFailed(f"{what} download failed: {error}") from error
        self.downloads += 1
        try:
            self.cache.put(sha256, data)
        except ChecksumMismatch as error:
            raise UnitFailed(f"{what} file refused: its {error}") from error
        except OSError as error:
            # A full disk need not fail the unit: the bytes are checked and in memory; the next unit downloads again.
            log.warning("could not cache the %s file %s: %s", what, sha256, error)
        return data

    def cached_sessions(self) -> list[tuple]:
        """Keys of the warm sessions, least recently used first (for tests and monitoring)."""
        return list(self._sessions)


def _describe(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _one_line(text: str) -> str:
    """First line, bounded: ONNX Runtime's messages can run to many lines of graph detail."""
    line = " ".join(text.strip().splitlines()[:1]) if text.strip() else "unknown error"
    return line if len(line) <= MAX_ERROR_LENGTH else line[: MAX_ERROR_LENGTH - 1] + "…"
