"""Agent requests are signed with the car's Ed25519 key; the database keeps only the public half."""

import json
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from fleet import state_store
from fleet.agent import protocol
from fleet.agent.signing import Credential
from fleet.authentication import credential_copies_clear
from fleet.models import VehicleCredential
from fleet.services import credentials_last_used_record
from tests.factories import vehicle_with_credential
from tests.fleet.agent_requests import heartbeat, signed_headers, signed_post

pytestmark = pytest.mark.django_db
HEARTBEAT = "/api/v1/agent/heartbeat/"


@pytest.fixture
def car(olivia):
    return vehicle_with_credential(olivia)


def test_a_valid_signed_heartbeat_is_accepted(client, car):
    vehicle, credential = car

    response = signed_post(client, credential, HEARTBEAT, heartbeat(battery_pct=77.0))

    assert response.status_code == 200, response.content
    # A car that holds no work and expects none is asked to heartbeat rarely (tests/fleet/test_cadence.py).
    assert response.json()["next_heartbeat_s"] == protocol.IDLE_HEARTBEAT_SECONDS
    assert state_store.state_get(vehicle.pk)["battery_pct"] == 77.0


def test_a_replayed_request_is_refused(client, car):
    _, credential = car
    body = json.dumps(heartbeat()).encode()
    headers = signed_headers(credential, HEARTBEAT, body)

    first = client.post(HEARTBEAT, data=body, content_type="application/json", **headers)
    replay = client.post(HEARTBEAT, data=body, content_type="application/json", **headers)

    assert first.status_code == 200
    assert replay.status_code == 401
    assert replay.json()["message"] == "This request was already received (replayed nonce)."


def test_a_stale_request_is_refused(client, car):
    _, credential = car

    response = signed_post(client, credential, HEARTBEAT, heartbeat(), timestamp=int(time.time()) - 301)

    assert response.status_code == 401
    assert "from the server's clock" in response.json()["message"]


def test_a_request_from_the_future_is_refused(client, car):
    _, credential = car
    response = signed_post(client, credential, HEARTBEAT, heartbeat(), timestamp=int(time.time()) + 301)
    assert response.status_code == 401


def test_a_tampered_body_is_refused_and_changes_nothing(client, car):
    vehicle, credential = car
    signed_body = json.dumps(heartbeat(battery_pct=80.0)).encode()
    tampered = json.dumps(heartbeat(battery_pct=5.0)).encode()

    response = client.post(
        HEARTBEAT, data=tampered, content_type="application/json", **signed_headers(credential, HEARTBEAT, signed_body)
    )

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "IDLEFLEET-ED25519-V1"
    assert state_store.state_get(vehicle.pk) is None


def test_a_signature_for_another_path_is_refused(client, car):
    _, credential = car
    body = json.dumps({"observed_at": "2026-11-26T07:00:00Z"}).encode()
    headers = signed_headers(credential, "/api/v1/agent/departure/", body)
    response = client.post(HEARTBEAT, data=body, content_type="application/json", **headers)
    assert response.status_code == 401


def test_a_revoked_credential_is_refused(client, car, olivia, django_capture_on_commit_callbacks):
    vehicle, credential = car
    assert signed_post(client, credential, HEARTBEAT, heartbeat()).status_code == 200  # copied for heartbeats
    client.force_login(olivia)
    stored = VehicleCredential.objects.get(key_id=credential.key_id)
    with django_capture_on_commit_callbacks(execute=True):  # as the request's commit would
        client.post(f"/owner/vehicles/{vehicle.pk}/credential/{stored.pk}/revoke/")
    client.logout()

    response = signed_post(client, credential, HEARTBEAT, heartbeat())

    assert response.status_code == 401
    assert response.json()["message"] == "Invalid or revoked vehicle credential, or a bad signature."


def test_issuing_a_new_credential_retires_the_old_one(client, car):
    from fleet.services import credential_issue

    vehicle, old = car
    new = credential_issue(vehicle=vehicle)

    assert signed_post(client, old, HEARTBEAT, heartbeat()).status_code == 401
    assert signed_post(client, new, HEARTBEAT, heartbeat()).status_code == 200


def test_a_key_the_platform_never_issued_is_refused(client, car):
    _, credential = car
    forged = Credential.generate(key_id=credential.key_id)  # right key id, wrong key
    assert signed_post(client, forged, HEARTBEAT, heartbeat()).status_code == 401


def test_unsigned_requests_and_user_sessions_are_refused(client, car, olivia):
    assert client.post(HEARTBEAT, heartbeat(), content_type="application/json").status_code == 401
    client.force_login(olivia)
    assert client.post(HEARTBEAT, heartbeat(), content_type="application/json").status_code == 401


def test_the_database_holds_no_usable_credential(client, car):
    _, credential = car
    stored = VehicleCredential.objects.get(key_id=credential.key_id)
    secret = credential.private_key

    row_bytes = b"".join(
        value if isinstance(value, bytes | memoryview) else str(value).encode()
        for value in VehicleCredential.objects.filter(pk=stored.pk).values_list(
            "key_id", "public_key", "created_at", "revoked_at", "last_used_at"
        )[0]
    )
    assert bytes(stored.public_key) == credential.public_key
    assert secret not in row_bytes
    assert credential.to_token().split(".")[2] not in row_bytes.decode("latin-1")
    # What is stored (key id + public key) cannot sign: using it as the key gives a refused request.
    from_dump = Credential(key_id=stored.key_id, private_key=bytes(stored.public_key))
    assert signed_post(client, from_dump, HEARTBEAT, heartbeat()).status_code == 401


def test_a_key_revoked_through_the_services_is_refused_at_once_though_heartbeats_use_a_copy(
    client, car, django_capture_on_commit_callbacks
):
    from fleet.services import credential_revoke

    _, credential = car
    assert signed_post(client, credential, HEARTBEAT, heartbeat()).status_code == 200
    copy = state_store.credential_cached(credential.key_id)
    assert copy is not None  # the next heartbeats read no database
    with django_capture_on_commit_callbacks(execute=True):
        credential_revoke(credential=VehicleCredential.objects.get(key_id=credential.key_id))
    state_store.credential_cache(credential.key_id, copy, ttl_s=60)  # as a heartbeat racing the revocation left it

    response = signed_post(client, credential, HEARTBEAT, heartbeat())

    assert response.status_code == 401
    assert response.json()["code"] == "credential_invalid"


def test_a_key_revoked_behind_the_services_back_is_refused_when_the_copy_expires(client, car):
    """An UPDATE in SQL leaves no mark in Redis: the key works until the copy of it expires (or the fleet's next
    recheck of recent revocations: tests/fleet/test_agent_security_state.py)."""
    _, credential = car
    assert signed_post(client, credential, HEARTBEAT, heartbeat()).status_code == 200
    VehicleCredential.objects.filter(key_id=credential.key_id).update(revoked_at=timezone.now())

    assert signed_post(client, credential, HEARTBEAT, heartbeat()).status_code == 200  # the copy still says valid
    state_store.client().delete(f"idlefleet:credential:{credential.key_id}")  # what their expiry does
    credential_copies_clear()
    assert signed_post(client, credential, HEARTBEAT, heartbeat()).status_code == 401


def test_a_process_keeps_its_copy_of_a_key_no_longer_than_redis_keeps_the_copy_it_came_from(client, car):
    _, credential = car
    assert signed_post(client, credential, HEARTBEAT, heartbeat()).status_code == 200
    credential_copies_clear()
    copy = state_store.credential_cached(credential.key_id)
    state_store.credential_cache(credential.key_id, {**copy, "expires_at": time.time() + 0.5}, ttl_s=60)
    assert signed_post(client, credential, HEARTBEAT, heartbeat()).status_code == 200  # this process copies it
    VehicleCredential.objects.filter(key_id=credential.key_id).update(revoked_at=timezone.now())

    time.sleep(0.6)
    state_store.client().delete(f"idlefleet:credential:{credential.key_id}")  # what its expiry does

    assert signed_post(client, credential, HEARTBEAT, heartbeat()).status_code == 401


def test_a_keys_last_use_is_written_by_the_snapshot_not_by_its_heartbeats(client, car):
    from fleet.tasks import vehicle_states_snapshot

    _, credential = car
    before = timezone.now()
    assert signed_post(client, credential, HEARTBEAT, heartbeat()).status_code == 200
    assert VehicleCredential.objects.get(key_id=credential.key_id).last_used_at is None

    vehicle_states_snapshot()

    last_used = VehicleCredential.objects.get(key_id=credential.key_id).last_used_at
    assert before - timedelta(seconds=1) <= last_used <= timezone.now()
    # Noted once per LAST_USED_RESOLUTION: the next heartbeats have nothing new to write.
    assert signed_post(client, credential, HEARTBEAT, heartbeat()).status_code == 200
    assert credentials_last_used_record() == 0
