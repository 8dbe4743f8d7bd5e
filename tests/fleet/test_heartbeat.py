"""Heartbeats: kept hot in Redis, validated field by field, and turned into parking sessions."""

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from fleet import state_store
from fleet.models import ParkingSession, VehicleState
from fleet.services import vehicle_states_snapshot
from tests.factories import vehicle_with_credential
from tests.fleet.agent_requests import heartbeat, signed_post

pytestmark = pytest.mark.django_db
HEARTBEAT = "/api/v1/agent/heartbeat/"
DEPARTURE = "/api/v1/agent/departure/"


@pytest.fixture
def car(olivia):
    return vehicle_with_credential(olivia)


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"battery_pct": 101}, "battery_pct", "Ensure this value is less than or equal to 100."),
        ({"battery_pct": "full"}, "battery_pct", "A valid number is required."),
        ({"network": "5g"}, "network", '"5g" is not a valid choice.'),
        ({"bandwidth_down_mbps": -1}, "bandwidth_down_mbps", "Ensure this value is greater than or equal to 0."),
        ({"observed_at": "yesterday"}, "observed_at", "Datetime has wrong format."),
        ({"parked": False, "computing": True}, "computing", "A car that is driving cannot be computing."),
        ({"models_cached": ["../../etc/passwd"]}, "models_cached.0", "Expected a sha256 hex digest."),
        ({"compute_power_w": 1e9}, "compute_power_w", "Ensure this value is less than or equal to 20000.0."),
        ({"observed_at": "2026-11-26T07:30:00"}, "observed_at", "Include the UTC offset"),
        ({"battery_pct": None}, "battery_pct", "This field may not be null."),
        ({"parked": "perhaps"}, "parked", "Must be a valid boolean."),
        ({"runtime_version": "x" * 41}, "runtime_version", "Ensure this field has no more than 40 characters."),
        ({"models_cached": "a" * 64}, "models_cached", 'Expected a list of items but got type "str".'),
    ],
)
def test_a_bad_heartbeat_gets_a_400_naming_the_field_and_changes_nothing(client, car, overrides, field, message):
    vehicle, credential = car

    response = signed_post(client, credential, HEARTBEAT, heartbeat(**overrides))

    assert response.status_code == 400
    body = response.json()
    assert field in body["fields"], body
    assert body["fields"][field][0].startswith(message)
    assert body["message"].startswith(f"{field}:")
    assert state_store.state_get(vehicle.pk) is None
    assert not ParkingSession.objects.exists()


def test_a_missing_field_is_named(client, car):
    _, credential = car
    payload = heartbeat()
    del payload["parked"]
    response = signed_post(client, credential, HEARTBEAT, payload)
    assert response.status_code == 400
    assert response.json()["fields"] == {"parked": ["This field is required."]}


def test_a_body_that_is_not_an_object_gets_a_400(client, car):
    _, credential = car
    response = signed_post(client, credential, HEARTBEAT, body=b"[1, 2]")
    assert response.status_code == 400
    assert response.json()["fields"] == {"non_field_errors": ["Invalid data. Expected a dictionary, but got list."]}


def test_a_body_that_is_not_json_gets_a_400(client, car):
    _, credential = car
    response = signed_post(client, credential, HEARTBEAT, body=b"{not json")
    assert response.status_code == 400
    assert response.json()["code"] == "parse_error"


def test_parking_sessions_follow_the_heartbeat_stream(client, car):
    vehicle, credential = car
    t0 = datetime(2026, 11, 23, 18, 0, tzinfo=UTC)

    def beat(at, **kw):
        assert (
            signed_post(client, credential, HEARTBEAT, heartbeat(observed_at=at.isoformat(), **kw)).status_code == 200
        )

    beat(t0, parked=True)
    beat(t0 + timedelta(minutes=1), parked=True)
    beat(t0 + timedelta(hours=13), parked=False, network="cellular")
    beat(t0 + timedelta(hours=13, minutes=30), parked=True)

    sessions = list(ParkingSession.objects.filter(vehicle=vehicle).order_by("arrived_at"))
    assert len(sessions) == 2
    assert sessions[0].arrived_at == t0
    assert sessions[0].duration_s == 13 * 3600
    assert not sessions[0].departure_announced
    assert sessions[1].departed_at is None


def test_a_departure_notice_closes_the_session_at_once(client, car):
    vehicle, credential = car
    t0 = datetime(2026, 11, 23, 18, 0, tzinfo=UTC)
    signed_post(client, credential, HEARTBEAT, heartbeat(observed_at=t0.isoformat()))

    response = signed_post(client, credential, DEPARTURE, {"observed_at": (t0 + timedelta(hours=2)).isoformat()})

    assert response.status_code == 200
    assert response.json() == {"released_work_units": 0}
    session = ParkingSession.objects.get(vehicle=vehicle)
    assert session.duration_s == 2 * 3600
    assert session.departure_announced
    assert state_store.state_get(vehicle.pk)["parked"] is False


def test_heartbeats_do_not_write_the_database_until_the_snapshot(client, car):
    vehicle, credential = car
    signed_post(client, credential, HEARTBEAT, heartbeat())  # opens the parking session

    with CaptureQueriesContext(connection) as queries:
        for pct in (79.0, 78.0, 77.0):
            assert signed_post(client, credential, HEARTBEAT, heartbeat(battery_pct=pct)).status_code == 200
    statements = [q["sql"].split()[0].upper() for q in queries.captured_queries]
    assert statements == []  # the credential read by the first heartbeat serves the stream: no query at all
    assert not VehicleState.objects.exists()

    assert vehicle_states_snapshot() == 1
    assert VehicleState.objects.get(vehicle=vehicle).battery_pct == 77.0
    assert vehicle_states_snapshot() == 1  # twice is harmless


def test_the_lease_endpoint_has_no_work_yet(client, car):
    _, credential = car
    assert signed_post(client, credential, "/api/v1/agent/lease/", {}).status_code == 204


def test_a_car_that_announced_leaving_is_not_parked_again_by_its_next_heartbeat(client, car):
    vehicle, credential = car
    t0 = datetime(2026, 11, 23, 7, 0, tzinfo=UTC)
    signed_post(client, credential, HEARTBEAT, heartbeat(observed_at=t0.isoformat()))
    signed_post(client, credential, DEPARTURE, {"observed_at": (t0 + timedelta(minutes=60)).isoformat()})

    # Sent in the same breath as the notice: the car has not moved yet.
    signed_post(client, credential, HEARTBEAT, heartbeat(observed_at=(t0 + timedelta(minutes=60)).isoformat()))
    assert state_store.state_get(vehicle.pk)["parked"] is False
    assert ParkingSession.objects.filter(vehicle=vehicle).count() == 1

    at_work = t0 + timedelta(minutes=100)
    signed_post(
        client, credential, HEARTBEAT, heartbeat(observed_at=(t0 + timedelta(minutes=70)).isoformat(), parked=False)
    )
    signed_post(client, credential, HEARTBEAT, heartbeat(observed_at=at_work.isoformat()))
    assert ParkingSession.objects.get(vehicle=vehicle, departed_at__isnull=True).arrived_at == at_work


def test_a_cars_clock_is_kept_in_utc_whatever_its_offset(client, car):
    vehicle, credential = car
    response = signed_post(client, credential, HEARTBEAT, heartbeat(observed_at="2026-11-26T08:30:00+01:00"))
    assert response.status_code == 200
    assert state_store.state_get(vehicle.pk)["observed_at"] == "2026-11-26T07:30:00+00:00"


def test_a_body_that_is_not_sent_as_json_gets_a_415_and_changes_nothing(client, car):
    import json

    from tests.fleet.agent_requests import signed_headers

    vehicle, credential = car
    body = json.dumps(heartbeat()).encode()
    response = client.post(HEARTBEAT, body, content_type="text/plain", **signed_headers(credential, HEARTBEAT, body))
    assert response.status_code == 415
    assert response.json()["code"] == "unsupported_media_type"
    assert state_store.state_get(vehicle.pk) is None
