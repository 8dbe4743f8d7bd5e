from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.core.serializers.json import DjangoJSONEncoder
from django.core.validators import MaxValueValidator
from django.db import models


class Role(models.TextChoices):
    CUSTOMER = "customer", "Customer"
    OWNER = "owner", "Car owner"
    STAFF = "staff", "Staff"


class User(AbstractUser):
    """Everyone who logs in. The role decides which dashboard they land on and which pages they may open."""

    email = models.EmailField("email address", unique=True)
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.CUSTOMER, db_index=True)
    exposure_cap_cents = models.PositiveBigIntegerField(
        "exposure cap (¢)", null=True, blank=True, validators=[MaxValueValidator(10**12)],
        help_text="The most this customer may have held on their card in open bids at once, in cents. Empty: the "
        "platform's default for every customer (CUSTOMER_EXPOSURE_CAP_CENTS).",
    )  # fmt: skip

    class Meta(AbstractUser.Meta):
        swappable = "AUTH_USER_MODEL"

    @property
    def is_customer(self) -> bool:
        return self.role == Role.CUSTOMER

    @property
    def is_owner(self) -> bool:
        return self.role == Role.OWNER

    @property
    def is_platform_staff(self) -> bool:
        return self.role == Role.STAFF and self.is_staff


class IdempotentRequest(models.Model):
    """A request a user sent with an `Idempotency-Key` header (accounts/idempotency.py): claimed before it runs, so a
    repeat sent at the same moment finds it, then the response it got, which a repeat is answered with."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="idempotent_requests")
    key = models.CharField(max_length=255)
    method = models.CharField(max_length=8)
    path = models.CharField(max_length=255)
    fingerprint = models.CharField(max_length=64, help_text="sha256 of the request's method, path and body.")
    status_code = models.PositiveSmallIntegerField(null=True, blank=True, help_text="Empty while it runs.")
    response = models.JSONField(null=True, blank=True, encoder=DjangoJSONEncoder)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "key"], name="idempotent_request_one_per_user_key")]

    def __str__(self) -> str:
        return f"{self.method} {self.path} ({self.key})"


class AuditEvent(models.Model):
    """Who did what to which object: staff changing prices, suspending cars, refunding payments (accounts/audit.py).

    Append-only: rows are written by `audit_record` and only read afterwards (the admin shows them read-only). The
    target is named by type, id and its text at the time, not by a foreign key, so the event outlives the object and
    can name any model; the actor's username is kept too, for the same reason.
    """

    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="audit_events",
        help_text="Empty: the platform itself (a task, an automatic check).",
    )  # fmt: skip
    actor_username = models.CharField(max_length=150, blank=True)
    action = models.CharField(max_length=64, db_index=True, help_text="What happened, e.g. vehicle.suspend.")
    target_type = models.CharField(max_length=100, db_index=True, help_text="app_label.model, e.g. fleet.vehicle.")
    target_id = models.CharField(max_length=64, blank=True)
    target_repr = models.CharField(max_length=200, blank=True)
    details = models.JSONField(default=dict, blank=True, encoder=DjangoJSONEncoder)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        # The log began in ops and moved here without its rows moving: the table and index keep their first names.
        db_table = "ops_auditevent"
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["target_type", "target_id"], name="ops_audit_target")]

    def __str__(self) -> str:
        who = self.actor_username or "platform"
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {who}: {self.action} {self.target_type} {self.target_id}"


class ApiToken(models.Model):
    """What a person knows of one of their API tokens besides knox's digest: the name they gave it and when it was
    last used. Made with its knox token by `accounts.services.api_token_create`, and gone with it (revoked, logged out
    or expired): knox deletes its AuthToken, and this row cascades."""

    auth_token = models.OneToOneField(settings.KNOX_TOKEN_MODEL, on_delete=models.CASCADE, related_name="api_token")
    name = models.CharField(max_length=64)
    last_used_at = models.DateTimeField(
        null=True, blank=True, help_text="Recorded at most once a minute (accounts.authentication)."
    )

    def __str__(self) -> str:
        return self.name
