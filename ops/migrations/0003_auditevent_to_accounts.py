# The audit log moved to accounts (accounts/migrations/0003_auditevent_from_ops.py), which sits below the apps whose
# changes it records. Only Django's idea of which app owns the model changes here: the table ops_auditevent and its
# rows stay where they are, and accounts takes them over.

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("ops", "0002_audit_event"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name="AuditEvent")],
            database_operations=[],
        ),
    ]
