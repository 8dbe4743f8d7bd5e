"""The agent's HTTP client against a real local HTTP server: signed requests, retries only where they can help."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fleet.agent import signing
from fleet.agent.client import AgentClient, AgentHTTPError, AgentUnavailable, DownloadTooLarge

PATH = "/api/v1/agent/heartbeat/"
PAYLOAD = {"parked": True, "battery_pct": 81.5, "network": "wifi"}


class StubPlatform:
    """Answers each POST with the next scripted (status, headers, JSON body) and records what it received."""

    def __init__(self) -> None:
        self.script: list[tuple[int, dict, object]] = []
        self.received: list[dict] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                stub.received.append({"path": self.path, "headers": dict(self.headers), "body": body})
                status, headers, payload = stub.script.pop(0) if stub.script else (200, {}, {})
                raw = b"" if payload is None else json.dumps(payload).encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def platform():
    stub = StubPlatform()
    yield stub
    stub.close()


@pytest.fixture
def credential():
    return signing.Credential.generate("car-key-1")


@pytest.fixture
def sleeps():
    return []


@pytest.fixture
def client(platform, credential, sleeps):
    agent_client = AgentClient(platform.url, credential, max_retries=3, timeout=2.0, sleep=sleeps.append)
    yield agent_client
    agent_client.close()


def test_a_busy_platform_is_retried_until_it_answers(platform, client, sleeps):
    platform.script = [(503, {}, {}), (503, {}, {}), (200, {}, {"next_heartbeat_s": 15})]

    status, body = client.post(PATH, PAYLOAD)

    assert (status, body) == (200, {"next_heartbeat_s": 15})
    assert len(platform.received) == 3
    assert len(sleeps) == 2


def test_the_backoff_grows_with_full_jitter_and_is_capped(platform, credential, sleeps):
    platform.script = [(500, {}, {})] * 6
    client = AgentClient(
        platform.url, credential, max_retries=5, backoff_base=1.0, backoff_cap=4.0, sleep=sleeps.append
    )

    with pytest.raises(AgentUnavailable):
        client.post(PATH, PAYLOAD)

    assert len(sleeps) == 5
    for retry, delay in enumerate(sleeps):
        assert 0 <= delay <= min(4.0, 2**retry)


def test_retry_after_from_the_platform_is_honoured(platform, client, sleeps):
    platform.script = [(429, {"Retry-After": "7"}, {"code": "throttled", "message": "Slow down.", "fields": {}})]

    assert client.post(PATH, PAYLOAD)[0] == 200
    assert sleeps == [7.0]


def test_a_long_retry_after_is_capped(platform, credential, sleeps):
    platform.script = [(503, {"Retry-After": "3600"}, {})]
    client = AgentClient(platform.url, credential, backoff_cap=30.0, sleep=sleeps.append)

    client.post(PATH, PAYLOAD)

    assert sleeps == [30.0]


def test_a_bad_request_is_not_retried_and_keeps_the_platforms_message(platform, client, sleeps):
    error = {"code": "invalid", "message": "battery_pct: Ensure this value is less than or equal to 100.", "fields": {}}
    platform.script = [(400, {}, error)]

    with pytest.raises(AgentHTTPError) as raised:
        client.post(PATH, PAYLOAD)

    assert raised.value.status == 400
    assert raised.value.body == error
    assert raised.value.message == error["message"]
    assert error["message"] in str(raised.value)
    assert len(platform.received) == 1
    assert sleeps == []


def test_a_refused_credential_is_not_retried(platform, client):
    platform.script = [(401, {}, {"code": "authentication_failed", "message": "Invalid or revoked.", "fields": {}})]

    with pytest.raises(AgentHTTPError) as raised:
        client.post(PATH, PAYLOAD)

    assert raised.value.status == 401
    assert len(platform.received) == 1


def test_every_attempt_is_signed_afresh_for_the_exact_body(platform, credential, client):
    platform.script = [(503, {}, {}), (502, {}, None), (200, {}, {})]

    client.post(PATH, PAYLOAD)

    nonces = [request["headers"][signing.HEADER_NONCE] for request in platform.received]
    assert len(set(nonces)) == 3
    for request in platform.received:
        headers = request["headers"]
        assert request["path"] == PATH
        assert headers["Content-Type"] == "application/json"
        assert headers[signing.HEADER_KEY] == "car-key-1"
        assert request["body"] == json.dumps(PAYLOAD, separators=(",", ":"), sort_keys=True).encode()
        assert signing.verify(
            public_key=credential.public_key,
            signature=headers[signing.HEADER_SIGNATURE],
            method="POST",
            path=PATH,
            timestamp=int(headers[signing.HEADER_TIMESTAMP]),
            nonce=headers[signing.HEADER_NONCE],
            body=request["body"],
        )


def test_the_signature_uses_real_wall_clock_time(platform, credential):
    client = AgentClient(platform.url, credential, wall_clock=lambda: 1_700_000_000.9)

    client.post(PATH, PAYLOAD)

    assert platform.received[0]["headers"][signing.HEADER_TIMESTAMP] == "1700000000"


def test_the_client_gives_up_after_max_retries(platform, client, sleeps):
    platform.script = [(503, {}, {})] * 10

    with pytest.raises(AgentUnavailable, match="4 attempts"):
        client.post(PATH, PAYLOAD)

    assert len(platform.received) == 4
    assert len(sleeps) == 3


def test_an_unreachable_platform_is_retried_then_reported_unavailable(credential, sleeps):
    stub = StubPlatform()
    url = stub.url
    stub.close()  # nothing listens on the port any more: connection refused
    client = AgentClient(url, credential, max_retries=2, timeout=1.0, sleep=sleeps.append)

    with pytest.raises(AgentUnavailable, match="ConnectionError"):
        client.post(PATH, PAYLOAD)

    assert len(sleeps) == 2


def test_no_content_returns_no_body(platform, client):
    platform.script = [(204, {}, None)]

    assert client.post("/api/v1/agent/lease/", {}) == (204, None)


# --- get_bytes: signed downloads (model files, tokenizers) ---

ARTIFACT_PATH = "/api/v1/agent/artifacts/" + "ab" * 32 + "/"


class StubDownloads:
    """Answers each GET with the next scripted (status, headers, raw body, announced length or None) and records it.

    The announced length is sent as Content-Length when not None; a body shorter than it is a dropped connection.
    """

    def __init__(self) -> None:
        self.script: list[tuple[int, dict, bytes, int | None]] = []
        self.received: list[dict] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                stub.received.append({"path": self.path, "headers": dict(self.headers)})
                status, headers, raw, length = stub.script.pop(0) if stub.script else (200, {}, b"", 0)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                if length is not None:
                    self.send_header("Content-Length", str(length))
                self.end_headers()
                self.wfile.write(raw)
                # Without a length the body ends when the connection closes (HTTP/1.0 style).
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def downloads():
    stub = StubDownloads()
    yield stub
    stub.close()


@pytest.fixture
def download_client(downloads, credential, sleeps):
    agent_client = AgentClient(downloads.url, credential, max_retries=3, timeout=2.0, sleep=sleeps.append)
    yield agent_client
    agent_client.close()


def test_get_bytes_returns_the_body_of_a_signed_get(downloads, credential, download_client):
    data = bytes(range(256)) * 1000
    downloads.script = [(200, {"Content-Type": "application/octet-stream"}, data, len(data))]
    path = ARTIFACT_PATH + "?part=1"

    assert download_client.get_bytes(path, max_bytes=len(data)) == data

    (request,) = downloads.received
    headers = request["headers"]
    assert request["path"] == path
    assert headers[signing.HEADER_KEY] == "car-key-1"
    # The signature covers the method, the path with its query and the empty body.
    assert signing.verify(
        public_key=credential.public_key,
        signature=headers[signing.HEADER_SIGNATURE],
        method="GET",
        path=path,
        timestamp=int(headers[signing.HEADER_TIMESTAMP]),
        nonce=headers[signing.HEADER_NONCE],
        body=b"",
    )


def test_get_bytes_retries_a_busy_platform_and_signs_every_attempt_afresh(downloads, download_client, sleeps):
    downloads.script = [(503, {"Retry-After": "2"}, b"", 0), (429, {}, b"", 0), (200, {}, b"model", 5)]

    assert download_client.get_bytes(ARTIFACT_PATH, max_bytes=100) == b"model"

    assert len(downloads.received) == 3
    assert sleeps[0] == 2.0
    assert len({request["headers"][signing.HEADER_NONCE] for request in downloads.received}) == 3


def test_get_bytes_refetches_a_download_cut_short(downloads, download_client, sleeps):
    downloads.script = [(200, {}, b"only part", 1000), (200, {}, b"x" * 1000, 1000)]

    assert download_client.get_bytes(ARTIFACT_PATH, max_bytes=1000) == b"x" * 1000

    assert len(downloads.received) == 2
    assert len(sleeps) == 1


def test_get_bytes_does_not_retry_a_missing_file(downloads, download_client, sleeps):
    error = {"code": "not_found", "message": "No such artifact.", "fields": {}}
    downloads.script = [(404, {"Content-Type": "application/json"}, json.dumps(error).encode(), None)]

    with pytest.raises(AgentHTTPError) as raised:
        download_client.get_bytes(ARTIFACT_PATH, max_bytes=100)

    assert raised.value.status == 404
    assert raised.value.code == "not_found"
    assert len(downloads.received) == 1
    assert sleeps == []


def test_get_bytes_refuses_an_announced_oversize_without_retrying(downloads, download_client, sleeps):
    downloads.script = [(200, {}, b"x" * 101, 101)]

    with pytest.raises(DownloadTooLarge, match="100 bytes"):
        download_client.get_bytes(ARTIFACT_PATH, max_bytes=100)

    assert len(downloads.received) == 1
    assert sleeps == []


def test_get_bytes_counts_the_bytes_when_no_length_is_announced(downloads, download_client):
    downloads.script = [(200, {}, b"x" * 200_000, None)]

    with pytest.raises(DownloadTooLarge):
        download_client.get_bytes(ARTIFACT_PATH, max_bytes=150_000)


def test_get_bytes_accepts_exactly_max_bytes_without_a_length(downloads, download_client):
    downloads.script = [(200, {}, b"y" * 150_000, None)]

    assert download_client.get_bytes(ARTIFACT_PATH, max_bytes=150_000) == b"y" * 150_000


def test_get_bytes_reports_an_unreachable_platform(credential, sleeps):
    stub = StubDownloads()
    url = stub.url
    stub.close()
    client = AgentClient(url, credential, max_retries=1, timeout=1.0, sleep=sleeps.append)

    with pytest.raises(AgentUnavailable, match="GET"):
        client.get_bytes(ARTIFACT_PATH, max_bytes=100)

    assert len(sleeps) == 1
