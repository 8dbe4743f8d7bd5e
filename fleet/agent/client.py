"""The agent's HTTP client: signed JSON requests to the platform, retried with backoff when the platform is busy.

Every attempt is signed afresh (a new nonce and timestamp): the server refuses a reused nonce as a replay, and a retry
after a long backoff would otherwise fall outside its time window. The timestamp is real wall-clock time even for a
simulated car, whose own clock may be days ahead: the server checks it against its own clock.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import TypeVar

import requests

from .signing import Credential

log = logging.getLogger("idlefleet.agent")
T = TypeVar("T")

# Full jitter needs no reproducibility; SystemRandom keeps the cars of a fleet from retrying in step.
_jitter = random.SystemRandom()


class AgentHTTPError(Exception):
    """The platform refused the request (a 4xx other than 429); retrying the same request would not help.

    `body` is the platform's error, {"code", "message", "fields"}, when it sent JSON; else None.
    """

    def __init__(self, status: int, body: dict | None) -> None:
        self.status = status
        self.body = body
        self.code = body.get("code", "") if isinstance(body, dict) else ""
        self.message = body.get("message", "") if isinstance(body, dict) else ""
        super().__init__(f"HTTP {status}: {self.message or self.code or 'no error message'}")


class AgentUnavailable(Exception):
    """The platform could not be reached, or stayed busy (429/5xx), through every retry."""


class DownloadTooLarge(Exception):
    """A download was longer than the caller allowed; it was aborted without reading the rest.

    Not retried: the same request would bring the same oversized file. `max_bytes` is the limit in bytes.
    """

    def __init__(self, path: str, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        super().__init__(f"GET {path}: the download is larger than the allowed {max_bytes} bytes")


class AgentClient:
    """Signs and sends the agent's requests over one keep-alive session.

    timeout: seconds per attempt (connect and read). max_retries: retries after the first attempt, so at most
    max_retries + 1 attempts. Backoff before retry n (from 0): a random delay in [0, min(backoff_cap, backoff_base *$
    2^n)] seconds ("full jitter"), or the server's Retry-After when it sends one, capped at backoff_cap seconds.
    `sleep` and `wall_clock` are injectable for tests.
    """

    def __init__(
        self,
        server: str,
        credential: Credential,
        *,
        timeout: float = 10.0,
        max_retries: int = 5,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        wall_clock: Callable[[], float] = time.time,
        session: requests.Session | None = None,
    ) -> None:
        self.server = server.rstrip("/")
        self.credential = credential
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self._sleep = sleep
        self._wall_clock = wall_clock
        self.session = session or requests.Session()

    def post(self, path: str, payload: dict) -> tuple[int, dict | None]:
        """POST `payload` as JSON to `path` (e.g. "/api/v1/agent/heartbeat/"); return (status, parsed JSON or None).

        Raises AgentHTTPError on a 4xx other than 429, AgentUnavailable when every attempt failed.
        """
        # Compact and sorted: the signature covers these exact bytes, and the same payload always gives the same body.
        body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()

        def send(headers: dict[str, str]) -> requests.Response:
            headers["Content-Type"] = "application/json"
            return self.session.post(self.server + path, data=body, headers=headers, timeout=self.timeout)

        def read(response: requests.Response) -> tuple[int, dict | None]:
            status = response.status_code
            return status, (None if status == 204 else _json_or_none(response))

        return self._with_retries("POST", path, body, send, read)

    def get_json(self, path: str) -> dict | None:
        """GET `path` (e.g. "/api/v1/agent/me/"), signed like post() with an empty body; the parsed JSON object or
        None. Raises AgentHTTPError on a 4xx other than 429, AgentUnavailable when every attempt failed."""

        def send(headers: dict[str, str]) -> requests.Response:
            return self.session.get(self.server + path, headers=headers, timeout=self.timeout)

        return self._with_retries("GET", path, b"", send, _json_or_none)

    def get_bytes(self, path: str, *, max_bytes: int) -> bytes:
        """GET `path` (with its query, e.g. "/api/v1/agent/artifacts/<sha256>/") and return the body, at most
        `max_bytes` bytes.

        Signed like post() (method "GET", an empty body) and retried by the same rules: connection errors, timeouts,
        a connection dropped mid-download, 429 and 5xx. Raises AgentHTTPError on another 4xx, DownloadTooLarge as
        soon as the body (or its announced Content-Length) exceeds max_bytes, AgentUnavailable when every attempt
        failed. The body is streamed, so an oversized file is never held in memory.
        """

        def send(headers: dict[str, str]) -> requests.Response:
            # The file's own bytes: its sha256 is checked on them, and max_bytes must count what is held in memory.
            headers["Accept-Encoding"] = "identity"
            return self.session.get(self.server + path, headers=headers, timeout=self.timeout, stream=True)

        return self._with_retries("GET", path, b"", send, lambda response: _read_capped(response, path, max_bytes))

    def _with_retries(
        self,
        method: str,
        path: str,
        body: bytes,
        send: Callable[[dict[str, str]], requests.Response],
        read: Callable[[requests.Response], T],
    ) -> T:
        """Sign (afresh: a new nonce and timestamp every attempt), send, and read one request, retrying connection
        errors, timeouts, a connection dropped while reading, 429 and 5xx with backoff; another 4xx is final."""
        last_problem = ""
        retry_after: str | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                delay = self._backoff(attempt - 1, retry_after)
                log.info("retrying %s %s in %.1f s (attempt %d): %s", method, path, delay, attempt + 1, last_problem)
                self._sleep(delay)
            retry_after = None
            headers = self.credential.sign(method=method, path=path, body=body, timestamp=int(self._wall_clock()))
            try:
                response = send(headers)
            except (requests.ConnectionError, requests.Timeout) as error:
                last_problem = f"{type(error).__name__}: {error}"
                continue
            with response:
                status = response.status_code
                if status == 429 or status >= 500:
                    last_problem = f"HTTP {status}"
                    retry_after = response.headers.get("Retry-After")
                    continue
                if status >= 400:
                    raise AgentHTTPError(status, _json_or_none(response))
                try:
                    return read(response)
                except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as error:
                    # The connection broke mid-body (a car's WiFi does): the whole request is made again.
                    last_problem = f"{type(error).__name__}: {error}"
                    continue
        raise AgentUnavailable(f"{method} {path} failed after {self.max_retries + 1} attempts: {last_problem}")

    def _backoff(self, retry: int, retry_after: str | None) -> float:
        """Seconds to wait before retry number `retry` (0 = the first retry)."""
        told = _retry_after_seconds(retry_after, self._wall_clock())
        if told is not None:
            return min(told, self.backoff_cap)
        return _jitter.uniform(0, min(self.backoff_cap, self.backoff_base * 2**retry))

    def close(self) -> None:
        self.session.close()


def _read_capped(response: requests.Response, path: str, max_bytes: int) -> bytes:
    """The streamed body of `response`, refusing more than `max_bytes` bytes (DownloadTooLarge)."""
    announced = response.headers.get("Content-Length", "")
    # Refuse an announced oversize before reading a byte; the count below still guards a missing or false header.
    if announced.isdigit() and int(announced) > max_bytes:
        raise DownloadTooLarge(path, max_bytes)
    chunks: list[bytes] = []
    received = 0
    for chunk in response.iter_content(chunk_size=64 * 1024):
        received += len(chunk)
        if received > max_bytes:
            raise DownloadTooLarge(path, max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


def _json_or_none(response: requests.Response) -> dict | None:
    try:
        data = response.json()
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _retry_after_seconds(value: str | None, now: float) -> float | None:
    """Retry-After as seconds from now: either delay-seconds or an HTTP date (RFC 9110); None when absent or garbled."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError):
        return None
