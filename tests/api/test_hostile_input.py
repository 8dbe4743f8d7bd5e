"""Hostile input gets a 4xx in the JSON error shape, naming what is wrong; nothing is stored, and every page still
answers afterwards (issue 16, findings 2 and 9): deep JSON, ids that are not ids or overflow the database, URLs no
route matches, and cars that date their state in year 9999 or 0001."""

import json
from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from billing.models import LedgerTransaction, PaymentAuthorization
from core.parsers import json_too_deep
from fleet import state_store
from marketplace.models import Bid
from tests.factories import vehicle_with_credential
from tests.fleet.agent_requests import heartbeat, signed_post

pytestmark = pytest.mark.django_db

DEEP = b"[" * 2000 + b"]" * 2000
HEARTBEAT = "/api/v1/agent/heartbeat/"
DEPARTURE = "/api/v1/agent/departure/"


def assert_error_shape(response, status: int) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"code", "message", "fields"}
    assert body["message"]
    return body


def assert_nothing_stored():
    assert not Bid.objects.exists()
    assert not PaymentAuthorization.objects.exists()
    assert not LedgerTransaction.objects.exists()


def assert_pages_healthy(client, customer, staff):
    client.force_login(customer)
    for page in ("/customer/", "/customer/billing/", "/api/v1/bids/", "/api/v1/me/"):
        assert client.get(page).status_code == 200, page
    client.force_login(staff)
    assert client.get("/staff/finance/").status_code == 200


# --- JSON nested 2,000 deep: a RecursionError (500) before ----------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "logged_in"),
    [("post", "/api/v1/bids/", True), ("patch", "/api/v1/me/", True), ("post", "/api/v1/auth/token/", False)],
)
def test_json_nested_thousands_deep_is_a_400_naming_the_depth(client, alice, staff, method, path, logged_in):
    if logged_in:
        client.force_login(alice)

    response = getattr(client, method)(path, data=DEEP, content_type="application/json")

    body = assert_error_shape(response, 400)
    assert body["code"] == "parse_error"
    assert "nested more than 64 levels deep" in body["message"]
    assert_nothing_stored()
    alice.refresh_from_db()
    assert alice.email == "alice@example.test"
    assert_pages_healthy(client, alice, staff)


def test_json_just_within_the_depth_limit_is_read(client, alice):
    client.force_login(alice)
    nested = {"last_name": "Liddell", "extra": json.loads("[" * 63 + "]" * 63)}  # 64 levels with the object

    response = client.patch("/api/v1/me/", data=json.dumps(nested), content_type="application/json")

    assert response.status_code == 200, response.content
    alice.refresh_from_db()
    assert alice.last_name == "Liddell"


def test_brackets_inside_strings_do_not_count_as_nesting():
    assert not json_too_deep('{"name": "' + "[{" * 500 + '"}', limit=64)
    assert not json_too_deep('["a \\" [[[[", ' + '"]' * 100 + '"]', limit=64)
    assert json_too_deep("[" * 65 + "]" * 65, limit=64)
    assert not json_too_deep("[" * 64 + "]" * 64, limit=64)
    assert json_too_deep(b'{"a": ' + b"[" * 65, limit=64)  # unterminated: refused all the same


def test_a_cars_heartbeat_nested_thousands_deep_is_a_400(client, olivia):
    vehicle, credential = vehicle_with_credential(olivia)

    response = signed_post(client, credential, HEARTBEAT, body=b'{"observed_at": ' + DEEP + b"}")

    assert assert_error_shape(response, 400)["code"] == "parse_error"
    assert state_store.state_get(vehicle.pk) is None


# --- Ids that are not ids, and URLs no route matches: Django's HTML 404 before ---------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/bids/null%2Cnull/",
        "/api/v1/bids/-1/",
        "/api/v1/models/1.5/datasets/",
        "/api/v1/no-such-thing/",
        "/api/v2/bids/",
        "/api/v1/bids/99999999999999999999999999999999/",
    ],
)
def test_an_api_url_that_matches_nothing_is_a_json_404(client, alice, path):
    client.force_login(alice)

    body = assert_error_shape(client.get(path), 404)

    assert body["code"] == "not_found"


def test_a_page_url_that_matches_nothing_is_still_the_html_404(client, alice):
    client.force_login(alice)

    response = client.get("/customer/bids/null%2Cnull/")

    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")


def test_a_request_django_refuses_before_any_view_is_a_json_400_under_the_api(client):
    body = assert_error_shape(client.get("/api/v1/me/", HTTP_HOST="attacker.example"), 400)  # not an allowed host

    assert body["code"] == "bad_request"
    assert client.get("/customer/", HTTP_HOST="attacker.example")["Content-Type"].startswith("text/html")


def test_an_unexpected_error_under_the_api_is_a_json_500(client, alice, monkeypatch):
    from marketplace import selectors

    def broken(**kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(selectors, "bids_for_customer", broken)
    client.raise_request_exception = False
    client.force_login(alice)

    body = assert_error_shape(client.get("/api/v1/bids/"), 500)

    assert body["code"] == "server_error"
    assert "a bug" not in body["message"]  # nothing of the internals


# --- Integers the database cannot hold: an OverflowError (500) at Bid.objects.create before -------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("budget_usd", 2**63),
        ("budget_usd", "92233720368547758.07"),
        ("budget_usd", 10**30),
        ("max_price_usd_per_ch", 2**64),
        ("inference_model", 2**70),
        ("dataset", 2**70),
    ],
)
def test_an_integer_beyond_the_database_is_a_400_naming_the_field(client, digits_with_variants, staff, field, value):
    model = digits_with_variants
    body = {
        "inference_model": model.pk, "dataset": model.datasets.get().pk, "precision": "auto",
        "max_price_usd_per_ch": "0.05", "budget_usd": "5.00",
        "deadline": (timezone.now() + timedelta(hours=6)).isoformat(), field: value,
    }  # fmt: skip

    response = client.post("/api/v1/bids/", body, content_type="application/json")

    error = assert_error_shape(response, 400)
    assert field in error["fields"], error
    assert error["message"].startswith(f"{field}:")
    assert_nothing_stored()
    assert_pages_healthy(client, model.owner, staff)


# --- Cars' clocks: heartbeats dated year 9999 and year 0001 were stored --------------------------------------------


@pytest.mark.parametrize(
    "observed_at",
    ["9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z", "0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00"],
)
def test_a_heartbeat_dated_far_from_now_is_refused_naming_observed_at(client, olivia, staff, observed_at):
    vehicle, credential = vehicle_with_credential(olivia)

    response = signed_post(client, credential, HEARTBEAT, heartbeat(observed_at=observed_at))

    body = assert_error_shape(response, 400)
    assert list(body["fields"]) == ["observed_at"]
    assert "from the platform's clock" in body["fields"]["observed_at"][0]
    assert state_store.state_get(vehicle.pk) is None
    assert not vehicle.parking_sessions.exists()
    client.force_login(olivia)
    assert client.get(f"/owner/vehicles/{vehicle.pk}/").status_code == 200
    client.force_login(staff)
    assert client.get("/staff/fleet/").status_code == 200


def test_a_departure_dated_year_9999_is_refused_naming_observed_at(client, olivia):
    vehicle, credential = vehicle_with_credential(olivia)

    response = signed_post(client, credential, DEPARTURE, {"observed_at": "9999-12-31T23:59:59Z"})

    assert list(assert_error_shape(response, 400)["fields"]) == ["observed_at"]
    assert not vehicle.parking_sessions.exists()


def test_in_production_a_cars_clock_must_lie_within_the_signature_window(client, olivia, settings):
    settings.AGENT_CLOCK_MAX_SKEW_SECONDS = settings.AGENT_SIGNATURE_WINDOW_SECONDS  # production's default
    vehicle, credential = vehicle_with_credential(olivia)
    now = datetime.now(UTC)

    for off in (timedelta(minutes=6), -timedelta(minutes=6), timedelta(days=1)):
        response = signed_post(client, credential, HEARTBEAT, heartbeat(observed_at=(now + off).isoformat()))
        assert "More than 300 seconds" in assert_error_shape(response, 400)["fields"]["observed_at"][0]
    assert state_store.state_get(vehicle.pk) is None

    honest = (now - timedelta(minutes=4)).isoformat()  # a heartbeat the agent retried for a while
    assert signed_post(client, credential, HEARTBEAT, heartbeat(observed_at=honest)).status_code == 200
    assert state_store.state_get(vehicle.pk)["observed_at"] == honest
