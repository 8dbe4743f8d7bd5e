"""Owner A can neither see nor change owner B's vehicles, policies or credentials: 404, in the UI and the API."""

import pytest

from fleet.models import OptInPolicy, VehicleCredential
from tests.factories import vehicle_with_credential

pytestmark = pytest.mark.django_db


@pytest.fixture
def olivias_car(olivia):
    vehicle, _ = vehicle_with_credential(olivia, name="Olivia's car")
    return vehicle


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("get", "/owner/vehicles/{id}/"),
        ("get", "/owner/vehicles/{id}/live/"),
        ("get", "/owner/vehicles/{id}/policy/"),
        ("post", "/owner/vehicles/{id}/policy/"),
        ("post", "/owner/vehicles/{id}/pause/"),
        ("post", "/owner/vehicles/{id}/credential/"),
        ("post", "/owner/vehicles/{id}/credential/{cid}/revoke/"),
        ("get", "/api/v1/vehicles/{id}/"),
        ("get", "/api/v1/vehicles/{id}/policy/"),
        ("patch", "/api/v1/vehicles/{id}/policy/"),
        ("post", "/api/v1/vehicles/{id}/credential/"),
        ("delete", "/api/v1/vehicles/{id}/credential/"),
    ],
)
def test_another_owner_gets_404_and_changes_nothing(client, olivias_car, oscar, method, url):
    credential = VehicleCredential.objects.get(vehicle=olivias_car)
    client.force_login(oscar)

    kwargs = {"content_type": "application/json", "data": {"battery_floor_pct": 10}} if method == "patch" else {}
    if method == "post" and "policy" in url:
        kwargs = {"data": {"battery_floor_pct": 10, "max_power_w": 100, "max_energy_kwh_per_day": 1}}
    response = getattr(client, method)(url.format(id=olivias_car.pk, cid=credential.pk), **kwargs)

    assert response.status_code == 404
    policy = OptInPolicy.objects.get(vehicle=olivias_car)
    assert policy.battery_floor_pct == 60
    assert VehicleCredential.objects.filter(vehicle=olivias_car).count() == 1
    assert VehicleCredential.objects.get(vehicle=olivias_car).revoked_at is None
    olivias_car.refresh_from_db()
    assert olivias_car.status == "active"


def test_lists_show_only_your_own_cars(client, olivias_car, oscar):
    vehicle_with_credential(oscar, name="Oscar's car")
    client.force_login(oscar)

    assert [v["display_name"] for v in client.get("/api/v1/vehicles/").json()] == ["Oscar's car"]
    page = client.get("/owner/").content.decode()
    assert "Oscar&#x27;s car" in page
    assert "Olivia" not in page


def test_customers_cannot_use_the_vehicle_api(client, alice, olivias_car):
    client.force_login(alice)
    assert client.get("/api/v1/vehicles/").status_code == 403
    assert client.get(f"/owner/vehicles/{olivias_car.pk}/").status_code == 403
