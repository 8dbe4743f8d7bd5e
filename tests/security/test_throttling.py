"""The documented rate limits hold: login (page and API token), sign-up, and the agent endpoints, each answering 429
with a message and Retry-After once its limit is used up. The suite's settings raise every limit; each test here
sets a small one. The cache (where the counts live) is cleared before every test."""

import json
import re
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from core import throttling
from fleet.agent.signing import Credential
from tests.factories import PASSWORD, vehicle_with_credential
from tests.fleet.agent_requests import heartbeat, signed_headers, signed_post

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parents[2]
HEARTBEAT = "/api/v1/agent/heartbeat/"


@pytest.fixture(autouse=True)
def _at_the_start_of_a_window(monkeypatch):
    """The HTML views' limits count in fixed windows that restart on the minute (core/throttling.py): a test whose
    requests straddled a minute saw its count start again, and failed once in CI. Here every test runs at the first
    second of an hour, where each window has just begun, so all of its requests fall in one."""
    start = time.time() // 3600 * 3600 + 1
    monkeypatch.setattr(throttling, "time", SimpleNamespace(time=lambda: start))


def assert_throttled(response):
    assert response.status_code == 429
    assert 1 <= int(response["Retry-After"]) <= 60


def test_the_login_page_refuses_attempts_past_the_limit_even_with_the_right_password(client, settings, alice):
    settings.THROTTLE_LOGIN = "3/min"
    for _ in range(3):
        assert client.post("/login/", {"username": "alice", "password": "guess"}).status_code == 200

    response = client.post("/login/", {"username": "alice", "password": PASSWORD})

    assert_throttled(response)
    assert "Too many login attempts" in response.content.decode()
    assert "_auth_user_id" not in client.session
    assert client.get("/login/").status_code == 200  # the page itself is never limited


def test_the_login_limit_is_per_address_and_ends_with_its_window(client, settings, alice, monkeypatch):
    settings.THROTTLE_LOGIN = "1/min"
    assert client.post("/login/", {"username": "alice", "password": "guess"}).status_code == 200
    assert_throttled(client.post("/login/", {"username": "alice", "password": "guess"}))

    # Another address has its own count.
    other = client.post("/login/", {"username": "alice", "password": PASSWORD}, REMOTE_ADDR="192.0.2.7")
    assert other.status_code == 302

    # A minute later the first address may try again.
    later = time.time() + 61
    monkeypatch.setattr(throttling, "time", SimpleNamespace(time=lambda: later))
    assert client.post("/login/", {"username": "alice", "password": PASSWORD}).status_code == 302


def test_a_forged_x_forwarded_for_does_not_escape_the_limit(client, settings):
    settings.THROTTLE_LOGIN = "2/min"
    statuses = [
        client.post("/login/", {"username": "x", "password": "y"}, HTTP_X_FORWARDED_FOR=f"198.51.100.{n}").status_code
        for n in range(4)
    ]
    assert statuses == [200, 200, 429, 429]


def test_behind_a_trusted_proxy_the_clients_address_is_counted(client, settings):
    settings.THROTTLE_LOGIN = "1/min"
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}

    def attempt(address):
        return client.post("/login/", {"username": "x", "password": "y"}, HTTP_X_FORWARDED_FOR=address).status_code

    assert [attempt("203.0.113.1"), attempt("203.0.113.1"), attempt("203.0.113.2")] == [200, 429, 200]


def test_the_api_token_endpoint_is_limited(client, settings, alice):
    settings.THROTTLE_LOGIN = "2/min"
    for _ in range(2):
        assert client.post("/api/v1/auth/token/", {"username": "alice", "password": "guess"}).status_code == 400

    response = client.post("/api/v1/auth/token/", {"username": "alice", "password": PASSWORD})

    assert_throttled(response)
    assert response.json()["code"] == "throttled"
    assert "seconds" in response.json()["message"]


def test_sign_up_is_limited(client, settings):
    from accounts.models import User

    settings.THROTTLE_SIGNUP = "2/hour"
    for _ in range(2):
        assert client.post("/signup/", {"username": "newcomer"}).status_code == 400
    form = {"username": "newcomer", "email": "new@example.test", "role": "customer", "password1": "a-fine-passphrase-9",
            "password2": "a-fine-passphrase-9"}  # fmt: skip

    response = client.post("/signup/", form)

    assert response.status_code == 429
    assert 1 <= int(response["Retry-After"]) <= 3600
    assert "Too many sign-ups" in response.content.decode()
    assert not User.objects.filter(username="newcomer").exists()
    assert client.get("/signup/").status_code == 200


def test_agent_requests_are_limited_per_vehicle(client, settings, olivia, oscar):
    settings.THROTTLE_AGENT = "3/min"
    _, olivias = vehicle_with_credential(olivia)
    _, oscars = vehicle_with_credential(oscar)
    statuses = [signed_post(client, olivias, HEARTBEAT, heartbeat()).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]

    response = signed_post(client, olivias, HEARTBEAT, heartbeat())

    assert_throttled(response)
    assert response.json()["code"] == "throttled"
    # Every agent endpoint shares the car's count; another car has its own.
    assert_throttled(signed_post(client, olivias, "/api/v1/agent/lease/", {}))
    assert signed_post(client, oscars, HEARTBEAT, heartbeat()).status_code == 200


def test_a_heartbeat_over_the_limit_stores_nothing(client, settings, olivia):
    """A refused heartbeat is refused in the same Redis round trip that would store it: the car's state stays."""
    from fleet import state_store

    settings.THROTTLE_AGENT = "1/min"
    vehicle, credential = vehicle_with_credential(olivia)
    assert signed_post(client, credential, HEARTBEAT, heartbeat(battery_pct=80.0)).status_code == 200

    assert_throttled(signed_post(client, credential, HEARTBEAT, heartbeat(battery_pct=50.0)))
    assert state_store.state_get(vehicle.pk)["battery_pct"] == 80.0


def test_an_invalid_heartbeat_counts_against_the_car_and_cannot_be_replayed(client, settings, olivia):
    settings.THROTTLE_AGENT = "2/min"
    _, credential = vehicle_with_credential(olivia)
    body = json.dumps(heartbeat(battery_pct=101)).encode()
    headers = signed_headers(credential, HEARTBEAT, body)
    assert client.post(HEARTBEAT, body, content_type="application/json", **headers).status_code == 400

    replayed = client.post(HEARTBEAT, body, content_type="application/json", **headers)
    assert replayed.status_code == 401
    assert replayed.json()["code"] == "replayed"
    assert signed_post(client, credential, HEARTBEAT, heartbeat()).status_code == 200
    assert_throttled(signed_post(client, credential, HEARTBEAT, heartbeat()))


def test_the_default_agent_limit_is_generous_for_heartbeats():
    """A heartbeat every 15 s plus a lease, a download and a result per step is far below the default."""
    base = (ROOT / "config/settings/base.py").read_text()
    default = re.search(r'THROTTLE_AGENT = env.str\("THROTTLE_AGENT", default="([^"]+)"\)', base).group(1)
    rate = throttling.rate_parse(default)
    assert rate.requests * 60 / rate.seconds >= 120


def test_failed_agent_requests_are_limited_per_address(client, settings, olivia):
    settings.THROTTLE_AGENT_FAILURES = "3/min"
    _, credential = vehicle_with_credential(olivia)
    unsigned = [client.post(HEARTBEAT, heartbeat(), content_type="application/json").status_code for _ in range(3)]
    assert unsigned == [401, 401, 401]

    # Past the limit the address's failures get 429, and a key Redis does not know is refused before it is looked up.
    response = client.post(HEARTBEAT, heartbeat(), content_type="application/json")
    assert_throttled(response)
    assert "Too many failed agent requests from this address" in response.json()["message"]
    stranger = signed_post(client, Credential.generate(key_id="0123456789abcdef"), HEARTBEAT, heartbeat())
    assert_throttled(stranger)
    # A correctly signed request is admitted all the same: cars behind one NAT share an address with strangers
    # (tests/fleet/test_agent_security_state.py floods it).
    assert signed_post(client, credential, HEARTBEAT, heartbeat()).status_code == 200
    # A car elsewhere is not affected.
    body = json.dumps(heartbeat()).encode()
    elsewhere = client.post(HEARTBEAT, body, content_type="application/json", REMOTE_ADDR="192.0.2.9",
                            **signed_headers(credential, HEARTBEAT, body))  # fmt: skip
    assert elsewhere.status_code == 200


@pytest.mark.parametrize("path", [HEARTBEAT, "/api/v1/agent/lease/"])
def test_a_refused_agent_request_counts_once_against_its_address(client, settings, olivia, path):
    settings.THROTTLE_AGENT_FAILURES = "2/min"
    _, credential = vehicle_with_credential(olivia)
    body = json.dumps(heartbeat() if path == HEARTBEAT else {}).encode()
    headers = signed_headers(credential, path, body)
    assert client.post(path, body, content_type="application/json", **headers).status_code in (200, 204)

    assert client.post(path, body, content_type="application/json", **headers).status_code == 401  # a replay

    # One failure of two allowed: the address is not refused yet.
    assert signed_post(client, credential, path, heartbeat() if path == HEARTBEAT else {}).status_code in (200, 204)


def test_the_public_market_api_is_limited_per_address(client, settings):
    settings.THROTTLE_PUBLIC_API = "2/min"
    for path in ("/api/v1/market/", "/api/v1/market/history/"):
        assert client.get(path).status_code == 200

    response = client.get("/api/v1/market/history/?pool=int8")

    assert_throttled(response)
    assert response.json()["code"] == "throttled"
    assert client.get("/api/v1/market/", REMOTE_ADDR="192.0.2.9").status_code == 200  # another address: its own count


def test_successful_agent_requests_do_not_count_as_failures(client, settings, olivia):
    settings.THROTTLE_AGENT_FAILURES = "2/min"
    _, credential = vehicle_with_credential(olivia)
    for _ in range(5):
        assert signed_post(client, credential, HEARTBEAT, heartbeat()).status_code == 200


@pytest.mark.parametrize(
    "name",
    [
        "THROTTLE_LOGIN",
        "THROTTLE_SIGNUP",
        "THROTTLE_PASSWORD_RESET",
        "THROTTLE_PUBLIC_API",
        "THROTTLE_AGENT",
        "THROTTLE_AGENT_FAILURES",
    ],
)
def test_each_limit_is_documented_with_its_default(name):
    base = (ROOT / "config/settings/base.py").read_text()
    default = re.search(rf'{name} = env.str\("{name}", default="([^"]+)"\)', base).group(1)
    throttling.rate_parse(default)
    readme = (ROOT / "README.md").read_text()
    assert re.search(rf"\| `{name}` \| `{re.escape(default)}` \|", readme), f"{name} ({default}) is not in the README"


def test_a_rate_that_is_not_one_is_refused_clearly():
    from django.core.exceptions import ImproperlyConfigured

    assert throttling.rate_parse("10/min") == throttling.Rate(10, 60)
    assert throttling.rate_parse("5/hour") == throttling.Rate(5, 3600)
    with pytest.raises(ImproperlyConfigured, match="not a rate"):
        throttling.rate_parse("ten per minute")
