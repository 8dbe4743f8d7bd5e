"""API authentication with a person's token (`Authorization: Token <token>`): knox's, plus the token's last use.

The cars' signed requests have their own authentication (fleet/authentication.py). This module is imported by DRF's
settings, while core.exceptions is still importing DRF: it imports nothing that imports core.exceptions.
"""

import logging

from django.utils import timezone
from knox.auth import TokenAuthentication as KnoxTokenAuthentication
from knox.models import AuthToken
from redis import RedisError

from core import redis

from .models import ApiToken

log = logging.getLogger(__name__)

# A token's last use is written at most this often: one UPDATE a minute for a script that calls the API all day.
LAST_USED_RESOLUTION_S = 60


class TokenAuthentication(KnoxTokenAuthentication):
    """knox's token authentication, noting each token's last use (see `api_token_used`)."""

    def validate_user(self, auth_token):
        user, auth_token = super().validate_user(auth_token)
        api_token_used(auth_token=auth_token)
        return user, auth_token


def api_token_used(*, auth_token: AuthToken) -> None:
    """Note that `auth_token` authenticated a request, at most once per LAST_USED_RESOLUTION_S: a Redis key that only
    the first request of the minute sets decides, so the other requests write nothing. The last use is informative:
    when Redis is unreachable it is not recorded, and the request goes on."""
    key = f"idlefleet:api-token-used:{auth_token.digest[:32]}"
    try:
        first_this_minute = redis.client().set(key, 1, nx=True, ex=LAST_USED_RESOLUTION_S)
    except RedisError:
        log.warning("API token use not recorded: Redis is unreachable", exc_info=True)
        return
    if first_this_minute:
        ApiToken.objects.filter(auth_token=auth_token).update(last_used_at=timezone.now())
