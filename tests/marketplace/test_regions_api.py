"""Regional markets through the API: a bid pinned to a region (data residency), and each region's own prices and
history (GET /api/v1/market/, /api/v1/market/history/). A region the platform has no market in is refused, naming
the field, and nothing is created."""

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from fleet.models import Vehicle
from marketplace.models import Bid, PoolClearing, Round
from tests.factories import OwnerFactory, vehicle_with_credential

pytestmark = pytest.mark.django_db
POOLS = ("fp16", "fp32", "fp8", "int8")
HISTORY = "/api/v1/market/history/"


def a_round(slot, region: str = "", **prices: int) -> Round:
    """A finished round of `region`'s market at `slot`, every pool published, each traded at prices[pool] m¢/CH
    (absent: nothing traded)."""
    round_ = Round.objects.create(slot=slot, region=region, finished_at=slot + timedelta(seconds=1))
    for pool in POOLS:
        price = prices.get(pool)
        PoolClearing.objects.create(
            round=round_, pool=pool, clearing_price_mcents=price, reserve_mcents=1000, volume_ch=2.0 if price else 0.0,
            index_mcents=price, last_trade_mcents=price, last_trade_at=slot if price else None,
        )  # fmt: skip
    return round_


def markets_of_two_regions() -> dict[str, list[Round]]:
    """Two rounds in each of two markets, in the last hour: the cars without a region trade INT8 at $0.02 then
    $0.021, Germany's at $0.05 then $0.055."""
    now = timezone.now().replace(microsecond=0)
    earlier, later = now - timedelta(minutes=30), now - timedelta(minutes=29)
    return {
        "": [a_round(earlier, int8=2000), a_round(later, int8=2100)],
        "DE": [a_round(earlier, "DE", int8=5000), a_round(later, "DE", int8=5500)],
    }


@pytest.fixture
def two_markets():
    return markets_of_two_regions()


def car_in(region: str, name: str = "berlin"):
    vehicle, _ = vehicle_with_credential(OwnerFactory(username=name), name=f"{name}'s car", region=region)
    return vehicle


def bid_payload(model, **overrides):
    data = {
        "inference_model": model.pk, "dataset": model.datasets.get().pk, "precision": "auto",
        "max_price_usd_per_ch": "0.05", "budget_usd": "5.00",
        "deadline": (timezone.now() + timedelta(hours=6)).isoformat(),
    }  # fmt: skip
    return {**data, **overrides}


# --- A bid pinned to a region ----------------------------------------------------------------------------------------


def test_a_bid_pinned_to_a_region_stores_it_and_shows_it(client, digits_with_variants):
    car_in("DE")

    response = client.post(
        "/api/v1/bids/", bid_payload(digits_with_variants, region="de"), content_type="application/json"
    )

    assert response.status_code == 201, response.content
    assert response.json()["region"] == "DE"  # the code as the market spells it
    bid = Bid.objects.get()
    assert bid.region == "DE"
    assert client.get(f"/api/v1/bids/{bid.pk}/").json()["region"] == "DE"
    assert [row["region"] for row in client.get("/api/v1/bids/").json()] == ["DE"]


def test_a_bid_without_a_region_runs_in_any(client, digits_with_variants):
    response = client.post("/api/v1/bids/", bid_payload(digits_with_variants), content_type="application/json")

    assert response.status_code == 201, response.content
    assert response.json()["region"] == ""
    assert Bid.objects.get().region == ""


def test_a_region_known_from_its_rounds_alone_takes_bids(client, digits_with_variants):
    a_round(timezone.now() - timedelta(days=3), "JP", int8=2000)  # its cars have gone, its market is on record

    response = client.post(
        "/api/v1/bids/", bid_payload(digits_with_variants, region="JP"), content_type="application/json"
    )

    assert response.status_code == 201, response.content
    assert Bid.objects.get().region == "JP"


@pytest.mark.parametrize(
    ("region", "named"),
    [
        ("FR", "FR"),  # well formed, but no car sells there and no round was ever held there
        ("PAUSED-ONLY", "PAUSED-ONLY"),  # its only car is paused
        ("US CA", "US CA"),  # a space
        ("-DE", "-DE"),  # must start with a letter or digit
        ("X" * 17, "X" * 17),  # longer than a code
        ("DÉ", "DÉ"),  # not ASCII
    ],
)
def test_an_unknown_or_malformed_region_is_refused_naming_it_and_nothing_is_placed(
    client, digits_with_variants, region, named
):
    paused = car_in("PAUSED-ONLY", name="pauline")
    Vehicle.objects.filter(pk=paused.pk).update(status=Vehicle.Status.PAUSED)

    response = client.post(
        "/api/v1/bids/", bid_payload(digits_with_variants, region=region), content_type="application/json"
    )

    assert response.status_code == 400
    body = response.json()
    assert list(body["fields"]) == ["region"]
    assert named in body["fields"]["region"][0]
    assert body["message"].startswith("region: ")
    assert not Bid.objects.exists()


# --- Each region's prices --------------------------------------------------------------------------------------------


def test_the_market_api_gives_the_prices_of_the_region_asked_for(two_markets):
    anonymous = Client()

    germany = anonymous.get("/api/v1/market/", {"region": "DE"}).json()
    blank = anonymous.get("/api/v1/market/", {"region": ""}).json()
    lower_case = anonymous.get("/api/v1/market/", {"region": "de"}).json()

    assert (germany["region"], germany["regions"]) == ("DE", ["", "DE"])
    assert germany["latest"]["int8"]["clearing_price_usd_per_ch"] == "0.055"
    assert germany["history"]["prices"]["int8"] == ["0.05", "0.055"]
    assert germany["history"]["labels"] == [r.slot.isoformat() for r in two_markets["DE"]]
    assert (blank["region"], blank["regions"]) == ("", ["", "DE"])
    assert blank["latest"]["int8"]["clearing_price_usd_per_ch"] == "0.021"
    assert blank["history"]["prices"]["int8"] == ["0.02", "0.021"]
    assert lower_case["region"] == "DE"


def test_without_a_region_the_market_api_shows_the_cars_without_one_else_the_first_region(two_markets):
    assert Client().get("/api/v1/market/").json()["region"] == ""

    Round.objects.filter(region="").delete()

    only_regions = Client().get("/api/v1/market/").json()
    assert (only_regions["region"], only_regions["regions"]) == ("DE", ["DE"])
    assert only_regions["latest"]["int8"]["clearing_price_usd_per_ch"] == "0.055"


def test_a_region_with_cars_but_no_round_yet_has_an_empty_market(two_markets):
    car_in("FR", name="paris")

    market = Client().get("/api/v1/market/", {"region": "FR"}).json()

    assert (market["region"], market["latest"], market["history"]["labels"]) == ("FR", {}, [])
    assert market["regions"] == ["", "DE"]  # the markets running: FR has held no round


@pytest.mark.parametrize("path", ["/api/v1/market/", HISTORY])
@pytest.mark.parametrize("region", ["FR", "not a region", "<b>"])
def test_the_market_apis_refuse_an_unknown_or_malformed_region_naming_it(two_markets, path, region):
    response = Client().get(path, {"region": region})

    assert response.status_code == 400
    body = response.json()
    assert list(body["fields"]) == ["region"]
    assert region.upper() in body["fields"]["region"][0]


# --- Each region's history -------------------------------------------------------------------------------------------


def test_the_history_api_gives_one_regions_rows_each_naming_it(two_markets):
    anonymous = Client()

    germany = anonymous.get(HISTORY, {"region": "DE", "pool": "int8"}).json()
    blank = anonymous.get(HISTORY, {"pool": "int8"}).json()

    assert (germany["region"], germany["regions"]) == ("DE", ["", "DE"])
    assert [(row["region"], row["clearing_price_usd_per_ch"]) for row in germany["results"]] == [
        ("DE", "0.055"), ("DE", "0.05"),
    ]  # fmt: skip
    assert blank["region"] == ""
    assert [(row["region"], row["clearing_price_usd_per_ch"]) for row in blank["results"]] == [
        ("", "0.021"), ("", "0.02"),
    ]  # fmt: skip


def test_the_history_pages_stay_in_their_region(two_markets):
    anonymous = Client()

    first = anonymous.get(HISTORY, {"region": "DE", "limit": 5}).json()
    second = anonymous.get(first["next"]).json()
    default_first = anonymous.get(HISTORY, {"limit": 3}).json()

    rows = first["results"] + second["results"]
    assert second["next"] is None
    assert len(rows) == 8 and {row["region"] for row in rows} == {"DE"}
    assert len({(row["round"], row["pool"]) for row in rows}) == 8  # each of DE's rows once
    assert "region=" in default_first["next"]  # the default market's pages name it: a later page stays in it
    assert {row["region"] for row in anonymous.get(default_first["next"]).json()["results"]} == {""}


def test_a_regions_history_page_is_two_queries_the_markets_and_its_rows(two_markets, django_assert_num_queries):
    with django_assert_num_queries(2):
        page = Client().get(HISTORY, {"region": "DE"}).json()

    assert len(page["results"]) == 8


def test_the_schema_documents_the_region_of_the_market_apis(client):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()

    for path in ("/api/v1/market/", HISTORY):
        operation = schema["paths"][path]["get"]
        assert "region" in {p["name"] for p in operation["parameters"]}
        answer = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
        assert {"region", "regions"} <= set(schema["components"]["schemas"][answer]["properties"])
    assert "region" in schema["components"]["schemas"]["BidPlaceRequest"]["properties"]
    assert "region" in schema["components"]["schemas"]["BidOutput"]["properties"]
