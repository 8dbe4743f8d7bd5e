"""The customer's webhooks page and API: the secret is shown once, another customer's endpoint is a 404, a URL
that cannot receive events is a 400 naming `url`, and each event is recorded once."""

import pytest

from marketplace.models import Bid
from notifications import services
from notifications.models import BidEvent, WebhookDelivery, WebhookEndpoint
from tests.billing import builders

pytestmark = pytest.mark.django_db


def test_the_secret_is_shown_once_when_an_endpoint_is_added(client, alice):
    client.force_login(alice)

    response = client.post("/account/webhooks/", {"url": "https://example.com/hook", "description": "CI"})

    assert response.status_code == 200
    endpoint = WebhookEndpoint.objects.get(customer=alice)
    assert endpoint.secret.startswith("whsec_") and len(endpoint.secret) > 30
    page = response.content.decode()
    assert endpoint.secret in page and "will not be shown again" in page
    later = client.get("/account/webhooks/").content.decode()
    assert "https://example.com/hook" in later and endpoint.secret not in later
    assert "No deliveries yet" in later


def test_the_api_returns_the_secret_on_creation_only(client, alice):
    client.force_login(alice)

    created = client.post("/api/v1/webhooks/", {"url": "https://example.com/hook"}, content_type="application/json")

    assert created.status_code == 201
    secret = created.json()["secret"]
    assert secret == WebhookEndpoint.objects.get(customer=alice).secret
    listed = client.get("/api/v1/webhooks/").json()
    assert [e["url"] for e in listed] == ["https://example.com/hook"] and "secret" not in listed[0]
    assert "secret" not in client.get(f"/api/v1/webhooks/{created.json()['id']}/").json()


def test_another_customers_endpoint_is_a_404_and_stays_as_it_was(client, alice, bob):
    endpoint = services.endpoint_create(customer=alice, url="https://alice.example.com/hook")
    services.ping_send(endpoint=endpoint)
    client.force_login(bob)

    for action in ("enable", "delete", "test"):
        assert client.post(f"/account/webhooks/{endpoint.pk}/{action}/").status_code == 404
    assert client.get(f"/api/v1/webhooks/{endpoint.pk}/").status_code == 404
    assert client.delete(f"/api/v1/webhooks/{endpoint.pk}/").status_code == 404
    assert client.get("/api/v1/webhooks/").json() == []
    assert client.get("/api/v1/webhooks/deliveries/").json()["results"] == []
    assert "alice.example.com" not in client.get("/account/webhooks/").content.decode()
    endpoint.refresh_from_db()
    assert endpoint.enabled and WebhookDelivery.objects.filter(endpoint=endpoint).count() == 1


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("ftp://example.com/hook", "Only http:// and https://"),
        ("example.com/hook", "Only http:// and https://"),
        ("https:///hook", "no host"),
        ("http://example.com:99999/", "Not a valid URL"),
        ("", "Enter the URL"),
    ],
)
def test_a_url_that_cannot_receive_events_is_a_400_naming_url(client, alice, url, says):
    client.force_login(alice)

    response = client.post("/api/v1/webhooks/", {"url": url}, content_type="application/json")

    assert response.status_code == 400
    assert list(response.json()["fields"]) == ["url"]
    assert response.json()["message"].startswith("url:")
    if url:
        assert says in response.json()["message"]
        page = client.post("/account/webhooks/", {"url": url})
        assert page.status_code == 400 and says in page.content.decode()
    assert not WebhookEndpoint.objects.exists()


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000/hook", "http://10.1.2.3/hook", "http://[::1]/hook",
                                 "http://169.254.169.254/latest/meta-data/", "http://localhost/hook"])  # fmt: skip
def test_private_addresses_are_refused_in_production(client, alice, settings, url):
    settings.WEBHOOK_ALLOW_PRIVATE_URLS = False
    client.force_login(alice)

    response = client.post("/api/v1/webhooks/", {"url": url}, content_type="application/json")

    assert response.status_code == 400
    assert response.json()["fields"]["url"][0].endswith("use a public URL.")
    assert not WebhookEndpoint.objects.exists()


def test_disabling_stops_new_events_and_deleting_removes_the_endpoint(client, alice):
    endpoint = services.endpoint_create(customer=alice, url="https://example.com/hook")
    client.force_login(alice)

    assert client.post(f"/account/webhooks/{endpoint.pk}/enable/").status_code == 302
    endpoint.refresh_from_db()
    assert not endpoint.enabled
    assert "Disabled" in client.get("/account/webhooks/").content.decode()
    assert client.delete(f"/api/v1/webhooks/{endpoint.pk}/").status_code == 204
    assert not WebhookEndpoint.objects.exists()


def test_an_event_is_recorded_once_with_one_delivery_per_enabled_endpoint(
    alice, bob, card_for, django_capture_on_commit_callbacks
):
    card_for(alice)
    bid = builders.bid_authorized(alice)
    services.endpoint_create(customer=alice, url="https://example.com/a")
    off = services.endpoint_create(customer=alice, url="https://example.com/off")
    services.endpoint_enable(endpoint=off, enabled=False)
    services.endpoint_create(customer=bob, url="https://example.com/bob")

    with django_capture_on_commit_callbacks(execute=False) as queued:
        first = services.bid_event_record(bid_id=bid.pk, event_type="bid.progress", milestone=50)
        again = services.bid_event_record(bid_id=bid.pk, event_type="bid.progress", milestone=50)

    assert first is not None and again is None
    assert len(queued) == 1  # one delivery to POST, queued once it commits
    (delivery,) = WebhookDelivery.objects.all()
    assert (delivery.endpoint.url, delivery.event_type, delivery.bid_id) == ("https://example.com/a", "bid.progress",
                                                                            bid.pk)  # fmt: skip
    assert delivery.payload["data"]["bid"]["id"] == bid.pk
    assert BidEvent.objects.get().event_id == delivery.event_id == delivery.payload["id"]
    # A bid still open has no closing event to tell.
    assert services.bid_event_record(bid_id=bid.pk) is None and bid.status != Bid.Status.COMPLETED


def test_the_delivery_log_is_paginated_newest_first(client, alice):
    endpoint = services.endpoint_create(customer=alice, url="https://example.com/hook")
    for n in range(30):
        WebhookDelivery.objects.create(endpoint=endpoint, event_id=f"evt_{n}", event_type="ping", payload={})
    client.force_login(alice)

    page = client.get("/account/webhooks/")
    assert len(page.context["deliveries"]) == 25 and page.context["deliveries"][0].event_id == "evt_29"
    assert "Page 1 of 2" in page.content.decode()
    api = client.get("/api/v1/webhooks/deliveries/?limit=10").json()
    assert api["count"] == 30 and [d["event_id"] for d in api["results"]][:2] == ["evt_29", "evt_28"]


def test_the_account_page_shows_the_latest_deliveries_and_links_to_the_log(client, alice, bob):
    endpoint = services.endpoint_create(customer=alice, url="https://example.com/hook")
    client.force_login(alice)
    assert "No deliveries yet." in client.get("/account/").content.decode()
    for _ in range(7):
        services.ping_send(endpoint=endpoint)
    WebhookDelivery.objects.filter(endpoint=endpoint).update(status="succeeded", attempts=1, last_status_code=200)

    page = " ".join(client.get("/account/").content.decode().split())

    assert page.count("<code>ping</code>") == 5  # the newest five; the rest on the webhooks page
    assert "Delivered" in page and "HTTP 200" in page
    assert 'href="/account/webhooks/#deliveries"' in page
    client.force_login(bob)
    assert "<code>ping</code>" not in client.get("/account/").content.decode()  # alice's log is hers
