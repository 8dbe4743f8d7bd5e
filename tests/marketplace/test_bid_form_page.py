"""The bid form as a customer meets it: each error once, beside its field, and a deadline typed in her own time."""

import re
import zoneinfo
from datetime import datetime, timedelta

import pytest
from django.utils import timezone

from marketplace.models import Bid

pytestmark = pytest.mark.django_db

TOKYO = zoneinfo.ZoneInfo("Asia/Tokyo")


def form(model, **overrides):
    deadline = (timezone.now() + timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M")
    data = {"dataset": model.datasets.get().pk, "precision": "auto", "max_price_usd_per_ch": "0.045",
            "budget_usd": "2", "deadline": deadline}  # fmt: skip
    return {**data, **overrides}


def field_of(html: str, message: str) -> str | None:
    """The id of the form field whose label (the field, its errors and its help) holds `message`."""
    labels = re.findall(r'<label for="(id_\w+)">(.*?)</label>', html, re.S)
    return next((name for name, body in labels if message in body), None)


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"max_price_usd_per_ch": "0.001"}, "id_max_price_usd_per_ch",
         "Below the INT8 reserve price of $0.01/CH: such a bid never trades."),
        ({"precision": "fp8"}, "id_precision", "FP8 cannot run: no car runs FP8."),
        ({"budget_usd": ""}, "id_budget_usd", "This field is required."),
        ({"deadline": "2001-01-01T00:00"}, "id_deadline", "Give the cars at least 10 minutes: set a later deadline."),
    ],
)  # fmt: skip
def test_a_bad_bid_shows_each_error_once_beside_its_field(client, digits_with_variants, overrides, field, message):
    response = client.post(f"/customer/models/{digits_with_variants.pk}/bid/", form(digits_with_variants, **overrides))

    assert response.status_code == 400
    html = response.content.decode()
    assert html.count(message) == 1, message
    assert field_of(html, message) == field
    assert not Bid.objects.exists()


def test_a_deadline_is_the_instant_she_meant_in_her_own_time_zone(client, digits_with_variants):
    in_tokyo = (timezone.now() + timedelta(hours=5)).astimezone(TOKYO).replace(second=0, microsecond=0, tzinfo=None)
    typed = in_tokyo.strftime("%Y-%m-%dT%H:%M")

    response = client.post(
        f"/customer/models/{digits_with_variants.pk}/bid/",
        form(digits_with_variants, deadline=typed, time_zone="Asia/Tokyo"),
    )

    assert response.status_code == 302
    assert Bid.objects.get().deadline == in_tokyo.replace(tzinfo=TOKYO)  # 9 hours before the same time in UTC


def test_without_javascript_the_deadline_is_utc_and_an_unknown_zone_is_refused(client, digits_with_variants):
    url = f"/customer/models/{digits_with_variants.pk}/bid/"
    page = client.get(url).content.decode()
    assert "In your local time (<span data-time-zone-name>UTC</span>)" in page
    suggested = re.search(r'data-utc="([^"]+)"', page)[1]  # the suggested deadline, for the browser to show locally
    assert datetime.fromisoformat(suggested).utcoffset() == timedelta(0)

    refused = client.post(url, form(digits_with_variants, time_zone="Mars/Olympus"))
    assert refused.status_code == 400
    assert refused.context["form"].errors == {
        "deadline": ["Your browser's time zone “Mars/Olympus” is unknown here: enter the deadline in UTC."]
    }

    typed = (timezone.now() + timedelta(hours=5)).replace(second=0, microsecond=0)
    assert client.post(url, form(digits_with_variants, deadline=typed.strftime("%Y-%m-%dT%H:%M"))).status_code == 302
    assert Bid.objects.get().deadline == typed
