"""The live copy of each vehicle's last heartbeat, in Redis. Heartbeats never write to the database on every call:
`fleet.tasks.vehicle_states_snapshot` copies these into VehicleState periodically, and if Redis loses them the next
heartbeat (every 15 s) brings them back.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import cache
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


# Swap in one round trip, unless the car has announced its departure: then the caller must see the previous state
# before it decides what to store (see fleet.services.heartbeat_record), so nothing is written and it is returned.
_SWAP_UNLESS_LEAVING = """
local previous = redis.call("GET", KEYS[1])
if previous and string.find(previous, '"departure_announced_at"', 1, true) then
  return {0, previous}
end
redis.call("SET", KEYS[1], ARGV[1])
redis.call("ZADD", KEYS[2], ARGV[2], ARGV[3])
return {1, previous or false}
"""


@cache
def _swap_unless_leaving():
    return client().register_script(_SWAP_UNLESS_LEAVING)


def state_swap_unless_leaving(
    *, vehicle_id: int, state: dict[str, Any], received_ts: float
) -> tuple[bool, dict[str, Any] | None]:
    """Like state_swap, atomically, unless the stored state says the car announced its departure: then nothing is
    stored. Returns (stored, previous state). One round trip where state_get then state_swap took two."""
    stored, previous = _swap_unless_leaving()(
        keys=[_key(vehicle_id), SEEN_KEY], args=[json.dumps(state), received_ts, str(vehicle_id)]
    )
    return bool(stored), (json.loads(previous) if previous else None)


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


def nonce_claim(*, key_id: str, nonce: str, ttl_s: int) -> tuple[bool, bool]:
    """(whether this is the first time the (key, nonce) pair is seen within ttl_s (False: a replay), whether the key
    was revoked lately (credential_revoked_mark)): both in one round trip, as every signed request asks them."""
    pipe = client().pipeline(transaction=False)
    pipe.set(f"idlefleet:nonce:{key_id}:{nonce}", 1, nx=True, ex=ttl_s)
    pipe.exists(_revoked_key(key_id))
    claimed, revoked = pipe.execute()
    return bool(claimed), bool(revoked)


def credential_revoked_mark(*, key_id: str, ttl_s: int) -> None:
    """Tell every web process that `key_id` was revoked (for ttl_s), and drop its copy (credential_cache)."""
    pipe = client().pipeline(transaction=True)
    pipe.set(_revoked_key(key_id), 1, ex=ttl_s)
    pipe.delete(_credential_key(key_id))
    pipe.execute()


def credential_cached(key_id: str) -> dict[str, Any] | None:
    """The copy of a credential that fleet.authentication keeps for heartbeats, or None."""
    raw = client().get(_credential_key(key_id))
    return json.loads(raw) if raw else None


def credential_cache(key_id: str, values: dict[str, Any], *, ttl_s: int | None) -> None:
    """Keep that copy for ttl_s seconds; None keeps the time the copy already had left (and does nothing when there
    is no copy any more)."""
    if ttl_s is None:
        client().set(_credential_key(key_id), json.dumps(values), keepttl=True, xx=True)
    else:
        client().set(_credential_key(key_id), json.dumps(values), ex=ttl_s)


def _credential_key(key_id: str) -> str:
    return f"idlefleet:credential:{key_id}"


def _revoked_key(key_id: str) -> str:
    return f"idlefleet:credential:{key_id}:revoked"
