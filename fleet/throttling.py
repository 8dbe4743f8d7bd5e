"""Rate limits of the agent endpoints (/api/v1/agent/...): per vehicle for signed requests, per address for failures.

A car sends a heartbeat every 15 s and a few work requests around it, so THROTTLE_AGENT (120/min by default) is far
above what a healthy agent needs: it stops a runaway or copied credential, not a car. Requests that fail to
authenticate (no signature, a bad or revoked key, a replay, a wrong clock) are counted per client address: past
THROTTLE_AGENT_FAILURES the address is refused with 429 until the window ends, before its signatures are checked.
"""

from __future__ import annotations

from django.conf import settings
from rest_framework import exceptions
from rest_framework.throttling import BaseThrottle

from config.throttling import client_ip, limit_hit, limit_reached

from .authentication import VehiclePrincipal

FAILURES_SCOPE = "agent-failures"


class VehicleRateThrottle(BaseThrottle):
    """Signed agent requests, per vehicle (every credential the car has had shares its count): a fixed-window counter,
    one Redis round trip, as a heartbeat should cost (DRF's throttles keep a list of times: two round trips and a
    pickle per request)."""

    retry_after: int | None = None

    def allow_request(self, request, view) -> bool:
        if not isinstance(request.user, VehiclePrincipal):
            return True
        self.retry_after = limit_hit(scope="agent", ident=str(request.user.vehicle.pk), rate=settings.THROTTLE_AGENT)
        return self.retry_after is None

    def wait(self) -> int | None:
        return self.retry_after


class AgentThrottling:
    """Mixed into the agent's API views, before APIView: the per-vehicle throttle, and the per-address limit on
    failed authentication (DRF runs throttles only after authentication has succeeded, so that one lives here)."""

    throttle_classes = [VehicleRateThrottle]

    def perform_authentication(self, request) -> None:
        ident, rate = client_ip(request), settings.THROTTLE_AGENT_FAILURES
        retry_after = limit_reached(scope=FAILURES_SCOPE, ident=ident, rate=rate)
        if retry_after is not None:
            raise exceptions.Throttled(
                retry_after, detail="Too many failed agent requests from this address: wait before trying again."
            )
        try:
            super().perform_authentication(request)
        except (exceptions.NotAuthenticated, exceptions.AuthenticationFailed):
            limit_hit(scope=FAILURES_SCOPE, ident=ident, rate=rate)
            raise
