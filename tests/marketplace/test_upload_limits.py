"""Upload caps hold before a body is read: a request that declares too much is answered 413 at once, a file is
stopped as soon as it passes its cap while it streams in, and the API and the pages answer alike (JSON on the API,
a page naming the limit elsewhere). Nothing of a refused upload is kept."""

import io
import json
import socket

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from config import wsgi
from marketplace.models import Dataset, InferenceModel
from tests.marketplace.conftest import PIXELS

BOUNDARY = "----idlefleet-test-boundary"

# Artifacts in a folder of each test's own: "nothing stored" must not see another test's files.
pytestmark = pytest.mark.usefixtures("own_artifacts")


def assert_pages_healthy(client, user, model) -> None:
    client.force_login(user)
    assert client.get("/customer/").status_code == 200
    assert client.get(f"/customer/models/{model.pk}/").status_code == 200


def raw_post(live_server, path: str, *, token: str, declared: int, sent: bytes, field: str = "file") -> tuple:
    """POST a multipart upload by hand: declare `declared` bytes, send the part's headers and `sent`, then wait for
    the answer without sending the rest. A socket timeout fails the test instead of hanging it."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Token {token}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {declared}\r\n\r\n"
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"; filename="items.npy"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    with socket.create_connection((live_server.thread.host, live_server.thread.port), timeout=10) as connection:
        connection.sendall(head + sent)
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += connection.recv(65536) or _closed()
        headers, body = answer.split(b"\r\n\r\n", 1)
        length = int(
            next(line.split(b":")[1] for line in headers.split(b"\r\n") if line.lower().startswith(b"content-length"))
        )
        while len(body) < length:
            body += connection.recv(65536) or _closed()
    return int(headers.split()[1]), json.loads(body)


def _closed():
    raise AssertionError("the server closed the connection without an answer")


def token_for(user) -> str:
    from knox.models import AuthToken

    return AuthToken.objects.create(user=user)[1]


@pytest.mark.django_db(transaction=True)
def test_an_api_upload_declaring_300_mb_is_answered_413_before_its_body_arrives(live_server, client, alice):
    model = InferenceModel.objects.create(
        owner=alice, name="digits", kind="tensor", onnx_sha256="0" * 64, onnx_size=1, inputs=PIXELS,
        status=InferenceModel.Status.READY,
    )  # fmt: skip

    status, body = raw_post(
        live_server, f"/api/v1/models/{model.pk}/datasets/", token=token_for(alice), declared=300_000_000,
        sent=b"\0" * 1_000_000,
    )  # fmt: skip

    assert status == 413
    assert body == {
        "code": "too_large",
        "message": "file: The upload is 300.0 MB; the limit is 209.7 MB.",
        "fields": {"file": ["The upload is 300.0 MB; the limit is 209.7 MB."]},
    }
    assert not Dataset.objects.exists()
    assert_pages_healthy(client, alice, model)


@pytest.mark.django_db(transaction=True)
def test_a_file_is_stopped_once_it_passes_its_cap_though_the_request_is_within_its_own(live_server, client, alice,
                                                                                       settings):  # fmt: skip
    # A model upload may carry a model and a tokenizer: the request's cap is their sum, each file has its own.
    settings.MAX_TOKENIZER_UPLOAD_BYTES = 100_000

    status, body = raw_post(
        live_server, "/api/v1/models/", token=token_for(alice), declared=20_000_000, sent=b"{" * 300_000,
        field="tokenizer_file",
    )  # fmt: skip

    assert status == 413
    assert body["fields"] == {"tokenizer_file": ["The file is larger than the 100.0 kB limit."]}
    assert not InferenceModel.objects.exists()
    client.force_login(alice)
    assert client.get("/customer/").status_code == 200


@pytest.mark.django_db
def test_the_dataset_form_answers_413_naming_the_limit_and_keeps_nothing(client, alice, digits_model, settings):
    settings.MAX_DATASET_UPLOAD_BYTES = 1000
    client.force_login(alice)

    response = client.post(
        f"/customer/models/{digits_model.pk}/datasets/",
        {"name": "big", "file": SimpleUploadedFile("d.npy", b"\0" * 5000)},
    )

    assert response.status_code == 413
    assert response["Content-Type"].startswith("text/html")
    page = response.content.decode()
    assert "file: The file is larger than the 1.0 kB limit." in page
    assert f'href="/customer/models/{digits_model.pk}/"' in page
    assert not Dataset.objects.exists()
    assert_pages_healthy(client, alice, digits_model)


@pytest.mark.django_db
def test_the_model_form_refuses_a_body_over_its_cap_from_its_declared_length(client, alice, settings):
    settings.MAX_MODEL_UPLOAD_BYTES = 1000
    settings.MAX_TOKENIZER_UPLOAD_BYTES = 1000
    client.force_login(alice)

    response = client.post(
        "/customer/models/new/",
        {"name": "big", "onnx_file": SimpleUploadedFile("m.onnx", b"\0" * 2_000_000), "metric": "top1",
         "tolerance": 0.9},
    )  # fmt: skip

    assert response.status_code == 413
    assert "onnx_file: The upload is 2.0 MB; the limit is 2.0 kB." in response.content.decode()
    assert not InferenceModel.objects.exists()
    assert client.get("/customer/").status_code == 200


@pytest.mark.django_db
def test_a_67_mb_heartbeat_gets_413_in_the_json_error_shape(client, alice, digits_model):
    body = json.dumps({"battery_pct": 50, "padding": "x" * 67_000_000})

    response = client.post("/api/v1/agent/heartbeat/", body, content_type="application/json")

    assert response.status_code == 413
    assert response.json() == {
        "code": "too_large",
        "message": "The request body is 67.0 MB; the limit is 10.5 MB.",
        "fields": {},
    }
    assert_pages_healthy(client, alice, digits_model)


def test_the_agents_handler_refuses_a_heartbeat_declaring_67_mb_without_reading_it():
    # config/wsgi.py sends the agent's requests through a shorter middleware list: it must cap them too. The body
    # holds 2 bytes: reading it would not fail, but the answer must come from the declared length alone.
    environ = {
        "REQUEST_METHOD": "POST", "PATH_INFO": "/api/v1/agent/heartbeat/", "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1", "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": "67000000",
        "wsgi.input": io.BytesIO(b"{}"), "wsgi.url_scheme": "http",
    }  # fmt: skip
    answer = {}

    content = b"".join(wsgi.application(environ, lambda status, headers, exc_info=None: answer.update(status=status)))

    assert answer["status"].startswith("413")
    assert json.loads(content)["code"] == "too_large"
    assert environ["wsgi.input"].tell() == 0  # not a byte of the body was read
