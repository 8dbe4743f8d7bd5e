import django.core.validators
import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def versions_copy(apps, schema_editor):
    """Every version of billing's pricing policy, as the market's rules it held (its payout and energy fields go to billing.PayoutPolicy and fleet.FleetPolicy)."""
    old_model = apps.get_model("billing", "PricingPolicy")
    new_model = apps.get_model("marketplace", "PricingPolicy")
    for old in old_model.objects.order_by("created_at", "pk"):
        new = new_model.objects.create(
            platform_fee_pct=old.platform_fee_pct,
            reserve_int8_mcents=old.reserve_int8_mcents,
            reserve_fp8_mcents=old.reserve_fp8_mcents,
            reserve_fp16_mcents=old.reserve_fp16_mcents,
            reserve_fp32_mcents=old.reserve_fp32_mcents,
            price_ceiling_mcents=old.price_ceiling_mcents,
            auction_interval_seconds=old.auction_interval_seconds,
            note=old.note,
            created_by_id=old.created_by_id,
        )
        # created_at is auto_now_add: set it afterwards, so the version keeps the time it came into force.
        new_model.objects.filter(pk=new.pk).update(created_at=old.created_at)


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0006_ledger_entry_covering_index"),
        ("marketplace", "0008_variant_builds_scoped"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="PricingPolicy",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                (
                    "platform_fee_pct",
                    models.DecimalField(
                        decimal_places=2,
                        max_digits=5,
                        validators=[
                            django.core.validators.MinValueValidator(0),
                            django.core.validators.MaxValueValidator(50),
                        ],
                        verbose_name="platform fee (%)",
                    ),
                ),
                ("reserve_int8_mcents", models.PositiveIntegerField(verbose_name="INT8 reserve (m¢/CH)")),
                ("reserve_fp8_mcents", models.PositiveIntegerField(verbose_name="FP8 reserve (m¢/CH)")),
                ("reserve_fp16_mcents", models.PositiveIntegerField(verbose_name="FP16 reserve (m¢/CH)")),
                ("reserve_fp32_mcents", models.PositiveIntegerField(verbose_name="FP32 reserve (m¢/CH)")),
                (
                    "price_ceiling_mcents",
                    models.PositiveIntegerField(
                        validators=[django.core.validators.MinValueValidator(1)], verbose_name="price ceiling (m¢/CH)"
                    ),
                ),
                (
                    "auction_interval_seconds",
                    models.PositiveIntegerField(
                        validators=[
                            django.core.validators.MinValueValidator(10),
                            django.core.validators.MaxValueValidator(3600),
                        ],
                        verbose_name="auction interval (s)",
                    ),
                ),
                (
                    "note",
                    models.CharField(blank=True, help_text="Why this change (shown in the history).", max_length=255),
                ),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                (
                    "created_by",
                    models.ForeignKey(
                        blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, to=settings.AUTH_USER_MODEL
                    ),
                ),
            ],
            options={
                "verbose_name": "pricing policy",
                "verbose_name_plural": "pricing policies (newest is in force)",
                "ordering": ["-created_at", "-pk"],
                "constraints": [
                    models.CheckConstraint(
                        condition=models.Q(
                            ("price_ceiling_mcents__gte", models.F("reserve_int8_mcents")),
                            ("price_ceiling_mcents__gte", models.F("reserve_fp8_mcents")),
                            ("price_ceiling_mcents__gte", models.F("reserve_fp16_mcents")),
                            ("price_ceiling_mcents__gte", models.F("reserve_fp32_mcents")),
                        ),
                        name="ceiling_above_reserves",
                        violation_error_message="The price ceiling must be at least every reserve price.",
                    )
                ],
            },
        ),
        migrations.RunPython(versions_copy, migrations.RunPython.noop),
    ]
