"""Security headers on every kind of response, a CSRF token in every POST form and on every htmx request, and no
CSRF exemption but Stripe's webhook. (That production settings pass `check --deploy` is tests/config/test_settings.py.)

No Content-Security-Policy yet: Django 5.2 has none built in, and the Swagger UI page (drf-spectacular) and the
admin need inline scripts, so a useful policy is a change of its own.
"""

import re
from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.authentication import SessionAuthentication
from rest_framework.views import APIView

pytestmark = pytest.mark.django_db
TEMPLATE_DIRS = [Path(d) for d in settings.TEMPLATES[0]["DIRS"]]


@pytest.mark.parametrize(
    ("method", "url", "status"),
    [
        ("get", "/", 200),
        ("get", "/login/", 200),
        ("get", "/api/v1/market/", 200),
        ("get", "/api/v1/me/", 401),
        ("get", "/no-such-page/", 404),
        ("get", "/admin/login/", 200),
        ("post", "/billing/stripe/webhook/", 400),
    ],
)
def test_every_kind_of_response_carries_the_security_headers(client, method, url, status):
    response = getattr(client, method)(url)

    assert response.status_code == status
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"
    assert response["X-Frame-Options"] == "DENY"


def _templates():
    for directory in TEMPLATE_DIRS:
        yield from sorted(directory.rglob("*.html"))


def test_every_post_form_in_the_templates_has_a_csrf_token():
    checked = 0
    for path in _templates():
        text = path.read_text()
        for match in re.finditer(r"<form\b[^>]*>", text, flags=re.IGNORECASE):
            if not re.search(r"""method=["']?post""", match.group(0), flags=re.IGNORECASE):
                continue
            end = text.find("</form>", match.end())
            assert end != -1, f"{path}: unclosed form"
            body = text[match.end() : end]
            assert "{% csrf_token %}" in body, f"{path.relative_to(path.parents[1])}: a POST form without a CSRF token"
            checked += 1
    assert checked >= 10  # the scan found the forms: a change of quoting would otherwise pass vacuously


def test_htmx_requests_send_the_csrf_token():
    base = next(p for p in _templates() if p.name == "base.html" and p.parent in TEMPLATE_DIRS).read_text()
    assert """<body hx-headers='{"X-CSRFToken": "{{ csrf_token }}"}'>""" in base
    # Every template that makes htmx requests that change things sits in a page built on base.html.
    for path in _templates():
        text = path.read_text()
        if re.search(r"\bhx-(post|put|patch|delete)=", text):
            assert '{% extends "base.html" %}' in text, f"{path}: htmx writes outside base.html"


def test_the_token_in_hx_headers_passes_the_csrf_check(alice):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    page = client.get("/customer/").content.decode()
    token = re.search(r"""hx-headers='\{"X-CSRFToken": "([^"]+)"\}'""", page).group(1)

    assert client.post("/logout/").status_code == 403  # no token: refused
    assert client.post("/logout/", HTTP_X_CSRFTOKEN=token, HTTP_HX_REQUEST="true").status_code == 302


def test_the_api_checks_csrf_for_session_requests(alice):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    response = client.patch("/api/v1/me/", {"first_name": "Mallory"}, content_type="application/json")
    assert response.status_code == 403
    assert "CSRF" in response.json()["message"]
    alice.refresh_from_db()
    assert alice.first_name != "Mallory"


def _callbacks(patterns):
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            yield from _callbacks(pattern.url_patterns)
        elif isinstance(pattern, URLPattern):
            yield pattern.callback


def test_only_the_stripe_webhook_is_csrf_exempt():
    """DRF marks its views exempt and checks CSRF itself in SessionAuthentication (cookies); the others authenticate
    with a header a browser never sends on its own (a token, a car's signature) or not at all."""
    exempt = set()
    for callback in _callbacks(get_resolver().url_patterns):
        if not getattr(callback, "csrf_exempt", False):
            continue
        view_class = getattr(callback, "cls", None)
        if view_class is not None and issubclass(view_class, APIView):
            for auth in view_class.authentication_classes:
                if issubclass(auth, SessionAuthentication):
                    assert auth.enforce_csrf is SessionAuthentication.enforce_csrf, f"{view_class}: CSRF skipped"
            continue
        exempt.add(f"{callback.__module__}.{callback.__name__}")

    assert exempt == {"billing.views.stripe_webhook"}
