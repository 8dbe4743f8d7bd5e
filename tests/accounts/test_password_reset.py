"""A forgotten password is reset with a link sent by email (Django's auth views), and the answer never says whether
an account has the address."""

import re
import time
from types import SimpleNamespace

import pytest
from django.core import mail
from django.test import Client

from core import throttling
from tests.factories import PASSWORD

pytestmark = pytest.mark.django_db

NEW_PASSWORD = "a-new-and-unusual-passphrase"


def reset_link(message) -> str:
    links = re.findall(r"https?://\S+/reset/\S+/", message.body)
    assert len(links) == 1, message.body
    return links[0]


def without_csrf_token(response) -> str:
    """The page, less its CSRF token (masked anew for every page)."""
    return re.sub(r'"X-CSRFToken": "[^"]*"', "", response.content.decode())


def request_reset(client, email):
    return client.post("/password_reset/", {"email": email}, follow=True)


def test_the_login_page_links_to_the_reset(client):
    page = client.get("/login/").content.decode()

    assert 'href="/password_reset/"' in page
    assert "Forgot your password?" in page


def test_a_reset_by_email_sets_a_new_password_that_logs_in(client, alice):
    page = request_reset(client, "ALICE@example.test")  # the address as the person types it

    assert page.redirect_chain[-1][0] == "/password_reset/done/"
    assert "Check your email" in page.content.decode()
    (message,) = mail.outbox
    assert message.to == ["alice@example.test"]
    assert "Idlefleet" in message.subject
    assert "Idlefleet" in message.body and "alice" in message.body
    link = reset_link(message)
    assert link.startswith("http://testserver/reset/")

    form = client.get(link, follow=True)
    assert "Choose a new password" in form.content.decode()
    done = client.post(
        form.redirect_chain[-1][0], {"new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD}, follow=True
    )
    assert done.redirect_chain[-1][0] == "/reset/done/"
    assert "Password set" in done.content.decode()

    assert Client().login(username="alice", password=NEW_PASSWORD)
    assert not Client().login(username="alice", password=PASSWORD)


def test_a_reset_link_works_once(client, alice):
    request_reset(client, alice.email)
    link = reset_link(mail.outbox[0])
    form = client.get(link, follow=True)
    client.post(form.redirect_chain[-1][0], {"new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD})

    again = Client()
    page = again.get(link, follow=True)
    assert "This link does not work" in page.content.decode()
    assert "new_password1" not in page.content.decode()
    again.post(link, {"new_password1": "yet-another-passphrase", "new_password2": "yet-another-passphrase"})

    assert Client().login(username="alice", password=NEW_PASSWORD)
    assert not Client().login(username="alice", password="yet-another-passphrase")


def test_a_mismatched_new_password_is_refused_and_the_link_still_works(client, alice):
    request_reset(client, alice.email)
    form = client.get(reset_link(mail.outbox[0]), follow=True)

    page = client.post(form.redirect_chain[-1][0], {"new_password1": NEW_PASSWORD, "new_password2": "something-else"})

    assert page.status_code == 200
    assert "didn’t match" in page.content.decode()
    assert Client().login(username="alice", password=PASSWORD)


def test_an_unknown_address_gets_the_same_answer_and_no_email(client, alice):
    known = request_reset(client, alice.email)
    mail.outbox.clear()

    unknown = request_reset(client, "nobody@example.test")

    assert unknown.redirect_chain == known.redirect_chain == [("/password_reset/done/", 302)]
    assert without_csrf_token(unknown) == without_csrf_token(known)
    assert mail.outbox == []


def test_reset_requests_are_limited_per_address(client, settings, alice, monkeypatch):
    # One fixed window for all the requests (core/throttling.py counts in windows that start on the hour).
    start = time.time() // 3600 * 3600 + 1
    monkeypatch.setattr(throttling, "time", SimpleNamespace(time=lambda: start))
    settings.THROTTLE_PASSWORD_RESET = "2/hour"
    for _ in range(2):
        assert client.post("/password_reset/", {"email": alice.email}).status_code == 302

    response = client.post("/password_reset/", {"email": alice.email})

    assert response.status_code == 429
    assert 1 <= int(response["Retry-After"]) <= 3600
    assert "Too many password reset requests" in response.content.decode()
    assert len(mail.outbox) == 2
    assert client.get("/password_reset/").status_code == 200  # the page itself is never limited
