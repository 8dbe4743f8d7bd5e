from django.contrib.auth.models import AbstractUser
from django.db import models


class Role(models.TextChoices):
    CUSTOMER = "customer", "Customer"
    OWNER = "owner", "Car owner"
    STAFF = "staff", "Staff"


class User(AbstractUser):
    """Everyone who logs in. The role decides which dashboard they land on and which pages they may open."""

    email = models.EmailField("email address", unique=True)
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.CUSTOMER, db_index=True)

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
