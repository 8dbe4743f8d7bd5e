"""The public price history (GET /api/v1/market/history/), each pool's last trade (GET /api/v1/market/, /market/),
and a price index that follows the trades."""

import json
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from django.test import Client
from django.utils import timezone

from marketplace.models import Allocation, Bid, PoolClearing, Round
from marketplace.rounds import auction_round_run

pytestmark = pytest.mark.django_db
HISTORY = "/api/v1/market/history/"
POOLS = ("fp16", "fp32", "fp8", "int8")  # the order of a round's rows: by pool name
T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
ROW_KEYS = {
    "round", "region", "pool", "clearing_price_usd_per_ch", "reserve_usd_per_ch", "index_usd_per_ch", "volume_ch",
    "unfilled_demand_ch", "supply_ch",
}  # fmt: skip
MARKET_POOL_KEYS = {
    "clearing_price_usd_per_ch", "reserve_usd_per_ch", "index_usd_per_ch", "volume_ch", "unfilled_demand_ch",
    "supply_ch", "round", "last_trade_usd_per_ch", "last_trade_at",
}  # fmt: skip


def a_round(slot: datetime, **prices: int | None) -> Round:
    """A finished round at `slot`: every pool published, each traded at prices[pool] m¢/CH (None or absent: nothing
    traded), 1,000 m¢ reserve, the index at the price, 2 CH sold where it traded."""
    round_ = Round.objects.create(slot=slot, finished_at=slot + timedelta(seconds=1))
    for pool in POOLS:
        price = prices.get(pool)
        PoolClearing.objects.create(
            round=round_, pool=pool, clearing_price_mcents=price, reserve_mcents=1000,
            volume_ch=2.0 if price else 0.0, unfilled_demand_ch=0.5, supply_ch=7.25,
            index_mcents=price,
        )  # fmt: skip
    return round_


def minutes(*offsets: int) -> list[datetime]:
    return [T0 + timedelta(minutes=m) for m in offsets]


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def rows(client, **params) -> list[dict]:
    response = client.get(HISTORY, params)
    assert response.status_code == 200, response.content
    return response.json()["results"]


def keys(results: list[dict]) -> list[tuple[str, str]]:
    return [(row["round"], row["pool"]) for row in results]


# --- Rows ---------------------------------------------------------------------------------------------------------


def test_each_round_gives_one_row_per_pool_newest_first_in_dollars(client):
    a_round(T0, int8=3000)
    a_round(T0 + timedelta(minutes=1), int8=2500, fp16=1500)

    results = rows(client)

    assert keys(results) == [(iso(T0 + timedelta(minutes=1)), pool) for pool in POOLS] + [
        (iso(T0), pool) for pool in POOLS
    ]
    newest_int8 = results[3]
    assert newest_int8 == {
        "round": "2030-01-01T12:01:00Z", "region": "", "pool": "int8", "clearing_price_usd_per_ch": "0.025",
        "reserve_usd_per_ch": "0.01", "index_usd_per_ch": "0.025", "volume_ch": 2.0, "unfilled_demand_ch": 0.5,
        "supply_ch": 7.25,
    }  # fmt: skip
    fp8 = results[2]
    assert (fp8["pool"], fp8["clearing_price_usd_per_ch"], fp8["index_usd_per_ch"], fp8["volume_ch"]) == (
        "fp8", None, None, 0.0,
    )  # fmt: skip


def test_a_round_still_running_is_not_in_the_history(client):
    a_round(T0, int8=3000)
    Round.objects.create(slot=T0 + timedelta(minutes=1))  # started, not finished

    assert {row["round"] for row in rows(client)} == {iso(T0)}


def test_an_empty_history_is_an_empty_page(client):
    assert client.get(HISTORY).json() == {"region": "", "regions": [], "next": None, "previous": None, "results": []}


# --- The time range -------------------------------------------------------------------------------------------------


def test_start_is_inclusive_and_end_exclusive(client):
    slots = minutes(0, 1, 2, 3, 4)
    for slot in slots:
        a_round(slot, int8=2000)

    between = rows(client, start=iso(slots[1]), end=iso(slots[3]), pool="int8")

    assert [row["round"] for row in between] == [iso(slots[2]), iso(slots[1])]
    # Back-to-back ranges share no round and miss none.
    first = rows(client, end=iso(slots[2]), pool="int8")
    second = rows(client, start=iso(slots[2]), pool="int8")
    assert [row["round"] for row in second + first] == [iso(slot) for slot in reversed(slots)]
    # A range of no width holds nothing; an offset other than UTC means the same moment.
    assert rows(client, start=iso(slots[2]), end=iso(slots[2])) == []
    assert keys(rows(client, start="2030-01-01T13:04:00+01:00", pool="int8")) == [(iso(slots[4]), "int8")]


# --- Pools ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("query", ["pool=int8&pool=fp16", "pool=int8,fp16", "pool=int8, fp16,"])
def test_the_pool_filter_repeats_or_takes_commas(client, query):
    a_round(T0, int8=2000)
    a_round(T0 + timedelta(minutes=1), int8=2000)

    response = client.get(f"{HISTORY}?{query}")

    assert response.status_code == 200
    assert [row["pool"] for row in response.json()["results"]] == ["fp16", "int8", "fp16", "int8"]


# --- Pages ----------------------------------------------------------------------------------------------------------


def test_walking_the_pages_gives_every_row_once_in_order(client):
    for slot in minutes(*range(7)):
        a_round(slot, int8=2000, fp16=1800)
    everything = keys(rows(client, limit=1000))
    assert len(everything) == 28

    seen, url, pages = [], f"{HISTORY}?limit=5", 0
    while url:
        page = client.get(url).json()
        seen += keys(page["results"])
        if pages == 0:
            # A round that clears while a client walks the pages shifts nothing: a cursor is a position.
            a_round(T0 + timedelta(minutes=30), int8=9000)
        url, pages = page["next"], pages + 1

    assert seen == everything  # no gap, no duplicate, newest first
    assert pages == 6
    assert len(set(seen)) == 28


def test_previous_leads_back_to_the_page_before(client):
    for slot in minutes(*range(3)):
        a_round(slot, int8=2000)
    first = client.get(HISTORY, {"limit": 5, "pool": "int8,fp16"}).json()
    second = client.get(first["next"]).json()
    assert first["previous"] is None
    assert parse_qs(urlsplit(first["next"]).query)["pool"] == ["int8,fp16"]  # the filters ride along

    back = client.get(second["previous"]).json()

    assert keys(back["results"]) == keys(first["results"])


def test_a_page_is_two_queries_however_many_rounds(client, django_assert_num_queries):
    # The markets running (the answer lists them, and they name the default one), then the page's rows.
    for slot in minutes(*range(30)):
        a_round(slot, int8=2000)
    with django_assert_num_queries(2):
        page = client.get(HISTORY, {"limit": 1000}).json()
    assert len(page["results"]) == 120
    with django_assert_num_queries(2):
        page = client.get(HISTORY, {"limit": 7}).json()
    with django_assert_num_queries(2):
        assert len(client.get(page["next"]).json()["results"]) == 7


# --- Bad parameters -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("start=yesterday", "start"),
        ("end=2030-13-01T00:00:00Z", "end"),
        ("start=2030-01-02T00:00:00Z&end=2030-01-01T00:00:00Z", "end"),
        ("pool=int4", "pool"),
        ("pool=int8,bf16", "pool"),
        ("pool=", "pool"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=many", "limit"),
        ("cursor=not-a-cursor", "cursor"),
        ("cursor=eWVzdGVyZGF5fGludDh8MA==", "cursor"),  # a forged position: "yesterday|int8|0"
        ("cursor=MjAzMC0wMS0wMVQxMjowMDowMCswMDowMHxpbnQ0fDA=", "cursor"),  # "2030-01-01T12:00:00+00:00|int4|0"
    ],
)
def test_a_bad_parameter_is_a_400_naming_it(client, query, field):
    a_round(T0, int8=2000)

    response = client.get(f"{HISTORY}?{query}")

    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid"
    assert list(body["fields"]) == [field]
    assert body["message"].startswith(f"{field}: ")


def test_the_history_is_in_the_openapi_schema_with_its_parameters(client):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    operation = schema["paths"]["/api/v1/market/history/"]["get"]

    assert {p["name"] for p in operation["parameters"]} == {"start", "end", "pool", "limit", "cursor", "region"}
    assert operation.get("security") is None or {} in operation["security"]  # public
    page = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    assert {"next", "previous", "results"} <= set(schema["components"]["schemas"][page]["properties"])


# --- The last trade -------------------------------------------------------------------------------------------------


def test_a_pool_that_sat_out_the_last_round_still_shows_its_last_trade(client, bid, cars, settings):
    settings.AUCTION_INTERVAL_SECONDS = 5  # the next round comes while the cars' heartbeats are fresh
    now = timezone.now()
    traded = auction_round_run(now=now)  # sells alice's bid: the pool trades
    last = auction_round_run(now=now + timedelta(seconds=6))  # the bid has all it wants: nothing trades
    assert PoolClearing.objects.get(round=last, pool=bid.pool).clearing_price_mcents is None
    anonymous = Client()

    latest = anonymous.get("/api/v1/market/").json()["latest"]

    pool = latest[bid.pool]
    assert pool["clearing_price_usd_per_ch"] is None  # as before: the last round's own price
    assert (pool["last_trade_usd_per_ch"], pool["last_trade_at"]) == ("0.02", iso(traded.slot))
    assert (latest["fp8"]["last_trade_usd_per_ch"], latest["fp8"]["last_trade_at"]) == (None, None)
    assert set(pool) == MARKET_POOL_KEYS  # what clients read before, and the last trade
    page = anonymous.get("/market/").content.decode()
    card = page.split(f'data-pool="{bid.pool}"')[1].split("</article>")[0]
    assert '<div class="stat">$0.02/CH</div>' in card
    assert f'last trade <time datetime="{traded.slot.isoformat()}"' in card
    assert "just now</time>" in card
    assert "last round: no trade" in card
    assert "no trade yet" in page.split('data-pool="fp8"')[1].split("</article>")[0]


def test_the_last_trade_is_carried_through_rounds_without_trades(client, bid, cars, settings):
    settings.AUCTION_INTERVAL_SECONDS = 5
    now = timezone.now()
    traded = auction_round_run(now=now)
    for n in range(1, 4):
        auction_round_run(now=now + timedelta(seconds=6 * n))

    newest = PoolClearing.objects.filter(pool=bid.pool).order_by("-round__slot").first()
    assert (newest.clearing_price_mcents, newest.last_trade_mcents, newest.last_trade_at) == (None, 2000, traded.slot)


def test_the_market_api_gives_the_raw_prices_beside_the_index(client):
    a_round(T0, int8=3000)
    a_round(T0 + timedelta(minutes=1))

    history = client.get("/api/v1/market/").json()["history"]

    assert history["prices"]["int8"] == ["0.03", None]
    assert history["series"]["int8"] == ["0.03", None]  # these test rows store no index for a round without trade


# --- The index follows the trades ----------------------------------------------------------------------------------


def test_after_staff_raise_the_reserve_the_index_is_at_the_trades(bid, cars, settings):
    # INT8 traded at the 1,000 reserve last round; staff then raised the reserve to 3,000, so the round clears at 3,000
    # (over both cars' asks). The old rule smoothed from 1,000 and drew 1,400: a price no one could trade at.
    now = timezone.now()
    a_round(now - timedelta(seconds=2 * settings.AUCTION_INTERVAL_SECONDS), **{bid.pool: 1000})
    settings.RESERVE_PRICES_MCENTS_PER_CH = {**settings.RESERVE_PRICES_MCENTS_PER_CH, bid.pool: 3000}

    round_ = auction_round_run(now=now)

    clearing = PoolClearing.objects.get(round=round_, pool=bid.pool)
    assert clearing.clearing_price_mcents == 3000
    newest = rows(Client(), pool=bid.pool)[0]
    assert (newest["clearing_price_usd_per_ch"], newest["index_usd_per_ch"]) == ("0.03", "0.03")
    assert Client().get("/api/v1/market/").json()["latest"][bid.pool]["index_usd_per_ch"] == "0.03"


# --- Nothing of any bid or customer ---------------------------------------------------------------------------------


def test_the_public_market_shows_no_bid_customer_or_amount(bid, cars, bob):
    # Two customers' bids in the round: alice's (placed through the API) and bob's, at amounts no pool publishes.
    Bid.objects.create(
        customer=bob, inference_model=bid.inference_model, dataset=bid.dataset, variant=bid.variant,
        precision_requested="auto", pool=bid.pool, max_price_mcents_per_ch=4321, budget_cents=789,
        deadline=timezone.now() + timedelta(hours=2), items=bid.items, ch_total=bid.ch_total,
    )  # fmt: skip
    auction_round_run()
    assert Allocation.objects.filter(bid__customer=bob).exists() and Allocation.objects.filter(bid=bid).exists()
    anonymous = Client()

    history = anonymous.get(HISTORY).json()
    market = anonymous.get("/api/v1/market/").json()
    page = anonymous.get("/market/").content.decode()

    assert history["results"] and all(set(row) == ROW_KEYS for row in history["results"])
    assert any(row["volume_ch"] > 0 for row in history["results"])  # the round traded
    assert set(market) == {"region", "regions", "latest", "history"}
    assert all(key in MARKET_POOL_KEYS for pool in market["latest"].values() for key in pool)
    assert set(market["history"]) == {"labels", "series", "prices"}
    for text in (json.dumps(history), json.dumps(market), page):
        for secret in ("alice", "bob", "example.test", "0.04321", "4321", "7.89", "789"):
            assert secret not in text, secret
    for text in (json.dumps(history), json.dumps(market)):
        assert "bid" not in text and "customer" not in text and "vehicle" not in text
