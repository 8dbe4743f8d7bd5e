import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def versions_copy(apps, schema_editor):
    """Every version of the pricing policy, as the payout rules it held."""
    old_model = apps.get_model("billing", "PricingPolicy")
    new_model = apps.get_model("billing", "PayoutPolicy")
    for old in old_model.objects.order_by("created_at", "pk"):
        new = new_model.objects.create(
            min_payout_cents=old.min_payout_cents,
            earnings_hold_hours=old.earnings_hold_hours,
            payout_schedule=old.payout_schedule,
            note=old.note,
            created_by_id=old.created_by_id,
        )
        # created_at is auto_now_add: set it afterwards, so the version keeps the time it came into force.
        new_model.objects.filter(pk=new.pk).update(created_at=old.created_at)


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0006_ledger_entry_covering_index"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="PayoutPolicy",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("min_payout_cents", models.PositiveIntegerField(default=1000, verbose_name="minimum payout (¢)")),
                ("earnings_hold_hours", models.PositiveIntegerField(default=72, verbose_name="earnings hold (hours)")),
                (
                    "payout_schedule",
                    models.CharField(
                        choices=[("daily", "Daily"), ("weekly", "Weekly")], default="weekly", max_length=8
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
                "verbose_name": "payout policy",
                "verbose_name_plural": "payout policies (newest is in force)",
                "ordering": ["-created_at", "-pk"],
            },
        ),
        migrations.RunPython(versions_copy, migrations.RunPython.noop),
    ]
