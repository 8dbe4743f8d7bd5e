"""A bid's budget may be reserved from the customer's prepaid balance; bids placed before were all held on a card,
and a bid waiting for funds is paused."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("marketplace", "0011_result_audits"),
    ]

    operations = [
        migrations.AddField(
            model_name="bid",
            name="funding",
            field=models.CharField(
                choices=[("balance", "Prepaid balance"), ("card", "Hold on the card")],
                default="card",
                help_text="Where the budget is set aside: reserved from the prepaid balance, or held on the card.",
                max_length=8,
            ),
        ),
        migrations.AlterField(
            model_name="bid",
            name="funding",
            field=models.CharField(
                choices=[("balance", "Prepaid balance"), ("card", "Hold on the card")],
                default="balance",
                help_text="Where the budget is set aside: reserved from the prepaid balance, or held on the card.",
                max_length=8,
            ),
        ),
        migrations.AlterField(
            model_name="bid",
            name="status",
            field=models.CharField(
                choices=[
                    ("waiting", "Waiting for capacity"),
                    ("running", "Running"),
                    ("validating", "Validating"),
                    ("completed", "Completed"),
                    ("failed", "Failed"),
                    ("cancelled", "Cancelled"),
                    ("expired", "Expired"),
                    ("authorizing", "Authorizing the card"),
                    ("declined", "Card declined"),
                    ("paused", "Paused: waiting for funds"),
                ],
                db_index=True,
                default="waiting",
                max_length=16,
            ),
        ),
    ]
