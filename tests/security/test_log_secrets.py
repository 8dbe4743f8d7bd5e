"""No secret reaches the logs: with every logger at DEBUG (SQL included), a signed agent heartbeat, logins, an API
token, a Stripe payment and Stripe webhooks (good and forged) leave no password, token, car key or signature, Stripe
key or webhook secret in any log record."""

import hashlib
import hmac
import json
import logging
import time

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from billing.models import PaymentAuthorization, StripeEvent
from fleet.agent.signing import b64encode
from tests.billing import builders
from tests.factories import PASSWORD, vehicle_with_credential
from tests.fleet.agent_requests import heartbeat, signed_headers

pytestmark = pytest.mark.django_db
WEBHOOK_SECRET = "whsec_log_test_0123456789abcdef"
WRONG_PASSWORD = "not-the-password-7f3a"
HEARTBEAT = "/api/v1/agent/heartbeat/"
# Loggers configured above DEBUG in settings (or by libraries): lowered for this test, so that nothing is hidden.
QUIET_LOGGERS = ("stripe", "django.db.backends", "django.request", "django.server", "urllib3", "celery", "knox")


def stripe_signature(body: bytes, secret: str) -> str:
    timestamp = int(time.time())
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def test_no_secret_appears_in_any_log_record(client, settings, caplog, monkeypatch, alice, olivia, card_for):
    from billing import tasks

    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    monkeypatch.setattr(tasks.stripe_event_process, "delay", lambda event_id: tasks.stripe_event_process(event_id))
    caplog.set_level(logging.DEBUG)
    for name in QUIET_LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    secrets_ = {"password": PASSWORD, "wrong password": WRONG_PASSWORD, "Stripe secret key": settings.STRIPE_SECRET_KEY,
                "webhook secret": WEBHOOK_SECRET}  # fmt: skip

    with CaptureQueriesContext(connection):  # SQL is logged at DEBUG too
        # A car's heartbeat, signed with its private key.
        _, credential = vehicle_with_credential(olivia)
        body = json.dumps(heartbeat()).encode()
        headers = signed_headers(credential, HEARTBEAT, body)
        assert client.post(HEARTBEAT, body, content_type="application/json", **headers).status_code == 200
        secrets_["credential"] = credential.to_token()
        secrets_["private key"] = b64encode(credential.private_key)
        secrets_["private key (hex)"] = credential.private_key.hex()
        secrets_["signature"] = headers["HTTP_X_IDLEFLEET_SIGNATURE"]
        # A forged one (a replay of the same signature on another body) is refused and logged as a 401.
        forged = json.dumps(heartbeat(battery_pct=1.0)).encode()
        assert client.post(HEARTBEAT, forged, content_type="application/json", **headers).status_code == 401

        # Logging in, with a wrong password and then the right one.
        assert client.post("/login/", {"username": "alice", "password": WRONG_PASSWORD}).status_code == 200
        assert client.post("/login/", {"username": "alice", "password": PASSWORD}).status_code == 302
        # An API token: refused, then made.
        token_url = "/api/v1/auth/token/"
        assert client.post(token_url, {"username": "alice", "password": WRONG_PASSWORD}).status_code == 400
        response = client.post(token_url, {"username": "alice", "password": PASSWORD})
        assert response.status_code == 201
        secrets_["API token"] = response.json()["token"]
        assert client.get("/api/v1/me/", HTTP_AUTHORIZATION=f"Token {secrets_['API token']}").status_code == 200

        # A card payment through (the local) Stripe, then Stripe's webhook about it, and a forged webhook.
        card_for(alice)
        bid = builders.bid_authorized(alice)
        intent_id = PaymentAuthorization.objects.get(bid=bid).stripe_payment_intent_id
        event = {"id": "evt_log_test", "object": "event", "type": "payment_intent.amount_capturable_updated",
                 "created": int(time.time()), "livemode": False,
                 "data": {"object": {"id": intent_id, "object": "payment_intent"}}}  # fmt: skip
        payload = json.dumps(event).encode()
        good = stripe_signature(payload, WEBHOOK_SECRET)
        webhook = "/billing/stripe/webhook/"
        assert (
            client.post(webhook, payload, content_type="application/json", HTTP_STRIPE_SIGNATURE=good).status_code
            == 200
        )
        bad = stripe_signature(payload, "whsec_wrong")
        assert (
            client.post(webhook, payload, content_type="application/json", HTTP_STRIPE_SIGNATURE=bad).status_code == 400
        )
        secrets_["webhook signature"] = good.split("v1=")[1]
        assert StripeEvent.objects.get(event_id="evt_log_test").processed_at is not None  # it re-read the intent

    assert caplog.records, "nothing was logged: the test would prove nothing"
    for record in caplog.records:
        text = " ".join([record.getMessage(), str(record.args), record.exc_text or ""])
        for what, secret in secrets_.items():
            assert secret not in text, f"the {what} appears in a log record of {record.name}: {record.getMessage()}"
    for what, secret in secrets_.items():
        assert secret not in caplog.text, f"the {what} appears in the formatted logs"
