"""The live copy of each vehicle's last heartbeat, in Redis. Heartbeats never write to the database on every call:
`fleet.tasks.vehicle_states_snapshot` copies these into VehicleState periodically, and if Redis loses them the next
heartbeat (every 15 s) brings them back.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from config.redis import client

SEEN_KEY = "idlefleet:vehicles:seen"  # sorted set: vehicle id -> Unix time of its last heartbeat


def _key(vehicle_id: int) -> str:
    return f"idlefleet:vehicle:{vehicle_id}:state"


def state_swap(*, vehicle_id: int, state: dict[str, Any], received_ts: float) -> dict[str, Any] | None:
    """Store the new state and return the previous one, atomically (SET ... GET), so a transition is seen once."""
    pipe = client().pipeline(transaction=True)
    pipe.set(_key(vehicle_id), json.dumps(state), get=True)
    pipe.zadd(SEEN_KEY, {str(vehicle_id): received_ts})
    previous, _ = pipe.execute()
    return json.loads(previous) if previous else None


def state_get(vehicle_id: int) -> dict[str, Any] | None:
    raw = client().get(_key(vehicle_id))
    return json.loads(raw) if raw else None


def states_get(vehicle_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    ids = list(vehicle_ids)
    if not ids:
        return {}
    raws = client().mget([_key(i) for i in ids])
    return {i: json.loads(raw) for i, raw in zip(ids, raws, strict=True) if raw}


def seen_since(ts: float) -> list[int]:
    return [int(i) for i in client().zrangebyscore(SEEN_KEY, ts, "+inf")]


def nonce_claim(*, key_id: str, nonce: str, ttl_s: int) -> bool:
    """True the first time a (key, nonce) pair is seen within ttl_s; False for a replay."""
    return bool(client().set(f"idlefleet:nonce:{key_id}:{nonce}", 1, nx=True, ex=ttl_s))
