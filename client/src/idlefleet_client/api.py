"""Idlefleet's REST API (`/api/v1/`), one method per endpoint, over httpx.

Every error the API answers has one shape, `{"code": ..., "message": ..., "fields": {field: [messages]}}`: it is
raised here as `ApiError` with the HTTP status. Money goes both ways as exact decimal strings of US dollars ("0.015").
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

USER_AGENT = "idlefleet-client/0.1.0"


class ApiError(Exception):
    """An error answer of the API (`status` is its HTTP status), or no answer at all (`status` 0: the network)."""

    def __init__(self, status: int, code: str, message: str, fields: dict[str, list[str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields or {}

    def __repr__(self) -> str:
        return f"ApiError({self.status}, {self.code!r}, {self.message!r}, {self.fields!r})"

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("message"), str):
            fields = body.get("fields") if isinstance(body.get("fields"), dict) else {}
            fields = {str(k): [str(m) for m in (v if isinstance(v, list) else [v])] for k, v in fields.items()}
            return cls(response.status_code, str(body.get("code") or "error"), body["message"], fields)
        # Not the API's own shape: a proxy's page, say.
        reason = response.reason_phrase or "error"
        return cls(response.status_code, "http_error", f"{response.status_code} {reason} from {response.request.url}")


class Client:
    """One server and (once logged in) one token. `transport` is for tests (httpx.MockTransport)."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Token {token}"
        self._http = httpx.Client(base_url=f"{self.url}/api/v1", headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing -----------------------------------------------------------------------------------------------

    def _send(self, method: str, path: str, *, retries: int = 0, **kwargs: Any) -> httpx.Response:
        """A request, its error answer raised as ApiError. `retries`: sent again after a network failure (only for
        requests that are safe to repeat: reads, and writes carrying an Idempotency-Key)."""
        for attempt in range(retries + 1):
            try:
                response = self._http.request(method, path, **kwargs)
                break
            except httpx.TransportError as error:
                if attempt == retries:
                    raise ApiError(0, "network_error", f"Could not reach {self.url}: {error}") from error
        if response.is_error:
            raise ApiError.from_response(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._send(method, path, **kwargs)
        return response.json() if response.content else None

    @staticmethod
    def _key(idempotency_key: str | None) -> dict[str, str]:
        return {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}

    # --- accounts -----------------------------------------------------------------------------------------------

    def token_create(self, username: str, password: str, *, name: str | None = None) -> dict:
        """POST /auth/token/: a token for `Authorization: Token …` ({"token", "expiry"}). `name` labels it on the
        account's tokens page."""
        body = {"username": username, "password": password}
        if name:
            body["name"] = name
        return self._json("POST", "/auth/token/", json=body)

    def token_revoke(self) -> None:
        """POST /auth/logout/: revoke the token this client uses."""
        self._send("POST", "/auth/logout/")

    def me(self) -> dict:
        return self._json("GET", "/me/", retries=2)

    # --- models and datasets ------------------------------------------------------------------------------------

    def models(self) -> list[dict]:
        return self._json("GET", "/models/", retries=2)

    def model(self, model_id: int) -> dict:
        return self._json("GET", f"/models/{model_id}/", retries=2)

    def datasets(self, model_id: int) -> list[dict]:
        return self._json("GET", f"/models/{model_id}/datasets/", retries=2)

    def dataset_upload(
        self, model_id: int, path: str | Path, *, name: str | None = None, idempotency_key: str | None = None
    ) -> dict:
        """POST /models/{id}/datasets/ (multipart `file`): a `.npy`/`.npz` of items, or text lines."""
        path = Path(path)
        data = {"name": name} if name else {}
        headers = self._key(idempotency_key)
        with path.open("rb") as handle:
            return self._json(
                "POST", f"/models/{model_id}/datasets/", data=data, files={"file": (path.name, handle)}, headers=headers
            )

    def estimate(
        self, model_id: int, dataset_id: int, *, max_price_usd_per_ch: str | None = None, precision: str = "auto"
    ) -> dict:
        """GET /models/{id}/estimate/: the cost in each precision's pool, the pool a bid would run in, a budget."""
        params = {"dataset": dataset_id, "precision": precision}
        if max_price_usd_per_ch is not None:
            params["max_price_usd_per_ch"] = str(max_price_usd_per_ch)
        return self._json("GET", f"/models/{model_id}/estimate/", params=params, retries=2)

    # --- bids ---------------------------------------------------------------------------------------------------

    def bids(self) -> list[dict]:
        return self._json("GET", "/bids/", retries=2)

    def bid(self, bid_id: int) -> dict:
        return self._json("GET", f"/bids/{bid_id}/", retries=2)

    def bid_place(
        self,
        *,
        inference_model: int,
        dataset: int,
        max_price_usd_per_ch: str,
        budget_usd: str,
        deadline: str,
        precision: str = "auto",
        funding: str | None = None,
        all_or_none: bool = False,
        region: str | None = None,
        idempotency_key: str | None = None,
    ) -> dict:
        """POST /bids/. Sent again after a network failure with the same Idempotency-Key: one bid, never two.
        `region` pins the job to one market region's cars (data residency); None: any region."""
        body: dict[str, Any] = {
            "inference_model": inference_model, "dataset": dataset, "precision": precision,
            "max_price_usd_per_ch": str(max_price_usd_per_ch), "budget_usd": str(budget_usd), "deadline": deadline,
            "all_or_none": all_or_none,
        }  # fmt: skip
        if funding:
            body["funding"] = funding
        if region:
            body["region"] = region
        return self._json("POST", "/bids/", json=body, headers=self._key(idempotency_key), retries=2)

    def bid_cancel(self, bid_id: int) -> dict:
        return self._json("POST", f"/bids/{bid_id}/cancel/")

    def bid_raise_price(self, bid_id: int, max_price_usd_per_ch: str) -> dict:
        """PATCH /bids/{id}/: a higher maximum price per CH."""
        return self._json("PATCH", f"/bids/{bid_id}/", json={"max_price_usd_per_ch": str(max_price_usd_per_ch)})

    def bid_result_download(
        self, bid_id: int, open_file: Callable[[str], Any], *, on_bytes: Callable[[int, int | None], None] | None = None
    ) -> tuple[str, int]:
        """GET /bids/{id}/result/, streamed: `open_file(server_filename)` returns the binary file to write to.
        Returns (server_filename, bytes written). `on_bytes(written, total)` follows the transfer."""
        try:
            with self._http.stream("GET", f"/bids/{bid_id}/result/") as response:
                if response.is_error:
                    response.read()
                    raise ApiError.from_response(response)
                filename = _attachment_name(response.headers.get("Content-Disposition", "")) or f"bid-{bid_id}-results"
                total = int(response.headers["Content-Length"]) if "Content-Length" in response.headers else None
                written = 0
                with open_file(filename) as handle:
                    for chunk in response.iter_bytes():
                        handle.write(chunk)
                        written += len(chunk)
                        if on_bytes:
                            on_bytes(written, total)
                return filename, written
        except httpx.TransportError as error:
            raise ApiError(0, "network_error", f"Could not reach {self.url}: {error}") from error

    def market(self) -> dict:
        return self._json("GET", "/market/", retries=2)


def _attachment_name(disposition: str) -> str | None:
    """The file name of `attachment; filename="bid-3-results-v1.npy"`, without any directory part."""
    for part in disposition.split(";"):
        key, _, value = part.strip().partition("=")
        if key.lower() == "filename" and value:
            return Path(value.strip().strip('"')).name or None
    return None
