"""Staff set the market's prices in the Django admin; every change is a new version, in force from the next round."""

import pytest

from billing.models import PricingPolicy
from billing.selectors import pricing_current

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
        "default_energy_price_cents_per_kwh": "30.00",
        "min_payout_cents": 1000,
        "earnings_hold_hours": 72,
        "payout_schedule": "weekly",
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
    assert client.post("/admin/billing/pricingpolicy/add/", policy_form()).status_code == 302
    first = PricingPolicy.objects.get()

    response = client.post(f"/admin/billing/pricingpolicy/{first.pk}/change/", policy_form(reserve_int8_mcents=3100))

    assert response.status_code == 302
    assert PricingPolicy.objects.count() == 2  # the change is a new version; the first is untouched
    first.refresh_from_db()
    assert first.reserve_int8_mcents == 2500
    latest = PricingPolicy.objects.first()
    assert (latest.reserve_int8_mcents, latest.created_by) == (3100, staff)
    assert pricing_current().reserves["int8"] == 3100
    assert pricing_current().platform_fee_pct == 12.5
    assert client.post(f"/admin/billing/pricingpolicy/{first.pk}/delete/", {"post": "yes"}).status_code == 403


def test_a_ceiling_below_a_reserve_is_refused(client, staff):
    client.force_login(staff)
    response = client.post("/admin/billing/pricingpolicy/add/", policy_form(price_ceiling_mcents=2000))
    assert response.status_code == 200
    assert "The price ceiling must be at least every reserve price." in response.content.decode()
    assert not PricingPolicy.objects.exists()


def test_the_next_round_uses_the_new_reserve(client, staff, digits_with_variants_for_pricing):
    """The round clears at the staff's new INT8 reserve."""
    from marketplace.models import PoolClearing
    from marketplace.rounds import auction_round_run

    client.force_login(staff)
    client.post("/admin/billing/pricingpolicy/add/", policy_form(reserve_int8_mcents=3500))

    round_ = auction_round_run()

    clearing = PoolClearing.objects.get(round=round_, pool="int8")
    assert clearing.reserve_mcents == 3500
    assert clearing.clearing_price_mcents == 3500
