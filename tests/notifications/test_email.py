"""The customer's emails go through Django's mail framework, so that production can send them through an email
service with django-anymail (EMAIL_BACKEND and ANYMAIL from the environment, config/settings/base.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core import mail

from marketplace.models import Bid
from notifications import services
from tests.billing import builders

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parents[2]


def test_a_completed_jobs_email_is_sent_through_an_email_service_backend(alice, card_for, settings):
    settings.EMAIL_BACKEND = "anymail.backends.test.EmailBackend"  # anymail's stand-in for a provider's API
    card_for(alice)
    bid = builders.bid_authorized(alice)
    builders.close(bid, Bid.Status.COMPLETED)
    event = services.bid_event_record(bid_id=bid.pk)

    assert services.bid_email_send(event_pk=event.pk)
    assert not services.bid_email_send(event_pk=event.pk)  # a repeated task sends it once

    (message,) = mail.outbox
    params = message.anymail_test_params  # what anymail would send to the provider
    assert [str(to) for to in params["to"]] == [alice.email]
    assert params["subject"] == f"Idlefleet: job {bid.pk} completed"
    assert f"/customer/bids/{bid.pk}/" in message.body and "Cost: $0" in message.body


def test_the_email_service_is_chosen_by_the_environment():
    env = {
        **os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.production", "SECRET_KEY": "x" * 50,
        "ALLOWED_HOSTS": "idlefleet.example", "EMAIL_BACKEND": "anymail.backends.postmark.EmailBackend",
        "ANYMAIL": json.dumps({"POSTMARK_SERVER_TOKEN": "server-token"}),
    }  # fmt: skip
    code = (
        "import django; django.setup(); from django.conf import settings; from django.core.mail import get_connection;"
        "print(type(get_connection()).__module__, settings.ANYMAIL['POSTMARK_SERVER_TOKEN'])"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)

    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["anymail.backends.postmark", "server-token"]
