"""Authentication of the car's agent: an Ed25519-signed request (see fleet/agent/signing.py for the scheme)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
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

        credential = (
            VehicleCredential.objects.select_related("vehicle__hardware", "vehicle__owner")
            .filter(key_id=key_id, revoked_at__isnull=True)
            .first()
        )
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
        if not state_store.nonce_claim(key_id=key_id, nonce=nonce, ttl_s=2 * window):
            raise exceptions.AuthenticationFailed("This request was already received (replayed nonce).", code=REPLAYED)

        now = timezone.now()
        if credential.last_used_at is None or now - credential.last_used_at > LAST_USED_RESOLUTION:
            VehicleCredential.objects.filter(pk=credential.pk).update(last_used_at=now)
        return VehiclePrincipal(vehicle=credential.vehicle, credential=credential), credential


class IsVehicle(permissions.BasePermission):
    message = "Only a vehicle's agent may call this endpoint."

    def has_permission(self, request, view) -> bool:
        return isinstance(request.user, VehiclePrincipal)
