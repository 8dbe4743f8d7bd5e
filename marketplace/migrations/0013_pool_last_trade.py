"""Each round's pools carry the pool's last trade forward (rounds._store), as they carry the price index.

Only the newest round's rows are read for it (the market's `latest`, and the next round carrying it on), so only
those are filled in here, with one search back through the history per pool; older rows stay null."""

from django.db import migrations, models


def last_trade_fill(apps, schema_editor):
    Round = apps.get_model("marketplace", "Round")
    PoolClearing = apps.get_model("marketplace", "PoolClearing")
    newest = Round.objects.order_by("-slot").first()
    if newest is None:
        return
    for clearing in PoolClearing.objects.filter(round=newest):
        traded = (
            PoolClearing.objects.filter(pool=clearing.pool, clearing_price_mcents__isnull=False)
            .order_by("-round__slot")
            .values_list("clearing_price_mcents", "round__slot")
            .first()
        )
        if traded is not None:
            clearing.last_trade_mcents, clearing.last_trade_at = traded
            clearing.save(update_fields=["last_trade_mcents", "last_trade_at"])


class Migration(migrations.Migration):
    dependencies = [
        ("marketplace", "0012_bid_funding"),
    ]

    operations = [
        migrations.AddField(
            model_name="poolclearing",
            name="last_trade_at",
            field=models.DateTimeField(blank=True, help_text="That round's slot. Null: never traded.", null=True),
        ),
        migrations.AddField(
            model_name="poolclearing",
            name="last_trade_mcents",
            field=models.PositiveBigIntegerField(
                blank=True,
                help_text="The clearing price of the newest round up to this one where the pool traded.",
                null=True,
            ),
        ),
        migrations.RunPython(last_trade_fill, migrations.RunPython.noop),
    ]
