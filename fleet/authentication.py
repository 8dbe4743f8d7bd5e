"""Authentication of the car's agent: an Ed25519-signed request (see fleet/agent/signing.py for the scheme), and the
agent's rate limits.

A heartbeat is nearly all of a fleet's requests, so a good one costs PostgreSQL nothing and Redis one round trip:

- the credential is read from a copy (its car's id, owner and hardware class, which never change) kept in this
  process, else in Redis, else loaded from the database; a copy is at most CREDENTIAL_COPY_MAX_AGE_S old;
- after the signature is checked, one Redis script admits the request (fleet.state_store.agent_admit): it refuses an
  address past its failure limit, a revoked key, a replayed nonce and a car past its rate, claims the nonce, counts
  the request, and (for a heartbeat) stores the car's state, all at once.

A key revoked through fleet.services is refused at once all the same: credential_forget marks it in Redis, and the
admission reads the mark. Only a change made behind the services' back (an UPDATE in SQL) waits for the copies to
expire.

Rate limits: a car sends a heartbeat every 15 s and a few work requests around it, so THROTTLE_AGENT (120/min by
default, per car, every credential it has had sharing the count) is far above what a healthy agent needs: it stops a
runaway or copied credential, not a car. Requests that fail to authenticate (no signature, a bad or revoked key, a
replay, a wrong clock) are counted per client address: past THROTTLE_AGENT_FAILURES the address is refused with 429
until the window ends, a good request included.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from cachetools import TLRUCache
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from django.conf import settings
from django.db import transaction
from django.http.request import HttpHeaders
from rest_framework import authentication, exceptions, permissions

from config.throttling import client_ip, limit_counter, limit_hit

from . import state_store
from .agent import signing
from .models import Vehicle, VehicleCredential

# Error codes of a refused agent request. Only CREDENTIAL_INVALID means the car should stop and wait for its owner;
# a wrong clock or a replay is a problem of that one request.
CREDENTIAL_INVALID = "credential_invalid"
CLOCK_SKEW = "clock_skew"
REPLAYED = "replayed"

# last_used_at is informative: a key's use is noted in Redis at most this often, and written to the database in bulk
# by fleet.services.credentials_last_used_record (with the heartbeat snapshot): heartbeats never write to it.
LAST_USED_RESOLUTION = timedelta(minutes=5)

CREDENTIAL_COPY_MAX_AGE_S = 300  # a car sends 20 heartbeats in that time: 1 request in 20 reads Redis for its key
# Copies kept in one process (about 1 KB each). Past that the least recently used go, and their cars' next requests
# read Redis: a fleet larger than this per web process wants its proxy to send each car to the same processes.
CREDENTIAL_COPIES_PER_PROCESS = 50_000

RATE_SCOPE = "agent"
FAILURES_SCOPE = "agent-failures"


@dataclass
class VehiclePrincipal:
    """request.user for agent requests: the car, not a person."""

    vehicle: Vehicle
    key_id: str  # the credential that signed the request (request.auth)
    is_authenticated: bool = True
    is_staff: bool = False
    role: str = "vehicle"
    pk = None
    # Set while the request is signed but not yet admitted (by its view: see VehicleSignatureAuthentication).
    admission: state_store.Admission | None = None


@dataclass(frozen=True)
class _Copy:
    """What an agent request needs of a credential and its car, and until when (Unix time) it may be used."""

    public_key: Ed25519PublicKey
    vehicle: list[Any]  # _VEHICLE_FIELDS
    expires_at: float


_VEHICLE_FIELDS = ["id", "owner_id", "hardware_id"]  # never changed; the rest is read fresh when asked
# The signature's headers, as the WSGI environ names them.
_KEY, _TIMESTAMP, _NONCE, _SIGNATURE = (
    HttpHeaders.to_wsgi_name(header)
    for header in (signing.HEADER_KEY, signing.HEADER_TIMESTAMP, signing.HEADER_NONCE, signing.HEADER_SIGNATURE)
)
_SIGNATURE_HEADERS = [
    (signing.HEADER_TIMESTAMP, _TIMESTAMP),
    (signing.HEADER_NONCE, _NONCE),
    (signing.HEADER_SIGNATURE, _SIGNATURE),
]

# The copies in this process expire when the Redis copy they came from does, so no copy outlives its maximum age.
_copies: TLRUCache = TLRUCache(
    maxsize=CREDENTIAL_COPIES_PER_PROCESS, ttu=lambda _key, copy, _now: copy.expires_at, timer=time.time
)
_copies_lock = threading.Lock()  # cachetools' caches are not thread-safe (gunicorn's gthread workers are threads)


class VehicleSignatureAuthentication(authentication.BaseAuthentication):
    """Checks the signature, then admits the request (see the module's docstring), unless its view says
    `admission_deferred = True`: then the view calls fleet.state_store.agent_admit with request.user.admission (with
    its own writes: a heartbeat's state), then admission_enforce."""

    def authenticate_header(self, request) -> str:
        return signing.SCHEME

    def authenticate(self, request):
        meta = request.META  # not request.headers, which copies every header of the request first
        key_id = meta.get(_KEY)
        if not key_id:
            raise exceptions.NotAuthenticated(f"Sign agent requests; the {signing.HEADER_KEY} header is missing.")
        missing = [header for header, name in _SIGNATURE_HEADERS if not meta.get(name)]
        if missing:
            raise exceptions.AuthenticationFailed(f"Missing header {missing[0]}.")
        try:
            timestamp = int(meta[_TIMESTAMP])
        except ValueError:
            raise exceptions.AuthenticationFailed(f"{signing.HEADER_TIMESTAMP} must be Unix seconds.") from None
        window = settings.AGENT_SIGNATURE_WINDOW_SECONDS
        if abs(time.time() - timestamp) > window:
            raise exceptions.AuthenticationFailed(
                f"Request timestamp is more than {window} s from the server's clock: check the car's clock.",
                code=CLOCK_SKEW,
            )
        nonce = meta[_NONCE]
        if not (16 <= len(nonce) <= 64):
            raise exceptions.AuthenticationFailed(f"{signing.HEADER_NONCE} must be 16 to 64 characters.")

        failures = limit_counter(scope=FAILURES_SCOPE, ident=client_ip(request), rate=settings.THROTTLE_AGENT_FAILURES)
        copy = _copy_get(key_id, failures=failures)
        # One message for unknown, revoked and forged: a caller learns nothing about which keys exist.
        if copy is None or not signing.verify_with(
            public_key=copy.public_key,
            signature=meta[_SIGNATURE],
            method=request.method,
            path=request.get_full_path(),
            timestamp=timestamp,
            nonce=nonce,
            body=request.body,
        ):
            raise _invalid()

        vehicle = Vehicle.from_db("default", _VEHICLE_FIELDS, copy.vehicle)
        # Checked and counted after the signature, so a forger can neither burn a car's nonces nor use up its rate.
        admission = state_store.Admission(
            key_id=key_id,
            nonce=nonce,
            nonce_ttl_s=2 * window,
            failures=failures,
            rate=limit_counter(scope=RATE_SCOPE, ident=str(vehicle.pk), rate=settings.THROTTLE_AGENT),
            stamp_ttl_s=int(LAST_USED_RESOLUTION.total_seconds()),
        )
        principal = VehiclePrincipal(vehicle=vehicle, key_id=key_id, admission=admission)
        if not getattr(request.parser_context.get("view"), "admission_deferred", False):
            admission_enforce(request, principal, state_store.agent_admit(admission))
        return principal, key_id


def admission_enforce(request, principal: VehiclePrincipal, admitted: state_store.Admitted) -> None:
    """Refuse the request as Redis said (401 or 429), or mark it admitted."""
    outcome = admitted.outcome
    if outcome == state_store.FAILURES:
        raise _too_many_failures(principal.admission.failures.retry_after)
    if outcome == state_store.THROTTLED:
        raise exceptions.Throttled(principal.admission.rate.retry_after)
    if outcome == state_store.REVOKED:  # since the copy was made (credential_forget)
        raise _invalid()
    if outcome == state_store.REPLAYED:
        raise exceptions.AuthenticationFailed("This request was already received (replayed nonce).", code=REPLAYED)
    principal.admission = None


def failure_counted(request, refused: exceptions.APIException) -> exceptions.APIException:
    """Count a failed request against its address: `refused`, or 429 once the address is past its limit. Called once
    per refused request, by the agent views' exception handler (fleet.apis.AgentApi)."""
    retry_after = limit_hit(scope=FAILURES_SCOPE, ident=client_ip(request), rate=settings.THROTTLE_AGENT_FAILURES)
    return refused if retry_after is None else _too_many_failures(retry_after)


def _too_many_failures(retry_after: int) -> exceptions.Throttled:
    return exceptions.Throttled(
        retry_after, detail="Too many failed agent requests from this address: wait before trying again."
    )


def _invalid() -> exceptions.AuthenticationFailed:
    return exceptions.AuthenticationFailed(
        "Invalid or revoked vehicle credential, or a bad signature.", code=CREDENTIAL_INVALID
    )


def _copy_get(key_id: str, *, failures) -> _Copy | None:
    """The copy of the unrevoked credential `key_id`: from this process, else from Redis (in the round trip that reads
    the address's failures: an address past its limit is refused before its signature is checked), else from the
    database (then copied to Redis). None when there is no such credential."""
    with _copies_lock:
        copy = _copies.get(key_id)
    if copy is not None:
        return copy
    failed, values = state_store.agent_lookup(key_id=key_id, failures_key=failures.key)
    if failures.reached(failed) is not None:
        raise _too_many_failures(failures.retry_after)
    if values is None:
        row = credential_row(key_id)
        if row is None:
            return None
        public_key, *vehicle = row
        values = {
            "public_key": bytes(public_key).hex(),
            "vehicle": vehicle,
            "expires_at": time.time() + CREDENTIAL_COPY_MAX_AGE_S,
        }
        state_store.credential_cache(key_id, values, ttl_s=CREDENTIAL_COPY_MAX_AGE_S)
    copy = _Copy(
        public_key=Ed25519PublicKey.from_public_bytes(bytes.fromhex(values["public_key"])),
        vehicle=values["vehicle"],
        expires_at=values["expires_at"],
    )
    with _copies_lock:
        _copies[key_id] = copy
    return copy


def credential_copies_clear() -> None:
    """Forget this process's copies (what their expiry does; for tests and for a process that must see a change made
    in SQL at once)."""
    with _copies_lock:
        _copies.clear()


def credential_forget(key_id: str) -> None:
    """`key_id` was revoked: every process refuses it from now on (see the module's docstring)."""
    ttl_s = 2 * CREDENTIAL_COPY_MAX_AGE_S  # longer than any copy lives
    transaction.on_commit(lambda: state_store.credential_revoked_mark(key_id=key_id, ttl_s=ttl_s))


def credential_row(key_id: str) -> tuple | None:
    """What a copy holds of the unrevoked credential `key_id` (its public key, then its car's _VEHICLE_FIELDS), from
    the database, or None: one small query, as a fleet's requests ask it once per key per copy's lifetime."""
    vehicle_fields = ["vehicle__" + name.removesuffix("_id") for name in _VEHICLE_FIELDS]  # vehicle__id, __owner, ...
    return (
        VehicleCredential.objects.filter(key_id=key_id, revoked_at__isnull=True)
        .values_list("public_key", *vehicle_fields)
        .first()
    )


class IsVehicle(permissions.BasePermission):
    message = "Only a vehicle's agent may call this endpoint."

    def has_permission(self, request, view) -> bool:
        return isinstance(request.user, VehiclePrincipal)
