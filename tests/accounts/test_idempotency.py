"""Idempotency-Key (issue 16, finding 9): a request sent again with the same key gets the first answer and does
nothing twice: one bid and one hold, one model, one dataset, even when both copies arrive at once."""

import io
from datetime import timedelta

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.utils import timezone

from accounts.models import IdempotentRequest
from billing.models import PaymentAuthorization
from marketplace.inference.catalogue import DIGITS_OUTPUT, digits_items
from marketplace.models import Bid, Dataset, InferenceModel
from tests.concurrency import at_once
from tests.marketplace.test_bids import bid_payload as bids_payload

pytestmark = pytest.mark.django_db
KEY = "4f1c0e1a-5d5e-4b8e-9a51-0c2f3d1e7a10"


def bid_payload(model, **overrides):
    """A bid's body whose deadline reads back the same (whole seconds): a replayed answer is compared to it."""
    deadline = (timezone.now() + timedelta(hours=6)).replace(microsecond=0).isoformat()
    return bids_payload(model, **{"deadline": deadline, **overrides})


def place(client, body, key=KEY):
    headers = {} if key is None else {"HTTP_IDEMPOTENCY_KEY": key}
    return client.post("/api/v1/bids/", body, content_type="application/json", **headers)


def test_a_bid_sent_twice_with_one_key_is_placed_and_held_once(client, digits_with_variants):
    body = bid_payload(digits_with_variants)

    first = place(client, body)
    again = place(client, body)

    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again["Idempotent-Replayed"] == "true"
    assert Bid.objects.count() == 1
    assert PaymentAuthorization.objects.count() == 1


def test_without_a_key_each_request_is_its_own(client, digits_with_variants):
    body = bid_payload(digits_with_variants)

    place(client, body, key=None)
    place(client, body, key=None)

    assert Bid.objects.count() == 2


def test_one_key_for_a_different_bid_is_a_422_and_places_nothing(client, digits_with_variants):
    model = digits_with_variants
    assert place(client, bid_payload(model)).status_code == 201

    response = place(client, bid_payload(model, budget_usd="6.00"))

    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "idempotency_key_reused"
    assert list(body["fields"]) == ["Idempotency-Key"]
    assert "used for another request" in body["message"]
    assert Bid.objects.count() == 1 and PaymentAuthorization.objects.count() == 1


def test_a_refused_bid_frees_its_key_for_the_corrected_one(client, digits_with_variants):
    model = digits_with_variants
    refused = place(client, bid_payload(model, max_price_usd_per_ch="0.005"))
    assert refused.status_code == 400

    response = place(client, bid_payload(model))

    assert response.status_code == 201
    assert Bid.objects.count() == 1


def test_a_declined_card_is_answered_the_same_without_a_second_try(client, digits_with_variants, alice, card_for):
    card_for(alice, "pm_card_chargeCustomerFail")
    body = bid_payload(digits_with_variants)

    first = place(client, body)
    again = place(client, body)

    assert first.status_code == again.status_code == 402
    assert again.json() == first.json()
    assert Bid.objects.count() == 1 and PaymentAuthorization.objects.count() == 1


def test_a_key_is_forgotten_after_a_day(client, digits_with_variants):
    body = bid_payload(digits_with_variants)
    place(client, body)
    IdempotentRequest.objects.update(created_at=timezone.now() - timedelta(hours=25))

    response = place(client, body)

    assert response.status_code == 201
    assert "Idempotent-Replayed" not in response
    assert Bid.objects.count() == 2


def test_another_customers_same_key_is_theirs_alone(client, digits_with_variants, bob):
    place(client, bid_payload(digits_with_variants))
    client.force_login(bob)

    response = place(client, {"budget_usd": "5.00"})

    assert response.status_code == 400  # bob's own request ran: no model of his, and nothing of alice's replayed
    assert "budget_usd" not in response.json()["fields"]
    assert Bid.objects.count() == 1


@pytest.mark.parametrize("key", ["", "has space", "x" * 256, "naïve"])
def test_a_malformed_key_is_a_400_naming_the_header(client, digits_with_variants, key):
    response = place(client, bid_payload(digits_with_variants), key=key)

    assert response.status_code == 400
    assert list(response.json()["fields"]) == ["Idempotency-Key"]
    assert not Bid.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_copies_sent_at_the_same_moment_place_one_bid(digits_with_variants, alice):
    body = bid_payload(digits_with_variants)
    statuses: list[int] = []

    def send():
        client = Client()
        client.force_login(alice)
        statuses.append(place(client, body).status_code)

    at_once(send, 4)

    assert Bid.objects.count() == 1 and PaymentAuthorization.objects.count() == 1
    assert 201 in statuses and set(statuses) <= {201, 409}  # a copy that came while the first ran: ask again
    assert place_again_after(alice, body).status_code == 201
    assert Bid.objects.count() == 1


def place_again_after(user, body):
    client = Client()
    client.force_login(user)
    return place(client, body)


def test_a_model_uploaded_twice_with_one_key_is_stored_once(client, alice, digits_onnx, run_tasks_inline, settings,
                                                            tmp_path):  # fmt: skip
    settings.MEDIA_ROOT = tmp_path
    client.force_login(alice)

    def upload():
        form = {"name": "digits", "onnx_file": SimpleUploadedFile("d.onnx", digits_onnx), "output_name": DIGITS_OUTPUT}
        return client.post("/api/v1/models/", form, HTTP_IDEMPOTENCY_KEY=KEY)

    first, again = upload(), upload()

    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert InferenceModel.objects.filter(owner=alice).count() == 1


def test_a_dataset_uploaded_twice_with_one_key_is_stored_once(client, digits_with_variants):
    model = digits_with_variants
    buffer = io.BytesIO()
    np.save(buffer, digits_items(20), allow_pickle=False)
    url = f"/api/v1/models/{model.pk}/datasets/"

    def upload(content):
        return client.post(url, {"file": SimpleUploadedFile("more.npy", content)}, HTTP_IDEMPOTENCY_KEY=KEY)

    first, again = upload(buffer.getvalue()), upload(buffer.getvalue())

    assert first.status_code == again.status_code == 201, first.content
    assert again.json() == first.json()
    assert Dataset.objects.filter(inference_model=model).count() == 2  # the fixture's, and this one once
    other = io.BytesIO()
    np.save(other, digits_items(30), allow_pickle=False)
    assert upload(other.getvalue()).status_code == 422  # another file under the same key


def test_the_schema_documents_the_header_on_each_operation_it_applies_to(client):
    schema = client.get("/api/schema/?format=json").json()

    for path in ("/api/v1/bids/", "/api/v1/models/", "/api/v1/models/{model_id}/datasets/"):
        names = [p["name"] for p in schema["paths"][path]["post"].get("parameters", [])]
        assert "Idempotency-Key" in names, path
