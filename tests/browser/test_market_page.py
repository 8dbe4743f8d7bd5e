"""Anyone, in a browser, on the market page: each pool's last trade, even from a round before the last, when it was,
and the chart of the clearing prices beside the smoothed index; and what the page says before any round."""

from datetime import timedelta

from django.utils import timezone

from marketplace.models import PoolClearing, Round

from .journeys import assert_accessible_basics


def a_round(slot, *, traded: dict[str, int], last_trades: dict[str, tuple[int, object]]) -> Round:
    """A finished round: the pools in `traded` cleared at their price (m¢/CH); every pool's last trade as the round
    stored it (rounds._store carries it forward; tests/marketplace/test_market_history.py proves that)."""
    round_ = Round.objects.create(slot=slot, finished_at=slot + timedelta(seconds=1))
    for pool in ("int8", "fp16", "fp32", "fp8"):
        price = traded.get(pool)
        last_price, last_at = last_trades.get(pool, (None, None))
        PoolClearing.objects.create(
            round=round_, pool=pool, clearing_price_mcents=price, reserve_mcents=1000, volume_ch=1.5 if price else 0,
            unfilled_demand_ch=0.25, supply_ch=4.0, index_mcents=price or last_price, last_trade_mcents=last_price,
            last_trade_at=last_at,
        )  # fmt: skip
    return round_


def test_the_market_shows_the_last_trade_of_a_pool_that_sat_out_the_last_round(page):
    now = timezone.now().replace(second=0, microsecond=0)
    four_minutes_ago = now - timedelta(minutes=4)
    a_round(four_minutes_ago, traded={"int8": 3000}, last_trades={"int8": (3000, four_minutes_ago)})
    a_round(
        now - timedelta(minutes=1), traded={"fp16": 1500},
        last_trades={"int8": (3000, four_minutes_ago), "fp16": (1500, now - timedelta(minutes=1))},
    )  # fmt: skip

    page.goto("/market/")
    assert_accessible_basics(page)

    int8 = page.locator("section.grid-cards article").filter(has_text="INT8")
    assert int8.locator(".stat").inner_text() == "$0.03/CH"  # not "—": its last trade was a round before the last
    when = int8.locator(".last-trade time")
    # The trade was 4 to 5 minutes before the page (`now` is the minute begun); a slow machine may turn the minute.
    assert when.inner_text().replace("\xa0", " ") in ("4 minutes ago", "5 minutes ago")
    assert when.get_attribute("title") == four_minutes_ago.strftime("%Y-%m-%d %H:%M:%S UTC")
    details = int8.locator("small").last.inner_text()
    assert details.startswith("last round: no trade · volume 0.00 CH · unfilled 0.25 CH")
    fp8 = page.locator("section.grid-cards article").filter(has_text="FP8")
    assert (fp8.locator(".stat").inner_text(), fp8.locator(".last-trade").inner_text()) == ("—", "no trade yet")

    # The chart: INT8's clearing price as a point in the round it traded, none in the round it sat out; its index.
    page.wait_for_function("() => window.Chart && Chart.getChart('price-chart')")
    datasets = page.evaluate(
        "() => Object.fromEntries(Chart.getChart('price-chart').data.datasets.map((d) => [d.label, d.data]))"
    )
    assert datasets["INT8 clearing price"] == [0.03, None]
    assert datasets["INT8 index"] == [0.03, 0.03]
    assert datasets["FP16 clearing price"] == [None, 0.015]


def test_before_any_round_the_market_says_so(page):
    page.goto("/market/")
    assert_accessible_basics(page)

    assert page.get_by_text("No rounds yet.").is_visible()
    assert page.locator("#price-chart").count() == 0
    assert page.locator("section.grid-cards article").filter(has_text="INT8").locator("small").last.inner_text() == (
        "no round yet"
    )
