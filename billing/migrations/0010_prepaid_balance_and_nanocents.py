"""The ledger meters in nano-cents (1 ¢ = 10⁹ n¢: core/money.py) instead of cents, and customers get a prepaid
balance (TopUp, BalanceRefund, and a bid's budget reserved from the balance: PaymentAuthorization.method).

The column is renamed and every existing entry multiplied by 10⁹ once: the only UPDATE the append-only ledger ever
takes, with its guard trigger off for the statement (PostgreSQL). The balance check (a deferred trigger that sums a
transaction's entries) is rewritten for the new column."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

NC_PER_CENT = 10**9

BALANCED = """
CREATE OR REPLACE FUNCTION billing_ledger_balanced() RETURNS trigger AS $$
DECLARE
    unbalanced RECORD;
BEGIN
    SELECT currency, SUM({column}) AS total INTO unbalanced
        FROM billing_ledgerentry WHERE transaction_id = NEW.transaction_id
        GROUP BY currency HAVING SUM({column}) <> 0 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'ledger transaction % does not balance: % % left over',
            NEW.transaction_id, unbalanced.total, unbalanced.currency USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
"""


def _scale(schema_editor, factor: str, column: str) -> None:
    postgres = schema_editor.connection.vendor == "postgresql"
    if postgres:
        schema_editor.execute("ALTER TABLE billing_ledgerentry DISABLE TRIGGER billing_ledgerentry_append_only")
    schema_editor.execute(f"UPDATE billing_ledgerentry SET amount_nc = amount_nc {factor}")  # noqa: S608 (constants)
    schema_editor.execute(
        f"UPDATE billing_paymentauthorization SET charged_nc = captured_cents * {NC_PER_CENT} WHERE status = 'settled'"  # noqa: S608
        if factor.startswith("*")
        else "UPDATE billing_paymentauthorization SET charged_nc = NULL"
    )
    if postgres:
        schema_editor.execute("ALTER TABLE billing_ledgerentry ENABLE TRIGGER billing_ledgerentry_append_only")
        schema_editor.execute(BALANCED.format(column=column), params=None)


def to_nanocents(apps, schema_editor):
    _scale(schema_editor, f"* {NC_PER_CENT}", "amount_nc")


def to_cents(apps, schema_editor):
    _scale(schema_editor, f"/ {NC_PER_CENT}", "amount_cents")


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0009_correction_kind"),
        ("fleet", "0007_fleet_policy_from_billing"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="BalanceRefund",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("amount_cents", models.PositiveBigIntegerField()),
                (
                    "status",
                    models.CharField(
                        choices=[
                            ("pending", "Refunding"),
                            ("succeeded", "Refunded"),
                            ("failed", "Failed: back on the balance"),
                        ],
                        db_index=True,
                        default="pending",
                        max_length=10,
                    ),
                ),
                ("idempotency_key", models.CharField(max_length=80, unique=True)),
                ("stripe_refund_id", models.CharField(blank=True, max_length=64)),
                ("failure_message", models.CharField(blank=True, max_length=255)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
            ],
            options={
                "ordering": ["-created_at", "-pk"],
            },
        ),
        migrations.CreateModel(
            name="TopUp",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("amount_cents", models.PositiveBigIntegerField()),
                ("currency", models.CharField(default="usd", max_length=3)),
                (
                    "status",
                    models.CharField(
                        choices=[
                            ("pending", "Charging the card"),
                            ("succeeded", "Added to the balance"),
                            ("failed", "Declined"),
                        ],
                        db_index=True,
                        default="pending",
                        max_length=10,
                    ),
                ),
                ("idempotency_key", models.CharField(max_length=80, unique=True)),
                ("stripe_payment_intent_id", models.CharField(blank=True, db_index=True, max_length=64)),
                (
                    "refunded_cents",
                    models.PositiveBigIntegerField(default=0, help_text="Given back to the card (unused balance)."),
                ),
                ("failure_message", models.CharField(blank=True, max_length=255)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                ("updated_at", models.DateTimeField(auto_now=True)),
            ],
            options={
                "ordering": ["-created_at", "-pk"],
            },
        ),
        migrations.AddField(
            model_name="paymentauthorization",
            name="charged_nc",
            field=models.PositiveBigIntegerField(
                blank=True,
                help_text="What the validated work costs the customer, in n¢ (after corrections).",
                null=True,
            ),
        ),
        migrations.RemoveConstraint(
            model_name="ledgerentry",
            name="entry_not_zero",
        ),
        migrations.RemoveIndex(
            model_name="ledgerentry",
            name="billing_entry_account_cover",
        ),
        migrations.RenameField(model_name="ledgerentry", old_name="amount_cents", new_name="amount_nc"),
        migrations.AlterField(
            model_name="ledgerentry",
            name="amount_nc",
            field=models.BigIntegerField(help_text="n¢ (1 ¢ = 10⁹ n¢): + debit, − credit."),
        ),
        migrations.RunPython(to_nanocents, to_cents),
        migrations.AddField(
            model_name="paymentauthorization",
            name="method",
            field=models.CharField(
                choices=[("balance", "Prepaid balance"), ("card", "Card hold")], default="card", max_length=8
            ),
        ),
        migrations.AlterField(
            model_name="ledgeraccount",
            name="kind",
            field=models.CharField(
                choices=[
                    ("stripe_clearing", "Stripe clearing (card authorizations open at Stripe)"),
                    ("customer_held", "Customer funds held (authorized, not yet captured or released)"),
                    ("customer_spend", "Customer spend (captured for validated work)"),
                    ("owner_pending", "Owner earnings pending (in the hold period)"),
                    ("owner_available", "Owner earnings available (to be paid out)"),
                    ("owner_paid_out", "Owner earnings paid out"),
                    ("platform_fee", "Platform fee revenue"),
                    ("refunds", "Refunds to customers"),
                    ("verification_cost", "Verification cost (replicas paid by the platform)"),
                    ("prepaid_cash", "Prepaid money (top-ups, and the rest of captured cents, not yet spent)"),
                    ("customer_balance", "Customer balance (prepaid, free to spend)"),
                    ("customer_reserved", "Customer balance reserved by open bids"),
                ],
                max_length=20,
            ),
        ),
        migrations.AlterField(
            model_name="ledgertransaction",
            name="kind",
            field=models.CharField(
                choices=[
                    ("authorize", "Card authorized"),
                    ("release", "Authorization released"),
                    ("capture", "Charged for validated work"),
                    ("earnings_release", "Earnings out of hold"),
                    ("payout", "Payout to owner"),
                    ("refund", "Refund"),
                    ("reversal", "Reversal (correction)"),
                    ("correction", "Corrected after an audit"),
                    ("topup", "Balance topped up"),
                    ("reserve", "Budget reserved from the balance"),
                    ("balance_refund", "Balance refunded to the card"),
                    ("refund_to_balance", "Refunded onto the prepaid balance"),
                ],
                db_index=True,
                max_length=20,
            ),
        ),
        migrations.AlterField(
            model_name="paymentauthorization",
            name="amount_cents",
            field=models.PositiveBigIntegerField(help_text="Reserved or authorized: the bid's budget."),
        ),
        migrations.AlterField(
            model_name="paymentauthorization",
            name="settlement",
            field=models.JSONField(
                blank=True,
                default=dict,
                help_text="The split decided before capturing: fee, and each car's n¢, CH, Wh.",
            ),
        ),
        migrations.AlterField(
            model_name="paymentauthorization",
            name="work_mcents",
            field=models.DecimalField(
                blank=True,
                decimal_places=6,
                help_text="Validated work × clearing prices, exactly, in milli-cents (before rounding to the n¢).",
                max_digits=24,
                null=True,
            ),
        ),
        migrations.AddIndex(
            model_name="ledgerentry",
            index=models.Index(
                fields=["account", "currency", "created_at", "amount_nc", "transaction", "vehicle", "ch", "energy_wh"],
                name="billing_entry_account_cover",
            ),
        ),
        migrations.AddConstraint(
            model_name="ledgerentry",
            constraint=models.CheckConstraint(
                condition=models.Q(("amount_nc", 0), _negated=True), name="entry_not_zero"
            ),
        ),
        migrations.AddField(
            model_name="balancerefund",
            name="customer",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.PROTECT, related_name="balance_refunds", to=settings.AUTH_USER_MODEL
            ),
        ),
        migrations.AddField(
            model_name="topup",
            name="customer",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.PROTECT, related_name="topups", to=settings.AUTH_USER_MODEL
            ),
        ),
        migrations.AddField(
            model_name="balancerefund",
            name="topup",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.PROTECT, related_name="balance_refunds", to="billing.topup"
            ),
        ),
        migrations.AddConstraint(
            model_name="topup",
            constraint=models.CheckConstraint(condition=models.Q(("amount_cents__gt", 0)), name="topup_positive"),
        ),
    ]
