from django.db import transaction

from core.exceptions import ApplicationError

from .models import Role, User

SELF_SERVICE_ROLES = (Role.CUSTOMER, Role.OWNER)


@transaction.atomic
def user_create(*, username: str, email: str, password: str, role: str, is_superuser: bool = False) -> User:
    """Create a user of the given role. Staff users get Django's `is_staff` so they can use the admin."""
    if role not in Role.values:
        raise ApplicationError(
            f"role: '{role}' is not one of {', '.join(Role.values)}.", fields={"role": ["Unknown role."]}
        )
    if User.objects.filter(username__iexact=username).exists():
        raise ApplicationError("username: that username is taken.", fields={"username": ["That username is taken."]})
    if User.objects.filter(email__iexact=email).exists():
        raise ApplicationError("email: an account with that email exists.", fields={"email": ["Already registered."]})
    is_staff = role == Role.STAFF
    user = User(username=username, email=email.lower(), role=role, is_staff=is_staff, is_superuser=is_superuser)
    user.set_password(password)
    user.full_clean(exclude=["password"])
    user.save()
    return user


def dashboard_url_name(user: User) -> str:
    """The URL name of the page a user lands on after logging in."""
    if user.is_staff:
        return "ops:dashboard"
    if user.role == Role.OWNER:
        return "fleet:dashboard"
    return "marketplace:dashboard"
