"""People make, see and revoke their API tokens on /account/tokens/ and through the API. A token is shown once, when
it is made; each person sees and revokes only their own (someone else's is a 404)."""

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from knox.models import AuthToken

from accounts.models import ApiToken
from accounts.services import api_token_create
from tests.factories import PASSWORD

pytestmark = pytest.mark.django_db


def auth(token: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Token {token}"}


def me_status(client, token: str) -> int:
    return client.get("/api/v1/me/", **auth(token)).status_code


# --- The tokens page -----------------------------------------------------------------------------------------------


def test_the_account_page_links_to_the_tokens_page(client, alice):
    client.force_login(alice)

    page = client.get("/account/").content.decode()

    assert 'href="/account/tokens/"' in page
    assert "Authorization: Token" in page


def test_a_new_token_is_shown_once_and_works(client, alice):
    client.force_login(alice)

    response = client.post("/account/tokens/", {"name": "nightly batch"})

    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    token = response.context["token"]
    page = response.content.decode()
    assert f'value="{token}"' in page
    assert "it will not be shown again" in page
    assert me_status(client, token) == 200
    later = client.get("/account/tokens/").content.decode()
    assert "nightly batch" in later
    assert token not in later
    assert token[:15] not in later  # not even knox's lookup prefix


def test_a_token_needs_a_name(client, alice):
    client.force_login(alice)

    response = client.post("/account/tokens/", {"name": "  "})

    assert response.status_code == 400
    assert "This field is required." in response.content.decode()
    assert not AuthToken.objects.filter(user=alice).exists()


def test_the_page_says_when_there_is_no_token(client, alice):
    client.force_login(alice)

    assert "No API tokens." in client.get("/account/tokens/").content.decode()


def test_the_list_shows_the_last_use_after_a_request_with_the_token(client, alice):
    api_token, token = api_token_create(user=alice, name="dashboard sync")
    client.force_login(alice)
    row = _row_of(client.get("/account/tokens/").content.decode(), "dashboard sync")
    assert "never" in row  # last used

    assert me_status(client, token) == 200

    api_token.refresh_from_db()
    assert api_token.last_used_at is not None
    row = _row_of(client.get("/account/tokens/").content.decode(), "dashboard sync")
    assert f"{timezone.localtime(api_token.last_used_at):%-d %b %Y %H:%M}" in row


def test_the_last_use_is_written_once_a_minute_not_per_request(client, alice):
    api_token, token = api_token_create(user=alice, name="busy script")
    me_status(client, token)
    api_token.refresh_from_db()
    first_use = api_token.last_used_at

    with CaptureQueriesContext(connection) as queries:
        assert me_status(client, token) == 200

    assert not [q["sql"] for q in queries if q["sql"].startswith("UPDATE")]
    api_token.refresh_from_db()
    assert api_token.last_used_at == first_use


def test_a_revoked_token_is_refused(client, alice):
    api_token, token = api_token_create(user=alice, name="old laptop")
    client.force_login(alice)

    response = client.post(f"/account/tokens/{api_token.pk}/revoke/", follow=True)

    assert response.redirect_chain == [("/account/tokens/", 302)]
    page = response.content.decode()
    assert "Revoked “old laptop”" in page
    assert "<td>old laptop</td>" not in page
    assert me_status(client, token) == 401


def test_revoking_is_a_post(client, alice):
    api_token, token = api_token_create(user=alice, name="kept")
    client.force_login(alice)

    assert client.get(f"/account/tokens/{api_token.pk}/revoke/").status_code == 405
    assert me_status(client, token) == 200


def test_nobody_sees_or_revokes_another_persons_token(client, alice, bob):
    alices, token = api_token_create(user=alice, name="alice's script")
    client.force_login(bob)

    assert "alice&#x27;s script" not in client.get("/account/tokens/").content.decode()
    assert client.post(f"/account/tokens/{alices.pk}/revoke/").status_code == 404
    assert me_status(client, token) == 200


def test_an_expired_token_is_not_listed(client, alice):
    expired, _ = api_token_create(user=alice, name="expired one")
    AuthToken.objects.filter(pk=expired.auth_token_id).update(expiry=timezone.now() - timedelta(minutes=1))
    api_token_create(user=alice, name="live one")
    client.force_login(alice)

    page = client.get("/account/tokens/").content.decode()

    assert "live one" in page
    assert "expired one" not in page


def _row_of(page: str, name: str) -> str:
    start = page.index(f"<td>{name}</td>")
    return page[start : page.index("</tr>", start)]


# --- The API -------------------------------------------------------------------------------------------------------


def token_create(client, **extra):
    return client.post("/api/v1/auth/token/", {"username": "alice", "password": PASSWORD, **extra})


def test_the_api_names_a_new_token_and_answers_with_its_id(client, alice):
    response = token_create(client, name="ci pipeline")

    assert response.status_code == 201
    body = response.json()
    assert body["name"] == "ci pipeline"
    assert body["id"] == ApiToken.objects.get(auth_token__user=alice).pk
    assert set(body) == {"id", "name", "token", "expiry"}
    assert me_status(client, body["token"]) == 200


def test_a_token_without_a_name_gets_the_default_one(client, alice):
    assert token_create(client).json()["name"] == "API token"


def test_a_name_longer_than_64_characters_is_refused(client, alice):
    response = token_create(client, name="x" * 65)

    assert response.status_code == 400
    assert "name" in response.json()["fields"]
    assert not AuthToken.objects.filter(user=alice).exists()


def test_the_api_lists_the_users_tokens_without_the_tokens(client, alice, bob):
    first = token_create(client, name="first").json()
    second = token_create(client, name="second").json()
    api_token_create(user=bob, name="bob's")

    response = client.get("/api/v1/auth/tokens/", **auth(second["token"]))

    assert response.status_code == 200
    listed = response.json()
    assert [t["name"] for t in listed] == ["second", "first"]  # newest first; not bob's
    assert set(listed[0]) == {"id", "name", "created", "last_used", "expiry"}
    assert listed[0]["id"] == second["id"]
    assert listed[0]["last_used"] is not None  # this very request used it
    assert listed[1]["last_used"] is None
    assert first["token"] not in response.content.decode()
    assert second["token"] not in response.content.decode()


def test_the_api_revokes_a_token(client, alice):
    keep = token_create(client, name="keep").json()
    drop = token_create(client, name="drop").json()

    response = client.delete(f"/api/v1/auth/tokens/{drop['id']}/", **auth(keep["token"]))

    assert response.status_code == 204
    assert me_status(client, drop["token"]) == 401
    assert [t["name"] for t in client.get("/api/v1/auth/tokens/", **auth(keep["token"])).json()] == ["keep"]


def test_another_persons_token_is_a_404_and_stays(client, alice, bob):
    alices, alices_token = api_token_create(user=alice, name="alice's")
    _, bobs_token = api_token_create(user=bob, name="bob's")

    response = client.delete(f"/api/v1/auth/tokens/{alices.pk}/", **auth(bobs_token))

    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    assert me_status(client, alices_token) == 200


def test_logging_out_of_the_api_removes_the_token_from_the_list(client, alice):
    api_token_create(user=alice, name="other")
    token = token_create(client, name="this one").json()["token"]

    assert client.post("/api/v1/auth/logout/", **auth(token)).status_code == 204

    client.force_login(alice)
    assert [t["name"] for t in client.get("/api/v1/auth/tokens/").json()] == ["other"]
