# The audit log, moved here from ops without moving its rows: the model is added to accounts' state only, over the
# table ops/migrations/0002_audit_event.py created (db_table and the index keep their ops names). It runs after ops has
# let go of the model, so no state ever holds it twice (two models on one table, two `audit_events` on the user).

import django.core.serializers.json
import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0002_exposure_cap_and_idempotency"),
        ("ops", "0003_auditevent_to_accounts"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="AuditEvent",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        ("actor_username", models.CharField(blank=True, max_length=150)),
                        (
                            "action",
                            models.CharField(
                                db_index=True, help_text="What happened, e.g. vehicle.suspend.", max_length=64
                            ),
                        ),
                        (
                            "target_type",
                            models.CharField(
                                db_index=True, help_text="app_label.model, e.g. fleet.vehicle.", max_length=100
                            ),
                        ),
                        ("target_id", models.CharField(blank=True, max_length=64)),
                        ("target_repr", models.CharField(blank=True, max_length=200)),
                        (
                            "details",
                            models.JSONField(
                                blank=True, default=dict, encoder=django.core.serializers.json.DjangoJSONEncoder
                            ),
                        ),
                        ("created_at", models.DateTimeField(auto_now_add=True, db_index=True)),
                        (
                            "actor",
                            models.ForeignKey(
                                blank=True,
                                help_text="Empty: the platform itself (a task, an automatic check).",
                                null=True,
                                on_delete=django.db.models.deletion.SET_NULL,
                                related_name="audit_events",
                                to=settings.AUTH_USER_MODEL,
                            ),
                        ),
                    ],
                    options={
                        "db_table": "ops_auditevent",
                        "ordering": ["-created_at", "-id"],
                        "indexes": [models.Index(fields=["target_type", "target_id"], name="ops_audit_target")],
                    },
                ),
            ],
            database_operations=[],
        ),
    ]
