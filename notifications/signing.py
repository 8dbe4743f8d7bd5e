"""How Idlefleet signs a webhook, and how a receiver checks it (the way Stripe signs its webhooks). Pure: no Django.

Each request carries `Idlefleet-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, f"{t}.{raw body}")>`. A
receiver recomputes the HMAC over the raw body it got (before parsing the JSON) with the endpoint's secret
(`whsec_...`), compares in constant time, and refuses a timestamp older than a few minutes, so that a request
captured on the way cannot be replayed later. Copy `verify` into a receiver as it is.
"""

from __future__ import annotations

import hashlib
import hmac
import time

HEADER = "Idlefleet-Signature"


def signature(secret: str, body: bytes, t: int) -> str:
    """The hex HMAC-SHA256 of `f"{t}.{body}"` with `secret`."""
    return hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, t: int) -> str:
    """The Idlefleet-Signature header's value for `body` sent at unix time `t`."""
    return f"t={t},v1={signature(secret, body, t)}"


def verify(secret: str, body: bytes, header: str, tolerance_s: int = 300, now: float | None = None) -> bool:
    """Whether `header` (an Idlefleet-Signature value) signs `body` with `secret`, at a time at most `tolerance_s`
    seconds from `now` (the receiver's clock). Any v1 entry may match (several appear while a secret is rotated)."""
    t, candidates = None, []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isdigit():
            t = int(value)
        elif key == "v1" and value:
            candidates.append(value)
    if t is None or not candidates:
        return False
    if abs((time.time() if now is None else now) - t) > tolerance_s:
        return False
    expected = signature(secret, body, t)
    return any(hmac.compare_digest(expected, candidate) for candidate in candidates)
