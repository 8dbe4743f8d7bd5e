from django.db import transaction
from knox.models import AuthToken

from core.exceptions import ApplicationError

from .models import ApiToken, Role, User

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


# --- API tokens ----------------------------------------------------------------------------------------------------

API_TOKEN_DEFAULT_NAME = "API token"  # noqa: S105 - a label, not a secret


@transaction.atomic
def api_token_create(*, user: User, name: str = API_TOKEN_DEFAULT_NAME) -> tuple[ApiToken, str]:
    """A new API token of `user`, with knox's expiry (REST_KNOX TOKEN_TTL). Returns the row and the token itself, which
    exists only here: knox stores its digest, so it can be shown once and never again."""
    auth_token, token = AuthToken.objects.create(user=user)
    api_token = ApiToken.objects.create(auth_token=auth_token, name=name.strip() or API_TOKEN_DEFAULT_NAME)
    return api_token, token


def api_token_revoke(*, api_token: ApiToken) -> None:
    """Revoke a token: its knox row goes (the next request with it gets 401), and its name with it."""
    AuthToken.objects.filter(pk=api_token.auth_token_id).delete()
