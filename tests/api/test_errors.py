"""Every API error has one JSON shape: {"code", "message", "fields"}; the message names the field and the problem."""

import pytest

from tests.factories import PASSWORD

pytestmark = pytest.mark.django_db


def test_a_validation_error_names_the_field(client, alice):
    client.force_login(alice)

    response = client.patch("/api/v1/me/", {"email": "not-an-email"}, content_type="application/json")

    assert response.status_code == 400
    assert response.json() == {
        "code": "invalid",
        "message": "email: Enter a valid email address.",
        "fields": {"email": ["Enter a valid email address."]},
    }
    alice.refresh_from_db()
    assert alice.email == "alice@example.test"


def test_an_application_error_has_the_same_shape(client, alice, bob):
    client.force_login(alice)

    response = client.patch("/api/v1/me/", {"email": bob.email}, content_type="application/json")

    assert response.status_code == 400
    assert response.json()["fields"] == {"email": ["Already registered."]}
    assert response.json()["message"].startswith("email:")


def test_anonymous_requests_get_the_same_shape(client):
    response = client.get("/api/v1/me/")

    assert response.status_code == 401
    body = response.json()
    assert body["code"] == "not_authenticated"
    assert body["message"] == "Authentication credentials were not provided."
    assert body["fields"] == {}


def test_a_token_from_the_password_works_and_is_stored_hashed(client, alice):
    from knox.models import AuthToken

    response = client.post("/api/v1/auth/token/", {"username": "alice", "password": PASSWORD})
    assert response.status_code == 201
    token = response.json()["token"]

    me = client.get("/api/v1/me/", HTTP_AUTHORIZATION=f"Token {token}")
    assert me.status_code == 200
    assert me.json()["role"] == "customer"
    stored = AuthToken.objects.get(user=alice)
    assert token not in (stored.digest, stored.token_key)


def test_a_wrong_password_gets_a_clear_error(client, alice):
    response = client.post("/api/v1/auth/token/", {"username": "alice", "password": "wrong"})

    assert response.status_code == 400
    assert response.json() == {
        "code": "invalid_credentials",
        "message": "Unable to log in with that username and password.",
        "fields": {},
    }


def test_a_missing_field_is_named(client):
    response = client.post("/api/v1/auth/token/", {"username": "alice"})

    assert response.status_code == 400
    assert response.json()["fields"] == {"password": ["This field is required."]}
    assert response.json()["message"] == "password: This field is required."


def test_logging_out_revokes_the_token(client, alice):
    token = client.post("/api/v1/auth/token/", {"username": "alice", "password": PASSWORD}).json()["token"]

    assert client.post("/api/v1/auth/logout/", HTTP_AUTHORIZATION=f"Token {token}").status_code == 204

    response = client.get("/api/v1/me/", HTTP_AUTHORIZATION=f"Token {token}")
    assert response.status_code == 401
    assert response.json()["code"] == "authentication_failed"
