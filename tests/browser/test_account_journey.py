"""A customer, in a browser, looks after her account: resets a forgotten password from the link the email gives her
and logs in with the new one; makes an API token for a script, uses it against the live server, sees its last use
and revokes it; adds a webhook endpoint (a small receiving server of the test's) and sends it a test event, which the
real worker delivers, signed with the secret the page showed once, and the delivery log shows it delivered."""

import json
import re
import threading
import urllib.error
import urllib.request

import pytest
from django.core import mail

from notifications.models import WebhookDelivery, WebhookEndpoint
from notifications.signing import HEADER, verify
from tests.factories import PASSWORD, CustomerFactory
from tests.notifications.conftest import Receiver
from tests.waiting import wait_for

from .journeys import assert_accessible_basics, log_in, screenshot

NEW_PASSWORD = "a-brand-new-browser-passphrase"


def api_me(live_server, token: str) -> tuple[int, dict]:
    """GET /api/v1/me/ on the live server with `token`, as a script would: (the HTTP status, the JSON body)."""
    request = urllib.request.Request(  # noqa: S310 - the test's own live server
        f"{live_server.url}/api/v1/me/", headers={"Authorization": f"Token {token}", "Accept": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - the test's own live server
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def token_row(page, name: str):
    return page.locator("table tbody tr").filter(has_text=name)


def test_a_customer_resets_her_password_by_email_then_makes_uses_and_revokes_an_api_token(page, live_server):
    CustomerFactory(username="carol")

    # She forgot her password: the login page links to the reset, which emails her a link.
    page.goto("/login/")
    page.get_by_role("link", name="Forgot your password?").click()
    page.wait_for_url("**/password_reset/")
    assert_accessible_basics(page)
    page.get_by_label("Email").fill("carol@example.test")
    page.get_by_role("button", name="Send the link").click()
    page.get_by_role("heading", name="Check your email").wait_for()
    assert_accessible_basics(page)
    (message,) = mail.outbox  # the live server runs in this process, with Django's test (locmem) email backend
    assert message.to == ["carol@example.test"] and "carol" in message.body
    (link,) = re.findall(r"https?://\S+/reset/\S+/", message.body)
    assert link.startswith(live_server.url)  # a link to this site, as she reached it

    page.goto(link)
    page.get_by_role("heading", name="Choose a new password").wait_for()
    assert_accessible_basics(page)
    page.locator("#id_new_password1").fill(NEW_PASSWORD)
    page.locator("#id_new_password2").fill(NEW_PASSWORD)
    page.get_by_role("button", name="Set my password").click()
    page.get_by_role("heading", name="Password set").wait_for()
    assert_accessible_basics(page)
    # The link works once: opened again, it says so and offers a new one.
    page.goto(link)
    page.get_by_role("heading", name="This link does not work").wait_for()
    assert page.get_by_role("button", name="Send a new link").is_visible()

    # The old password no longer logs in; the new one does.
    page.goto("/login/")
    page.locator("#id_username").fill("carol")
    page.locator("#id_password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.get_by_text("Please enter a correct username and password").wait_for()
    log_in(page, username="carol", password=NEW_PASSWORD)
    assert page.get_by_role("heading", name="My jobs").is_visible()

    # An API token for her nightly script, from the menu under her name.
    page.locator("header details.dropdown summary").click()  # the menu under her name
    page.get_by_role("link", name="API tokens").click()
    page.wait_for_url("**/account/tokens/")
    assert page.get_by_text("No API tokens.").is_visible()
    assert_accessible_basics(page)
    page.get_by_label("Name").fill("nightly script")
    page.get_by_role("button", name="Create token").click()
    page.get_by_text("Copy this token now: it will not be shown again.").wait_for()
    token = page.locator("#token").input_value()
    assert len(token) >= 40 and token in page.locator("#new-token pre").inner_text()  # the curl line to try it
    assert token_row(page, "nightly script").locator("td").nth(2).inner_text() == "never"
    assert_accessible_basics(page)
    screenshot(page, "api-tokens")

    # Back on the page later: the token is listed by its name, never shown again.
    page.goto("/account/tokens/")
    assert token not in page.content()
    assert page.locator("#new-token").count() == 0
    assert token_row(page, "nightly script").locator("td").nth(2).inner_text() == "never"

    # Her script calls the API with it; the page then shows when it was last used.
    status, me = api_me(live_server, token)
    assert (status, me["username"]) == (200, "carol")
    page.goto("/account/tokens/")
    last_used = token_row(page, "nightly script").locator("td").nth(2).inner_text()
    assert last_used != "never" and re.fullmatch(r"\d{1,2} \w{3} \d{4} \d\d:\d\d", last_used), last_used

    # She revokes it: the page says so, and her script's next request is refused.
    page.get_by_role("button", name="Revoke nightly script").click()
    page.get_by_text("Revoked “nightly script”: requests with it are refused from now on.").wait_for()
    assert token_row(page, "nightly script").count() == 0
    assert page.get_by_text("No API tokens.").is_visible()
    status, body = api_me(live_server, token)
    assert status == 401, body


@pytest.fixture
def receiver():
    """The customer's own server: records each request it gets and answers 200 (tests/notifications/conftest.py)."""
    receiver = Receiver()
    thread = threading.Thread(target=receiver.server.serve_forever, daemon=True)
    thread.start()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()
    thread.join()


@pytest.mark.worker
def test_a_customer_adds_a_webhook_endpoint_and_its_test_event_is_delivered_signed(
    page, live_server, celery_worker_thread, receiver
):
    CustomerFactory(username="carol")
    url = f"{receiver.url}/hook"

    log_in(page, username="carol", password=PASSWORD)
    page.locator("header details.dropdown summary").click()  # the menu under her name
    page.get_by_role("link", name="Webhooks").click()
    page.wait_for_url("**/account/webhooks/")
    assert page.get_by_text("No endpoints yet.").is_visible()
    assert page.get_by_text("No deliveries yet.").is_visible()
    assert_accessible_basics(page)

    page.get_by_label("URL").fill(url)
    page.get_by_label("Description").fill("Our build server")
    page.get_by_role("button", name="Add endpoint").click()
    page.get_by_text(f"{url} is added").wait_for()
    assert page.get_by_text("Copy this signing secret now: it will not be shown again.").is_visible()
    secret = page.locator("#secret").input_value()
    assert secret.startswith("whsec_")
    assert_accessible_basics(page)
    endpoints = page.locator("table").first
    assert url in endpoints.inner_text() and "Our build server" in endpoints.inner_text()
    assert "Enabled" in endpoints.inner_text()

    # Later, the secret is not on the page; she sends a test event, and the worker POSTs it to her server.
    page.goto("/account/webhooks/")
    assert secret not in page.content()
    page.get_by_role("button", name="Send test event").click()
    page.get_by_text(f"A ping event is on its way to {url}: its delivery shows in the log below.").wait_for()
    assert wait_for(lambda: len(receiver.received()) == 1, timeout=30), receiver.requests
    (received,) = receiver.received()
    assert received.event["type"] == "ping"
    assert received.event["data"]["endpoint"]["url"] == url
    # Her server can check it came from Idlefleet with the secret the page showed her.
    assert verify(secret, received.body, received.headers[HEADER])
    endpoint = WebhookEndpoint.objects.get(customer__username="carol")
    assert wait_for(lambda: WebhookDelivery.objects.get(endpoint=endpoint).status == "succeeded", timeout=30)

    page.goto("/account/webhooks/")
    deliveries = page.locator("h2:has-text('Deliveries') + div table tbody tr")
    assert deliveries.count() == 1
    cells = [cell.strip() for cell in deliveries.locator("td").all_inner_texts()]
    # Time, event, job, endpoint, status, attempts, last answer.
    assert cells[1:] == ["ping", "—", url, "Delivered", "1", "HTTP 200"], cells
    assert_accessible_basics(page)
    screenshot(page, "webhooks")
