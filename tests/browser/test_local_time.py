"""Times in the browser's own zone: a deadline typed in Tokyo is the instant meant there, and a car registered from
Berlin is registered in Europe/Berlin without picking it from a list."""

import zoneinfo
from datetime import datetime, timedelta

import pytest
from django.utils import timezone

from fleet.models import Vehicle
from marketplace.models import Bid
from tests.factories import PASSWORD, OwnerFactory, ensure_hardware_profiles

from .conftest import TIMEOUT_MS, VIEWPORT
from .journeys import assert_accessible_basics, log_in

pytestmark = pytest.mark.django_db(transaction=True)


def tab_in(browser, live_server, zone: str):
    context = browser.new_context(base_url=live_server.url, viewport=VIEWPORT, timezone_id=zone)
    context.set_default_timeout(TIMEOUT_MS)
    return context, context.new_page()


def test_a_deadline_typed_in_tokyo_is_stored_as_that_instant(browser, live_server, digits_with_variants):
    tokyo = zoneinfo.ZoneInfo("Asia/Tokyo")
    context, page = tab_in(browser, live_server, "Asia/Tokyo")
    log_in(page, username="alice", password=PASSWORD)
    page.goto(f"/customer/models/{digits_with_variants.pk}/bid/")
    assert_accessible_basics(page)
    assert "In your local time (Asia/Tokyo)" in page.locator("#id_deadline_helptext").inner_text()
    # The suggested deadline (an instant the server sends in UTC) is shown in Tokyo's time.
    deadline = page.locator("#id_deadline")
    suggested = datetime.fromisoformat(deadline.get_attribute("data-utc")).astimezone(tokyo)
    assert deadline.input_value() == suggested.strftime("%Y-%m-%dT%H:%M")

    meant = (timezone.now() + timedelta(days=1)).astimezone(tokyo).replace(second=0, microsecond=0)
    page.locator("#id_deadline").fill(meant.strftime("%Y-%m-%dT%H:%M"))
    page.get_by_label("Budget ($)").fill("1.00")
    page.get_by_role("button", name="Place bid").click()
    page.wait_for_load_state()
    errors = page.locator("main .errorlist").all_inner_texts()
    assert errors == [], errors
    page.get_by_text("Bid placed").wait_for()

    bid = Bid.objects.get()
    assert bid.deadline == meant  # the instant she meant: 9 hours before the same wall-clock time in UTC
    # Her bid's page writes the deadline in Tokyo's time too (UTC is only the fallback without JavaScript).
    shown = page.locator("hgroup time").inner_text()
    assert meant.strftime("%H:%M") in shown and "GMT+9" in shown, shown
    context.close()


def test_a_car_registered_from_berlin_is_in_europe_berlin(browser, live_server):
    ensure_hardware_profiles()
    OwnerFactory(username="olivia")
    context, page = tab_in(browser, live_server, "Europe/Berlin")
    log_in(page, username="olivia", password=PASSWORD)
    page.goto("/owner/vehicles/new/")
    assert_accessible_basics(page)
    assert page.get_by_label("Time zone").input_value() == "Europe/Berlin"  # the browser's, not UTC

    page.get_by_label("Name").fill("Blue car")
    page.get_by_label("Your electricity price ($ per kWh)").fill("0.30")
    page.get_by_role("button", name="Register").click()
    page.get_by_role("heading", name="Blue car is registered").wait_for()

    assert Vehicle.objects.get(display_name="Blue car").time_zone == "Europe/Berlin"
    context.close()
