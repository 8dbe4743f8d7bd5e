import factory

from accounts.models import Role, User

PASSWORD = "correct-horse-battery"


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.test")
    role = Role.CUSTOMER
    password = factory.PostGenerationMethodCall("set_password", PASSWORD)

    @factory.post_generation
    def _save(obj, create, extracted, **kwargs):
        if create:
            obj.save()


class CustomerFactory(UserFactory):
    role = Role.CUSTOMER


class OwnerFactory(UserFactory):
    role = Role.OWNER


class StaffFactory(UserFactory):
    role = Role.STAFF
    is_staff = True
    is_superuser = True


def ensure_hardware_profiles() -> None:
    """The profiles the migration seeds; transactional tests flush them, so they are put back here."""
    import importlib

    from fleet.models import HardwareProfile

    for profile in importlib.import_module("fleet.migrations.0002_hardware_profiles").PROFILES:
        HardwareProfile.objects.get_or_create(name=profile["name"], defaults=profile)


def hardware(name: str = "HW4"):
    from fleet.models import HardwareProfile

    ensure_hardware_profiles()
    return HardwareProfile.objects.get(name=name)


def vehicle_with_credential(owner, name: str = "Blue car", hardware_name: str = "HW4", **kwargs):
    """A registered vehicle and its credential (what the owner sees once)."""
    from fleet.services import vehicle_register

    return vehicle_register(owner=owner, display_name=name, hardware=hardware(hardware_name), **kwargs)
