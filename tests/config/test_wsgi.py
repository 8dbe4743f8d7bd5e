"""The production WSGI application (config/wsgi.py): the agent's requests take a lean middleware stack, everything
else the whole one."""

import io
import json

import pytest
from django.core import signals
from django.db import close_old_connections

from config import wsgi
from fleet import state_store
from tests.factories import vehicle_with_credential
from tests.fleet.agent_requests import heartbeat, signed_headers

pytestmark = pytest.mark.django_db
HEARTBEAT = "/api/v1/agent/heartbeat/"


@pytest.fixture(autouse=True)
def _keep_the_test_transaction():
    # Django closes "old" connections at each request's start and end: here that would be the test's transaction.
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


def call(method, path, *, body=b"", headers=None, host="127.0.0.1"):
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": host,
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
        "wsgi.url_scheme": "http",
        **(headers or {}),  # as signed_headers gives them: HTTP_X_IDLEFLEET_...
    }
    answer = {}

    def start_response(status, response_headers, exc_info=None):
        answer.update(status=int(status.split()[0]), headers=dict(response_headers))

    content = b"".join(wsgi.application(environ, start_response))
    return answer["status"], answer["headers"], content


def test_a_signed_heartbeat_goes_through_the_agents_handler(olivia):
    vehicle, credential = vehicle_with_credential(olivia)
    body = json.dumps(heartbeat(battery_pct=64.0)).encode()

    status, headers, content = call("POST", HEARTBEAT, body=body, headers=signed_headers(credential, HEARTBEAT, body))

    assert status == 200, content
    assert state_store.state_get(vehicle.pk)["battery_pct"] == 64.0
    assert "X-Frame-Options" not in headers  # none of the site's page middleware ran
    assert "Set-Cookie" not in headers and "Cookie" not in headers.get("Vary", "")


def test_an_agent_request_for_a_host_the_site_does_not_serve_is_refused(olivia):
    vehicle, credential = vehicle_with_credential(olivia)
    body = json.dumps(heartbeat()).encode()

    status, _, _ = call(
        "POST", HEARTBEAT, body=body, headers=signed_headers(credential, HEARTBEAT, body), host="evil.example"
    )

    assert status == 400
    assert state_store.state_get(vehicle.pk) is None


def test_pages_go_through_the_whole_middleware():
    status, headers, _ = call("GET", "/login/")

    assert status == 200
    assert headers["X-Frame-Options"] == "DENY"
    assert "csrftoken" in headers.get("Set-Cookie", "")
