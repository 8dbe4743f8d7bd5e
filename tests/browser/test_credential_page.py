"""The page that shows a car's credential once: Copy and Download give the exact car.json on the page (made in the
browser, no second request for the key), and neither it nor the car page's install instructions run off a phone."""

import json

import pytest

from fleet.agent.signing import Credential
from fleet.models import VehicleCredential
from tests.factories import PASSWORD, OwnerFactory, vehicle_with_credential

from .journeys import assert_accessible_basics, assert_no_sideways_scroll, log_in

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_credential_is_copied_or_downloaded_in_one_click(page, live_server):
    owner = OwnerFactory(username="olivia")
    car, _ = vehicle_with_credential(owner, name="Blue Model 3 with a rather long name", time_zone="Europe/Berlin")
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_server.url)
    log_in(page, username="olivia", password=PASSWORD)
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"/owner/vehicles/{car.pk}/")
    assert_no_sideways_scroll(page)  # the install instructions' long commands wrap
    assert "idlefleet-agent --credential car.json --vehicle-state car-state.json" in page.locator("#agent").inner_text()

    page.get_by_role("button", name="Issue a new credential").click()
    page.get_by_role("heading", name="New credential").wait_for()
    assert_accessible_basics(page)  # nothing runs off the card: the key wraps
    shown = page.locator("#credential-file").inner_text()
    # The whole key is in view: the block wraps rather than hiding its end behind a scroll bar or the card's edge.
    block = page.locator("#credential-file").evaluate("(el) => [el.scrollWidth, el.clientWidth]")
    assert block[0] <= block[1], block
    issued = VehicleCredential.objects.filter(vehicle=car, revoked_at__isnull=True).get()
    assert Credential.from_token(json.loads(shown)["credential"]).key_id == issued.key_id
    requests = []
    page.on("request", lambda request: requests.append(request.url))

    with page.expect_download() as download:
        page.get_by_role("button", name="Download car.json").click()
    assert download.value.suggested_filename == "car.json"
    saved = download.value.path().read_text()
    assert json.loads(saved) == {"server": live_server.url, "credential": json.loads(shown)["credential"]}

    page.get_by_role("button", name="Copy").click()
    page.get_by_role("status").filter(has_text="Copied to the clipboard.").wait_for()
    assert page.evaluate("navigator.clipboard.readText()").strip() == shown.strip()
    assert requests == [], "the key never left the page again"
