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
