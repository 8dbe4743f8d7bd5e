import django.core.validators
import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def versions_copy(apps, schema_editor):
    """Every version of billing's pricing policy, as the default energy price it held."""
    old_model = apps.get_model("billing", "PricingPolicy")
    new_model = apps.get_model("fleet", "FleetPolicy")
    for old in old_model.objects.order_by("created_at", "pk"):
        new = new_model.objects.create(
            default_energy_price_cents_per_kwh=old.default_energy_price_cents_per_kwh,
            note=old.note,
            created_by_id=old.created_by_id,
        )
        # created_at is auto_now_add: set it afterwards, so the version keeps the time it came into force.
        new_model.objects.filter(pk=new.pk).update(created_at=old.created_at)


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0006_ledger_entry_covering_index"),
        ("fleet", "0006_credential_revoked_at_index"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="FleetPolicy",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                (
                    "default_energy_price_cents_per_kwh",
                    models.DecimalField(
                        decimal_places=2,
                        max_digits=6,
                        validators=[django.core.validators.MinValueValidator(0)],
                        verbose_name="default energy price (¢/kWh)",
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
                "verbose_name": "fleet policy",
                "verbose_name_plural": "fleet policies (newest is in force)",
                "ordering": ["-created_at", "-pk"],
            },
        ),
        migrations.RunPython(versions_copy, migrations.RunPython.noop),
    ]
