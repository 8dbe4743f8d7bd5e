"""Schemathesis: requests generated from the OpenAPI schema, for every operation, as a customer, an owner and staff
(each with an API token), and not one answered with a server error.

Few examples per operation, so that it runs with the suite (FUZZ_MAX_EXAMPLES=200 searches harder). Left out: the
agent endpoints (their signatures cannot be generated from the schema; the agent tests cover them) and logging out
(it would revoke the token the rest of the run uses). Stripe calls (a bid's hold) go to the local Stripe server.
"""

import os

import pytest
import schemathesis
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import not_a_server_error

from tests.factories import PASSWORD

pytestmark = pytest.mark.django_db
MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "5"))


class InProcessApp:
    """The project's WSGI app, run the way Django's test client runs it: a request does not close the database
    connection, which holds the test's transaction (Django closes "old" connections at each request's start and end).
    """

    def __init__(self):
        from django.core.wsgi import get_wsgi_application

        self.app = get_wsgi_application()

    def __call__(self, environ, start_response):
        from django.core import signals
        from django.db import close_old_connections

        signals.request_started.disconnect(close_old_connections)
        signals.request_finished.disconnect(close_old_connections)
        try:
            response = self.app(environ, start_response)
            try:
                body = b"".join(response)
            finally:
                response.close()
        finally:
            signals.request_started.connect(close_old_connections)
            signals.request_finished.connect(close_old_connections)
        return [body]


schema = (
    schemathesis.openapi.from_wsgi("/api/schema/", InProcessApp())
    .exclude(path_regex=r"^/api/v1/agent/")
    .exclude(path="/api/v1/auth/logout/")
)


@pytest.fixture(autouse=True)
def _uploads_and_stripe(settings, tmp_path, stripe_server):
    settings.MEDIA_ROOT = tmp_path  # generated "models" and "datasets" land here; Stripe calls go to the local server


fuzz = hypothesis_settings(
    max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None
)


def token_headers(client, user) -> dict[str, str]:
    response = client.post("/api/v1/auth/token/", {"username": user.username, "password": PASSWORD})
    assert response.status_code == 201, response.content
    return {"Authorization": f"Token {response.json()['token']}"}


@pytest.fixture
def ids(alice, olivia) -> dict[str, int]:
    """Objects for generated integer ids to point at: alice's model, dataset and bid, olivia's car."""
    from datetime import timedelta

    from django.utils import timezone

    from marketplace.models import Bid, Dataset, InferenceModel, PrecisionVariant
    from tests.factories import vehicle_with_credential

    model = InferenceModel.objects.create(owner=alice, name="m", onnx_sha256="a" * 64, onnx_size=1, status="ready")
    dataset = Dataset.objects.create(owner=alice, inference_model=model, name="d", sha256="b" * 64, size_bytes=1,
                                     format="npy", item_count=10, status="ready")  # fmt: skip
    variant = PrecisionVariant.objects.create(inference_model=model, precision="int8", status="ready",
                                              sha256="c" * 64, ch_per_item=0.001)  # fmt: skip
    bid = Bid.objects.create(
        customer=alice, inference_model=model, dataset=dataset, variant=variant, precision_requested="int8",
        pool="int8", max_price_mcents_per_ch=5000, budget_cents=100, deadline=timezone.now() + timedelta(hours=2),
        items=10, ch_total=0.01,
    )  # fmt: skip
    vehicle, _ = vehicle_with_credential(olivia)
    return {"model_id": model.pk, "dataset_id": dataset.pk, "bid_id": bid.pk, "vehicle_id": vehicle.pk}


def aim(case, ids: dict[str, int]) -> None:
    """Point generated integer ids at real objects, so that generated bodies reach the code behind the lookups
    (random ids would almost always stop at a 404). Ids that are not integers stay as generated."""
    for name, value in (case.path_parameters or {}).items():
        if name in ids and isinstance(value, int):
            case.path_parameters[name] = ids[name]
    if isinstance(case.body, dict):
        for field, name in (("inference_model", "model_id"), ("dataset", "dataset_id")):
            if isinstance(case.body.get(field), int):
                case.body[field] = ids[name]


def check(case, headers, ids) -> None:
    aim(case, ids)
    case.call_and_validate(headers=headers, checks=[not_a_server_error])


@pytest.fixture
def customer_headers(client, alice, card_for):
    card_for(alice)  # so that a generated bid can reach Stripe, not stop at "add a card"
    return token_headers(client, alice)


@pytest.fixture
def owner_headers(client, olivia):
    return token_headers(client, olivia)


@pytest.fixture
def staff_headers(client, staff):
    return token_headers(client, staff)


@schema.parametrize()
@fuzz
def test_no_server_error_as_a_customer(case, customer_headers, ids):
    check(case, customer_headers, ids)


@schema.parametrize()
@fuzz
def test_no_server_error_as_an_owner(case, owner_headers, ids):
    check(case, owner_headers, ids)


@schema.parametrize()
@fuzz
def test_no_server_error_as_staff(case, staff_headers, ids):
    check(case, staff_headers, ids)


# What the fuzzing found, kept as plain regression tests: a NUL character reached a PostgreSQL lookup (a 500).


def test_a_hardware_name_with_a_nul_character_is_refused(client, olivia):
    client.force_login(olivia)
    body = {"display_name": "Blue car", "hardware": "HW\x004"}

    response = client.post("/api/v1/vehicles/", body, content_type="application/json")

    assert response.status_code == 400
    assert "hardware" in response.json()["fields"]


def test_an_artifact_name_that_is_not_a_digest_is_not_found(client, olivia):
    from tests.factories import vehicle_with_credential
    from tests.fleet.agent_requests import signed_headers

    _, credential = vehicle_with_credential(olivia)
    for name in ("ab%00cd", "A" * 64):
        path = f"/api/v1/agent/artifacts/{name}/"
        assert client.get(path, **signed_headers(credential, path, b"", method="GET")).status_code == 404
