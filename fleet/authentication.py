"""Authentication of the car's agent: an Ed25519-signed request (see fleet/agent/signing.py for the scheme)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from rest_framework import authentication, exceptions, permissions

from . import state_store
from .agent import signing
from .models import Vehicle, VehicleCredential

# Error codes of a refused agent request. Only CREDENTIAL_INVALID means the car should stop and wait for its owner;
# a wrong clock or a replay is a problem of that one request.
CREDENTIAL_INVALID = "credential_invalid"
CLOCK_SKEW = "clock_skew"
REPLAYED = "replayed"

# last_used_at is informative: write it at most this often, so heartbeats do not write to the database every time.
LAST_USED_RESOLUTION = timedelta(minutes=5)

# Agent requests (heartbeats above all: nearly all of a fleet's requests) authenticate with a copy of the credential
# and its car kept in Redis for CREDENTIAL_COPY_MAX_AGE_S, shared by every web process, so they cost PostgreSQL no
# query for it. A key revoked through fleet.services is refused at once all the same: credential_forget drops the
# copy and marks the key in Redis, and the request's nonce check reads the mark in the same round trip. Only a change
# made behind the services' back (an UPDATE in SQL) waits for the copy to expire. The copy holds what never changes of
# the car (its id, owner, hardware class); anything else (its status, its record) is read from the database if asked.
CREDENTIAL_COPY_MAX_AGE_S = 300  # a car sends 20 heartbeats in that time: 1 request in 20 reads the database


@dataclass
class VehiclePrincipal:
    """request.user for agent requests: the car, not a person."""

    vehicle: Vehicle
    credential: VehicleCredential
    is_authenticated: bool = True
    is_staff: bool = False
    role: str = "vehicle"
    pk = None


class VehicleSignatureAuthentication(authentication.BaseAuthentication):
    def authenticate_header(self, request) -> str:
        return signing.SCHEME

    def authenticate(self, request):
        headers = request.headers
        key_id = headers.get(signing.HEADER_KEY)
        if not key_id:
            raise exceptions.NotAuthenticated(f"Sign agent requests; the {signing.HEADER_KEY} header is missing.")
        missing = [
            h for h in (signing.HEADER_TIMESTAMP, signing.HEADER_NONCE, signing.HEADER_SIGNATURE) if not headers.get(h)
        ]
        if missing:
            raise exceptions.AuthenticationFailed(f"Missing header {missing[0]}.")
        try:
            timestamp = int(headers[signing.HEADER_TIMESTAMP])
        except ValueError:
            raise exceptions.AuthenticationFailed(f"{signing.HEADER_TIMESTAMP} must be Unix seconds.") from None
        window = settings.AGENT_SIGNATURE_WINDOW_SECONDS
        if abs(time.time() - timestamp) > window:
            raise exceptions.AuthenticationFailed(
                f"Request timestamp is more than {window} s from the server's clock: check the car's clock.",
                code=CLOCK_SKEW,
            )
        nonce = headers[signing.HEADER_NONCE]
        if not (16 <= len(nonce) <= 64):
            raise exceptions.AuthenticationFailed(f"{signing.HEADER_NONCE} must be 16 to 64 characters.")

        credential = credential_recent(key_id, CREDENTIAL_COPY_MAX_AGE_S)
        # One message for unknown, revoked and forged: a caller learns nothing about which keys exist.
        invalid = exceptions.AuthenticationFailed(
            "Invalid or revoked vehicle credential, or a bad signature.", code=CREDENTIAL_INVALID
        )
        if credential is None:
            raise invalid
        if not signing.verify(
            public_key=bytes(credential.public_key),
            signature=headers[signing.HEADER_SIGNATURE],
            method=request.method,
            path=request.get_full_path(),
            timestamp=timestamp,
            nonce=nonce,
            body=request.body,
        ):
            raise invalid
        # Checked after the signature, so a forger cannot burn a real car's nonces.
        claimed, revoked = state_store.nonce_claim(key_id=key_id, nonce=nonce, ttl_s=2 * window)
        if revoked:  # revoked since the copy in Redis was made (credential_forget)
            raise invalid
        if not claimed:
            raise exceptions.AuthenticationFailed("This request was already received (replayed nonce).", code=REPLAYED)

        now = timezone.now()
        if credential.last_used_at is None or now - credential.last_used_at > LAST_USED_RESOLUTION:
            VehicleCredential.objects.filter(pk=credential.pk).update(last_used_at=now)
            credential.last_used_at = now
            _credential_cache(credential, ttl_s=None)
        return VehiclePrincipal(vehicle=credential.vehicle, credential=credential), credential


def credential_recent(key_id: str, max_age_s: int) -> VehicleCredential | None:
    """credential_get, from the copy in Redis when there is one (at most `max_age_s` old, see above). The copy holds
    what an agent request reads of the credential and its vehicle; any other field is loaded if something asks."""
    cached = state_store.credential_cached(key_id)
    if cached is not None:
        vehicle = Vehicle.from_db("default", _VEHICLE_FIELDS, cached["vehicle"])
        credential = VehicleCredential.from_db("default", _CREDENTIAL_FIELDS, cached["credential"])
        credential.public_key = bytes.fromhex(credential.public_key)
        if credential.last_used_at is not None:
            credential.last_used_at = datetime.fromisoformat(credential.last_used_at)
        VehicleCredential.vehicle.field.set_cached_value(credential, vehicle)
        return credential
    credential = credential_get(key_id)
    if credential is not None:
        _credential_cache(credential, ttl_s=max_age_s)
    return credential


_CREDENTIAL_FIELDS = ["id", "vehicle_id", "key_id", "public_key", "revoked_at", "last_used_at"]
_VEHICLE_FIELDS = ["id", "owner_id", "hardware_id"]  # never changed; the rest is read fresh when asked


def _credential_cache(credential: VehicleCredential, *, ttl_s: int | None) -> None:
    """Keep the copy of `credential` in Redis for ttl_s seconds (None: keep the copy's remaining time)."""
    values = {name: getattr(credential, name) for name in _CREDENTIAL_FIELDS}
    values["public_key"] = bytes(credential.public_key).hex()
    values["last_used_at"] = credential.last_used_at.isoformat() if credential.last_used_at else None
    copy = {
        "credential": [values[name] for name in _CREDENTIAL_FIELDS],
        "vehicle": [getattr(credential.vehicle, name) for name in _VEHICLE_FIELDS],
    }
    state_store.credential_cache(credential.key_id, copy, ttl_s=ttl_s)


def credential_forget(key_id: str) -> None:
    """`key_id` was revoked: every process refuses it from now on (see credential_recent)."""
    ttl_s = CREDENTIAL_COPY_MAX_AGE_S + 60
    transaction.on_commit(lambda: state_store.credential_revoked_mark(key_id=key_id, ttl_s=ttl_s))


def credential_get(key_id: str) -> VehicleCredential | None:
    """The unrevoked credential `key_id`, with its vehicle and the vehicle's hardware and owner, from the database
    (agent requests read the copy in Redis: credential_recent)."""
    return (
        VehicleCredential.objects.select_related("vehicle__hardware", "vehicle__owner")
        .filter(key_id=key_id, revoked_at__isnull=True)
        .first()
    )


class IsVehicle(permissions.BasePermission):
    message = "Only a vehicle's agent may call this endpoint."

    def has_permission(self, request, view) -> bool:
        return isinstance(request.user, VehiclePrincipal)
