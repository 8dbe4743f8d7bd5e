"""A car owner, in a browser: signs up, registers a car, sets its opt-in policy (a bad battery floor is refused with a
clear message), starts the car's agent and watches the car come online and become available, sees it take a
customer's work, sees the earnings appear on the earnings chart, and onboards for payouts at the local Stripe server.
"""

import re
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from billing import ledger
from billing.models import PaymentAuthorization
from billing.services.topups import topup_create
from core.money import usd
from fleet.models import OptInPolicy, Vehicle
from marketplace import services
from marketplace.models import Bid, InferenceModel
from tests.factories import CustomerFactory, ensure_hardware_profiles
from tests.waiting import wait_for

from .journeys import (
    agent_log,
    assert_accessible_basics,
    availability,
    night_time_zone,
    screenshot,
    sign_up,
)

# What the earnings chart shows, in n¢: the sum of every bar, read from the live chart. Its data come in n¢ per day
# and Chart.js keeps dollars (static/js/owner_earnings.js): 1 $ = 1e11 n¢, exact enough in a double to round back.
CHART_TOTAL_NC = """() => {
  const chart = window.Chart && Chart.getChart('earnings-chart');
  if (!chart) return 0;
  return Math.round(1e11 * chart.data.datasets.flatMap((d) => d.data).reduce((a, b) => a + (b || 0), 0));
}"""


def results_validated(page) -> int:
    """The car page's count of the car's validated results ("… · 3 validated, 0 rejected in all")."""
    text = page.locator("#reputation").inner_text()
    match = re.search(r"(\d+) validated, \d+ rejected in all", text)
    assert match, text
    return int(match.group(1))


def earnings_chart_nc(page) -> int:
    """Open the earnings page afresh and read what its chart shows, in n¢ (0 while the page has no chart)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    page.goto("/owner/earnings/")
    if not page.locator("#earnings-chart").count():
        return 0
    try:
        page.wait_for_function("() => window.Chart && Chart.getChart('earnings-chart')", timeout=15_000)
    except PlaywrightTimeoutError:
        raise AssertionError("the earnings page has a chart canvas, but no chart was drawn on it") from None
    return page.evaluate(CHART_TOTAL_NC)


@pytest.mark.worker
def test_owner_registers_a_car_sets_its_policy_earns_and_onboards_for_payouts(
    page, live_server, stripe_server, celery_worker_thread, auction_ticker, agents, settings, card_for, tmp_path
):
    settings.AUCTION_INTERVAL_SECONDS = 2
    settings.VERIFICATION_SPOT_CHECK_RATE = 0.0
    ensure_hardware_profiles()
    call_command("catalogue_sync", no_variants=True, documents=20, stdout=open("/dev/null", "w"))  # noqa: SIM115
    # A customer who will want the car's compute: the worker builds the digits classifier's variants meanwhile.
    digits = InferenceModel.objects.get(is_catalogue=True, kind="tensor")
    services.variants_queue(inference_model=digits, dataset=digits.datasets.get())
    bob = CustomerFactory(username="bob")
    card_for(bob)
    topup_create(customer=bob, amount_cents=1000)  # his prepaid balance pays the job
    tz = night_time_zone()

    sign_up(page, username="olivia", role="owner")
    page.wait_for_url("**/owner/")
    assert_accessible_basics(page)
    page.get_by_role("button", name="Register a car").click()
    page.wait_for_url("**/owner/vehicles/new/")
    assert_accessible_basics(page)
    page.get_by_label("Name").fill("Blue Model 3")
    page.locator("#id_hardware").select_option(label="HW4")
    page.locator("#id_time_zone").fill(tz)
    page.get_by_role("button", name="Register").click()
    page.get_by_role("heading", name="Blue Model 3 is registered").wait_for()
    assert_accessible_basics(page)
    credential_file = page.locator("#credential-file").inner_text()
    car = Vehicle.objects.get(owner__username="olivia")
    # Result checking has its own tests (tests/marketplace/test_verdicts.py): here the car's results stand alone.
    Vehicle.objects.filter(pk=car.pk).update(valid_streak=settings.VERIFICATION_TRUSTED_AFTER)

    # The opt-in policy: a floor under 10 % is refused, saying why, and nothing is saved.
    page.get_by_role("button", name="Set when it may work").click()
    page.wait_for_url(f"**/owner/vehicles/{car.pk}/policy/")
    assert_accessible_basics(page)
    page.get_by_label("Battery floor (%)").fill("5")
    page.get_by_role("button", name="Save policy").click()
    error = page.get_by_role("alert").filter(has_text="greater than or equal to 10")
    error.wait_for()
    assert OptInPolicy.objects.get(vehicle=car).battery_floor_pct == 60
    assert_accessible_basics(page)
    page.get_by_label("Battery floor (%)").fill("20")
    page.get_by_label("Minimum price ($ per CH)").fill("0.04")
    page.get_by_role("button", name="Save policy").click()
    page.get_by_text("Saved the opt-in policy of Blue Model 3.").wait_for()
    assert OptInPolicy.objects.get(vehicle=car).battery_floor_pct == 20

    # The owner starts the agent in the car; the dashboard (polled by htmx, never reloaded here) sees it arrive.
    page.get_by_role("link", name="My cars").first.click()
    page.wait_for_url("**/owner/")
    row = page.locator("#fleet-table tbody tr").filter(has_text="Blue Model 3")
    assert "never seen" in row.inner_text()
    agents(credential_file, tz=tz, name="blue")
    row.get_by_text("available", exact=True).wait_for(timeout=60_000)
    assert "parked" in row.inner_text(), row.inner_text()
    assert earnings_chart_nc(page) == 0  # nothing earned yet: no chart
    page.get_by_role("heading", name="Earnings", exact=True).wait_for()
    assert page.locator("#earnings-empty").is_visible()

    # bob bids for the digits, paid from his balance: honest work, worth a fraction of a cent. Units bounded in items
    # cut it into three units, so the car returns several results; the job's price is the catalogue's own.
    assert wait_for(lambda: digits.variants.filter(status="ready").count() == 4, timeout=120)
    assert availability(car).available, availability(car).reasons
    dataset = digits.datasets.get()
    settings.WORK_UNIT_MAX_ITEMS = -(-dataset.item_count // 3)
    bid = services.bid_place(
        customer=bob, inference_model=digits, dataset=dataset, precision="auto", max_price_mcents_per_ch=5000,
        budget_cents=100, deadline=timezone.now() + timedelta(hours=1), funding="balance",
    )  # fmt: skip

    # The car takes the work: its page counts the validated results it returns.
    page.goto(f"/owner/vehicles/{car.pk}/")
    assert_accessible_basics(page)
    assert results_validated(page) == 0
    assert wait_for(lambda: Bid.objects.get(pk=bid.pk).status == "completed", timeout=90), agent_log(tmp_path, "blue")
    page.reload()
    assert results_validated(page) >= 2, page.locator("#reputation").inner_text()  # a unit each, several units

    # The job is charged (the worker draws it from bob's balance, to the n¢) and the owner's share appears on the
    # page and the chart: a fraction of a cent, exactly, never rounded away.
    assert wait_for(lambda: PaymentAuthorization.objects.get(bid=bid).status == "settled", timeout=60)
    earned = ledger.balance(kind="owner_pending", user_id=car.owner_id)
    assert earned >= 1
    assert earnings_chart_nc(page) == earned
    assert_accessible_basics(page)
    by_period = page.get_by_label("Earnings by period").inner_text()
    assert usd(earned) in by_period and "e-" not in by_period, by_period
    screenshot(page, "owner-earnings")
    page.get_by_role("link", name="My cars").first.click()
    page.wait_for_url("**/owner/")
    screenshot(page, "owner-dashboard")

    # Payouts: off to Stripe's onboarding (the local server's page), and back.
    page.get_by_role("link", name="Payouts").first.click()
    page.wait_for_url("**/owner/payouts/")
    assert_accessible_basics(page)
    page.get_by_role("button", name="Set up payouts with Stripe").click()
    page.wait_for_url(f"{stripe_server}/_connect/onboard/**")
    page.get_by_role("button", name="Complete onboarding").click()
    page.wait_for_url("**/owner/payouts/")
    page.get_by_text("Payouts are set up: your available earnings will be sent on the next payout run.").wait_for()
    assert page.get_by_text("Payouts are set up.").is_visible()
