"""The agent's security state survives Redis: a real Redis of the test's own is killed, restarted empty, or left down.

- A request captured before Redis restarted empty cannot be replayed after it.
- A revoked key stays refused after the restart, in a process that kept a copy of it too.
- Revoking while Redis is down succeeds (the owner's page and API), and the key is refused once Redis answers again.
- A key revoked in one process is refused at once by another that holds a copy of it.
- Honest cars keep working while strangers behind the same address flood the agent API with failures.

Each web process keeps its own copies of credentials and its own view of Redis (fleet.authentication._Process): a
test plays two processes, A and B, by switching that object.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

import core.redis
from fleet import authentication, state_store
from fleet.agent import protocol
from fleet.agent.signing import Credential
from fleet.models import ParkingSession, VehicleCredential
from fleet.services import credential_revoke
from tests.factories import vehicle_with_credential
from tests.fleet.agent_requests import heartbeat, signed_headers, signed_post
from tests.fleet.private_redis import PrivateRedis, free_port

pytestmark = pytest.mark.django_db
HEARTBEAT = "/api/v1/agent/heartbeat/"
LEASE = "/api/v1/agent/lease/"


def _clients_drop() -> None:
    """The next Redis call makes its client (and registers the admission script) from settings.REDIS_URL again."""
    core.redis.client.cache_clear()
    state_store._admit.cache_clear()


@pytest.fixture
def redis_own(settings):
    server = PrivateRedis()
    server.start()
    server.wait_past_start()  # a request signed in the second Redis started might be one it never saw
    settings.REDIS_URL = server.url
    _clients_drop()
    yield server
    server.kill()
    _clients_drop()  # settings.REDIS_URL is restored next, before anything asks for a client


@pytest.fixture
def process_a(monkeypatch):
    """This test's web process: a fresh one (no copies, no epoch seen)."""
    process = authentication._Process()
    monkeypatch.setattr(authentication, "_process", process)
    return process


@contextmanager
def in_process(process: authentication._Process):
    """Run as another web process: its copies and its view of Redis's epoch."""
    previous = authentication._process
    authentication._process = process
    try:
        yield
    finally:
        authentication._process = previous


def copied(process: authentication._Process, key_id: str) -> bool:
    return process.copies.get(key_id) is not None


def assert_invalid(response):
    assert response.status_code == 401, response.content
    assert response.json()["code"] == "credential_invalid"


@pytest.fixture
def car(olivia):
    return vehicle_with_credential(olivia)


# --- Replays --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "payload", "answer"), [(HEARTBEAT, "heartbeat", 200), (LEASE, {}, 204)])
def test_a_request_captured_before_redis_restarted_empty_cannot_be_replayed_after_it(
    client, redis_own, process_a, car, path, payload, answer
):
    vehicle, credential = car
    payload = heartbeat() if payload == "heartbeat" else payload
    body = json.dumps(payload).encode()
    captured = signed_headers(credential, path, body)
    assert client.post(path, body, content_type="application/json", **captured).status_code == answer
    assert client.post(path, body, content_type="application/json", **captured).status_code == 401  # a replay
    sessions = ParkingSession.objects.count()

    redis_own.restart_empty()  # every nonce is forgotten
    replay = client.post(path, body, content_type="application/json", **captured)

    assert replay.status_code == 401
    assert replay.json()["code"] == "replayed"
    assert replay.json()["code"] in protocol.TRANSIENT_AUTH_ERRORS  # the agent carries on: it is not its key
    assert "signed before" in replay.json()["message"]
    assert state_store.state_get(vehicle.pk) is None  # nothing stored
    assert ParkingSession.objects.count() == sessions
    # The car itself signs every request afresh: once Redis's second has passed, it is served.
    redis_own.wait_past_start()
    assert signed_post(client, credential, path, payload).status_code == answer
    assert client.post(path, body, content_type="application/json", **captured).status_code == 401


def test_a_replay_is_refused_by_a_process_that_has_not_seen_redis_restart(client, redis_own, process_a, car):
    """Process B last saw Redis before the restart, and holds a copy of the key: it must not trust its copy or its
    idea of which nonces Redis remembers."""
    vehicle, credential = car
    process_b = authentication._Process()
    body = json.dumps(heartbeat(battery_pct=50.0)).encode()
    with in_process(process_b):
        assert signed_post(client, credential, HEARTBEAT, heartbeat(battery_pct=60.0)).status_code == 200
        captured = signed_headers(credential, HEARTBEAT, body)
        assert client.post(HEARTBEAT, body, content_type="application/json", **captured).status_code == 200

    redis_own.restart_empty()
    with in_process(process_b):
        replay = client.post(HEARTBEAT, body, content_type="application/json", **captured)

    assert replay.status_code == 401
    assert replay.json()["code"] == "replayed"
    assert state_store.state_get(vehicle.pk) is None


# --- Revocation -----------------------------------------------------------------------------------------------------


def test_a_key_revoked_in_one_process_is_refused_at_once_by_another_that_holds_a_copy(
    client, redis_own, process_a, car, django_capture_on_commit_callbacks
):
    vehicle, credential = car
    process_b = authentication._Process()
    with in_process(process_b):
        assert signed_post(client, credential, HEARTBEAT, heartbeat(battery_pct=70.0)).status_code == 200
    assert copied(process_b, credential.key_id)

    with django_capture_on_commit_callbacks(execute=True):  # as the revoking request's commit would
        credential_revoke(credential=VehicleCredential.objects.get(key_id=credential.key_id))
    with in_process(process_b):
        response = signed_post(client, credential, HEARTBEAT, heartbeat(battery_pct=10.0))

    assert_invalid(response)
    assert state_store.state_get(vehicle.pk)["battery_pct"] == 70.0  # nothing stored


def test_a_key_revoked_before_redis_restarted_empty_stays_refused_after_it(
    client, redis_own, process_a, car, django_capture_on_commit_callbacks
):
    vehicle, credential = car
    process_b = authentication._Process()
    assert signed_post(client, credential, HEARTBEAT, heartbeat()).status_code == 200
    with in_process(process_b):
        assert signed_post(client, credential, HEARTBEAT, heartbeat()).status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        credential_revoke(credential=VehicleCredential.objects.get(key_id=credential.key_id))
    assert_invalid(signed_post(client, credential, HEARTBEAT, heartbeat()))

    redis_own.restart_empty()  # the revocation's mark is gone; both processes still hold a copy of the key
    redis_own.wait_past_start()
    assert copied(process_a, credential.key_id) and copied(process_b, credential.key_id)

    assert_invalid(signed_post(client, credential, HEARTBEAT, heartbeat(battery_pct=5.0)))
    with in_process(process_b):
        assert_invalid(signed_post(client, credential, HEARTBEAT, heartbeat(battery_pct=5.0)))
        assert_invalid(signed_post(client, credential, LEASE, {}))
    assert state_store.state_get(vehicle.pk) is None  # nothing stored
    # Another car's key works on in both processes.
    _, other = vehicle_with_credential(vehicle.owner, name="Red car")
    assert signed_post(client, other, HEARTBEAT, heartbeat()).status_code == 200
    with in_process(process_b):
        assert signed_post(client, other, HEARTBEAT, heartbeat()).status_code == 200


def revoke_through(client, how: str, vehicle) -> None:
    """The owner revokes the car's key: on the vehicle's page, or through the API."""
    stored = vehicle.credentials.get(revoked_at__isnull=True)
    client.force_login(vehicle.owner)
    if how == "page":
        response = client.post(f"/owner/vehicles/{vehicle.pk}/credential/{stored.pk}/revoke/")
        assert response.status_code == 302, response.content
        assert response["Location"] == f"/owner/vehicles/{vehicle.pk}/"
    else:
        response = client.delete(f"/api/v1/vehicles/{vehicle.pk}/credential/")
        assert response.status_code == 204, response.content
    client.logout()
    stored.refresh_from_db()
    assert stored.revoked_at is not None


@pytest.mark.django_db(transaction=True)  # the revocation commits in the request, as it does in production
@pytest.mark.parametrize("how", ["page", "api"])
def test_revoking_while_redis_is_down_succeeds_and_the_key_is_refused_once_redis_returns_empty(
    client, redis_own, process_a, olivia, how, caplog
):
    vehicle, credential = vehicle_with_credential(olivia)
    process_b = authentication._Process()
    assert signed_post(client, credential, HEARTBEAT, heartbeat()).status_code == 200
    with in_process(process_b):
        assert signed_post(client, credential, HEARTBEAT, heartbeat()).status_code == 200

    redis_own.kill()
    with caplog.at_level(logging.WARNING, logger="fleet.authentication"):
        revoke_through(client, how, vehicle)
    assert "revoked in the database, but Redis could not be told" in caplog.text
    down = signed_post(client, credential, HEARTBEAT, heartbeat())
    assert down.status_code == 503  # not a 500: the agent retries it
    assert down.json()["code"] == "unavailable"

    redis_own.start()  # back, empty
    redis_own.wait_past_start()
    assert_invalid(signed_post(client, credential, HEARTBEAT, heartbeat()))
    with in_process(process_b):  # saw no error, and holds a copy
        assert_invalid(signed_post(client, credential, HEARTBEAT, heartbeat()))
    assert state_store.state_get(vehicle.pk) is None


@pytest.mark.django_db(transaction=True)
def test_a_revocation_redis_missed_is_refused_once_redis_answers_though_it_kept_its_data(
    client, redis_own, process_a, olivia, settings, caplog
):
    """Redis unreachable from the revoking process (a partition, a restart of the network), then back with its data:
    the revoking process marks the key at its next admission, and every process refuses it at once then."""
    vehicle, credential = vehicle_with_credential(olivia)
    process_b = authentication._Process()
    assert signed_post(client, credential, HEARTBEAT, heartbeat(battery_pct=70.0)).status_code == 200
    with in_process(process_b):
        assert signed_post(client, credential, HEARTBEAT, heartbeat(battery_pct=70.0)).status_code == 200

    with unreachable(settings, redis_own), caplog.at_level(logging.WARNING, logger="fleet.authentication"):
        revoke_through(client, "api", vehicle)
    assert "Redis could not be told" in caplog.text
    assert state_store.credential_cached(credential.key_id) is not None  # Redis still holds the key's copy

    assert_invalid(signed_post(client, credential, HEARTBEAT, heartbeat(battery_pct=1.0)))  # A: at once
    with in_process(process_b):
        assert_invalid(signed_post(client, credential, HEARTBEAT, heartbeat(battery_pct=1.0)))
    assert state_store.state_get(vehicle.pk)["battery_pct"] == 70.0


@pytest.mark.django_db(transaction=True)
def test_a_revocation_redis_missed_is_refused_everywhere_within_the_recheck_interval(
    client, redis_own, process_a, olivia, settings
):
    """The process that revoked the key died before Redis answered it again: another process, which saw no error and
    holds a copy, refuses the key once the fleet's periodic recheck runs (every REVOCATIONS_RECHECK_S)."""
    vehicle, credential = vehicle_with_credential(olivia)
    process_b = authentication._Process()
    with in_process(process_b):
        assert signed_post(client, credential, HEARTBEAT, heartbeat(battery_pct=70.0)).status_code == 200
    with unreachable(settings, redis_own):
        revoke_through(client, "page", vehicle)
    # Process A is gone. REVOCATIONS_RECHECK_S later:
    state_store.client().delete(state_store.RECHECK_KEY)  # what its expiry does

    with in_process(process_b):
        assert_invalid(signed_post(client, credential, HEARTBEAT, heartbeat(battery_pct=1.0)))
    assert state_store.state_get(vehicle.pk)["battery_pct"] == 70.0


@contextmanager
def unreachable(settings, server: PrivateRedis):
    """This process cannot reach Redis (its address points nowhere); the server keeps running with its data."""
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port(besides=server.port)}/0"  # nothing listens there
    _clients_drop()
    try:
        yield
    finally:
        settings.REDIS_URL = server.url
        _clients_drop()


def test_a_key_revoked_behind_the_services_back_is_refused_within_the_recheck_interval(
    client, redis_own, process_a, car
):
    vehicle, credential = car
    assert signed_post(client, credential, HEARTBEAT, heartbeat(battery_pct=70.0)).status_code == 200
    VehicleCredential.objects.filter(key_id=credential.key_id).update(revoked_at=timezone.now())
    state_store.client().delete(state_store.RECHECK_KEY)  # REVOCATIONS_RECHECK_S later

    assert_invalid(signed_post(client, credential, HEARTBEAT, heartbeat(battery_pct=1.0)))
    assert state_store.state_get(vehicle.pk)["battery_pct"] == 70.0


# --- The hot path ---------------------------------------------------------------------------------------------------


def test_a_heartbeat_costs_two_redis_round_trips(client, redis_own, process_a, car, monkeypatch):
    """One to admit it and store the state (handing back the car's profile in the supply book), one to store its
    offer in the book (fleet.book): never a database query in the steady state (tests/perf counts those)."""
    import redis.connection

    from fleet import book

    _, credential = car
    monkeypatch.setattr(book, "DEMAND_FRESH_S", 3600)  # the round's demand signal, read by a process once a while
    assert signed_post(client, credential, HEARTBEAT, heartbeat()).status_code == 200  # copies the key, sees the epoch
    sent = []
    original = redis.connection.AbstractConnection.send_packed_command
    monkeypatch.setattr(
        redis.connection.AbstractConnection,
        "send_packed_command",
        lambda self, command, *args, **kwargs: sent.append(command) or original(self, command, *args, **kwargs),
    )

    for pct in (79.0, 78.0, 77.0):
        assert signed_post(client, credential, HEARTBEAT, heartbeat(battery_pct=pct)).status_code == 200

    assert len(sent) == 6


# --- Abuse limits ---------------------------------------------------------------------------------------------------


def flood(client, victim: Credential) -> list[int]:
    """One round of what strangers behind the car's address send: every kind of failure, ten times over."""
    statuses = []
    for n in range(10):
        body = json.dumps(heartbeat()).encode()
        forged = signed_headers(Credential.generate(key_id=victim.key_id), HEARTBEAT, body)  # its key id, another key
        made_up = signed_headers(Credential.generate(key_id=f"{n:04d}feedfacecafe"), HEARTBEAT, body)
        tampered = signed_headers(victim, HEARTBEAT, b"{}")  # a real signature of another body
        garbage = {"HTTP_X_IDLEFLEET_KEY": "x" * 200, "HTTP_X_IDLEFLEET_TIMESTAMP": "soon"}
        for headers in (forged, made_up, tampered, garbage, {}):
            statuses.append(client.post(HEARTBEAT, body, content_type="application/json", **headers).status_code)
        statuses.append(client.post(HEARTBEAT, b"[[[[", content_type="application/json").status_code)
    return statuses


def test_honest_cars_keep_working_while_their_address_floods_the_agent_api_with_failures(
    client, redis_own, process_a, olivia, oscar, settings
):
    settings.THROTTLE_AGENT_FAILURES = "5/min"
    vehicle, regular = vehicle_with_credential(olivia, name="Regular")  # has sent heartbeats: copied
    newcomer_vehicle, newcomer = vehicle_with_credential(olivia, name="Newcomer")  # its first heartbeat comes later
    returning_vehicle, returning = vehicle_with_credential(oscar, name="Back")  # its copy is too old to be used
    assert signed_post(client, regular, HEARTBEAT, heartbeat()).status_code == 200
    assert signed_post(client, returning, HEARTBEAT, heartbeat()).status_code == 200
    record = state_store.credential_cached(returning.key_id)
    state_store.credential_cache(returning.key_id, {**record, "expires_at": time.time() - 1}, ttl_s=3600)
    authentication.credential_copies_clear()

    statuses = flood(client, regular)
    for pct, car in zip((60.0, 61.0, 62.0), (regular, newcomer, returning), strict=True):
        assert signed_post(client, car, HEARTBEAT, heartbeat(battery_pct=pct)).status_code == 200
    statuses += flood(client, regular)
    for pct, car in zip((50.0, 51.0, 52.0), (regular, newcomer, returning), strict=True):
        assert signed_post(client, car, HEARTBEAT, heartbeat(battery_pct=pct)).status_code == 200
        assert signed_post(client, car, LEASE, {}).status_code == 204

    # The flood was refused throughout, and past the limit with 429: well past THROTTLE_AGENT_FAILURES.
    assert len(statuses) == 120 and set(statuses) <= {400, 401, 429}
    assert statuses[:5] == [401] * 5 and statuses.count(429) > 90
    for vehicle_, pct in ((vehicle, 50.0), (newcomer_vehicle, 51.0), (returning_vehicle, 52.0)):
        assert state_store.state_get(vehicle_.pk)["battery_pct"] == pct
    # A key Redis has never heard of, from that address, is refused before the database is asked.
    with CaptureQueriesContext(connection) as queries:
        response = signed_post(client, Credential.generate(key_id="0123456789abcdef"), HEARTBEAT, heartbeat())
    assert response.status_code == 429
    assert "from this address" in response.json()["message"]
    assert queries.captured_queries == []


def test_failures_with_one_key_are_counted_for_that_key_from_every_address(client, redis_own, process_a, car, settings):
    """Strangers sending a car's key id with bad signatures from many addresses get 429; the car is served."""
    settings.THROTTLE_AGENT_FAILURES = "3/min"
    vehicle, credential = car
    forger = Credential.generate(key_id=credential.key_id)

    def forged_from(address: str):
        body = json.dumps(heartbeat()).encode()
        headers = signed_headers(forger, HEARTBEAT, body)
        return client.post(HEARTBEAT, body, content_type="application/json", REMOTE_ADDR=address, **headers)

    statuses = [forged_from(f"198.51.100.{n}").status_code for n in range(5)]

    assert statuses == [401, 401, 401, 429, 429]
    refused = forged_from("198.51.100.99")
    assert "signed with this key" in refused.json()["message"]
    assert signed_post(client, credential, HEARTBEAT, heartbeat(battery_pct=33.0)).status_code == 200
    assert state_store.state_get(vehicle.pk)["battery_pct"] == 33.0
