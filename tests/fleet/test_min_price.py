"""An owner's minimum price is a price per CH like any other: asked and shown in dollars, to $0.00001 (so an owner can
ask the market's going $0.015), kept in m¢ per CH. (The auction never sells the car below it:
tests/marketplace/test_rounds.py.)"""

from decimal import Decimal

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from fleet.models import OptInPolicy
from tests.factories import vehicle_with_credential

pytestmark = pytest.mark.django_db


def policy_form(**overrides):
    data = {"enabled": "on", "battery_floor_pct": 60, "max_energy_kwh_per_day": "5", "max_power_w": 200}
    data.update(overrides)
    return data


def test_an_owner_can_ask_a_fraction_of_a_cent_through_the_policy_form(client, olivia):
    vehicle, _ = vehicle_with_credential(olivia)
    client.force_login(olivia)

    response = client.post(f"/owner/vehicles/{vehicle.pk}/policy/", policy_form(min_price_usd_per_ch="0.015"))

    assert response.status_code == 302
    assert OptInPolicy.objects.get(vehicle=vehicle).min_price_mcents_per_ch == 1500
    # The form shows it back as typed.
    assert 'value="0.015"' in client.get(f"/owner/vehicles/{vehicle.pk}/policy/").content.decode()


def test_an_owner_can_ask_a_fraction_of_a_cent_through_the_api(client, olivia):
    vehicle, _ = vehicle_with_credential(olivia)
    client.force_login(olivia)

    response = client.patch(
        f"/api/v1/vehicles/{vehicle.pk}/policy/", {"min_price_usd_per_ch": "0.015"}, content_type="application/json"
    )

    assert response.status_code == 200
    assert response.json()["min_price_usd_per_ch"] == "0.015"
    assert OptInPolicy.objects.get(vehicle=vehicle).min_price_mcents_per_ch == 1500
    assert client.get(f"/api/v1/vehicles/{vehicle.pk}/").json()["policy"]["min_price_usd_per_ch"] == "0.015"


def test_the_car_page_shows_its_prices_in_dollars(client, olivia):
    vehicle, _ = vehicle_with_credential(olivia, energy_price_cents_per_kwh=Decimal("16.00"))
    OptInPolicy.objects.filter(vehicle=vehicle).update(min_price_mcents_per_ch=1500)
    client.force_login(olivia)

    page = client.get(f"/owner/vehicles/{vehicle.pk}/").content.decode()

    assert "Minimum price $0.015/CH" in page
    assert "$0.16/kWh" in page
    assert "¢" not in page


BAD_PRICES = [
    ("-0.01", "At least $0.00 per CH."),
    ("0.000001", "To $0.00001 per CH at most (5 decimal places)."),
    ("cheap", "in dollars per CH"),
]


@pytest.mark.parametrize(("typed", "message"), BAD_PRICES)
def test_a_bad_price_in_the_form_is_named_in_dollars_and_changes_nothing(client, olivia, typed, message):
    vehicle, _ = vehicle_with_credential(olivia)
    OptInPolicy.objects.filter(vehicle=vehicle).update(min_price_mcents_per_ch=2000)
    client.force_login(olivia)

    response = client.post(f"/owner/vehicles/{vehicle.pk}/policy/", policy_form(min_price_usd_per_ch=typed))

    assert response.status_code == 400
    assert message in " ".join(response.context["form"].errors["min_price_usd_per_ch"])
    assert "Minimum price ($ per CH)" in response.content.decode()
    assert OptInPolicy.objects.get(vehicle=vehicle).min_price_mcents_per_ch == 2000


@pytest.mark.parametrize(("typed", "message"), BAD_PRICES)
def test_a_bad_price_in_the_api_is_named_in_dollars_and_changes_nothing(client, olivia, typed, message):
    vehicle, _ = vehicle_with_credential(olivia)
    OptInPolicy.objects.filter(vehicle=vehicle).update(min_price_mcents_per_ch=2000)
    client.force_login(olivia)

    response = client.patch(
        f"/api/v1/vehicles/{vehicle.pk}/policy/",
        {"min_price_usd_per_ch": typed, "battery_floor_pct": 20},
        content_type="application/json",
    )

    assert response.status_code == 400
    assert list(response.json()["fields"]) == ["min_price_usd_per_ch"]
    assert message in response.json()["message"]
    assert response.json()["message"].startswith("min_price_usd_per_ch: ")
    policy = OptInPolicy.objects.get(vehicle=vehicle)
    assert (policy.min_price_mcents_per_ch, policy.battery_floor_pct) == (2000, 60)


# --- The migration from whole cents -----------------------------------------------------------------------------------

BEFORE = [("fleet", "0007_fleet_policy_from_billing")]
AFTER = [("fleet", "0008_min_price_mcents_per_ch")]


def migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


@pytest.fixture
def every_migration_applied_afterwards():
    """Going back to BEFORE also unapplies the later migrations; the tests after this one need them all."""
    yield
    migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())


@pytest.mark.django_db(transaction=True)
def test_the_minimum_prices_owners_set_in_cents_keep_their_value_and_going_back_never_lowers_one(
    olivia, oscar, every_migration_applied_afterwards
):
    cars = [vehicle_with_credential(owner)[0].pk for owner in (olivia, oscar)]
    old = migrate(BEFORE).get_model("fleet", "OptInPolicy")
    old.objects.filter(vehicle_id=cars[0]).update(min_price_cents_per_ch=4)
    old.objects.filter(vehicle_id=cars[1]).update(min_price_cents_per_ch=0)

    new = migrate(AFTER).get_model("fleet", "OptInPolicy")

    assert dict(new.objects.values_list("vehicle_id", "min_price_mcents_per_ch")) == {cars[0]: 4000, cars[1]: 0}
    new.objects.filter(vehicle_id=cars[0]).update(min_price_mcents_per_ch=1500)
    new.objects.filter(vehicle_id=cars[1]).update(min_price_mcents_per_ch=3000)

    old = migrate(BEFORE).get_model("fleet", "OptInPolicy")

    # $0.015 goes back as 2 ¢, not 1 ¢: the owner's ask never drops.
    assert dict(old.objects.values_list("vehicle_id", "min_price_cents_per_ch")) == {cars[0]: 2, cars[1]: 3}
