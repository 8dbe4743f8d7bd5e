"""The live copy of each vehicle's last heartbeat, in Redis. Heartbeats never write to the database on every call:
`fleet.tasks.vehicle_states_snapshot` copies these into VehicleState periodically, and if Redis loses them the next
heartbeat (every 15 s) brings them back.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any

from redis.exceptions import RedisError

from core.redis import client
from core.throttling import Counter

SEEN_KEY = "idlefleet:vehicles:seen"  # sorted set: vehicle id -> Unix time of its last heartbeat
LOST_AFTER_KEY = "idlefleet:vehicles:lost-after"  # hash: vehicle id -> seconds of silence after which it is gone
# Sorted set: vehicle id -> the Unix time until which it holds work or was just sold some (fleet.book.work_mark): it
# heartbeats often until then.
WORK_KEY = "idlefleet:vehicles:working"


def _key(vehicle_id: int) -> str:
    return f"idlefleet:vehicle:{vehicle_id}:state"


def state_key(vehicle_id: int) -> str:
    """The key of the car's live state (tests reset it)."""
    return _key(vehicle_id)


def profile_key(vehicle_id: int) -> str:
    """The car's profile in the supply book (fleet.book): what its offer needs besides its heartbeat."""
    return f"idlefleet:vehicle:{vehicle_id}:profile"


def state_swap(*, vehicle_id: int, state: dict[str, Any], received_ts: float) -> dict[str, Any] | None:
    """Store the new state and return the previous one, atomically (SET ... GET), so a transition is seen once."""
    pipe = client().pipeline(transaction=True)
    pipe.set(_key(vehicle_id), json.dumps(state), get=True)
    pipe.zadd(SEEN_KEY, {str(vehicle_id): received_ts})
    previous, _ = pipe.execute()
    return json.loads(previous) if previous else None


# --- Admitting a signed agent request -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Admission:
    """What admitting one signed agent request (its signature already checked) checks and counts in Redis."""

    key_id: str
    nonce: str
    timestamp: int  # the signed Unix time: refused unless after `since`
    nonce_ttl_s: int  # a nonce is remembered this long: longer than a signature is valid
    rate: Counter  # requests of the car: refused past the limit
    stamp_ttl_s: int  # the credential's last use is noted for the database (credentials_used) at most this often
    epoch: str  # Redis's epoch (EPOCH_KEY) as the caller's process last saw it, "" when it has not seen one
    since: int  # ... and the Unix second up to which that epoch cannot tell a replay: refused up to it, included
    recheck_every_s: int  # one process in the fleet is asked to recheck (below) at most this often
    # Called when Redis says the process must look again before the request may go on (its epoch is not Redis's,
    # or it is the process's turn to re-mark recent revocations): with the admission and Redis's epoch, it returns
    # the admission to try again (with that epoch), or the outcome that refuses the request (REVOKED, REPLAYED).
    recheck: Callable[[Admission, str], Admission | str]


@dataclass(frozen=True)
class Admitted:
    """What Redis said of an Admission: `outcome` is ADMITTED, or why the request is refused (nothing was written
    then but the nonce and the car's count, as the checks go in the order of _ADMIT)."""

    outcome: str
    stored: bool = False  # with a heartbeat's state: whether it was stored (not when the car announced its departure)
    previous: dict[str, Any] | None = None  # ... and the state it replaced
    profile: str | None = None  # ... the car's profile in the supply book (fleet.book), JSON, None if Redis has none
    holds_work: bool = False  # ... and whether the car holds work (fleet.book.work_mark)
    next_heartbeat_s: float | None = None  # the interval the car is asked to heartbeat at (fleet.services)


ADMITTED, REVOKED, REPLAYED, THROTTLED, RECHECK = "admitted", "revoked", "replayed", "throttled", "recheck"
SIGNED_BEFORE_EPOCH = "signed-before-epoch"  # refused: signed before Redis's record of nonces began (see `since`)
USED_KEY = "idlefleet:credentials:used"  # sorted set: key id -> Unix time of its last use, not yet in the database
# Redis's epoch: "<the Unix second the server started>:<its run id>", set by the first admission that finds it missing
# (fleet.authentication's docstring says what it protects). It has no expiry.
EPOCH_KEY = "idlefleet:security:epoch"
RECHECK_KEY = "idlefleet:security:rechecked"  # present while the fleet's last recheck is recent enough

# One round trip: every check and count of a signed request in order, then (for a heartbeat) its state, so a request
# that is refused never writes a state. The state is stored unless the car has announced its departure: then the
# caller must see the previous state before it decides what to store (fleet.services.heartbeat_record), so nothing is
# written and the previous state is returned. KEYS: EPOCH_KEY, RECHECK_KEY, the nonce, the key's revocation mark, the
# car's request counter, the key's last-use stamp, USED_KEY [, the car's state, SEEN_KEY]. ARGV: the epoch the
# process saw, the recheck interval, the nonce's TTL, the request limit, the request counter's TTL, the stamp's TTL,
# now, the key id [, the state, its Unix time, the car].
_ADMIT = f"""
local epoch = redis.call("GET", KEYS[1])
if not epoch then
  local info = redis.call("INFO", "server")
  local now_us = string.match(info, "server_time_usec:(%d+)")  -- the clock uptime is counted on (Redis >= 6.2)
  local now = now_us and math.floor(tonumber(now_us) / 1000000) or tonumber(redis.call("TIME")[1])
  local uptime = tonumber(string.match(info, "uptime_in_seconds:(%d+)"))
  epoch = string.format("%d:%s", now - uptime, string.match(info, "run_id:(%w+)"))
  redis.call("SET", KEYS[1], epoch)
end
local due = redis.call("SET", KEYS[2], "1", "NX", "EX", ARGV[2])
if due or epoch ~= ARGV[1] then return {{"{RECHECK}", epoch}} end
if redis.call("EXISTS", KEYS[4]) == 1 then return {{"{REVOKED}"}} end
if not redis.call("SET", KEYS[3], "1", "NX", "EX", ARGV[3]) then return {{"{REPLAYED}"}} end
local used = redis.call("INCR", KEYS[5])
redis.call("EXPIRE", KEYS[5], ARGV[5])
if used > tonumber(ARGV[4]) then return {{"{THROTTLED}"}} end
if redis.call("SET", KEYS[6], "1", "NX", "EX", ARGV[6]) then redis.call("ZADD", KEYS[7], ARGV[7], ARGV[8]) end
if #KEYS == 7 then return {{"{ADMITTED}"}} end
local previous = redis.call("GET", KEYS[8])
local profile = redis.call("GET", KEYS[10])
local busy_until = redis.call("ZSCORE", KEYS[11], ARGV[11])
local working = (busy_until and tonumber(busy_until) > tonumber(ARGV[7])) and 1 or 0
if previous and string.find(previous, '"departure_announced_at"', 1, true) then
  return {{"{ADMITTED}", 0, previous, profile, working}}
end
redis.call("SET", KEYS[8], ARGV[9])
redis.call("ZADD", KEYS[9], ARGV[10], ARGV[11])
return {{"{ADMITTED}", 1, previous or false, profile, working}}
"""
_RECHECKS_AT_MOST = 3  # a process catches up in one; more means Redis restarted again meanwhile


@cache
def _admit():
    return client().register_script(_ADMIT)


def epoch_since(epoch: str) -> int:
    """The Unix second up to which (included) Redis's epoch `epoch` cannot tell a replayed request: its start."""
    return int(epoch.partition(":")[0])


def agent_admit(
    admission: Admission, *, vehicle_id: int | None = None, state: dict[str, Any] | None = None, received_ts: float = 0
) -> Admitted:
    """Admit a signed agent request, and store the car's heartbeat `state` with it if one is given (see _ADMIT): one
    Redis round trip, unless Redis asks the process to recheck first (then one more, after the recheck)."""
    a = admission
    for _ in range(_RECHECKS_AT_MOST + 1):
        if a.epoch and a.timestamp <= a.since:
            return Admitted(SIGNED_BEFORE_EPOCH)  # it may have been received before Redis forgot its nonce
        keys = [EPOCH_KEY, RECHECK_KEY, _nonce_key(a.key_id, a.nonce), _revoked_key(a.key_id), a.rate.key]
        keys += [_stamp_key(a.key_id), USED_KEY]
        args = [a.epoch, a.recheck_every_s, a.nonce_ttl_s, a.rate.limit, a.rate.ttl_s, a.stamp_ttl_s, time.time()]
        args.append(a.key_id)
        if state is not None:
            keys += [_key(vehicle_id), SEEN_KEY, profile_key(vehicle_id), WORK_KEY]
            args += [json.dumps(state), received_ts, str(vehicle_id)]
        outcome, *rest = _admit()(keys=keys, args=args)
        if outcome != RECHECK:
            break
        checked = a.recheck(a, rest[0])
        if isinstance(checked, str):
            return Admitted(checked)
        a = checked
    else:
        raise RedisError(f"Redis's epoch kept changing: {_RECHECKS_AT_MOST} rechecks in one request")
    if outcome != ADMITTED or state is None:
        return Admitted(outcome)
    return Admitted(
        outcome,
        stored=bool(rest[0]),
        previous=json.loads(rest[1]) if rest[1] else None,
        profile=rest[2] or None,
        holds_work=bool(rest[3]),
    )


def credentials_used(until: float) -> dict[str, float]:
    """The keys used up to `until` (Unix time) whose use the database has not been told of, with when."""
    return dict(client().zrangebyscore(USED_KEY, "-inf", until, withscores=True))


def credentials_used_forget(until: float) -> None:
    """The database has been told of the uses up to `until` (a use noted since stays for the next time)."""
    client().zremrangebyscore(USED_KEY, "-inf", until)


def state_get(vehicle_id: int) -> dict[str, Any] | None:
    raw = client().get(_key(vehicle_id))
    return json.loads(raw) if raw else None


def states_get(vehicle_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    ids = list(vehicle_ids)
    if not ids:
        return {}
    pipe = client().pipeline(transaction=False)
    pipe.mget([_key(i) for i in ids])
    pipe.hmget(LOST_AFTER_KEY, [str(i) for i in ids])
    raws, lost_after = pipe.execute()
    states = {}
    for i, raw, lost in zip(ids, raws, lost_after, strict=True):
        if raw:
            states[i] = json.loads(raw)
            if lost is not None:
                # The silence after which the car is gone, as the answer to this heartbeat set it (fleet.book).
                states[i]["lost_after_s"] = float(lost)
    return states


def last_seen(vehicle_ids: Iterable[int]) -> dict[int, float]:
    """When each car's last heartbeat was received (Unix time), for those that sent one."""
    ids = list(vehicle_ids)
    if not ids:
        return {}
    scores = client().zmscore(SEEN_KEY, [str(i) for i in ids])
    return {i: float(score) for i, score in zip(ids, scores, strict=True) if score is not None}


def seen_since(ts: float) -> list[int]:
    return [int(i) for i in client().zrangebyscore(SEEN_KEY, ts, "+inf")]


def agent_lookup(*, key_id: str, failures_key: str) -> tuple[int, dict[str, Any] | None]:
    """What an agent request whose key this process has no copy of reads before its signature is checked, in one round
    trip: how many failed requests its address has made in the current window (the counter `failures_key`), and the
    record of the credential `key_id` in Redis (credential_cache, credential_known), or None."""
    failures, copy = client().mget([failures_key, _credential_key(key_id)])
    return int(failures or 0), (json.loads(copy) if copy else None)


def credentials_revoked_mark(*, key_ids: Iterable[str], ttl_s: int) -> None:
    """Tell every web process that the keys `key_ids` were revoked (for ttl_s), and drop their records
    (credential_cache): one round trip."""
    pipe = client().pipeline(transaction=True)
    for key_id in key_ids:
        pipe.set(_revoked_key(key_id), 1, ex=ttl_s)
        pipe.delete(_credential_key(key_id))
    pipe.execute()


def credential_revoked_mark(*, key_id: str, ttl_s: int) -> None:
    credentials_revoked_mark(key_ids=[key_id], ttl_s=ttl_s)


def credential_cached(key_id: str) -> dict[str, Any] | None:
    """The record of a credential that fleet.authentication keeps for heartbeats, or None."""
    raw = client().get(_credential_key(key_id))
    return json.loads(raw) if raw else None


def credential_cache(key_id: str, values: dict[str, Any], *, ttl_s: int) -> None:
    """Keep that record for ttl_s seconds (its "expires_at" says until when it may be used)."""
    client().set(_credential_key(key_id), json.dumps(values), ex=ttl_s)


def credential_known(key_id: str, *, ttl_s: int) -> None:
    """Note that `key_id` was issued (a record that may not be used: "expires_at" 0) unless a record is there."""
    client().set(_credential_key(key_id), json.dumps({"expires_at": 0}), ex=ttl_s, nx=True)


def credential_uncache(key_id: str) -> None:
    client().delete(_credential_key(key_id))


def _credential_key(key_id: str) -> str:
    return f"idlefleet:credential:{key_id}"


def _revoked_key(key_id: str) -> str:
    return f"idlefleet:credential:{key_id}:revoked"


def _stamp_key(key_id: str) -> str:
    return f"idlefleet:credential:{key_id}:used"


def _nonce_key(key_id: str, nonce: str) -> str:
    return f"idlefleet:nonce:{key_id}:{nonce}"
