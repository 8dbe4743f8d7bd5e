"""One Redis client per process for the hot stores (vehicle heartbeats, agent nonces)."""

from functools import cache

import redis
from django.conf import settings


@cache
def client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, decode_responses=True, health_check_interval=30)


@cache
def binary_client() -> redis.Redis:
    """The same Redis, answering bytes: for values that are not text (the supply book's packed offers)."""
    return redis.Redis.from_url(settings.REDIS_URL, decode_responses=False, health_check_interval=30)
