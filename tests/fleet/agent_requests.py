"""Signed agent requests through Django's test client, as a car's agent makes them."""

import json
import time
from datetime import UTC, datetime

from fleet.agent.signing import Credential


def heartbeat(**overrides):
    data = {
        "observed_at": datetime.now(UTC).isoformat(),
        "clock_rate": 1.0,
        "parked": True,
        "plugged_in": False,
        "charge_power_w": 0.0,
        "battery_pct": 80.0,
        "battery_capacity_kwh": 75.0,
        "network": "wifi",
        "bandwidth_down_mbps": 300.0,
        "bandwidth_up_mbps": 30.0,
        "latency_ms": 20.0,
        "runtime_version": "1.20.1",
        "models_cached": [],
        "computing": False,
        "compute_power_w": 0.0,
        "energy_used_today_wh": 0.0,
    }
    data.update(overrides)
    return data


def signed_headers(credential: Credential, path: str, body: bytes, *, timestamp=None, nonce=None, method="POST"):
    headers = credential.sign(
        method=method, path=path, body=body, timestamp=int(time.time()) if timestamp is None else timestamp, nonce=nonce
    )
    return {f"HTTP_{name.upper().replace('-', '_')}": value for name, value in headers.items()}


def signed_post(client, credential: Credential, path: str, payload=None, *, body=None, **sign_kwargs):
    body = json.dumps(payload or {}).encode() if body is None else body
    return client.post(
        path, data=body, content_type="application/json", **signed_headers(credential, path, body, **sign_kwargs)
    )
