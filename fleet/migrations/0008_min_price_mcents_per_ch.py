"""An owner's minimum price in milli-cents per CH, the unit of every market price, instead of whole cents."""

from django.db import migrations, models
from django.db.models import F


def cents_to_mcents(apps, schema_editor):
    apps.get_model("fleet", "OptInPolicy").objects.update(min_price_mcents_per_ch=F("min_price_mcents_per_ch") * 1000)


def mcents_to_cents(apps, schema_editor):
    # Rounded up: going back never lowers an owner's ask ($0.015 becomes 2 ¢, not 1 ¢).
    apps.get_model("fleet", "OptInPolicy").objects.update(
        min_price_mcents_per_ch=(F("min_price_mcents_per_ch") + 999) / 1000
    )


class Migration(migrations.Migration):
    dependencies = [
        ("fleet", "0007_fleet_policy_from_billing"),
    ]

    operations = [
        migrations.RenameField(
            model_name="optinpolicy", old_name="min_price_cents_per_ch", new_name="min_price_mcents_per_ch"
        ),
        # Widened before the values grow a thousandfold (a 32-bit column holds 2,147,483 ¢ but not as m¢).
        migrations.AlterField(
            model_name="optinpolicy",
            name="min_price_mcents_per_ch",
            field=models.PositiveBigIntegerField(default=0, verbose_name="minimum price (m¢/CH)"),
        ),
        migrations.RunPython(cents_to_mcents, mcents_to_cents),
    ]
