"""A job's events reach its customer's webhook endpoint, signed, through a real Celery worker: won, progress
milestones and completed as cars run it; expired and cancelled; results corrected after an audit. The customer is
emailed when a job completes or expires. Another customer's endpoint hears nothing of it."""

from datetime import timedelta

import pytest
from django.core import mail
from django.db import transaction
from django.utils import timezone

from marketplace.models import Bid, ResultFault
from marketplace.rounds import auction_round_run
from notifications import services
from notifications.models import BidEvent, WebhookDelivery
from notifications.signing import verify
from tests.fleet.agent_requests import signed_headers, signed_post
from tests.marketplace.test_dispatch import LEASE, RESULT, run_unit
from tests.waiting import wait_for

pytestmark = pytest.mark.worker


def assert_signed(received, endpoint) -> None:
    for request in received:
        assert verify(endpoint.secret, request.body, request.headers["Idlefleet-Signature"]), request.body
        assert request.headers["Idlefleet-Event"] == request.event["type"]
        assert request.headers["Content-Type"] == "application/json"
        assert request.headers["User-Agent"] == "Idlefleet-Webhooks/1"


def test_a_job_run_by_cars_sends_won_progress_and_completed_signed_and_emails_its_customer(
    client, celery_worker_thread, receiver, bid, cars, alice, bob
):
    endpoint = services.endpoint_create(customer=alice, url=f"{receiver.url}/hook", description="alice's server")
    services.endpoint_create(customer=bob, url=f"{receiver.url}/bob")
    (_, olivias_key), _ = cars

    auction_round_run()
    bid.refresh_from_db()
    assert bid.status == Bid.Status.RUNNING
    assert wait_for(lambda: receiver.types() == ["bid.won"])

    response = signed_post(client, olivias_key, LEASE, {})
    path = response.json()["model_url"]
    model = client.get(path, **signed_headers(olivias_key, path, b"", method="GET"))
    model_bytes = b"".join(model.streaming_content)
    while response.status_code == 200:
        assert signed_post(client, olivias_key, RESULT, run_unit(response.json(), model_bytes)).status_code == 200
        response = signed_post(client, olivias_key, LEASE, {})
    bid.refresh_from_db()
    assert bid.status == Bid.Status.COMPLETED

    assert wait_for(lambda: len(receiver.received()) == 5)
    received = receiver.received()
    assert sorted(receiver.types()) == ["bid.completed", "bid.progress", "bid.progress", "bid.progress", "bid.won"]
    assert sorted(r.event["data"]["percent"] for r in received if r.event["type"] == "bid.progress") == [25, 50, 75]
    assert_signed(received, endpoint)
    assert {r.event["data"]["bid"]["id"] for r in received} == {bid.pk}
    assert len({r.event["id"] for r in received}) == 5 and all(r.event["id"].startswith("evt_") for r in received)
    (completed,) = [r.event for r in received if r.event["type"] == "bid.completed"]
    assert completed["data"]["bid"]["status"] == "completed"
    assert completed["data"]["bid"]["items_done"] == completed["data"]["bid"]["items"] == bid.items
    assert wait_for(lambda: WebhookDelivery.objects.filter(endpoint=endpoint, status="succeeded").count() == 5)
    # bob placed nothing: his endpoint hears nothing of alice's job.
    assert receiver.received("/bob") == []

    assert wait_for(lambda: any(f"job {bid.pk} completed" in m.subject for m in mail.outbox))
    (message,) = [m for m in mail.outbox if f"job {bid.pk}" in m.subject]
    assert message.to == [alice.email]
    assert f"Items done: {bid.items:,} of {bid.items:,}" in message.body
    assert f"/customer/bids/{bid.pk}/" in message.body


def test_an_expired_and_a_cancelled_job_are_announced_and_the_expired_one_emailed(
    client, celery_worker_thread, receiver, bid, alice, digits_with_variants
):
    endpoint = services.endpoint_create(customer=alice, url=f"{receiver.url}/hook")
    response = client.post(
        "/api/v1/bids/",
        {"inference_model": digits_with_variants.pk, "dataset": digits_with_variants.datasets.get().pk,
         "max_price_usd_per_ch": "0.05", "budget_usd": "1.00",
         "deadline": (timezone.now() + timedelta(hours=1)).isoformat()},
        content_type="application/json",
    )  # fmt: skip
    cancelled_id = response.json()["id"]

    assert client.post(f"/api/v1/bids/{cancelled_id}/cancel/").json()["status"] == "cancelled"
    auction_round_run(now=bid.deadline + timedelta(minutes=1))  # no car ran it by its deadline
    bid.refresh_from_db()
    assert bid.status == Bid.Status.EXPIRED

    assert wait_for(lambda: len(receiver.received()) == 2)
    events = {r.event["type"]: r.event for r in receiver.received()}
    assert events["bid.cancelled"]["data"]["bid"]["id"] == cancelled_id
    expired = events["bid.expired"]["data"]["bid"]
    assert (expired["id"], expired["status"], expired["items_done"]) == (bid.pk, "expired", 0)
    assert_signed(receiver.received(), endpoint)
    assert wait_for(lambda: any(f"job {bid.pk} expired" in m.subject for m in mail.outbox))
    assert not any(f"job {cancelled_id}" in m.subject for m in mail.outbox)  # cancelled by the customer: no email


def test_results_corrected_after_a_caught_car_is_audited(celery_worker_thread, receiver, alice, card_for):
    from marketplace import verdicts
    from tests.billing import builders
    from tests.billing.test_audit_corrections import judged_alone
    from tests.factories import OwnerFactory, vehicle_with_credential

    card_for(alice)
    endpoint = services.endpoint_create(customer=alice, url=f"{receiver.url}/hook")
    sleeper, _ = vehicle_with_credential(OwnerFactory(username="sam"), name="Sam's car")
    with transaction.atomic():  # a job that failed half-way, after the car's unchecked result was validated
        bid = builders.bid_authorized(alice, budget_cents=900)
        judged_alone(builders.validate(builders.sell(bid, sleeper, ch=0.5, price_mcents=8000)))
        builders.fail(builders.sell(bid, sleeper, ch=0.5, price_mcents=8000))
        builders.close(bid, Bid.Status.FAILED)

    # The car fails a known answer elsewhere (in that result's transaction): caught, and its unchecked result in
    # this ended job is taken back.
    with transaction.atomic():
        verdicts.reputation_record(vehicle_id=sleeper.pk, valid=False, now=timezone.now(),
                                   fault=ResultFault.Kind.KNOWN_ANSWER)  # fmt: skip

    assert wait_for(lambda: receiver.types() == ["bid.results_corrected"])
    (request,) = receiver.received()
    assert request.event["data"]["bid"]["id"] == bid.pk
    assert request.event["data"]["audit_ids"] == list(bid.audits.values_list("pk", flat=True))
    assert_signed([request], endpoint)


def test_a_failing_endpoint_is_retried_and_the_delivery_fails_after_the_last_try(
    client, celery_worker_thread, receiver, quick_retries, alice, settings
):
    receiver.statuses = [500]
    endpoint = services.endpoint_create(customer=alice, url=f"{receiver.url}/hook")
    client.force_login(alice)

    assert client.post(f"/account/webhooks/{endpoint.pk}/test/").status_code == 302
    delivery = WebhookDelivery.objects.get(endpoint=endpoint)
    assert wait_for(lambda: WebhookDelivery.objects.get(pk=delivery.pk).status == "failed")

    delivery.refresh_from_db()
    tries = 1 + len(settings.WEBHOOK_RETRY_DELAYS)
    assert (delivery.attempts, delivery.last_status_code, delivery.last_error) == (tries, 500, "HTTP 500")
    assert receiver.types() == ["ping"] * tries
    assert len({r.event["id"] for r in receiver.received()}) == 1  # the same event each time
    page = client.get("/account/webhooks/").content.decode()
    assert "Failed" in page and "HTTP 500" in page


def test_an_endpoint_that_recovers_gets_the_event_on_a_retry(client, celery_worker_thread, receiver, quick_retries,
                                                             alice):  # fmt: skip
    receiver.statuses = [503, 200]
    endpoint = services.endpoint_create(customer=alice, url=f"{receiver.url}/hook")
    services.ping_send(endpoint=endpoint)

    assert wait_for(lambda: WebhookDelivery.objects.get(endpoint=endpoint).status == "succeeded")
    delivery = WebhookDelivery.objects.get(endpoint=endpoint)
    assert (delivery.attempts, delivery.last_status_code, delivery.last_error) == (2, 200, "")
    assert delivery.delivered_at is not None


def test_the_sweep_delivers_what_a_lost_message_left_pending(celery_worker_thread, receiver, alice):
    from notifications.tasks import webhook_deliveries_sweep

    endpoint = services.endpoint_create(customer=alice, url=f"{receiver.url}/hook")
    # A delivery whose message was lost: its row committed, no task was ever queued for it.
    WebhookDelivery.objects.create(
        endpoint=endpoint, event_id="evt_lost", event_type="ping", payload={"id": "evt_lost", "type": "ping"},
        next_attempt_at=timezone.now(),
    )  # fmt: skip

    webhook_deliveries_sweep.delay()

    assert wait_for(lambda: receiver.types() == ["ping"])
    assert wait_for(lambda: WebhookDelivery.objects.get(event_id="evt_lost").status == "succeeded")
    assert BidEvent.objects.count() == 0
