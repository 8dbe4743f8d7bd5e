"""Authentication of the car's agent: an Ed25519-signed request (see fleet/agent/signing.py for the scheme), and the
agent's rate limits.

A heartbeat is nearly all of a fleet's requests, so a good one costs PostgreSQL nothing and Redis one round trip:

- the credential is read from a copy (its car's id, owner and hardware class, which never change) kept in this
  process, else in Redis, else loaded from the database; a copy is used at most CREDENTIAL_COPY_MAX_AGE_S;
- after the signature is checked, one Redis script admits the request (fleet.state_store.agent_admit): it refuses a
  revoked key, a replayed nonce and a car past its rate, claims the nonce, counts the request, and (for a heartbeat)
  stores the car's state, all at once.

Security state that must survive Redis (which is a cache here: the database holds the truth):

- Revocation. A key revoked through fleet.services is refused at once in every process: credential_forget marks it
  in Redis (for REVOCATION_MARK_S, longer than any copy made before the revocation can live), and every admission
  reads the mark. The database's VehicleCredential.revoked_at is the durable record, and Redis is made to agree with
  it whenever it may not:
  * Redis's *epoch* (state_store.EPOCH_KEY: the second its server started and its run id) is read by every
    admission, in the same round trip. A process whose epoch is not Redis's (Redis restarted empty and lost every
    mark; the process is new; or Redis failed this process, see below) is made to *recheck* before its request goes
    on: its copies made under another epoch are no longer used (each is loaded again, from Redis or the database, the
    next time its car asks), the request's own key is read from the database, and revocations_remark marks again in
    Redis every key the database says was revoked in the last REVOCATION_MARK_S.
  * Revoking while Redis is down still revokes (the database row is the revocation); the failed mark is logged, not
    raised, and the process forgets its epoch (redis_failed), as does any process whose agent request finds Redis
    down. When Redis is back, such a process's next admission rechecks: the missed mark is made from the database at
    once. Redis back *empty* has a new epoch, so every process rechecks. And one process in the fleet rechecks every
    REVOCATIONS_RECHECK_S whatever happened (state_store.RECHECK_KEY): a revocation whose mark was missed is refused
    everywhere within that much, even when the process that made it died before Redis returned, and so is a key
    revoked behind the services' back (an UPDATE in SQL).
- Replay protection. Nonces live in Redis for twice the signature window; a Redis restarted empty has forgotten
  them, so a request signed before it started could be replayed. Its epoch starts at its server's start (read from
  INFO by the admission that finds the epoch missing), and a request signed at or before that second is refused as
  replayed ("replayed" is a refusal of one request: the agent carries on and signs its next request afresh). Honest
  cars lose at most the requests signed in the second Redis started (and, for a car whose clock is behind, as many
  seconds as it is behind). Not covered: FLUSHALL/FLUSHDB of a *running* Redis (its start does not change: restart
  it rather than flush it), and a Redis that reloads an old snapshot (run it without persistence, or with AOF
  fsync'd every second). The servers' clocks are taken to agree (NTP).

Rate limits: a car sends a heartbeat every 15 s and a few work requests around it, so THROTTLE_AGENT (120/min by
default, per car, every credential it has had sharing the count) is far above what a healthy agent needs: it stops a
runaway or copied credential, not a car. Requests that fail to authenticate (no signature, a bad or revoked key, a
replay, a wrong clock) are counted per client address and, separately, per key id they claim, each against
THROTTLE_AGENT_FAILURES. Past either limit a failed request is answered 429 (with Retry-After) instead of 401, and an
address past its limit is refused (429) before a key that Redis does not know is looked up in the database, so a flood
of made-up keys costs no query. A correctly signed request is never refused for failures, its address's or its key's:
cars behind a carrier's NAT share an address with strangers. Redis knows a key (state_store.credential_known) from
its issue, and for CREDENTIAL_KNOWN_S after each use; the one honest request an address past its limit is refused
is a car's first after Redis lost its data (and this process its copy), until the window ends.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from cachetools import TLRUCache
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from django.conf import settings
from django.db import transaction
from django.http.request import HttpHeaders
from django.utils import timezone
from redis.exceptions import RedisError
from rest_framework import authentication, exceptions, permissions

from core.throttling import Counter, client_ip, counters_hit, limit_counter

from . import state_store
from .agent import signing
from .models import Vehicle, VehicleCredential

log = logging.getLogger(__name__)

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
# Redis keeps a key's record this long after it was issued or last loaded (about 200 bytes a key): past its copy's age
# it is not used, but says the key exists (see the module's docstring: failures).
CREDENTIAL_KNOWN_S = 7 * 86400
# A revocation's mark in Redis outlives every copy made before it (made from the database before the revocation
# committed, then kept CREDENTIAL_COPY_MAX_AGE_S); revocations_remark marks again the revocations this recent.
REVOCATION_MARK_S = 2 * CREDENTIAL_COPY_MAX_AGE_S
# One process in the fleet marks recent revocations again from the database this often: one query (the credentials
# revoked in the last REVOCATION_MARK_S), so a revocation whose mark never reached Redis is refused within this.
REVOCATIONS_RECHECK_S = 15
KEY_ID_MAX_LENGTH = VehicleCredential._meta.get_field("key_id").max_length  # a longer one names no key

RATE_SCOPE = "agent"
FAILURES_SCOPE = "agent-failures"  # per address
KEY_FAILURES_SCOPE = "agent-key-failures"  # per key id claimed


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
    """What an agent request needs of a credential and its car, until when (Unix time) it may be used, and Redis's
    epoch when it was made (a copy of another epoch is not used: see the module's docstring)."""

    public_key: Ed25519PublicKey
    vehicle: list[Any]  # _VEHICLE_FIELDS
    expires_at: float
    epoch: str


class _Process:
    """What this process keeps: its copies of credentials (expiring when the Redis copy they came from does, so no
    copy outlives its maximum age), and Redis's epoch as it last saw it, with the second that epoch began."""

    def __init__(self) -> None:
        self.copies: TLRUCache = TLRUCache(
            maxsize=CREDENTIAL_COPIES_PER_PROCESS, ttu=lambda _key, copy, _now: copy.expires_at, timer=time.time
        )
        self.epoch: tuple[str, int] = ("", 0)  # none seen yet, or forgotten (redis_failed)
        self.lock = threading.Lock()  # cachetools' caches are not thread-safe (gunicorn's gthread workers are threads)


_process = _Process()

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
        if len(key_id) > KEY_ID_MAX_LENGTH:
            raise _invalid()

        process = _process
        failures = limit_counter(scope=FAILURES_SCOPE, ident=client_ip(request), rate=settings.THROTTLE_AGENT_FAILURES)
        copy = _copy_get(key_id, failures=failures, process=process)
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
        # No failure count is read: a correctly signed request is admitted whoever failed from its address.
        epoch, since = process.epoch
        admission = state_store.Admission(
            key_id=key_id,
            nonce=nonce,
            timestamp=timestamp,
            nonce_ttl_s=2 * window,
            rate=limit_counter(scope=RATE_SCOPE, ident=str(vehicle.pk), rate=settings.THROTTLE_AGENT),
            stamp_ttl_s=int(LAST_USED_RESOLUTION.total_seconds()),
            epoch=epoch if copy.epoch == epoch else "",  # a copy of another epoch must be rechecked
            since=since,
            recheck_every_s=REVOCATIONS_RECHECK_S,
            recheck=_recheck,
        )
        principal = VehiclePrincipal(vehicle=vehicle, key_id=key_id, admission=admission)
        if not getattr(request.parser_context.get("view"), "admission_deferred", False):
            admission_enforce(request, principal, state_store.agent_admit(admission))
        return principal, key_id


def admission_enforce(request, principal: VehiclePrincipal, admitted: state_store.Admitted) -> None:
    """Refuse the request as Redis said (401 or 429), or mark it admitted."""
    outcome = admitted.outcome
    if outcome == state_store.THROTTLED:
        raise exceptions.Throttled(principal.admission.rate.retry_after)
    if outcome == state_store.REVOKED:  # since the copy was made (credential_forget), or found by a recheck
        raise _invalid()
    if outcome == state_store.REPLAYED:
        raise exceptions.AuthenticationFailed("This request was already received (replayed nonce).", code=REPLAYED)
    if outcome == state_store.SIGNED_BEFORE_EPOCH:
        raise exceptions.AuthenticationFailed(
            "This request was signed before the platform's record of received requests began (it restarted), so it "
            "may be a replay: sign it again.",
            code=REPLAYED,
        )
    principal.admission = None


class Unavailable(exceptions.APIException):
    status_code = 503
    default_detail = "The platform's live store is unavailable: try again shortly."
    default_code = "unavailable"


def failure_counted(request, refused: exceptions.APIException) -> exceptions.APIException:
    """Count a failed request against its address and the key id it claims: `refused`, or 429 once either is past its
    limit. Called once per refused request, by the agent views' exception handler (fleet.apis.AgentApi)."""
    rate = settings.THROTTLE_AGENT_FAILURES
    address = limit_counter(scope=FAILURES_SCOPE, ident=client_ip(request), rate=rate)
    counters = [address]
    key_id = request.META.get(_KEY)
    if key_id and len(key_id) <= KEY_ID_MAX_LENGTH:
        counters.append(limit_counter(scope=KEY_FAILURES_SCOPE, ident=key_id, rate=rate))
    try:
        counts = counters_hit(counters)
    except RedisError:
        redis_failed()
        return refused  # not counted: refused all the same
    for counter, count, by in zip(counters, counts, ["from this address", "signed with this key"], strict=False):
        retry_after = counter.over(count)
        if retry_after is not None:
            return _too_many_failures(retry_after, by=by)
    return refused


def _too_many_failures(retry_after: int, *, by: str = "from this address") -> exceptions.Throttled:
    return exceptions.Throttled(retry_after, detail=f"Too many failed agent requests {by}: wait before trying again.")


def _invalid() -> exceptions.AuthenticationFailed:
    return exceptions.AuthenticationFailed(
        "Invalid or revoked vehicle credential, or a bad signature.", code=CREDENTIAL_INVALID
    )


def _copy_get(key_id: str, *, failures: Counter, process: _Process) -> _Copy | None:
    """The copy of the unrevoked credential `key_id`: from this process, else from Redis (in the round trip that reads
    the address's failures), else from the database. None when there is no such credential. An address past its
    failure limit is refused here, before the database, when Redis has no record of the key."""
    with process.lock:
        copy = process.copies.get(key_id)
        epoch = process.epoch[0]
    if copy is not None and copy.epoch == epoch:
        return copy
    failed, values = state_store.agent_lookup(key_id=key_id, failures_key=failures.key)
    if values is not None and values["expires_at"] > time.time():
        return _copy_keep(key_id, values, epoch=epoch, process=process)
    if copy is None and values is None and failures.reached(failed) is not None:
        raise _too_many_failures(failures.retry_after)
    return _copy_load(key_id, process=process, recorded=values is not None)


def _copy_keep(key_id: str, values: dict[str, Any], *, epoch: str, process: _Process) -> _Copy:
    copy = _Copy(
        public_key=Ed25519PublicKey.from_public_bytes(bytes.fromhex(values["public_key"])),
        vehicle=values["vehicle"],
        expires_at=values["expires_at"],
        epoch=epoch,
    )
    with process.lock:
        process.copies[key_id] = copy
    return copy


def _copy_load(key_id: str, *, process: _Process, recorded: bool = True) -> _Copy | None:
    """The copy of `key_id` from the database (then kept in Redis and in this process), or None (and its record in
    Redis, if `recorded`, goes: the key is not known any more)."""
    epoch = process.epoch[0]  # read before the database: a copy must not claim an epoch newer than its source
    row = credential_row(key_id)
    if row is None:
        with process.lock:
            process.copies.pop(key_id, None)
        if recorded:
            state_store.credential_uncache(key_id)
        return None
    public_key, *vehicle = row
    values = {"public_key": bytes(public_key).hex(), "vehicle": vehicle}
    values["expires_at"] = time.time() + CREDENTIAL_COPY_MAX_AGE_S
    state_store.credential_cache(key_id, values, ttl_s=CREDENTIAL_KNOWN_S)
    return _copy_keep(key_id, values, epoch=epoch, process=process)


def _recheck(admission: state_store.Admission, epoch: str) -> state_store.Admission | str:
    """Redis asked this process to recheck before `admission` goes on (see the module's docstring): when its epoch is
    not the process's, the process takes it (its older copies are no longer used) and reads the request's key from
    the database; either way, recent revocations are marked again from the database."""
    revocations_remark()
    if epoch == admission.epoch:
        return admission
    since = state_store.epoch_since(epoch)
    process = _process
    with process.lock:
        process.epoch = (epoch, since)
    if _copy_load(admission.key_id, process=process) is None:
        return state_store.REVOKED
    return replace(admission, epoch=epoch, since=since)


def revocations_remark() -> int:
    """Mark again in Redis every key the database says was revoked in the last REVOCATION_MARK_S (what an older
    revocation's mark would stop has expired): one query, and one Redis round trip when there is any. Returns how
    many keys."""
    since = timezone.now() - timedelta(seconds=REVOCATION_MARK_S)
    key_ids = list(VehicleCredential.objects.filter(revoked_at__gte=since).values_list("key_id", flat=True))
    if key_ids:
        state_store.credentials_revoked_mark(key_ids=key_ids, ttl_s=REVOCATION_MARK_S)
    return len(key_ids)


def redis_failed() -> None:
    """Redis failed this process: a revocation may have missed Redis meanwhile (this process's own, say), so its next
    admission rechecks (see the module's docstring). Called by whatever in the agent's path or the revocation's
    catches a Redis error."""
    with _process.lock:
        _process.epoch = ("", 0)


def credential_copies_clear() -> None:
    """Forget this process's copies (what their expiry does; for tests and for a process that must see a change made
    in SQL at once)."""
    with _process.lock:
        _process.copies.clear()


def credential_forget(key_id: str) -> None:
    """`key_id` was revoked: every process refuses it from now on (see the module's docstring), once the revocation
    commits. Redis being down does not stop it."""
    transaction.on_commit(lambda: _revocation_mark(key_id))


def _revocation_mark(key_id: str) -> None:
    try:
        state_store.credential_revoked_mark(key_id=key_id, ttl_s=REVOCATION_MARK_S)
    except RedisError as error:
        redis_failed()
        log.warning(
            "credential %s is revoked in the database, but Redis could not be told (%s): it is refused when Redis "
            "answers again (within %d s in every process)",
            key_id,
            error,
            REVOCATIONS_RECHECK_S,
        )


def credential_known(key_id: str) -> None:
    """A new key: tell Redis it exists, so its car's first request is looked up even from an address past its failure
    limit. (Before the key commits is harmless: the record lets its key be looked up, never admits it.)"""
    try:
        state_store.credential_known(key_id, ttl_s=CREDENTIAL_KNOWN_S)
    except RedisError as error:
        redis_failed()
        log.warning("could not note new credential %s in Redis (%s): it works all the same", key_id, error)


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
