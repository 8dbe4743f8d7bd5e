"""A bid that ended before its work was done (cancelled, expired, failed): its page says so, and its results are the
items validated before it ended, which its customer paid for; with none, the results API says why there are none."""

import numpy as np
import pytest

from fleet.agent.inference import ModelRunner, ModelSpec, decode_npy
from marketplace import storage
from marketplace.inference.catalogue import DIGITS_OUTPUT
from marketplace.models import Bid, WorkUnit
from marketplace.rounds import auction_round_run
from tests.fleet.agent_requests import signed_post
from tests.marketplace.test_dispatch import LEASE, RESULT, run_unit

pytestmark = pytest.mark.django_db


def page_text(client, bid) -> str:
    return " ".join(client.get(f"/customer/bids/{bid.pk}/").content.decode().split())


def test_a_cancelled_bid_with_nothing_validated_says_so_on_its_page_and_in_the_results_api(client, bid, alice):
    client.force_login(alice)
    assert client.post(f"/api/v1/bids/{bid.pk}/cancel/").json()["status"] == "cancelled"

    page = page_text(client, bid)
    assert "This bid was cancelled." in page
    assert "It was cancelled before winning capacity: nothing was bought for it." in page
    assert "Your bid enters every round until its deadline" not in page
    assert "Download" not in page

    response = client.get(f"/api/v1/bids/{bid.pk}/result/")
    assert response.status_code == 409
    message = (
        f"Bid {bid.pk} was cancelled before any of its items were validated: there are no results to download, and "
        "nothing was charged for its items."
    )
    assert response.json() == {"code": "no_results", "message": message, "fields": {}}
    # The page's download link answers the same, on the bid's page rather than with a file.
    download = client.get(f"/customer/bids/{bid.pk}/result/", follow=True)
    assert download.redirect_chain == [(f"/customer/bids/{bid.pk}/", 302)]
    assert message in " ".join(download.content.decode().split())


def test_an_expired_bid_says_its_deadline_passed(client, bid, alice):
    Bid.objects.filter(pk=bid.pk).update(status=Bid.Status.EXPIRED)
    client.force_login(alice)

    page = page_text(client, bid)
    assert "This bid expired: its deadline passed before all its items were done." in page
    assert "Your bid enters every round until its deadline" not in page
    assert client.get(f"/api/v1/bids/{bid.pk}/result/").json()["message"].startswith(f"Bid {bid.pk} expired before")


def test_a_bid_cancelled_while_running_offers_the_items_validated_before_it_ended(client, bid, cars, alice, settings):
    settings.WORK_UNIT_MAX_ITEMS = 50  # 200 items: four slices, so that one can be done while the others are not
    auction_round_run()
    running_bid = bid
    (_, olivias_key), _ = cars
    lease = signed_post(client, olivias_key, LEASE, {}).json()
    model_bytes = storage.artifact_read(running_bid.variant.sha256)
    assert signed_post(client, olivias_key, RESULT, run_unit(lease, model_bytes)).json() == {"accepted": True}
    first, last = WorkUnit.objects.values_list("item_start", "item_end").get(pk=lease["unit_id"])
    assert 0 < last - first < running_bid.items
    client.force_login(alice)

    assert client.post(f"/api/v1/bids/{running_bid.pk}/cancel/").json()["status"] == "cancelled"

    page = page_text(client, running_bid)
    assert "This bid was cancelled." in page
    assert f"You pay only for the {last - first} items validated before it ended" in page
    assert f"Download the {last - first} validated items" in page
    for path in (f"/api/v1/bids/{running_bid.pk}/result/", f"/customer/bids/{running_bid.pk}/result/"):
        response = client.get(path)
        assert response.status_code == 200
        assert response["X-Items-Validated"] == str(last - first)
        assert f'filename="bid-{running_bid.pk}-partial-results.npy"' in response["Content-Disposition"]
        outputs = decode_npy(response.content)
        assert outputs.shape == (running_bid.items, 10)
        items = storage.dataset_items(running_bid.dataset).items[first:last]
        expected = ModelRunner(model_bytes, ModelSpec("tensor", DIGITS_OUTPUT)).run(list(items))
        np.testing.assert_allclose(outputs[first:last], expected, atol=1e-6)
        assert np.isnan(np.delete(outputs, np.s_[first:last], axis=0)).all()  # the items nobody validated
