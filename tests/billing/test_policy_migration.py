"""The pricing policy used to hold the market's rules, the payout rules and the fleet's default energy price in
billing. Migrations split it by subject (marketplace 0009, fleet 0007, billing 0007–0008): every version a platform
has saved must arrive in all three, with its time, author and note, and the newest must stay in force."""

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE = [
    ("billing", "0006_ledger_entry_covering_index"),
    ("marketplace", "0008_variant_builds_scoped"),
    ("fleet", "0006_credential_revoked_at_index"),
]
AFTER = [
    ("billing", "0008_pricing_policy_moved"),
    ("marketplace", "0009_pricing_policy_from_billing"),
    ("fleet", "0007_fleet_policy_from_billing"),
]
VERSIONS = [
    # (when, fee %, INT8 reserve, interval, energy ¢/kWh, minimum payout, hold hours, schedule, note)
    (datetime(2026, 1, 5, 9, 0, tzinfo=UTC), "15.00", 1000, 60, "16.00", 1000, 72, "weekly", "launch"),
    (datetime(2026, 3, 1, 12, 0, tzinfo=UTC), "12.50", 2500, 30, "30.00", 2500, 48, "daily", "California pilot"),
    (datetime(2026, 3, 1, 12, 0, tzinfo=UTC), "12.50", 3100, 30, "31.00", 2500, 24, "daily", "same minute, later"),
]


def migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


@pytest.fixture(autouse=True)
def every_migration_applied_afterwards():
    """Going back to BEFORE also unapplies the later migrations of these apps; the tests after these need them all."""
    yield
    migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())


@pytest.mark.django_db(transaction=True)
def test_the_split_carries_every_version_of_the_pricing_policy_to_its_three_homes(staff):
    old_apps = migrate(BEFORE)
    old_model = old_apps.get_model("billing", "PricingPolicy")
    for when, fee, int8, interval, energy, payout, hold, schedule, note in VERSIONS:
        row = old_model.objects.create(
            platform_fee_pct=fee, reserve_int8_mcents=int8, reserve_fp8_mcents=3000, reserve_fp16_mcents=3000,
            reserve_fp32_mcents=4000, price_ceiling_mcents=50_000, auction_interval_seconds=interval,
            default_energy_price_cents_per_kwh=energy, min_payout_cents=payout, earnings_hold_hours=hold,
            payout_schedule=schedule, note=note, created_by_id=staff.pk if note != "launch" else None,
        )  # fmt: skip
        old_model.objects.filter(pk=row.pk).update(created_at=when)

    new_apps = migrate(AFTER)

    def history(app, model, *fields):
        rows = new_apps.get_model(app, model).objects.order_by("created_at", "pk")
        return [tuple(row[f] for f in fields) for row in rows.values("created_at", "created_by_id", "note", *fields)]

    authors = [None, staff.pk, staff.pk]
    expected_times = [(when, author, note) for (when, *_rest, note), author in zip(VERSIONS, authors, strict=True)]
    market = history("marketplace", "PricingPolicy", "created_at", "created_by_id", "note", "platform_fee_pct",
                     "reserve_int8_mcents", "auction_interval_seconds")  # fmt: skip
    assert [row[:3] for row in market] == expected_times
    assert [row[3:] for row in market] == [(Decimal(v[1]), v[2], v[3]) for v in VERSIONS]
    fleet = history("fleet", "FleetPolicy", "created_at", "created_by_id", "note", "default_energy_price_cents_per_kwh")
    assert fleet == [(*times, Decimal(v[4])) for times, v in zip(expected_times, VERSIONS, strict=True)]
    payouts = history("billing", "PayoutPolicy", "created_at", "created_by_id", "note", "min_payout_cents",
                      "earnings_hold_hours", "payout_schedule")  # fmt: skip
    assert payouts == [(*times, *v[5:8]) for times, v in zip(expected_times, VERSIONS, strict=True)]
    # The newest version is in force after the move, as before it: of two saved in one minute, the later one.
    from billing.selectors import payout_policy_current
    from fleet.selectors import energy_price_default
    from marketplace.selectors import pricing_current

    assert pricing_current().reserves["int8"] == 3100
    assert energy_price_default() == Decimal("31.00")
    assert payout_policy_current().earnings_hold_hours == 24
    assert "PricingPolicy" not in {model.__name__ for model in new_apps.get_app_config("billing").get_models()}


@pytest.mark.django_db(transaction=True)
def test_undoing_the_split_puts_each_version_back_together(staff):
    migrate(BEFORE)
    apps = migrate(AFTER)
    for note, reserve, energy in (("a", 1200, "20.00"), ("b", 1300, "21.00")):
        apps.get_model("marketplace", "PricingPolicy").objects.create(
            platform_fee_pct="15", reserve_int8_mcents=reserve, reserve_fp8_mcents=1500, reserve_fp16_mcents=1500,
            reserve_fp32_mcents=2000, price_ceiling_mcents=100_000, auction_interval_seconds=60, note=note,
        )  # fmt: skip
        apps.get_model("fleet", "FleetPolicy").objects.create(default_energy_price_cents_per_kwh=energy, note=note)
        apps.get_model("billing", "PayoutPolicy").objects.create(min_payout_cents=1000, note=note)

    old_apps = migrate(BEFORE)

    rows = old_apps.get_model("billing", "PricingPolicy").objects.order_by("created_at", "pk")
    assert [(r.note, r.reserve_int8_mcents, r.default_energy_price_cents_per_kwh) for r in rows] == [
        ("a", 1200, Decimal("20.00")),
        ("b", 1300, Decimal("21.00")),
    ]
