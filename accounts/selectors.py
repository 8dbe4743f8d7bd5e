"""Reads of accounts. A person's API tokens are scoped to them: someone else's token is a 404."""

from django.db.models import Q, QuerySet
from django.http import Http404
from django.utils import timezone

from .models import ApiToken, User


def api_tokens_for_user(*, user: User) -> QuerySet[ApiToken]:
    """The user's tokens that still work, newest first. An expired one is left out: it no longer opens anything, and
    knox deletes it the next time one of the user's tokens is used."""
    alive = Q(auth_token__expiry__isnull=True) | Q(auth_token__expiry__gt=timezone.now())
    return (
        ApiToken.objects.filter(auth_token__user=user)
        .filter(alive)
        .select_related("auth_token")
        .order_by("-auth_token__created", "-pk")
    )


def api_token_get_for_user(*, user: User, token_id: int) -> ApiToken:
    try:
        return api_tokens_for_user(user=user).get(pk=token_id)
    except ApiToken.DoesNotExist:
        raise Http404("No such token.") from None
