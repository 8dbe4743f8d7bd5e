"""What owners and staff see of the fleet: availability or the reason there is none, and the fleet's totals."""

import pytest

from tests.factories import vehicle_with_credential
from tests.fleet.agent_requests import heartbeat, signed_post

pytestmark = pytest.mark.django_db
HEARTBEAT = "/api/v1/agent/heartbeat/"


@pytest.fixture
def two_cars(client, olivia, oscar):
    home, home_key = vehicle_with_credential(olivia, name="At home")
    road, road_key = vehicle_with_credential(oscar, name="On the road")
    assert signed_post(client, home_key, HEARTBEAT, heartbeat(network="wifi", battery_pct=90)).status_code == 200
    assert signed_post(client, road_key, HEARTBEAT, heartbeat(network="cellular", battery_pct=90)).status_code == 200
    return home, road


def test_the_owner_sees_each_car_live_with_its_reason(client, olivia, two_cars):
    _, road = two_cars
    client.force_login(olivia)

    page = client.get("/owner/live/").content.decode()

    assert "At home" in page
    assert "available" in page
    assert "On the road" not in page  # oscar's

    client.force_login(road.owner)
    detail = client.get(f"/owner/vehicles/{road.pk}/live/").content.decode()
    assert "on cellular: work only runs on WiFi" in detail


def test_a_car_never_seen_says_so(client, olivia):
    vehicle, _ = vehicle_with_credential(olivia, name="New car")
    client.force_login(olivia)
    assert "no heartbeat yet: is the agent running?" in client.get(f"/owner/vehicles/{vehicle.pk}/").content.decode()


def test_staff_see_the_fleet_totals(client, staff, two_cars):
    client.force_login(staff)

    response = client.get("/staff/fleet/")

    overview = response.context["overview"]
    assert (overview.vehicles, overview.online, overview.available) == (2, 2, 1)
    assert overview.power_kw == pytest.approx(0.1)  # one HW4 at its typical 100 W
    assert overview.ch_per_precision["int8"] > 0
    assert overview.ch_per_precision["fp8"] == 0  # HW4 has no FP8
    assert ("on cellular: work only runs on WiFi", 1) in overview.reasons
    assert "Available now" in response.content.decode()


@pytest.mark.parametrize("fixture", ["alice", "olivia"])
def test_only_staff_see_the_fleet_page(client, request, fixture):
    client.force_login(request.getfixturevalue(fixture))
    assert client.get("/staff/fleet/").status_code == 403
