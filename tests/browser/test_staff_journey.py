"""Staff, in a browser: looks at the fleet and at the books (a job worth a fraction of a cent shows in the gross volume
and the fee, to the n¢), raises the INT8 reserve price in the Django admin, and sees the next round on the market page
clear at the new reserve. The rounds are the real `auction_round` task, run by the real worker."""

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from billing.models import PaymentAuthorization
from billing.selectors import finance_summary
from core.money import price_per_ch, usd
from marketplace import services
from marketplace.models import Allocation, Bid, InferenceModel
from tests.factories import (
    PASSWORD,
    CustomerFactory,
    OwnerFactory,
    StaffFactory,
    ensure_hardware_profiles,
    vehicle_with_credential,
)
from tests.fleet.agent_requests import heartbeat, signed_post
from tests.waiting import wait_for

from .journeys import assert_accessible_basics, log_in, night_time_zone, parked_car, screenshot

NEW_RESERVE_MCENTS = 3000  # 3 ¢/CH: above what the car asks and what INT8 cleared at before


def int8_card(page) -> tuple[str, str]:
    """The market page's INT8 card: (the pool's last trade, the line under it about the last round, with the
    reserve)."""
    card = page.locator("section.grid-cards article").filter(has_text="INT8")
    return card.locator(".stat").inner_text(), card.locator("small").last.inner_text()


@pytest.mark.worker
def test_staff_raises_a_reserve_price_and_the_next_round_clears_at_it(
    page, live_server, stripe_server, celery_worker_thread, auction_ticker, agents, settings, card_for, client
):
    settings.AUCTION_INTERVAL_SECONDS = 10  # the admin's form starts from it (10 s is the least it allows)
    # An idle car heartbeats (and asks for work) every 15 s here, the shortest idle interval, not every 60 s: the test
    # runs in real time, and its car is sold while idle.
    settings.IDLE_HEARTBEAT_SECONDS = 15
    settings.VERIFICATION_SPOT_CHECK_RATE = 0.0
    ensure_hardware_profiles()
    call_command("catalogue_sync", no_variants=True, documents=20, stdout=open("/dev/null", "w"))  # noqa: SIM115
    digits = InferenceModel.objects.get(is_catalogue=True, kind="tensor")
    services.variants_queue(inference_model=digits, dataset=digits.datasets.get())
    tz = night_time_zone()
    parked_car(OwnerFactory(username="oscar"), tz=tz, agents=agents)
    # A second car, low on charge: its one heartbeat is enough for the fleet page to say why it cannot work.
    _, low_battery = vehicle_with_credential(OwnerFactory(username="otto"), name="otto's car", time_zone=tz)
    assert signed_post(client, low_battery, "/api/v1/agent/heartbeat/", heartbeat(battery_pct=41)).status_code == 200
    bob = CustomerFactory(username="bob")
    card_for(bob)
    assert wait_for(lambda: digits.variants.filter(status="ready").count() == 4, timeout=120)

    def bid():
        return services.bid_place(
            customer=bob, inference_model=digits, dataset=digits.datasets.get(), precision="int8",
            max_price_mcents_per_ch=5000, budget_cents=100, deadline=timezone.now() + timedelta(hours=1),
        )  # fmt: skip

    # Before: a bid clears at the old reserve and the car runs it.
    before = bid()
    assert wait_for(lambda: Bid.objects.get(pk=before.pk).status == "completed", timeout=60)
    assert wait_for(lambda: PaymentAuthorization.objects.get(bid=before).status == "settled", timeout=60)
    old_price = Allocation.objects.get(bid=before).price_mcents_per_ch
    assert old_price < NEW_RESERVE_MCENTS

    staff = StaffFactory(username="sam")
    log_in(page, username=staff.username, password=PASSWORD)
    page.get_by_role("link", name="Fleet", exact=True).click()
    page.wait_for_url("**/staff/fleet/")
    assert_accessible_basics(page)
    assert page.locator("#fleet-stats article").filter(has_text="Available now").locator(".stat").inner_text() == "1"
    assert page.get_by_text("battery … is below your … floor").is_visible()  # reasons counted across cars
    screenshot(page, "fleet")

    # The books: the job, charged at its honest price (a fraction of a cent), is in the gross volume and the fee.
    page.get_by_role("link", name="Finance", exact=True).click()
    page.wait_for_url("**/staff/finance/")
    assert_accessible_basics(page)
    books = finance_summary()
    assert books.gross_nc > 0 and books.fee_nc > 0, books
    for label, amount in (("Gross volume", books.gross_nc), ("Platform fee revenue", books.fee_nc)):
        stat = page.locator(".grid-cards article").filter(has_text=label).locator(".stat").inner_text()
        assert stat == usd(amount) and "e-" not in stat, (label, stat)

    # The change, in the admin: a new version of the pricing policy, in force from the next round.
    auction_ticker.clear()  # no round while staff edit (so the next one is the first after the change)
    page.get_by_role("link", name="Admin", exact=True).click()
    page.get_by_role("link", name="Pricing policies (newest is in force)").click()
    page.get_by_role("link", name="Add pricing policy").click()
    page.wait_for_url("**/admin/marketplace/pricingpolicy/add/")
    assert_accessible_basics(page, headings=False)  # Django's own markup: labels only
    reserve = page.get_by_label("INT8 reserve (m¢/CH)")
    assert reserve.input_value() == "1000"  # the form starts from the prices in force
    reserve.fill(str(NEW_RESERVE_MCENTS))
    page.get_by_label("Note").fill("INT8 demand is high: raise its floor to 3 ¢/CH")
    screenshot(page, "admin-pricing")
    page.get_by_role("button", name="Save", exact=True).click()
    page.get_by_text("was added successfully").wait_for()
    assert "3000" in page.locator("#result_list").inner_text()

    # After: the next round clears the new bid at the reserve; the market page shows both.
    after = bid()
    auction_ticker.set()
    page.goto("/market/")
    assert_accessible_basics(page)

    def next_round_on_the_page() -> bool:
        page.reload()
        _, details = int8_card(page)
        # The card's price is the pool's last trade: a round after the change that sold nothing would still show the
        # old one, so the line under it must say the last round traded.
        return details.endswith(f"reserve {price_per_ch(NEW_RESERVE_MCENTS)}") and "no trade" not in details

    assert wait_for(next_round_on_the_page, timeout=45, interval=0.5), int8_card(page)
    assert int8_card(page)[0] == price_per_ch(NEW_RESERVE_MCENTS)  # "$0.03/CH"
    assert Allocation.objects.get(bid=after).price_mcents_per_ch == NEW_RESERVE_MCENTS
    page.wait_for_function("() => window.Chart && Chart.getChart('price-chart')")
    screenshot(page, "market")
