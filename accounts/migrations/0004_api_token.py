# Every API token gets a name and a last use (accounts.ApiToken). The tokens that exist already are named "API token"
# here, so that each shows on its owner's tokens page and can be revoked there.

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def name_existing_tokens(apps, schema_editor):
    AuthToken = apps.get_model("knox", "AuthToken")
    ApiToken = apps.get_model("accounts", "ApiToken")
    ApiToken.objects.bulk_create(
        [ApiToken(auth_token_id=digest, name="API token") for digest in AuthToken.objects.values_list("pk", flat=True)],
        batch_size=1000,
    )


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0003_auditevent_from_ops"),
        # Not knox's first migration (swappable_dependency's): the digest becomes the primary key later.
        ("knox", "0009_extend_authtoken_field"),
    ]

    operations = [
        migrations.CreateModel(
            name="ApiToken",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("name", models.CharField(max_length=64)),
                (
                    "last_used_at",
                    models.DateTimeField(
                        blank=True, help_text="Recorded at most once a minute (accounts.authentication).", null=True
                    ),
                ),
                (
                    "auth_token",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="api_token",
                        to=settings.KNOX_TOKEN_MODEL,
                    ),
                ),
            ],
        ),
        migrations.RunPython(name_existing_tokens, migrations.RunPython.noop),
    ]
