"""Owners register cars, get the credential once, edit the opt-in policy and pause their cars."""

from decimal import Decimal

import pytest

from fleet.agent.signing import Credential
from fleet.models import OptInPolicy, Vehicle, VehicleCredential
from tests.factories import hardware, vehicle_with_credential

pytestmark = pytest.mark.django_db


def register_form(**overrides):
    data = {
        "display_name": "Blue car",
        "hardware": hardware("HW4").pk,
        "time_zone": "Europe/Berlin",
        "region": "DE",
        "battery_capacity_kwh": 75,
        "energy_price_usd_per_kwh": "0.315",
        "vin": "",
    }
    data.update(overrides)
    return data


def test_registering_shows_a_working_credential_once(client, olivia):
    client.force_login(olivia)

    response = client.post("/owner/vehicles/new/", register_form(vin="5YJ3E1EA7KF000316"))

    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    token = response.context["token"]
    credential = Credential.from_token(token)
    vehicle = Vehicle.objects.get(owner=olivia)
    assert vehicle.vin_last4 == "0316"
    assert "5YJ3E1EA7KF000316" not in str(Vehicle.objects.filter(pk=vehicle.pk).values().get())
    assert VehicleCredential.objects.get(vehicle=vehicle).key_id == credential.key_id
    assert OptInPolicy.objects.get(vehicle=vehicle).battery_floor_pct == 60
    assert vehicle.energy_price_cents_per_kwh == Decimal("31.50")  # asked in dollars, kept in cents
    # The detail page never shows it again.
    assert token not in client.get(f"/owner/vehicles/{vehicle.pk}/").content.decode()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"display_name": ""}, "This field is required."),
        ({"time_zone": "Mars/Olympus"}, "“Mars/Olympus” is not a time zone: choose one from the list"),
        ({"battery_capacity_kwh": 1}, "Ensure this value is greater than or equal to 5."),
        ({"vin": "12"}, "A VIN has 11 to 17 letters and digits."),
        ({"energy_price_usd_per_kwh": "16"}, "At most $5.00 per kWh."),  # cents typed as dollars
        ({"energy_price_usd_per_kwh": "0.12345"}, "To $0.0001 per kWh at most (4 decimal places)."),
    ],
)
def test_bad_registrations_name_the_problem_and_register_nothing(client, olivia, overrides, message):
    client.force_login(olivia)
    response = client.post("/owner/vehicles/new/", register_form(**overrides))
    assert response.status_code == 400
    assert message in response.content.decode()
    assert not Vehicle.objects.exists()


def test_an_unknown_time_zone_is_refused_beside_its_field_on_the_page_and_named_by_the_api(client, olivia):
    client.force_login(olivia)

    page = client.post("/owner/vehicles/new/", register_form(time_zone="Mars/Olympus"))

    assert page.status_code == 400
    assert page.context["form"].errors == {
        "time_zone": ["“Mars/Olympus” is not a time zone: choose one from the list, e.g. Europe/Berlin or "
                      "America/New_York."]
    }  # fmt: skip
    html = page.content.decode()
    assert html.count("is not a time zone") == 1
    assert html.index('id="id_time_zone"') < html.index('id="id_time_zone_error"') < html.index('for="id_region"')
    api = client.post(
        "/api/v1/vehicles/", {"display_name": "Red car", "hardware": "HW3", "time_zone": "Mars/Olympus"},
        content_type="application/json",
    )  # fmt: skip
    assert api.status_code == 400
    assert api.json()["message"].startswith("time_zone: “Mars/Olympus” is not a time zone")
    assert list(api.json()["fields"]) == ["time_zone"]
    assert not Vehicle.objects.exists()


def test_the_time_zone_is_searched_in_a_list_of_every_zone_with_its_offset(client, olivia):
    client.force_login(olivia)
    page = client.get("/owner/vehicles/new/").content.decode()
    assert 'list="time-zones"' in page and '<datalist id="time-zones">' in page
    assert '<option value="Europe/Berlin" label="UTC+0' in page  # +01:00 in winter, +02:00 in summer
    assert '<option value="Asia/Kolkata" label="UTC+05:30">' in page


def test_the_registration_form_offers_the_fleets_electricity_price_in_dollars(client, olivia, settings):
    settings.DEFAULT_ENERGY_PRICE_CENTS_PER_KWH = 31.5
    client.force_login(olivia)
    page = client.get("/owner/vehicles/new/").content.decode()
    assert "Your electricity price ($ per kWh)" in page
    assert 'value="0.315"' in page


def test_the_same_name_twice_is_refused(client, olivia):
    vehicle_with_credential(olivia, name="Blue car")
    client.force_login(olivia)
    response = client.post("/owner/vehicles/new/", register_form())
    assert response.status_code == 400
    assert "You already have a car with this name." in response.content.decode()


def test_the_same_vin_twice_is_refused(client, olivia, oscar):
    vehicle_with_credential(olivia, vin="5YJ3E1EA7KF000316")
    client.force_login(oscar)
    response = client.post("/owner/vehicles/new/", register_form(vin="5yj3e1ea7kf000316"))
    assert response.status_code == 400
    assert "This car is already registered." in response.content.decode()


def test_registering_through_the_api_returns_the_credential(client, olivia):
    client.force_login(olivia)
    response = client.post(
        "/api/v1/vehicles/", {"display_name": "Red car", "hardware": "HW3"}, content_type="application/json"
    )
    assert response.status_code == 201
    assert response.json()["credential"].startswith("ifv1.")
    assert response.json()["policy"]["max_power_w"] == 150  # HW3 draws at most 150 W

    bad = client.post("/api/v1/vehicles/", {"display_name": "X", "hardware": "HW9"}, content_type="application/json")
    assert bad.status_code == 400
    assert bad.json()["fields"] == {"hardware": ["Object with name=HW9 does not exist."]}


def policy_form(**overrides):
    data = {
        "enabled": "on",
        "battery_floor_pct": 50,
        "max_energy_kwh_per_day": "4.5",
        "max_power_w": 150,
        "min_price_usd_per_ch": "0.03",
        "day0_from": "18:00",
        "day0_to": "07:00",
    }
    data.update(overrides)
    return data


def test_the_owner_sets_the_policy(client, olivia):
    vehicle, _ = vehicle_with_credential(olivia, time_zone="Europe/Berlin")
    client.force_login(olivia)

    response = client.post(f"/owner/vehicles/{vehicle.pk}/policy/", policy_form(plugged_in_only="on"))

    assert response.status_code == 302
    policy = OptInPolicy.objects.get(vehicle=vehicle)
    assert policy.battery_floor_pct == 50
    assert policy.plugged_in_only
    assert policy.windows == [[0, 18 * 60, 7 * 60]]
    assert policy.min_price_mcents_per_ch == 3000


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"battery_floor_pct": 5}, "Ensure this value is greater than or equal to 10."),
        ({"battery_floor_pct": 101}, "Ensure this value is less than or equal to 100."),
        ({"max_power_w": 900}, "At most 200 W: HW4 draws up to 200 W."),
        ({"max_power_w": 5000}, "Ensure this value is less than or equal to 1000."),
        ({"max_energy_kwh_per_day": "-1"}, "Ensure this value is greater than or equal to 0."),
        ({"day0_to": ""}, "Monday: give both a start and an end time, or neither."),
        ({"leave_at_time": "not-a-time"}, "Enter a valid time."),
    ],
)
def test_a_bad_policy_gets_a_clear_error_and_changes_nothing(client, olivia, overrides, message):
    vehicle, _ = vehicle_with_credential(olivia)
    client.force_login(olivia)

    response = client.post(f"/owner/vehicles/{vehicle.pk}/policy/", policy_form(**overrides))

    assert response.status_code == 400
    assert message in response.content.decode()
    policy = OptInPolicy.objects.get(vehicle=vehicle)
    assert (policy.battery_floor_pct, policy.windows, policy.max_power_w) == (60, [], 200)


def test_the_policy_api_validates_windows_and_power(client, olivia):
    vehicle, _ = vehicle_with_credential(olivia, hardware_name="HW3")
    client.force_login(olivia)
    url = f"/api/v1/vehicles/{vehicle.pk}/policy/"

    bad = client.patch(url, {"windows": [[7, 0, 60]]}, content_type="application/json")
    assert bad.status_code == 400
    assert "windows.0" in bad.json()["fields"]

    too_much = client.patch(url, {"max_power_w": 400}, content_type="application/json")
    assert too_much.status_code == 400
    assert too_much.json()["message"] == "max_power_w: At most 150 W: HW3 draws up to 150 W."

    ok = client.patch(url, {"windows": [[5, 0, 0]], "battery_floor_pct": 40}, content_type="application/json")
    assert ok.status_code == 200
    assert ok.json()["windows"] == [[5, 0, 0]]


def test_pause_and_resume(client, olivia):
    vehicle, _ = vehicle_with_credential(olivia)
    client.force_login(olivia)

    client.post(f"/owner/vehicles/{vehicle.pk}/pause/", {"action": "pause"})
    vehicle.refresh_from_db()
    assert vehicle.status == "paused"

    client.post(f"/owner/vehicles/{vehicle.pk}/pause/", {"action": "resume"})
    vehicle.refresh_from_db()
    assert vehicle.status == "active"


def test_a_suspended_car_cannot_be_resumed_by_its_owner(client, olivia):
    vehicle, _ = vehicle_with_credential(olivia)
    Vehicle.objects.filter(pk=vehicle.pk).update(status="suspended", status_reason="wrong results")
    client.force_login(olivia)

    response = client.post(f"/owner/vehicles/{vehicle.pk}/pause/", {"action": "resume"}, follow=True)

    assert "suspended by Idlefleet (wrong results)" in response.content.decode()
    vehicle.refresh_from_db()
    assert vehicle.status == "suspended"
