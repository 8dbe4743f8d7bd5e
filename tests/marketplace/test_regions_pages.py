"""Regional markets on the pages: the market page's region picker and each region's prices, the bid form's "Region"
choice (data residency), a pinned job on its page and in My jobs, and the admin's region filters."""

import re
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from marketplace.models import Bid, Round
from tests.marketplace.test_regions_api import a_round, car_in, markets_of_two_regions

pytestmark = pytest.mark.django_db


@pytest.fixture
def two_markets():
    return markets_of_two_regions()


def bid_form(model, **overrides):
    deadline = (timezone.now() + timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M")
    data = {"dataset": model.datasets.get().pk, "precision": "auto", "max_price_usd_per_ch": "0.045",
            "budget_usd": "2", "deadline": deadline}  # fmt: skip
    return {**data, **overrides}


def card(page: str, pool: str) -> str:
    return page.split(f'data-pool="{pool}"')[1].split("</article>")[0]


# --- The market page -------------------------------------------------------------------------------------------------


def test_the_market_page_shows_the_region_picked_and_links_the_others(two_markets):
    anonymous = Client()

    germany = anonymous.get("/market/", {"region": "DE"}).content.decode()
    default = anonymous.get("/market/").content.decode()

    assert '<div class="stat">$0.055/CH</div>' in card(germany, "int8")
    assert "<h1>Market: DE</h1>" in germany
    assert '<strong aria-current="page">DE</strong>' in germany
    assert '<a href="?region=">No region</a>' in germany
    assert "$0.021/CH" not in germany
    assert '<div class="stat">$0.021/CH</div>' in card(default, "int8")
    assert '<strong aria-current="page">No region</strong>' in default
    assert '<a href="?region=DE">DE</a>' in default
    assert "$0.055/CH" not in default


def test_a_market_without_regions_looks_as_before():
    a_round(timezone.now() - timedelta(minutes=5), int8=2000)

    page = Client().get("/market/").content.decode()

    assert 'aria-label="Market regions"' not in page
    assert "<h1>Market</h1>" in page


def test_a_region_with_cars_and_no_round_shows_its_empty_market(two_markets):
    car_in("FR", name="paris")

    response = Client().get("/market/", {"region": "FR"})

    assert response.status_code == 200
    page = response.content.decode()
    assert "No rounds yet in FR." in page
    assert 'id="price-chart"' not in page
    assert "no round yet" in card(page, "int8")
    assert '<strong aria-current="page">FR</strong>' in page  # picked, though no round of its own is listed yet


def test_an_unknown_region_on_the_market_page_is_a_400_that_names_it(two_markets):
    response = Client().get("/market/", {"region": "ATLANTIS"})

    assert response.status_code == 400
    page = response.content.decode()
    assert "No market in region ATLANTIS" in page
    assert '<a href="?region=DE">DE</a>' in page  # the markets to pick from instead
    assert "data-pool" not in page


# --- The bid form ----------------------------------------------------------------------------------------------------


def test_the_bid_form_offers_any_region_first_then_each_market(client, digits_with_variants, two_markets):
    car_in("FR", name="paris")

    page = client.get(f"/customer/models/{digits_with_variants.pk}/bid/").content.decode()

    select = re.search(r'<select name="region"[^>]*>(.*?)</select>', page, re.S)[1]
    options = re.findall(r'<option value="([^"]*)"[^>]*>([^<]*)</option>', select)
    assert options == [("", "Any region (cheapest)"), ("DE", "DE"), ("FR", "FR")]
    assert re.search(r'<option value="" selected>Any region', select)
    assert "data residency" in page


def test_the_bid_form_refuses_a_region_with_no_market_beside_the_field(client, digits_with_variants):
    response = client.post(f"/customer/models/{digits_with_variants.pk}/bid/", bid_form(digits_with_variants,
                           region="FR"))  # fmt: skip

    assert response.status_code == 400
    assert "region" in response.context["form"].errors
    assert "FR" in response.context["form"].errors["region"][0]
    assert not Bid.objects.exists()


def test_a_job_pinned_on_the_form_shows_its_region_on_its_page_and_in_my_jobs(client, digits_with_variants):
    car_in("DE")

    response = client.post(
        f"/customer/models/{digits_with_variants.pk}/bid/", bid_form(digits_with_variants, region="DE")
    )

    assert response.status_code == 302
    bid = Bid.objects.get()
    assert bid.region == "DE"
    assert "region DE only" in client.get(f"/customer/bids/{bid.pk}/").content.decode()
    jobs = client.get("/customer/").content.decode()
    assert "· region DE" in jobs.split('id="jobs"')[1]


def test_a_job_for_any_region_says_nothing_of_regions(client, digits_with_variants):
    assert client.post(f"/customer/models/{digits_with_variants.pk}/bid/", bid_form(digits_with_variants)).status_code
    bid = Bid.objects.get()

    assert bid.region == ""
    assert "region" not in client.get(f"/customer/bids/{bid.pk}/").content.decode().split("</hgroup>")[0]


# --- The admin -------------------------------------------------------------------------------------------------------


def test_staff_filter_rounds_by_region(client, staff, two_markets):
    client.force_login(staff)

    germany = client.get("/admin/marketplace/round/", {"region": "DE"})
    blank = client.get("/admin/marketplace/round/", {"region": "-"})

    assert germany.status_code == blank.status_code == 200
    assert {r.region for r in germany.context["cl"].result_list} == {"DE"}
    assert {r.region for r in blank.context["cl"].result_list} == {""}
    assert Round.objects.count() == 4
    assert client.get("/admin/marketplace/bid/", {"region": "DE"}).status_code == 200
