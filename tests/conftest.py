import io

import numpy as np
import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile

from config.celery import app
from core.embedded_redis import EmbeddedRedis
from marketplace.inference.catalogue import DIGITS_OUTPUT, digits_items
from marketplace.models import InferenceModel
from tests.factories import CustomerFactory, OwnerFactory, StaffFactory

# The local Stripe server (billing/localstripe_dev.py), started once per session when a test asks for it.
pytest_plugins = ["tests.stripe_fixtures"]


@pytest.fixture(scope="session", autouse=True)
def redis_server():
    """Without REDIS_URL the tests run their own embedded Redis (the same one the demo uses)."""
    if not settings.REDIS_EMBEDDED:
        yield settings.REDIS_URL
        return
    server = EmbeddedRedis(settings.EMBEDDED_REDIS_PORT)
    server.start()
    yield settings.REDIS_URL
    server.stop()


@pytest.fixture(autouse=True)
def _clean_cache(redis_server):
    from django.core.cache import cache

    from fleet import book
    from fleet.authentication import credential_copies_clear

    cache.clear()  # the whole Redis db: heartbeats, nonces, rate counts, credential copies, the supply book
    credential_copies_clear()  # and this process's copies of credentials
    book.process_caches_clear()  # and of the rounds' demand signals


@pytest.fixture
def celery_worker_thread(redis_server, transactional_db):
    """A real Celery worker consuming from the Redis broker (not eager mode), in a thread of this process.

    It shares the test database, so it needs `transactional_db`: the rows a test commits are visible to it.
    """
    from celery.contrib.testing.worker import start_worker
    from django.db import connections

    from config.celery import app

    app.control.purge()
    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10, loglevel="WARNING") as worker:
        yield worker
    connections.close_all()


# The fixed cast of the tests: alice and bob buy compute, olivia and oscar own cars, staff runs the platform.
@pytest.fixture
def alice(db):
    return CustomerFactory(username="alice")


@pytest.fixture
def bob(db):
    return CustomerFactory(username="bob")


@pytest.fixture
def olivia(db):
    return OwnerFactory(username="olivia")


@pytest.fixture
def oscar(db):
    return OwnerFactory(username="oscar")


@pytest.fixture
def staff(db):
    return StaffFactory(username="staff")


@pytest.fixture
def run_tasks_inline(monkeypatch):
    """Tasks queued "after commit" run at once, in this process (the test's transaction never commits)."""
    monkeypatch.setattr(app.Task, "delay_on_commit", lambda task, *args, **kwargs: task.apply(args, kwargs))


@pytest.fixture(scope="session")
def digits_onnx():
    from marketplace.inference.catalogue import build_digits_classifier

    return build_digits_classifier()


@pytest.fixture
def card_for(stripe_server, db):
    """Save a Stripe test card for a customer, through the local Stripe server: bids hold their budget on it."""
    from billing.services.cards import card_save

    def add(user, payment_method: str = "pm_card_visa"):
        return card_save(user=user, payment_method=payment_method)

    return add


@pytest.fixture
def onboarded(stripe_server, db):
    """Finish an owner's Connect onboarding at the local Stripe server (what the owner does on Stripe's page)."""
    import urllib.request

    from billing.services import connect

    def onboard(owner):
        connect.connect_onboarding_url(user=owner, refresh_url="http://testserver/r", return_url="http://testserver/x")
        account = owner.connect_account
        request = urllib.request.Request(  # noqa: S310 - the local test server
            f"{stripe_server}/_connect/onboard/{account.stripe_account_id}",
            data=b"", method="POST", headers={"Accept": "application/json"},
        )  # fmt: skip
        urllib.request.urlopen(request, timeout=10).read()  # noqa: S310 - the local test server
        return connect.connect_account_sync(account_id=account.stripe_account_id)

    return onboard


@pytest.fixture
def digits_with_variants(client, alice, run_tasks_inline, digits_onnx, card_for):
    """alice's digits classifier with its variants built, a card to place bids with, and a fleet that can run it: a
    registered HW4 car (it sends no heartbeat, so it takes no part in any round; a bid that nothing could run is
    refused)."""
    from tests.factories import vehicle_with_credential

    vehicle_with_credential(OwnerFactory(username="fleet"), name="A car of the fleet")
    card_for(alice)
    client.force_login(alice)
    model_id = client.post(
        "/api/v1/models/",
        {
            "name": "digits",
            "onnx_file": SimpleUploadedFile("d.onnx", digits_onnx),
            "output_name": DIGITS_OUTPUT,
            "metric": "top1",
            "tolerance": 0.9,
        },
    ).json()["id"]
    buffer = io.BytesIO()
    np.save(buffer, digits_items(200), allow_pickle=False)
    response = client.post(
        f"/api/v1/models/{model_id}/datasets/", {"file": SimpleUploadedFile("digits.npy", buffer.getvalue())}
    )
    assert response.status_code == 201, response.content
    assert response.json()["item_count"] == 200
    return InferenceModel.objects.get(pk=model_id)
