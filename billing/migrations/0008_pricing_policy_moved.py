"""The pricing policy leaves billing once its versions are copied: the market's rules to marketplace.PricingPolicy,
the default energy price to fleet.FleetPolicy, the payout rules to billing.PayoutPolicy (0007)."""

from django.db import migrations


def versions_restore(apps, schema_editor):
    """Undoing the move: each version is put back together from its three parts, which were copied in one order."""
    old_model = apps.get_model("billing", "PricingPolicy")
    market = apps.get_model("marketplace", "PricingPolicy").objects.order_by("created_at", "pk")
    fleet = apps.get_model("fleet", "FleetPolicy").objects.order_by("created_at", "pk")
    payouts = apps.get_model("billing", "PayoutPolicy").objects.order_by("created_at", "pk")
    for rules, defaults, payout in zip(market, fleet, payouts, strict=False):
        old = old_model.objects.create(
            platform_fee_pct=rules.platform_fee_pct,
            reserve_int8_mcents=rules.reserve_int8_mcents,
            reserve_fp8_mcents=rules.reserve_fp8_mcents,
            reserve_fp16_mcents=rules.reserve_fp16_mcents,
            reserve_fp32_mcents=rules.reserve_fp32_mcents,
            price_ceiling_mcents=rules.price_ceiling_mcents,
            auction_interval_seconds=rules.auction_interval_seconds,
            default_energy_price_cents_per_kwh=defaults.default_energy_price_cents_per_kwh,
            min_payout_cents=payout.min_payout_cents,
            earnings_hold_hours=payout.earnings_hold_hours,
            payout_schedule=payout.payout_schedule,
            note=rules.note,
            created_by_id=rules.created_by_id,
        )
        old_model.objects.filter(pk=old.pk).update(created_at=rules.created_at)


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0007_payout_policy"),
        ("marketplace", "0009_pricing_policy_from_billing"),
        ("fleet", "0007_fleet_policy_from_billing"),
    ]

    operations = [
        migrations.RunPython(migrations.RunPython.noop, versions_restore),
        migrations.DeleteModel(name="PricingPolicy"),
    ]
