"""Who may open what: every route of the project, for every kind of caller, in one table.

The table is checked against the URL resolver, so a new route without a row here fails
`test_every_route_is_classified`. Each row says, per actor, what the route answers: the page (200, or the status a
mutation with a minimal body gets), a redirect to log in, 401/403 for the wrong role, and 404 for another tenant's
object (bob on alice's model, bid, receipt and API token; oscar on olivia's car; one car on the files of another car's
work). Every refused request must change nothing.

Not here: the admin's internals (the index and one changelist stand for it) and the API schema and docs
(tests/api/test_schema.py).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import pytest
from django.test import Client
from django.test.client import BOUNDARY, MULTIPART_CONTENT, encode_multipart
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone
from knox.models import AuthToken

from accounts.models import User
from accounts.services import api_token_create
from billing.models import BillingProfile, ConnectAccount
from fleet.agent_wheel import agent_wheel
from fleet.models import OptInPolicy, Vehicle, VehicleCredential
from marketplace import storage
from marketplace.models import Bid, Dataset, InferenceModel, PrecisionVariant, WorkUnit
from notifications.models import WebhookDelivery, WebhookEndpoint
from tests.factories import vehicle_with_credential
from tests.fleet.agent_requests import heartbeat, signed_headers

pytestmark = pytest.mark.django_db

# Outcomes besides a plain status: a redirect to the site's login, to the admin's login, or elsewhere (a 302 that is
# not to a login page: the user's dashboard, the next page).
LOGIN, ADMIN_LOGIN, REDIRECT = "login", "admin-login", "redirect"
# The refusals: nothing may change when a request gets one of these.
REFUSED = {LOGIN, ADMIN_LOGIN, 401, 403, 404, 405}

# In this order: each actor whose request is refused comes before the owner of the objects, whose request may change
# them (alice cancels her bid, olivia issues a new credential).
ACTORS = ("anonymous", "car", "other_car", "staff", "bob", "oscar", "alice", "olivia")
PEOPLE = ("staff", "bob", "oscar", "alice", "olivia")
ADMIN_CHANGELIST = "admin/accounts/auditevent/"
NOT_CLASSIFIED_HERE = {"api/schema/", "api/docs/", "api/redoc/"}


def expect(default, **actors) -> dict[str, object]:
    unknown = set(actors) - set(ACTORS)
    assert not unknown, unknown
    return {actor: actors.get(actor, default) for actor in ACTORS}


def public(status=200):
    return expect(status)


def signed_in(status=200):
    return expect(status, anonymous=LOGIN, car=LOGIN, other_car=LOGIN)


def customer_page(alice=200, bob=200):
    return expect(403, anonymous=LOGIN, car=LOGIN, other_car=LOGIN, alice=alice, bob=bob)


def owner_page(olivia=200, oscar=200):
    return expect(403, anonymous=LOGIN, car=LOGIN, other_car=LOGIN, olivia=olivia, oscar=oscar)


def staff_page():
    return expect(403, anonymous=LOGIN, car=LOGIN, other_car=LOGIN, staff=200)


def admin_page():
    return expect(ADMIN_LOGIN, staff=200)


def anonymous_only(status, others=REDIRECT):
    """Log in and sign up: for visitors; someone logged in is sent to their dashboard."""
    return expect(others, anonymous=status, car=status, other_car=status)


def customer_api(alice=200, bob=200):
    return expect(403, anonymous=401, car=401, other_car=401, alice=alice, bob=bob)


def owner_api(olivia=200, oscar=200):
    return expect(403, anonymous=401, car=401, other_car=401, olivia=olivia, oscar=oscar)


def person_api(status=200):
    return expect(status, anonymous=401, car=401, other_car=401)


def agent_api(car=200, other_car=200):
    return expect(401, car=car, other_car=other_car)


@dataclass(frozen=True)
class Case:
    method: str
    url: str  # formatted with the world's ids: {model}, {bid}, {vehicle}, {credential}, {sha256}, {token}
    expected: dict[str, object]
    data: dict = field(default_factory=dict)
    form: bool = False  # a form (multipart) body, as browsers and the upload APIs send, instead of JSON


def get(url, expected):
    return Case("GET", url, expected)


def post_form(url, expected, data=None):
    """A form POST. The views bind a form to `request.POST or None`: an empty field is sent so that the form is bound,
    invalid, and the right actor gets the 400 of a form with errors."""
    return Case("POST", url, expected, data or {}, form=True)


def send(method, url, expected, data=None):
    return Case(method, url, expected, data or {})


BID_BODY = {"inference_model": "{model}", "dataset": "{dataset}", "precision": "int8", "max_price_usd_per_ch": "0.05",
            "budget_usd": "1.00", "deadline": "{deadline}"}  # fmt: skip

# route (as the resolver writes it) -> the requests made to it.
ROUTES: dict[str, list[Case]] = {
    # ops
    "": [get("/", public())],
    "healthz/": [get("/healthz/", public())],
    "favicon.ico": [get("/favicon.ico", public())],
    "staff/": [get("/staff/", staff_page())],
    "staff/health/": [get("/staff/health/", staff_page())],
    # accounts
    "signup/": [
        get("/signup/", anonymous_only(200)),
        post_form("/signup/", anonymous_only(400), {"username": "newcomer"}),
    ],
    "login/": [get("/login/", anonymous_only(200)), post_form("/login/", anonymous_only(200))],
    "logout/": [post_form("/logout/", public(REDIRECT))],
    "account/": [get("/account/", signed_in())],
    "account/password/": [get("/account/password/", signed_in()), post_form("/account/password/", signed_in())],
    "account/password/done/": [get("/account/password/done/", signed_in())],
    "account/tokens/": [
        get("/account/tokens/", signed_in()),
        post_form("/account/tokens/", signed_in(400), {"name": ""}),
    ],
    "account/tokens/<int:token_id>/revoke/": [
        post_form(
            "/account/tokens/{token}/revoke/", expect(404, anonymous=LOGIN, car=LOGIN, other_car=LOGIN, alice=REDIRECT)
        )
    ],
    # Password reset: for anyone; an empty form is shown again with its error, and a link that is not one says so.
    "password_reset/": [get("/password_reset/", public()), post_form("/password_reset/", public())],
    "password_reset/done/": [get("/password_reset/done/", public())],
    "reset/<uidb64>/<token>/": [get("/reset/MQ/not-a-token/", public())],
    "reset/done/": [get("/reset/done/", public())],
    "dashboard/": [get("/dashboard/", signed_in(REDIRECT))],
    # notifications: the customer's webhook endpoints
    "account/webhooks/": [
        get("/account/webhooks/", customer_page()),
        post_form("/account/webhooks/", customer_page(alice=400, bob=400), {"url": ""}),
    ],
    "account/webhooks/<int:endpoint_id>/enable/": [
        post_form("/account/webhooks/{webhook}/enable/", customer_page(alice=REDIRECT, bob=404))
    ],
    "account/webhooks/<int:endpoint_id>/test/": [
        post_form("/account/webhooks/{webhook}/test/", customer_page(alice=REDIRECT, bob=404))
    ],
    "account/webhooks/<int:endpoint_id>/delete/": [
        post_form("/account/webhooks/{webhook}/delete/", customer_page(alice=REDIRECT, bob=404))
    ],
    # marketplace pages (customers)
    "customer/": [get("/customer/", customer_page())],
    "customer/bids/": [get("/customer/bids/", customer_page())],
    "customer/models/": [get("/customer/models/", customer_page())],
    "customer/models/new/": [
        get("/customer/models/new/", customer_page()),
        post_form("/customer/models/new/", customer_page(alice=400, bob=400), {"name": ""}),
    ],
    "customer/models/<int:model_id>/": [get("/customer/models/{model}/", customer_page(bob=404))],
    "customer/models/<int:model_id>/variants/": [get("/customer/models/{model}/variants/", customer_page(bob=404))],
    "customer/models/<int:model_id>/datasets/": [
        post_form("/customer/models/{model}/datasets/", customer_page(alice=400, bob=404))
    ],
    "customer/models/<int:model_id>/tolerance/": [
        post_form(
            "/customer/models/{model}/tolerance/",
            customer_page(alice=REDIRECT, bob=404),
            {"metric": "top1", "tolerance": "0.5"},
        ),
    ],
    "customer/models/<int:model_id>/bid/": [
        get("/customer/models/{model}/bid/", customer_page(bob=404)),
        post_form("/customer/models/{model}/bid/", customer_page(alice=400, bob=404), {"dataset": ""}),
    ],
    "customer/models/<int:model_id>/bid/estimate/": [
        get("/customer/models/{model}/bid/estimate/", customer_page(bob=404))
    ],
    "customer/bids/<int:bid_id>/": [get("/customer/bids/{bid}/", customer_page(bob=404))],
    "customer/bids/<int:bid_id>/cancel/": [
        post_form("/customer/bids/{bid}/cancel/", customer_page(alice=REDIRECT, bob=404))
    ],
    "customer/bids/<int:bid_id>/price/": [
        post_form(
            "/customer/bids/{bid}/price/", customer_page(alice=REDIRECT, bob=404), {"max_price_usd_per_ch": "0.06"}
        )
    ],
    "customer/bids/<int:bid_id>/result/": [get("/customer/bids/{bid}/result/", customer_page(bob=404))],
    "market/": [get("/market/", public())],
    # the agent's wheel, public: `pipx install URL` sends no cookie, and it holds no secret
    "agent/download/": [get("/agent/download/", public(REDIRECT))],
    "agent/download/<str:filename>": [get(f"/agent/download/{agent_wheel().filename}", public())],
    # fleet pages (owners, staff)
    "owner/": [get("/owner/", owner_page())],
    "owner/live/": [get("/owner/live/", owner_page())],
    "owner/vehicles/new/": [
        get("/owner/vehicles/new/", owner_page()),
        post_form("/owner/vehicles/new/", owner_page(olivia=400, oscar=400), {"display_name": ""}),
    ],
    "owner/vehicles/<int:vehicle_id>/": [get("/owner/vehicles/{vehicle}/", owner_page(oscar=404))],
    "owner/vehicles/<int:vehicle_id>/live/": [get("/owner/vehicles/{vehicle}/live/", owner_page(oscar=404))],
    "owner/vehicles/<int:vehicle_id>/policy/": [
        get("/owner/vehicles/{vehicle}/policy/", owner_page(oscar=404)),
        post_form("/owner/vehicles/{vehicle}/policy/", owner_page(olivia=400, oscar=404), {"battery_floor_pct": 10}),
    ],
    "owner/vehicles/<int:vehicle_id>/pause/": [
        post_form("/owner/vehicles/{vehicle}/pause/", owner_page(olivia=REDIRECT, oscar=404))
    ],
    "owner/vehicles/<int:vehicle_id>/credential/": [
        post_form("/owner/vehicles/{vehicle}/credential/", owner_page(olivia=200, oscar=404))
    ],
    "owner/vehicles/<int:vehicle_id>/credential/<int:credential_id>/revoke/": [
        post_form("/owner/vehicles/{vehicle}/credential/{credential}/revoke/", owner_page(olivia=REDIRECT, oscar=404))
    ],
    "staff/fleet/": [get("/staff/fleet/", staff_page())],
    "staff/fleet/live/": [get("/staff/fleet/live/", staff_page())],
    # billing pages
    "billing/stripe/webhook/": [send("POST", "/billing/stripe/webhook/", public(400))],  # unsigned: refused by all
    "customer/billing/": [
        get("/customer/billing/", customer_page()),
        post_form("/customer/billing/", customer_page(alice=400, bob=400), {"payment_method": ""}),
    ],
    "customer/billing/receipts/<int:bid_id>/": [get("/customer/billing/receipts/{bid}/", customer_page(bob=404))],
    "customer/billing/topup/": [
        post_form("/customer/billing/topup/", customer_page(alice=400, bob=400), {"amount": ""}),
    ],
    # Nothing on the balance to refund: the page says so (a message) and sends the customer back to billing.
    "customer/billing/refund-balance/": [
        post_form("/customer/billing/refund-balance/", customer_page(alice=REDIRECT, bob=REDIRECT)),
    ],
    "owner/earnings/": [get("/owner/earnings/", owner_page())],
    "owner/earnings.csv": [get("/owner/earnings.csv", owner_page())],
    "owner/payouts/": [get("/owner/payouts/", owner_page())],
    "owner/payouts/onboard/": [post_form("/owner/payouts/onboard/", owner_page(olivia=REDIRECT, oscar=REDIRECT))],
    "owner/payouts/return/": [get("/owner/payouts/return/", owner_page(olivia=REDIRECT, oscar=REDIRECT))],
    "staff/finance/": [get("/staff/finance/", staff_page())],
    # the admin: its index and one changelist
    "admin/": [get("/admin/", admin_page())],
    ADMIN_CHANGELIST: [get(f"/{ADMIN_CHANGELIST}", admin_page())],
    # API: accounts
    "api/v1/me/": [get("/api/v1/me/", person_api()), send("PATCH", "/api/v1/me/", person_api(), {"first_name": "X"})],
    "api/v1/auth/token/": [send("POST", "/api/v1/auth/token/", public(400))],
    "api/v1/auth/logout/": [send("POST", "/api/v1/auth/logout/", person_api(204))],
    "api/v1/auth/tokens/": [get("/api/v1/auth/tokens/", person_api())],
    "api/v1/auth/tokens/<int:token_id>/": [
        send("DELETE", "/api/v1/auth/tokens/{token}/", expect(404, anonymous=401, car=401, other_car=401, alice=204))
    ],
    # API: the agent (signed requests of a car)
    "api/v1/agent/heartbeat/": [send("POST", "/api/v1/agent/heartbeat/", agent_api(), heartbeat(observed_at="{now}"))],
    "api/v1/agent/departure/": [
        send("POST", "/api/v1/agent/departure/", agent_api(), {"observed_at": "{now}"}),
    ],
    "api/v1/agent/lease/": [send("POST", "/api/v1/agent/lease/", agent_api(car=204, other_car=204))],
    # Only the car holding the lease renews it; another car's attempt is refused as not its lease.
    "api/v1/agent/lease/renew/": [
        send(
            "POST", "/api/v1/agent/lease/renew/", agent_api(other_car=409), {"unit_id": "{unit}", "lease_id": "lease-0"}
        )
    ],
    "api/v1/agent/me/": [get("/api/v1/agent/me/", agent_api())],
    "api/v1/agent/hardware/": [
        send("POST", "/api/v1/agent/hardware/", agent_api(), {"arch": "x86_64", "isa": ["avx2"], "cpus": 4})
    ],
    "api/v1/agent/result/": [send("POST", "/api/v1/agent/result/", agent_api(car=400, other_car=400))],
    "api/v1/agent/failure/": [send("POST", "/api/v1/agent/failure/", agent_api(car=400, other_car=400))],
    # Only the car that holds a unit of the model may download it.
    "api/v1/agent/artifacts/<str:sha256>/": [get("/api/v1/agent/artifacts/{sha256}/", agent_api(other_car=404))],
    # API: the owner's cars
    "api/v1/vehicles/": [
        get("/api/v1/vehicles/", owner_api()),
        send("POST", "/api/v1/vehicles/", owner_api(olivia=400, oscar=400)),
    ],
    "api/v1/vehicles/<int:vehicle_id>/": [get("/api/v1/vehicles/{vehicle}/", owner_api(oscar=404))],
    "api/v1/vehicles/<int:vehicle_id>/policy/": [
        get("/api/v1/vehicles/{vehicle}/policy/", owner_api(oscar=404)),
        send("PATCH", "/api/v1/vehicles/{vehicle}/policy/", owner_api(oscar=404), {"battery_floor_pct": 10}),
    ],
    "api/v1/vehicles/<int:vehicle_id>/credential/": [
        send("POST", "/api/v1/vehicles/{vehicle}/credential/", owner_api(olivia=201, oscar=404)),
        send("DELETE", "/api/v1/vehicles/{vehicle}/credential/", owner_api(olivia=204, oscar=404)),
    ],
    # API: the customer's models, datasets and bids
    "api/v1/models/": [
        get("/api/v1/models/", customer_api()),
        post_form("/api/v1/models/", customer_api(alice=400, bob=400)),
    ],
    "api/v1/models/<int:model_id>/": [get("/api/v1/models/{model}/", customer_api(bob=404))],
    "api/v1/models/<int:model_id>/datasets/": [
        get("/api/v1/models/{model}/datasets/", customer_api(bob=404)),
        post_form("/api/v1/models/{model}/datasets/", customer_api(alice=400, bob=404)),
    ],
    "api/v1/models/<int:model_id>/estimate/": [
        get("/api/v1/models/{model}/estimate/?dataset={dataset}", customer_api(bob=404)),
    ],
    # A bid on alice's model and dataset: bob's is refused as if they did not exist, alice's for want of a card.
    "api/v1/bids/": [
        get("/api/v1/bids/", customer_api()),
        send("POST", "/api/v1/bids/", customer_api(alice=400, bob=400), BID_BODY),
    ],
    "api/v1/bids/<int:bid_id>/": [
        get("/api/v1/bids/{bid}/", customer_api(bob=404)),
        send("PATCH", "/api/v1/bids/{bid}/", customer_api(bob=404), {"max_price_usd_per_ch": "0.06"}),
    ],
    "api/v1/bids/<int:bid_id>/cancel/": [send("POST", "/api/v1/bids/{bid}/cancel/", customer_api(bob=404))],
    "api/v1/bids/<int:bid_id>/result/": [get("/api/v1/bids/{bid}/result/", customer_api(bob=404))],
    "api/v1/market/": [get("/api/v1/market/", public())],
    # API: the customer's webhook endpoints and their deliveries
    "api/v1/webhooks/": [
        get("/api/v1/webhooks/", customer_api()),
        send("POST", "/api/v1/webhooks/", customer_api(alice=400, bob=400), {"url": ""}),
    ],
    "api/v1/webhooks/deliveries/": [get("/api/v1/webhooks/deliveries/", customer_api())],
    "api/v1/webhooks/<int:endpoint_id>/": [
        get("/api/v1/webhooks/{webhook}/", customer_api(bob=404)),
        send("DELETE", "/api/v1/webhooks/{webhook}/", customer_api(alice=204, bob=404)),
    ],
    "api/v1/market/history/": [get("/api/v1/market/history/", public())],
}


def _routes(patterns, prefix: str = ""):
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            yield from _routes(pattern.url_patterns, prefix + str(pattern.pattern))
        elif isinstance(pattern, URLPattern):
            yield prefix + str(pattern.pattern)


def _classified(route: str) -> bool:
    if route.startswith("admin/"):
        return route in ("admin/", ADMIN_CHANGELIST)
    return route not in NOT_CLASSIFIED_HERE and not route.startswith(("static/", "media/"))


def test_every_route_is_classified():
    routes = {route for route in _routes(get_resolver().url_patterns) if _classified(route)}

    assert sorted(routes - set(ROUTES)) == [], "routes without a row in ROUTES: classify them"
    assert sorted(set(ROUTES) - routes) == [], "rows of ROUTES that no longer exist"


# --- The world every case runs in ----------------------------------------------------------------------------------


@dataclass
class World:
    users: dict[str, User]
    credentials: dict[str, object]  # actor -> fleet.agent.signing.Credential
    ids: dict[str, object]


def _npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


@pytest.fixture
def world(settings, tmp_path, stripe_server, alice, bob, olivia, oscar, staff) -> World:
    """alice's model, dataset and bid (with results), olivia's car working on a unit of it, oscar's car."""
    settings.MEDIA_ROOT = tmp_path
    olivias_car, car_key = vehicle_with_credential(olivia, name="Olivia's car")
    _, other_car_key = vehicle_with_credential(oscar, name="Oscar's car")
    alices_token, _ = api_token_create(user=alice, name="alice's script")
    variant_sha = storage.artifact_save(b"alice's quantized model")
    model = InferenceModel.objects.create(
        owner=alice, name="alice's model", onnx_sha256="a" * 64, onnx_size=1, status=InferenceModel.Status.READY,
        metric=InferenceModel.Metric.TOP1, tolerance=0.9,
    )  # fmt: skip
    dataset = Dataset.objects.create(
        owner=alice, inference_model=model, name="alice's data", sha256="b" * 64, size_bytes=1, format="npy",
        item_count=10, status="ready",
    )  # fmt: skip
    variant = PrecisionVariant.objects.create(
        inference_model=model, precision="int8", status=PrecisionVariant.Status.READY, sha256=variant_sha,
        ch_per_item=0.001,
    )  # fmt: skip
    bid = Bid.objects.create(
        customer=alice, inference_model=model, dataset=dataset, variant=variant, precision_requested="int8",
        pool="int8", max_price_mcents_per_ch=5000, budget_cents=100, deadline=timezone.now() + timedelta(hours=2),
        items=10, ch_total=0.01, result_sha256=storage.artifact_save(_npy(np.zeros((10, 3), dtype=np.float32))),
    )  # fmt: skip
    unit = WorkUnit.objects.create(
        bid=bid, variant_id=bid.variant_id, index=0, item_start=0, item_end=10, ch=0.01, status=WorkUnit.Status.LEASED,
        assigned_vehicle=olivias_car, lease_id="lease-0", leased_at=timezone.now(),
        lease_expires_at=timezone.now() + timedelta(minutes=1), predicted_seconds=1.0,
    )  # fmt: skip
    return World(
        users={"alice": alice, "bob": bob, "olivia": olivia, "oscar": oscar, "staff": staff},
        credentials={"car": car_key, "other_car": other_car_key},
        ids={
            "model": model.pk, "dataset": dataset.pk, "bid": bid.pk, "vehicle": olivias_car.pk,
            "credential": VehicleCredential.objects.get(vehicle=olivias_car).pk, "sha256": variant_sha, "unit": unit.pk,
            "token": alices_token.pk,
            "webhook": WebhookEndpoint.objects.create(customer=alice, url="https://example.com/h", secret="whsec_x").pk,
            "now": timezone.now().isoformat(), "deadline": (timezone.now() + timedelta(hours=3)).isoformat(),
        },
    )  # fmt: skip


def _fill(value, ids):
    if isinstance(value, str):
        return value.format(**ids) if "{" in value else value
    if isinstance(value, dict):
        return {key: _fill(item, ids) for key, item in value.items()}
    return value


def request_as(world: World, actor: str, case: Case):
    client = Client()
    if actor in world.users:
        client.force_login(world.users[actor])
    url = _fill(case.url, world.ids)
    data = _fill(case.data, world.ids)
    if case.method == "GET":
        body, content_type = b"", None
    elif case.form:
        body, content_type = encode_multipart(BOUNDARY, data), MULTIPART_CONTENT
    else:
        body, content_type = json.dumps(data).encode(), "application/json"
    headers = {}
    if actor in world.credentials:
        # A car signs every request it makes, whatever the endpoint: a signature opens the agent API and nothing else.
        headers = signed_headers(world.credentials[actor], url, body, method=case.method)
    if content_type is None:
        return client.generic(case.method, url, **headers)
    return client.generic(case.method, url, data=body, content_type=content_type, **headers)


def snapshot() -> dict:
    """What a refused request must not have changed."""
    return {
        "users": list(User.objects.order_by("pk").values_list("pk", "first_name", "email")),
        "tokens": AuthToken.objects.count(),
        "models": list(InferenceModel.objects.order_by("pk").values_list("pk", "metric", "tolerance", "status")),
        "datasets": Dataset.objects.count(),
        "bids": list(Bid.objects.order_by("pk").values_list("pk", "status")),
        "vehicles": list(Vehicle.objects.order_by("pk").values_list("pk", "status", "display_name")),
        "policies": list(OptInPolicy.objects.order_by("pk").values_list("pk", "battery_floor_pct", "enabled")),
        "credentials": list(VehicleCredential.objects.order_by("pk").values_list("pk", "revoked_at")),
        "billing": (ConnectAccount.objects.count(), BillingProfile.objects.count()),
        "webhooks": list(WebhookEndpoint.objects.order_by("pk").values_list("pk", "enabled")),
        "webhook_deliveries": WebhookDelivery.objects.count(),
    }


def outcome_of(response) -> object:
    if response.status_code != 302:
        return response.status_code
    location = response["Location"]
    if location.startswith("/admin/login/"):
        return ADMIN_LOGIN
    if location.startswith("/login/?next="):
        return LOGIN
    return REDIRECT


CASES = [
    pytest.param(route, case, id=f"{case.method} {route or '/'}") for route, cases in ROUTES.items() for case in cases
]


@pytest.mark.parametrize(("route", "case"), CASES)
def test_each_actor_gets_what_the_matrix_says(world, route, case):
    seen, wrong = {}, {}
    for actor in ACTORS:
        before = snapshot()
        response = request_as(world, actor, case)
        seen[actor] = outcome_of(response)
        assert response.status_code < 500, f"{actor}: {response.status_code} {response.content[:500]!r}"
        if seen[actor] != case.expected[actor]:
            wrong[actor] = f"expected {case.expected[actor]}, got {seen[actor]}"
        if seen[actor] in REFUSED:
            assert snapshot() == before, f"{actor} was refused ({seen[actor]}) but something changed"
    assert wrong == {}, f"{case.method} {case.url}: {wrong}"


def test_bob_cannot_use_alices_dataset_even_on_a_catalogue_model(client, alice, bob):
    """A customer's dataset uploaded for a catalogue model is theirs alone: not listed for others, not biddable."""
    model = InferenceModel.objects.create(
        name="catalogue model", is_catalogue=True, onnx_sha256="c" * 64, onnx_size=1,
        status=InferenceModel.Status.READY,
    )  # fmt: skip
    PrecisionVariant.objects.create(inference_model=model, precision="fp32", status="ready", sha256="d" * 64,
                                    ch_per_item=0.001)  # fmt: skip
    alices = Dataset.objects.create(owner=alice, inference_model=model, name="alice's private data", sha256="e" * 64,
                                    size_bytes=1, format="npy", item_count=10, status="ready")  # fmt: skip
    client.force_login(bob)

    assert client.get(f"/api/v1/models/{model.pk}/datasets/").json() == []
    assert "alice&#x27;s private data" not in client.get(f"/customer/models/{model.pk}/").content.decode()
    response = client.post(
        "/api/v1/bids/",
        {"inference_model": model.pk, "dataset": alices.pk, "precision": "fp32", "max_price_usd_per_ch": "0.05",
         "budget_usd": "1.00", "deadline": (timezone.now() + timedelta(hours=3)).isoformat()},
        content_type="application/json",
    )  # fmt: skip
    assert response.status_code == 400
    assert "dataset" in response.json()["fields"]
    assert not Bid.objects.exists()
