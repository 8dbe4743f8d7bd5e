"""A local fake of the Stripe API for the demo and the tests. DEV ONLY: production never imports or runs this module.

    python -m billing.localstripe_dev --port 8420 [--host 127.0.0.1]

It runs [localstripe](https://github.com/adrienverge/localstripe) (a stateful fake Stripe that the real `stripe` SDK
talks to through `STRIPE_API_BASE`), with what the marketplace needs and localstripe lacks added to its aiohttp app:

- Stripe Connect: `/v1/accounts`, `/v1/account_links` and `/v1/transfers`, plus a one-button onboarding page
  (`/_connect/onboard/{acct_id}`) standing in for Stripe's hosted onboarding, so car owners can be paid out.
- `Idempotency-Key` on every `POST /v1/...`: localstripe ignores the header, so a retried request runs again (a
  second transfer; a retried capture refused with a 400 instead of the first answer). Replays follow Stripe's rules.
- A few fields and webhook events that Stripe has and localstripe does not (see `_patch_localstripe`).

Why fresh state on every start, held in memory only: localstripe pickles its whole store to the hard-coded
`/tmp/localstripe.pickle` on every write, shared by every localstripe on the machine (the demo's and the tests' would
overwrite each other) and reloaded on start unless `--from-scratch` is given. This server never loads it and never
writes it: a restart is a blank Stripe account, as the demo and the tests expect.

Why 127.0.0.1 by default: localstripe's own entry point listens on every interface, and this server accepts any
`sk_...` key. Webhook endpoints are not kept either: register them after each start (`webhook_register`, or
`--webhook-url`/`--webhook-secret`).
"""

from __future__ import annotations

import argparse
import hashlib
import html
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

import requests
from aiohttp import web
from localstripe import __version__ as localstripe_version
from localstripe.errors import UserError
from localstripe.resources import (
    Charge,
    Event,
    List,
    PaymentIntent,
    PaymentMethod,
    Refund,
    StripeObject,
    random_id,
    store,
    try_convert_to_int,
)
from localstripe.webhooks import register_webhook, schedule_webhook

with warnings.catch_warnings():
    # localstripe registers plain functions as aiohttp handlers: one DeprecationWarning per route, in every process
    # that imports this module (the tests' too), about code that is not ours.
    warnings.simplefilter("ignore", DeprecationWarning)
    from localstripe import server as localstripe_server

REPO_ROOT = Path(__file__).resolve().parent.parent
# Any "sk_..." key is accepted; this is the one the settings and the tests use. Not a secret: it opens nothing real.
LOCAL_SECRET_KEY = "sk_test_local"  # noqa: S105
ONBOARDING_TITLE = "Local Stripe: Connect onboarding (test mode)"
IDEMPOTENCY_KEY_TTL_SECONDS = 24 * 3600  # Stripe forgets a key after 24 hours
ACCOUNT_LINK_TTL_SECONDS = 300  # Stripe's account links expire after a few minutes

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# --- Helpers for the demo and the tests (run in their process; they only speak HTTP to the server) --------------------


def localstripe_start(port: int, *, host: str = "127.0.0.1", timeout_s: float = 20.0) -> subprocess.Popen[bytes]:
    """Start this server in a child process on host:port and return once that child answers.

    The child dies with its parent (Linux), so a killed test run leaves no server behind. Its access log is off;
    errors still reach stderr. Raises RuntimeError if it exits or does not answer within `timeout_s` (for example
    because the port is taken): the caller can retry on another port. Stop it with `localstripe_stop`.
    """
    command = [sys.executable, "-m", "billing.localstripe_dev", "--port", str(port), "--host", host]
    command += ["--quiet", "--exit-with-parent"]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdin=subprocess.DEVNULL)  # noqa: S603
    health_url = f"http://{_url_host(host)}:{port}/_dev/health"
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the local Stripe server exited with code {process.returncode} (port {port} taken?)")
        # Checking the pid makes sure it is our child answering, not a server left running on the same port.
        if _health_pid(health_url) == process.pid:
            return process
        if time.monotonic() > deadline:
            localstripe_stop(process)
            raise RuntimeError(f"the local Stripe server did not answer on {host}:{port} within {timeout_s} s")
        time.sleep(0.05)


def localstripe_stop(process: subprocess.Popen[bytes], *, timeout_s: float = 5.0) -> None:
    """Stop a server started by `localstripe_start`: SIGTERM (a clean aiohttp shutdown), then SIGKILL."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def webhook_register(api_base: str, *, url: str, secret: str) -> None:
    """Have the server POST every event to `url`, signed with `secret` as Stripe signs them (`Stripe-Signature`).

    Registering the same url again replaces its secret instead of adding a second endpoint.
    """
    endpoint_id = "we_" + hashlib.sha256(url.encode()).hexdigest()[:16]
    response = requests.post(
        f"{api_base.rstrip('/')}/_config/webhooks/{endpoint_id}", data={"url": url, "secret": secret}, timeout=5
    )
    response.raise_for_status()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _health_pid(url: str) -> int | None:
    try:
        response = requests.get(url, timeout=0.5)
        return response.json()["pid"] if response.ok else None
    except (requests.RequestException, ValueError, KeyError):
        return None


# --- Stripe-shaped errors ---------------------------------------------------------------------------------------------


def _invalid_request(message: str, *, param: str | None = None, code: str | None = None) -> UserError:
    """A 400 `invalid_request_error` that the SDK raises as InvalidRequestError with `.param` and `.code` set."""
    details = {key: value for key, value in {"param": param, "code": code}.items() if value is not None}
    return UserError(400, message, details)


def _error_response(status: int, error_type: str, message: str) -> web.Response:
    # UserError always says invalid_request_error; idempotency errors need their own type (IdempotencyError).
    return localstripe_server.json_response({"error": {"type": error_type, "message": message}}, status=status)


def _unknown_params(data: dict, allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise _invalid_request(f"Received unknown parameter: {unknown[0]}", param=unknown[0])


def _metadata(value: object) -> dict:
    if value is None or value == "":
        return {}
    if not isinstance(value, dict):
        raise _invalid_request("Invalid object", param="metadata")
    return dict(value)


def _http_url(value: object, param: str) -> str:
    if not isinstance(value, str) or not value:
        raise _invalid_request(f"Missing required param: {param}.", param=param, code="parameter_missing")
    if not value.startswith(("http://", "https://")):
        raise _invalid_request(f"Not a valid URL: {param}", param=param, code="url_invalid")
    return value


def _newest_first(objects: list) -> list:
    # Stripe lists newest first; localstripe's store keeps insertion order (oldest first), and `created` is in
    # whole seconds, so reversing the insertion order is the exact newest-first order.
    return list(reversed(objects))


# --- Connect: accounts, account links, onboarding, transfers ----------------------------------------------------------


class Account(StripeObject):
    """A connected account (Stripe Connect). Not onboarded when created: it cannot receive transfers until the
    owner completes onboarding (the page behind an account link)."""

    object = "account"
    _id_prefix = "acct_"
    _params = {"type", "country", "email", "capabilities", "metadata", "business_type"}

    def __init__(self, **data) -> None:
        _unknown_params(data, self._params)
        account_type = data.get("type")
        if account_type not in ("express", "standard", "custom"):
            raise _invalid_request("Invalid type: must be one of express, standard or custom", param="type")
        country = data.get("country") or "US"
        if not (isinstance(country, str) and re.fullmatch(r"[A-Za-z]{2}", country)):
            raise _invalid_request("Invalid country", param="country")
        capabilities = data.get("capabilities") or {}
        if not isinstance(capabilities, dict):
            raise _invalid_request("Invalid object", param="capabilities")
        metadata = _metadata(data.get("metadata"))

        super().__init__()  # stores the object: every check must come before this line
        self.type = account_type
        self.country = country.upper()
        self.email = data.get("email")
        self.business_type = data.get("business_type")
        self.metadata = metadata
        self.details_submitted = False
        self.charges_enabled = False
        self.payouts_enabled = False
        self.capabilities = {name: "inactive" for name in capabilities}
        self.requirements = {
            "currently_due": ["external_account", "tos_acceptance.date", "tos_acceptance.ip"],
            "disabled_reason": "requirements.past_due",
        }

    @classmethod
    def _api_retrieve(cls, id):
        account = store.get(f"account:{id}")
        if account is None:
            raise UserError(404, f"No such account: '{id}'", {"param": "account", "code": "resource_missing"})
        return account

    @classmethod
    def _api_update(cls, id, **data):
        _unknown_params(data, {"email", "metadata"})
        account = cls._api_retrieve(id)
        if "email" in data:
            account.email = data["email"]
        account.metadata.update(_metadata(data.get("metadata")))
        schedule_webhook(_connect_event("account.updated", account))
        return account

    @classmethod
    def _api_delete(cls, id):
        raise UserError(405, "Method Not Allowed")

    @classmethod
    def _api_list_all(cls, url, limit=None, starting_after=None, **kwargs):
        _unknown_params(kwargs, set())
        accounts = List(url, limit=limit, starting_after=starting_after)
        accounts._list = _newest_first([value for key, value in store.items() if key.startswith("account:")])
        return accounts

    def _complete_onboarding(self) -> bool:
        """What the owner finishing Stripe's hosted onboarding does. Returns False if it was already complete."""
        if self.payouts_enabled:
            return False
        self.details_submitted = True
        self.charges_enabled = True
        self.payouts_enabled = True
        self.capabilities = dict.fromkeys(self.capabilities or {"transfers": None}, "active")
        self.requirements = {"currently_due": [], "disabled_reason": None}
        return True


def _connect_event(event_type: str, account: Account) -> Event:
    """An event about a connected account: Stripe sets `account` on those (and sends them to Connect endpoints)."""
    event = Event(event_type, account)
    event.account = account.id
    return event


class Transfer(StripeObject):
    """Money moved from the platform's balance to a connected account (separate charges and transfers).

    Unlike Stripe, the platform's balance is not checked: a transfer never fails for balance_insufficient here.
    """

    object = "transfer"
    _id_prefix = "tr_"
    _params = {"amount", "currency", "destination", "transfer_group", "metadata", "description", "source_transaction"}

    def __init__(self, **data) -> None:
        _unknown_params(data, self._params)
        if data.get("amount") in (None, ""):
            raise _invalid_request("Missing required param: amount.", param="amount", code="parameter_missing")
        amount = try_convert_to_int(data["amount"])
        if not isinstance(amount, int) or amount <= 0:
            raise _invalid_request("Invalid positive integer", param="amount", code="parameter_invalid_integer")
        currency = data.get("currency")
        if not currency:
            raise _invalid_request("Missing required param: currency.", param="currency", code="parameter_missing")
        if not (isinstance(currency, str) and re.fullmatch(r"[A-Za-z]{3}", currency)):
            raise _invalid_request(f"Invalid currency: {currency}", param="currency", code="parameter_invalid")
        destination = data.get("destination")
        if not destination:
            raise _invalid_request(
                "Missing required param: destination.", param="destination", code="parameter_missing"
            )
        account = store.get(f"account:{destination}")
        if account is None:
            raise _invalid_request(
                f"No such destination: '{destination}'", param="destination", code="resource_missing"
            )
        if not account.payouts_enabled:
            raise _invalid_request(
                f"The destination account {destination} cannot receive transfers: it has not completed onboarding "
                "(payouts_enabled is false), so its transfers capability is not active.",
                param="destination",
                code="insufficient_capabilities_for_transfer",
            )
        metadata = _metadata(data.get("metadata"))

        super().__init__()  # stores the object: every check must come before this line
        self.amount = amount
        self.currency = currency.lower()
        self.destination = destination
        self.destination_payment = "py_" + random_id(14)
        self.transfer_group = data.get("transfer_group")
        self.source_transaction = data.get("source_transaction")
        self.description = data.get("description")
        self.metadata = metadata
        self.reversed = False
        self.amount_reversed = 0
        self.balance_transaction = None
        self.source_type = "card"
        self.reversals = {
            "object": "list",
            "data": [],
            "has_more": False,
            "total_count": 0,
            "url": f"/v1/transfers/{self.id}/reversals",
        }

    @classmethod
    def _api_create(cls, **data):
        transfer = cls(**data)
        schedule_webhook(Event("transfer.created", transfer))
        return transfer

    @classmethod
    def _api_retrieve(cls, id):
        transfer = store.get(f"transfer:{id}")
        if transfer is None:
            raise UserError(404, f"No such transfer: '{id}'", {"param": "id", "code": "resource_missing"})
        return transfer

    @classmethod
    def _api_update(cls, id, **data):
        _unknown_params(data, {"description", "metadata"})
        transfer = cls._api_retrieve(id)
        if "description" in data:
            transfer.description = data["description"]
        transfer.metadata.update(_metadata(data.get("metadata")))
        schedule_webhook(Event("transfer.updated", transfer))
        return transfer

    @classmethod
    def _api_delete(cls, id):
        raise UserError(405, "Method Not Allowed")

    @classmethod
    def _api_list_all(cls, url, limit=None, starting_after=None, destination=None, transfer_group=None, **kwargs):
        _unknown_params(kwargs, set())
        transfers = List(url, limit=limit, starting_after=starting_after)
        transfers._list = _newest_first(
            [
                value
                for key, value in store.items()
                if key.startswith("transfer:")
                and destination in (None, value.destination)
                and transfer_group in (None, value.transfer_group)
            ]
        )
        return transfers


async def account_link_create(request: web.Request) -> web.Response:
    """`POST /v1/account_links`: a link to this server's onboarding page instead of Stripe's hosted one."""
    data = await localstripe_server.get_post_data(request) or {}
    data.pop("expand", None)
    _unknown_params(data, {"account", "refresh_url", "return_url", "type", "collect", "collection_options"})
    account_id = data.get("account")
    if not account_id:
        raise _invalid_request("Missing required param: account.", param="account", code="parameter_missing")
    account = Account._api_retrieve(account_id)
    if data.get("type") not in ("account_onboarding", "account_update"):
        raise _invalid_request("Invalid type: must be account_onboarding or account_update", param="type")
    refresh_url = _http_url(data.get("refresh_url"), "refresh_url")
    return_url = _http_url(data.get("return_url"), "return_url")
    created = int(time.time())
    query = urlencode({"return_url": return_url, "refresh_url": refresh_url})
    return localstripe_server.json_response(
        {
            "object": "account_link",
            "created": created,
            "expires_at": created + ACCOUNT_LINK_TTL_SECONDS,
            "url": f"{request.url.origin()}/_connect/onboard/{account.id}?{query}",
        }
    )


async def onboarding_page(request: web.Request) -> web.Response:
    """`GET /_connect/onboard/{acct_id}`: the page an account link opens, with one button that completes onboarding."""
    account = Account._api_retrieve(request.match_info["acct_id"])
    state = "complete" if account.payouts_enabled else "not complete"
    page = f"""<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>{html.escape(ONBOARDING_TITLE)}</title></head>
<body>
  <h1>{html.escape(ONBOARDING_TITLE)}</h1>
  <p>A local stand-in for Stripe's hosted onboarding: no real account, identity or bank details are involved.</p>
  <p>Account <code>{html.escape(account.id)}</code> ({html.escape(account.email or "no email")}):
     onboarding {state}.</p>
  <form method="post">
    <input type="hidden" name="return_url" value="{html.escape(request.query.get("return_url", ""))}">
    <button type="submit">Complete onboarding</button>
  </form>
</body>
</html>
"""
    return web.Response(text=page, content_type="text/html")


async def onboarding_complete(request: web.Request) -> web.StreamResponse:
    """`POST /_connect/onboard/{acct_id}`: mark the account onboarded, send `account.updated`, go back to the platform.

    Answers the account as JSON instead of redirecting with `Accept: application/json` or `?format=json` (tests).
    """
    account = Account._api_retrieve(request.match_info["acct_id"])
    form = await request.post()
    return_url = form.get("return_url") or request.query.get("return_url") or ""
    if return_url:
        _http_url(return_url, "return_url")
    if account._complete_onboarding():
        schedule_webhook(_connect_event("account.updated", account))
    if "application/json" in request.headers.get("Accept", "") or request.query.get("format") == "json":
        return localstripe_server.json_response(account._export())
    if return_url:
        raise web.HTTPSeeOther(return_url)
    page = f"<!doctype html><title>{html.escape(ONBOARDING_TITLE)}</title><p>Onboarding complete.</p>"
    return web.Response(text=page, content_type="text/html")


async def health(request: web.Request) -> web.Response:
    """`GET /_dev/health`: tells `localstripe_start` which process answers on the port."""
    return localstripe_server.json_response({"ok": True, "pid": os.getpid(), "localstripe": localstripe_version})


# --- Idempotency keys -------------------------------------------------------------------------------------------------


@dataclass
class _SavedResult:
    endpoint: str
    params: str
    status: int
    body: bytes
    saved_at: float


_saved_results: dict[tuple[str, str], _SavedResult] = {}
_in_progress: set[tuple[str, str]] = set()


async def _request_params(request: web.Request) -> str:
    """The request's parameters in a canonical form, so that a retry compares equal whatever the encoding order."""
    body = await request.read()  # aiohttp keeps the body: the handler can still read it
    try:
        if request.content_type == "application/json" and body:
            body_params = json.dumps(json.loads(body), sort_keys=True)
        else:
            body_params = json.dumps(sorted(parse_qsl(body.decode(), keep_blank_values=True)))
    except ValueError:  # not JSON, or not UTF-8: compare the bytes as they came
        body_params = body.hex()
    return json.dumps([sorted(request.query.items()), body_params])


def _forget_expired_keys() -> None:
    # Results are saved in time order (dicts keep insertion order), so the expired ones are all at the front.
    expired_before = time.time() - IDEMPOTENCY_KEY_TTL_SECONDS
    while _saved_results:
        oldest_scope = next(iter(_saved_results))
        if _saved_results[oldest_scope].saved_at > expired_before:
            return
        del _saved_results[oldest_scope]


def _is_saved(status: int) -> bool:
    # Stripe saves a result once the endpoint has run; it does not save a request rejected by validation. localstripe
    # does not tell one 400 from the other, so only successes and card declines (402) are saved: a request refused
    # with a 4xx can be retried with the same key once its cause is fixed (Stripe might replay some of those).
    return status < 400 or status == 402


@web.middleware
async def idempotency_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Stripe's idempotent requests for every `POST /v1/...`: localstripe ignores `Idempotency-Key` altogether.

    The same key with the same parameters replays the first answer (status and body, with `Idempotent-Replayed:
    true`) without running the request again; the same key on another endpoint or with other parameters is a 400
    `idempotency_error`; a key still in flight is a 409. Keys are per API key and forgotten after 24 hours.
    """
    key = request.headers.get("Idempotency-Key")
    if request.method != "POST" or not request.path.startswith("/v1/") or not key:
        return await handler(request)
    if len(key) > 255:
        return _error_response(400, "invalid_request_error", "Invalid idempotency key: at most 255 characters.")
    scope = (localstripe_server.get_api_key(request) or "", key)
    endpoint = f"{request.method} {request.path}"
    params = await _request_params(request)
    _forget_expired_keys()
    saved = _saved_results.get(scope)
    if saved is not None:
        if saved.endpoint != endpoint:
            return _error_response(
                400,
                "idempotency_error",
                f"Keys for idempotent requests can only be used for the same endpoint they were first used for "
                f"('{saved.endpoint}' vs '{endpoint}'). Try using a key other than '{key}' if you meant to execute "
                "a different request.",
            )
        if saved.params != params:
            return _error_response(
                400,
                "idempotency_error",
                "Keys for idempotent requests can only be used with the same parameters they were first used with. "
                f"Try using a key other than '{key}' if you meant to execute a different request.",
            )
        return web.Response(
            body=saved.body,
            status=saved.status,
            content_type="application/json",
            headers={"Idempotency-Key": key, "Idempotent-Replayed": "true"},
        )
    if scope in _in_progress:
        return _error_response(
            409,
            "idempotency_error",
            f"There is currently another in-progress request using this Idempotent Key: {key}. Try again later.",
        )

    _in_progress.add(scope)
    try:
        try:
            response = await handler(request)
        except UserError as error:  # a 402 decline must be saved, so turn it into its response here
            response = error.to_response()
        if isinstance(response, web.Response) and _is_saved(response.status):
            _saved_results[scope] = _SavedResult(endpoint, params, response.status, response.body, time.time())
        response.headers["Idempotency-Key"] = key
        return response
    finally:
        _in_progress.discard(scope)


# --- What localstripe lacks for the platform's payments ---------------------------------------------------------------

# Stripe's generic declined card; localstripe only knows the `pm_card_visa_chargeDeclined` spelling.
_TEST_PAYMENT_METHOD_ALIASES = {"pm_card_chargeDeclined": "pm_card_visa_chargeDeclined"}
_PAYMENT_INTENT_CONFIRMED = re.compile(r"^/v1/payment_intents(/[^/]+/(confirm|_authenticate))?$")
_PAYMENT_INTENT_CANCELED = re.compile(r"^/v1/payment_intents/[^/]+/cancel$")


@web.middleware
async def missing_events_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Send the webhook events Stripe sends and localstripe does not, after the request that causes them succeeds.

    localstripe sends `payment_intent.succeeded` (capture, or an automatic charge) and `payment_intent.payment_failed`
    only. Added here: `payment_intent.amount_capturable_updated` (a manual-capture intent authorized),
    `payment_intent.canceled` and `charge.refunded` (a refund created through `POST /v1/refunds`). This is a
    middleware, not a patch of localstripe's methods, because its routes hold references to the original methods.
    It runs inside the idempotency middleware, so a replayed request sends nothing again.
    """
    response = await handler(request)
    if request.method != "POST" or response.status != 200 or not isinstance(response, web.Response):
        return response
    path = request.path
    if _PAYMENT_INTENT_CONFIRMED.match(path) or _PAYMENT_INTENT_CANCELED.match(path) or path == "/v1/refunds":
        answered = json.loads(response.body)
        if path == "/v1/refunds":
            schedule_webhook(Event("charge.refunded", Charge._api_retrieve(answered["charge"])))
        elif _PAYMENT_INTENT_CANCELED.match(path):
            schedule_webhook(Event("payment_intent.canceled", PaymentIntent._api_retrieve(answered["id"])))
        elif answered.get("status") == "requires_capture":
            intent = PaymentIntent._api_retrieve(answered["id"])
            schedule_webhook(Event("payment_intent.amount_capturable_updated", intent))
    return response


@web.middleware
async def refuse_connected_account_header(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A request made on behalf of a connected account (`Stripe-Account`) would silently act on the platform here."""
    if request.headers.get("Stripe-Account"):
        return _error_response(
            400, "invalid_request_error", "The local Stripe server does not support the Stripe-Account header."
        )
    return await handler(request)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """localstripe's API-key check (any `sk_...` key, Bearer or Basic), except on pages a browser opens."""
    if request.path.startswith(("/_connect/", "/_dev/")):
        return await handler(request)
    return await localstripe_server.auth_middleware(request, handler)


def _accept_optional_params(cls: type, names: tuple[str, ...]) -> None:
    """Let `cls` take Stripe parameters that localstripe rejects as "Unexpected", kept on the object as they are."""
    original_init = cls.__init__

    def __init__(self, **data) -> None:
        extra = {name: data.pop(name, None) for name in names}
        original_init(self, **data)
        for name, value in extra.items():
            setattr(self, name, value)

    cls.__init__ = __init__


def _patch_localstripe() -> None:
    """Fields, parameters and test ids that Stripe has and localstripe lacks, and no state on disk.

    - `PaymentIntent.amount_capturable`, `PaymentIntent.amount_received` and `Charge.amount_captured`: what Stripe
      reports after a (partial) capture. localstripe turns the uncaptured part of a partial capture into a Refund
      object, so `amount - amount_refunded` is not the captured amount once real refunds follow.
    - `description` and `transfer_group` on payment intents, `reason` on refunds.
    - the `pm_card_chargeDeclined` test id, and declined test cards declining charges (not only attachments).
    """
    store.dump_to_disk = lambda: None  # see the module docstring: state lives in memory only

    original_capture = Charge._capture

    def _capture(self, amount, on_success=None):
        captured = self.amount if amount is None else try_convert_to_int(amount)

        def on_captured():
            self._amount_captured = captured
            if on_success:
                on_success()

        original_capture(self, amount, on_success=on_captured)

    def amount_captured(self) -> int:
        if not self.captured or self.status != "succeeded":
            return 0
        captured = getattr(self, "_amount_captured", None)  # None: captured in full when created (automatic)
        return self.amount if captured is None else captured

    def amount_capturable(self) -> int:
        return self.amount if self.status == "requires_capture" else 0

    def amount_received(self) -> int:
        return self.latest_charge.amount_captured if self.latest_charge is not None else 0

    Charge._capture = _capture
    Charge.amount_captured = property(amount_captured)
    PaymentIntent.amount_capturable = property(amount_capturable)
    PaymentIntent.amount_received = property(amount_received)
    _accept_optional_params(PaymentIntent, ("description", "transfer_group"))
    _accept_optional_params(Refund, ("reason",))

    # Stripe's declined test cards (4000000000000002 and the like) decline a charge too, not only an attachment.
    original_charging_is_declined = PaymentMethod._charging_is_declined

    def _charging_is_declined(self) -> bool:
        return original_charging_is_declined(self) or self._attaching_is_declined()

    PaymentMethod._charging_is_declined = _charging_is_declined

    original_test_article = PaymentMethod._try_get_canonical_test_article

    def _try_get_canonical_test_article(cls, id):
        return original_test_article(_TEST_PAYMENT_METHOD_ALIASES.get(id, id))

    PaymentMethod._try_get_canonical_test_article = classmethod(_try_get_canonical_test_article)


_app_built = False


def build_app() -> web.Application:
    """localstripe's aiohttp app with this module's routes and middlewares added (once per process)."""
    global _app_built
    app = localstripe_server.app
    if _app_built:
        return app
    _patch_localstripe()

    middlewares = app.middlewares  # localstripe's: errors, auth, save store (outermost first)
    middlewares[middlewares.index(localstripe_server.auth_middleware)] = auth_middleware
    # Inside auth: a key is scoped to the API key, and an unauthenticated request is refused before any replay.
    middlewares.append(refuse_connected_account_header)
    middlewares.append(idempotency_middleware)
    middlewares.append(missing_events_middleware)

    for cls in (Account, Transfer):
        url = f"/v1/{cls.object}s"
        app.router.add_post(url, localstripe_server.api_create(cls, url))
        app.router.add_get(url, localstripe_server.api_list_all(cls, url))
        app.router.add_get(url + "/{id}", localstripe_server.api_retrieve(cls, url))
        app.router.add_post(url + "/{id}", localstripe_server.api_update(cls, url))
    app.router.add_post("/v1/account_links", account_link_create)
    app.router.add_get("/_connect/onboard/{acct_id}", onboarding_page)
    app.router.add_post("/_connect/onboard/{acct_id}", onboarding_complete)
    app.router.add_get("/_dev/health", health)
    _app_built = True
    return app


def _keep_state_in(path: Path) -> None:
    """Load the store from `path` and write it back after every change (atomically), as localstripe does with its
    shared temp file, but in a file of our own. The demo needs it: its database remembers Stripe ids across runs."""
    import pickle

    if path.exists():
        with path.open("rb") as file:
            dict.update(store, pickle.load(file))  # noqa: S301 - our own file, written below

    def dump_to_disk() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(path.suffix + ".partial")
        with partial.open("wb") as file:
            pickle.dump(dict(store), file, protocol=pickle.HIGHEST_PROTOCOL)
        partial.replace(path)

    store.dump_to_disk = dump_to_disk


def _exit_with_parent() -> None:
    """Ask Linux to SIGTERM this process when its parent dies, so a killed test run leaves no server behind."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM))
    if os.getppid() == 1:  # the parent died before the request took effect
        sys.exit(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A local fake Stripe API (localstripe + Connect). Dev only.")
    parser.add_argument("--port", type=int, default=8420)
    parser.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: loopback only)")
    parser.add_argument("--webhook-url", help="register this webhook endpoint for every event at start")
    parser.add_argument("--webhook-secret", default=os.environ.get("STRIPE_WEBHOOK_SECRET") or "whsec_local_dev")
    parser.add_argument("--quiet", action="store_true", help="no access log (errors are still printed)")
    parser.add_argument(
        "--state-file",
        type=Path,
        help="keep the state in this file across restarts (the demo: its database outlives a restart too)",
    )
    parser.add_argument("--exit-with-parent", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.exit_with_parent:
        _exit_with_parent()

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    # localstripe logs webhook deliveries on aiohttp's access logger too.
    access_log = logging.getLogger("aiohttp.access")
    access_log.setLevel(logging.WARNING if args.quiet else logging.INFO)

    app = build_app()
    if args.state_file:
        _keep_state_in(args.state_file)
    if args.webhook_url:
        register_webhook("we_cli", args.webhook_url, args.webhook_secret, None)
    print(
        f"local Stripe (localstripe {localstripe_version} + Connect, dev only) on http://{_url_host(args.host)}:"
        f"{args.port}, "
        + (f"state in {args.state_file}" if args.state_file else "fresh state")
        + (f", webhooks to {args.webhook_url}" if args.webhook_url else ""),
        flush=True,
    )
    web.run_app(app, host=args.host, port=args.port, access_log=access_log, print=None, shutdown_timeout=1.0)


if __name__ == "__main__":
    main()
