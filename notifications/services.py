"""Job events delivered to customers: their webhook endpoints, each event of a bid recorded once, its signed
deliveries with retries, and the email of a job that completed or expired.

The marketplace announces (marketplace/signals.py); notifications/tasks.py hears it and calls `bid_event_record` in
a worker. An event and its deliveries (one per enabled endpoint of the bid's customer) commit together; each delivery
is then POSTed by a task, retried with backoff (settings.WEBHOOK_RETRY_DELAYS), and swept again if its message was
lost (`deliveries_due`).
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import socket
import time
import uuid
from datetime import timedelta
from urllib.parse import urlsplit

import requests
from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import F
from django.urls import reverse
from django.utils import timezone

from accounts.models import User
from core.exceptions import ApplicationError
from core.money import usd_text_from_nc
from marketplace.models import Bid
from marketplace.selectors import bid_progress
from marketplace.signals import bid_charges

from .models import BidEvent, WebhookDelivery, WebhookEndpoint
from .signals import delivery_wanted, email_wanted
from .signing import HEADER, sign

# The most endpoints a customer may have: each event is POSTed to every one of them.
MAX_ENDPOINTS = 10
CLOSED_EVENTS = {
    Bid.Status.COMPLETED: BidEvent.Type.COMPLETED,
    Bid.Status.FAILED: BidEvent.Type.FAILED,
    Bid.Status.EXPIRED: BidEvent.Type.EXPIRED,
    Bid.Status.CANCELLED: BidEvent.Type.CANCELLED,
}
# Events the customer is also emailed about.
EMAILED = (BidEvent.Type.COMPLETED, BidEvent.Type.EXPIRED)
USER_AGENT = "Idlefleet-Webhooks/1"
# A retry further away than this is left to the sweep rather than a Celery countdown: Redis hands an unacknowledged
# message to another worker after the broker's visibility timeout, so a long countdown would be run twice.
COUNTDOWN_MAX_SECONDS = 300


# --- Endpoints -----------------------------------------------------------------------------------------------------


def webhook_url_check(url: str) -> str:
    """`url` if events may be POSTed to it: http or https, a host, and (unless settings.WEBHOOK_ALLOW_PRIVATE_URLS,
    as in development) a host that resolves to public addresses only, so that nobody can make the platform call its
    own network. Raises ApplicationError naming the `url` field."""
    url = (url or "").strip()
    if not url:
        raise ApplicationError.for_field("url", "Enter the URL to send events to.")
    if len(url) > WebhookEndpoint._meta.get_field("url").max_length:
        raise ApplicationError.for_field("url", "At most 500 characters.")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port out of range
    except ValueError:
        raise ApplicationError.for_field("url", "Not a valid URL.") from None
    if parts.scheme not in ("http", "https"):
        raise ApplicationError.for_field("url", "Only http:// and https:// URLs can receive events.")
    if not parts.hostname:
        raise ApplicationError.for_field("url", "The URL has no host.")
    refusal = address_refusal(parts.hostname)
    if refusal:
        raise ApplicationError.for_field("url", refusal)
    return url


def address_refusal(host: str) -> str:
    """Why events may not go to `host` ("" when they may): a private, loopback or otherwise internal address, when
    settings.WEBHOOK_ALLOW_PRIVATE_URLS is off. Checked when an endpoint is saved and again before each POST (a
    name may point elsewhere since)."""
    if settings.WEBHOOK_ALLOW_PRIVATE_URLS:
        return ""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)}
    except (socket.gaierror, UnicodeError):
        return f"The host {host} does not resolve."
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if not ip.is_global or ip.is_multicast:
            return f"The host {host} is a private or internal address ({ip}): use a public URL."
    return ""


def endpoint_create(*, customer, url: str, description: str = "") -> WebhookEndpoint:
    """A new endpoint for `customer`'s job events, with a new secret (`whsec_...`) to sign them: shown to the customer
    once, in the answer to this request."""
    url = webhook_url_check(url)
    with transaction.atomic():
        # One customer's endpoints counted under their row's lock, so two requests at once cannot pass the cap.
        User.objects.select_for_update().filter(pk=customer.pk).first()
        if WebhookEndpoint.objects.filter(customer=customer).count() >= MAX_ENDPOINTS:
            raise ApplicationError(
                f"You have {MAX_ENDPOINTS} endpoints, the most there can be: delete one first.", code="too_many"
            )
        return WebhookEndpoint.objects.create(
            customer=customer, url=url, description=description.strip()[:200],
            secret=f"whsec_{secrets.token_urlsafe(32)}",
        )  # fmt: skip


def endpoint_enable(*, endpoint: WebhookEndpoint, enabled: bool) -> WebhookEndpoint:
    """Turn an endpoint on or off; an endpoint turned off gets no new events, and its pending deliveries fail."""
    endpoint.enabled = enabled
    endpoint.save(update_fields=["enabled"])
    return endpoint


def endpoint_delete(*, endpoint: WebhookEndpoint) -> None:
    """Delete an endpoint with its delivery log."""
    endpoint.delete()


def ping_send(*, endpoint: WebhookEndpoint) -> WebhookDelivery:
    """Send a `ping` event to `endpoint` (the "Send test event" button), to check that it receives and verifies."""
    now = timezone.now()
    event_id = _event_id()
    payload = {
        "id": event_id, "type": "ping", "created": int(now.timestamp()),
        "data": {"endpoint": {"id": endpoint.pk, "url": endpoint.url}},
    }  # fmt: skip
    with transaction.atomic():
        delivery = WebhookDelivery.objects.create(
            endpoint=endpoint, event_id=event_id, event_type="ping", payload=payload, next_attempt_at=now
        )
        _deliveries_queue([delivery.pk])
    return delivery


# --- Events ----------------------------------------------------------------------------------------------------------


def bid_event_record(
    *, bid_id: int, event_type: str | None = None, milestone: int = 0, extra: dict | None = None
) -> BidEvent | None:
    """Record that `event_type` happened to bid `bid_id` (None: the event of the status it closed with), once per
    (bid, type, milestone), with one delivery to each enabled endpoint of its customer in the same transaction; the
    deliveries and the customer's email (a completed or expired job) are queued once it commits. None when the event
    was recorded before, or there is nothing to tell (no such bid, a bid not closed)."""
    bid = Bid.objects.select_related("variant", "inference_model", "dataset").filter(pk=bid_id).first()
    if bid is None:
        return None
    event_type = event_type or CLOSED_EVENTS.get(bid.status)
    if event_type is None:
        return None
    now = timezone.now()
    event_id = _event_id()
    data = {"bid": bid_payload(bid), **(extra or {})}
    payload = {"id": event_id, "type": event_type, "created": int(now.timestamp()), "data": data}
    with transaction.atomic():
        event, created = BidEvent.objects.get_or_create(
            bid=bid, type=event_type, milestone=milestone, defaults={"event_id": event_id, "payload": payload}
        )
        if not created:
            return None
        deliveries = WebhookDelivery.objects.bulk_create(
            WebhookDelivery(
                endpoint=endpoint,
                event_id=event_id,
                event_type=event_type,
                bid=bid,
                payload=payload,
                next_attempt_at=now,
            )
            for endpoint in WebhookEndpoint.objects.filter(customer_id=bid.customer_id, enabled=True)
        )
        _deliveries_queue([delivery.pk for delivery in deliveries])
        if event_type in EMAILED:
            _email_queue(event.pk)
    return event


def bid_payload(bid: Bid) -> dict:
    """What an event tells of the customer's own bid (nothing of anyone else's)."""
    return {
        "id": bid.pk,
        "status": bid.status,
        "items": bid.items,
        "items_done": bid_progress(bid=bid)["done_items"],
        # The validated work so far at its prices (the final charge, net of refunds, once the job is settled).
        "charged_usd": usd_text_from_nc(bid_charges([bid])[bid.pk]),
        "precision": bid.variant.precision,
        "model": bid.inference_model.name,
        "dataset": bid.dataset.name,
        "created": int(bid.created_at.timestamp()),
        "deadline": int(bid.deadline.timestamp()),
        "closed": int(bid.closed_at.timestamp()) if bid.closed_at else None,
        "result_version": bid.result_version,
        "url": bid_page_url(bid.pk),
    }


def bid_page_url(bid_id: int) -> str:
    return settings.SITE_URL.rstrip("/") + reverse("marketplace:bid", args=[bid_id])


def _event_id() -> str:
    return f"evt_{uuid.uuid4().hex}"


def _deliveries_queue(delivery_ids: list[int], *, countdown: float = 0) -> None:
    for delivery_id in delivery_ids:
        delivery_wanted.send(sender="notifications", delivery_id=delivery_id, countdown=countdown)


def _email_queue(event_pk: int) -> None:
    email_wanted.send(sender="notifications", event_pk=event_pk)


# --- Deliveries ------------------------------------------------------------------------------------------------------


def tries() -> int:
    """How many times a delivery is POSTed at most: once, and once after each of the retry delays."""
    return 1 + len(settings.WEBHOOK_RETRY_DELAYS)


def delivery_attempt(*, delivery_id: int) -> WebhookDelivery | None:
    """POST a pending delivery that is due, signed. A 2xx answer delivers it; anything else (another status, a
    redirect, which is not followed, a network error) schedules the next try after the next retry delay, or fails it
    after the last. None when the delivery is not due (done, or being tried by another worker): safe to run twice."""
    now = timezone.now()
    # Claimed by a conditional UPDATE: a copy of this task, or the sweep, finds it no longer due.
    claim = timedelta(seconds=settings.WEBHOOK_TIMEOUT_SECONDS + 60)
    claimed = WebhookDelivery.objects.filter(pk=delivery_id, status=WebhookDelivery.Status.PENDING,
                                             next_attempt_at__lte=now).update(
        attempts=F("attempts") + 1, next_attempt_at=now + claim
    )  # fmt: skip
    if not claimed:
        return None
    delivery = WebhookDelivery.objects.select_related("endpoint").get(pk=delivery_id)
    if not delivery.endpoint.enabled:
        return _delivery_save(delivery, status=WebhookDelivery.Status.FAILED, code=None,
                              error="the endpoint was disabled")  # fmt: skip
    code, error = _post(delivery)
    if not error:
        return _delivery_save(delivery, status=WebhookDelivery.Status.SUCCEEDED, code=code, error="")
    if delivery.attempts >= tries():
        return _delivery_save(delivery, status=WebhookDelivery.Status.FAILED, code=code, error=error)
    delay = settings.WEBHOOK_RETRY_DELAYS[delivery.attempts - 1]
    delivery = _delivery_save(delivery, status=WebhookDelivery.Status.PENDING, code=code, error=error,
                              next_attempt_at=timezone.now() + timedelta(seconds=delay))  # fmt: skip
    if delay <= COUNTDOWN_MAX_SECONDS:
        _deliveries_queue([delivery.pk], countdown=delay)
    return delivery


def _post(delivery: WebhookDelivery) -> tuple[int | None, str]:
    """POST the delivery's event, signed with its endpoint's secret: (the HTTP status, "" or why it failed)."""
    endpoint = delivery.endpoint
    refusal = address_refusal(urlsplit(endpoint.url).hostname or "")
    if refusal:
        return None, refusal[:200]
    body = json.dumps(delivery.payload, separators=(",", ":")).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "Idlefleet-Event": delivery.event_type,
        HEADER: sign(endpoint.secret, body, int(time.time())),
    }
    try:
        with requests.post(endpoint.url, data=body, headers=headers, timeout=settings.WEBHOOK_TIMEOUT_SECONDS,
                           allow_redirects=False, stream=True) as response:  # fmt: skip
            code = response.status_code
    except requests.Timeout:
        return None, f"no answer within {settings.WEBHOOK_TIMEOUT_SECONDS} s"
    except requests.ConnectionError:
        return None, "could not connect"
    except requests.RequestException as exc:
        return None, f"request failed: {type(exc).__name__}"
    if 200 <= code < 300:
        return code, ""
    if 300 <= code < 400:
        return code, f"HTTP {code}: redirects are not followed"
    return code, f"HTTP {code}"


def _delivery_save(delivery: WebhookDelivery, *, status: str, code: int | None, error: str,
                   next_attempt_at=None) -> WebhookDelivery:  # fmt: skip
    delivery.status, delivery.last_status_code, delivery.last_error = status, code, error[:200]
    delivery.next_attempt_at = next_attempt_at
    if status == WebhookDelivery.Status.SUCCEEDED:
        delivery.delivered_at = timezone.now()
    delivery.save(update_fields=["status", "last_status_code", "last_error", "next_attempt_at", "delivered_at"])
    return delivery


def deliveries_due(*, limit: int = 1000) -> list[int]:
    """Pending deliveries whose next try is due: a retry left to the sweep, a lost message, a worker that died
    mid-POST (its claim has run out)."""
    return list(
        WebhookDelivery.objects.filter(status=WebhookDelivery.Status.PENDING, next_attempt_at__lte=timezone.now())
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:limit]
    )


# --- Email -----------------------------------------------------------------------------------------------------------


def bid_email_send(*, event_pk: int) -> bool:
    """Email the customer that their job completed or expired (plain text, with a link to its page); once per event,
    claimed before it is sent. False when it was sent before."""
    claimed = BidEvent.objects.filter(pk=event_pk, emailed_at__isnull=True).update(emailed_at=timezone.now())
    if not claimed:
        return False
    event = BidEvent.objects.select_related("bid__customer", "bid__inference_model", "bid__dataset").get(pk=event_pk)
    bid, data = event.bid, event.payload["data"]["bid"]
    ended = "completed" if event.type == BidEvent.Type.COMPLETED else "expired"
    lines = [
        f"Hello {bid.customer.username},",
        "",
        f"Your job {bid.pk} ({bid.inference_model.name} on {bid.dataset.name}) has {ended}.",
        "",
        f"Status: {bid.get_status_display()}",
        f"Items done: {data['items_done']:,} of {bid.items:,} (validated)",
        f"Cost: ${data['charged_usd']}" if data.get("charged_usd") else "",
        f"Job page: {bid_page_url(bid.pk)}",
        "",
    ]
    if event.type == BidEvent.Type.COMPLETED:
        lines.append("Download the results from the job's page. You pay only for validated work.")
    else:
        lines.append("The deadline passed before every item was done. You pay only for the validated items; the rest "
                     "of the budget is released.")  # fmt: skip
    try:
        send_mail(
            subject=f"Idlefleet: job {bid.pk} {ended}",
            message="\n".join(lines) + "\n",
            from_email=None, recipient_list=[bid.customer.email],
        )  # fmt: skip
    except Exception:
        BidEvent.objects.filter(pk=event_pk).update(emailed_at=None)  # let the task's retry send it
        raise
    return True
