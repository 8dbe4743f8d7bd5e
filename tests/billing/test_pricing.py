"""Staff set the market's prices, the payout rules and the fleet's defaults in the Django admin, each where it
belongs (marketplace, billing, fleet); every change is a new version, in force from the next round."""

from decimal import Decimal

import pytest
from django.conf import settings

from billing.models import PayoutPolicy
from billing.selectors import payout_policy_current
from fleet.models import FleetPolicy, HardwareProfile
from fleet.selectors import energy_price_default
from fleet.services import vehicle_register
from marketplace.models import PricingPolicy
from marketplace.selectors import pricing_current

pytestmark = pytest.mark.django_db


def policy_form(**overrides):
    data = {
        "platform_fee_pct": "12.5",
        "price_ceiling_mcents": 50_000,
        "auction_interval_seconds": 30,
        "reserve_int8_mcents": 2500,
        "reserve_fp8_mcents": 3000,
        "reserve_fp16_mcents": 3000,
        "reserve_fp32_mcents": 4000,
        "note": "California pilot",
    }
    data.update(overrides)
    return data


def test_without_a_policy_the_settings_defaults_apply():
    pricing = pricing_current()
    assert pricing.reserves["int8"] == 1000
    assert pricing.auction_interval_seconds == 60


def test_staff_change_pricing_in_the_admin_and_history_is_kept(client, staff):
    client.force_login(staff)
    assert client.post("/admin/marketplace/pricingpolicy/add/", policy_form()).status_code == 302
    first = PricingPolicy.objects.get()

    response = client.post(
        f"/admin/marketplace/pricingpolicy/{first.pk}/change/", policy_form(reserve_int8_mcents=3100)
    )

    assert response.status_code == 302
    assert PricingPolicy.objects.count() == 2  # the change is a new version; the first is untouched
    first.refresh_from_db()
    assert first.reserve_int8_mcents == 2500
    latest = PricingPolicy.objects.first()
    assert (latest.reserve_int8_mcents, latest.created_by) == (3100, staff)
    assert pricing_current().reserves["int8"] == 3100
    assert pricing_current().platform_fee_pct == 12.5
    assert client.post(f"/admin/marketplace/pricingpolicy/{first.pk}/delete/", {"post": "yes"}).status_code == 403


def test_a_ceiling_below_a_reserve_is_refused(client, staff):
    client.force_login(staff)
    response = client.post("/admin/marketplace/pricingpolicy/add/", policy_form(price_ceiling_mcents=2000))
    assert response.status_code == 200
    assert "The price ceiling must be at least every reserve price." in response.content.decode()
    assert not PricingPolicy.objects.exists()


def test_the_next_round_uses_the_new_reserve(client, staff, digits_with_variants_for_pricing):
    """The round clears at the staff's new INT8 reserve."""
    from marketplace.models import PoolClearing
    from marketplace.rounds import auction_round_run

    client.force_login(staff)
    client.post("/admin/marketplace/pricingpolicy/add/", policy_form(reserve_int8_mcents=3500))

    round_ = auction_round_run()

    clearing = PoolClearing.objects.get(round=round_, pool="int8")
    assert clearing.reserve_mcents == 3500
    assert clearing.clearing_price_mcents == 3500


def test_staff_change_the_payout_rules_in_billing_and_history_is_kept(client, staff):
    assert payout_policy_current().earnings_hold_hours == 72  # the settings' default before any version
    client.force_login(staff)
    form = {"min_payout_cents": 2500, "earnings_hold_hours": 96, "payout_schedule": "daily", "note": "slower"}
    assert client.post("/admin/billing/payoutpolicy/add/", form).status_code == 302
    first = PayoutPolicy.objects.get()

    response = client.post(f"/admin/billing/payoutpolicy/{first.pk}/change/", {**form, "earnings_hold_hours": 48})

    assert response.status_code == 302
    assert PayoutPolicy.objects.count() == 2
    first.refresh_from_db()
    assert first.earnings_hold_hours == 96
    policy = payout_policy_current()
    assert (policy.min_payout_cents, policy.earnings_hold_hours, policy.payout_schedule) == (2500, 48, "daily")
    # A hold shorter than the audit window would pay a caught car's unchecked results out before they are audited.
    response = client.post("/admin/billing/payoutpolicy/add/", {**form, "earnings_hold_hours": 24})
    assert response.status_code == 200 and PayoutPolicy.objects.count() == 2
    assert "At least 48 hours: the audit window" in response.content.decode()
    assert client.post(f"/admin/billing/payoutpolicy/{first.pk}/delete/", {"post": "yes"}).status_code == 403


def test_staff_change_the_default_energy_price_in_the_fleet_and_new_cars_start_with_it(client, staff, olivia):
    assert energy_price_default() == Decimal(str(settings.DEFAULT_ENERGY_PRICE_CENTS_PER_KWH))  # before any version
    client.force_login(staff)
    form = {"default_energy_price_cents_per_kwh": "41.50", "note": "winter tariff"}
    assert client.post("/admin/fleet/fleetpolicy/add/", form).status_code == 302

    vehicle, _credential = vehicle_register(
        owner=olivia, display_name="Fresh", hardware=HardwareProfile.objects.get(name="HW4")
    )

    assert FleetPolicy.objects.get().created_by == staff
    assert vehicle.energy_price_cents_per_kwh == Decimal("41.50")
    assert (
        client.post("/admin/fleet/fleetpolicy/add/", {**form, "default_energy_price_cents_per_kwh": "-1"}).status_code
        == 200
    )
    assert FleetPolicy.objects.count() == 1
