"""Rate limits: a small fixed-window counter in Redis for the HTML views and the agent, and DRF throttles for the API.

Every rate is a setting read on each request (`THROTTLE_*`, README "Rate limits"), written as DRF writes rates:
"10/min", "5/hour", "120/m", "2/s", "100/day". Like every cache-based limit, these are a brake on abuse (password
guessing, sign-up floods, a runaway agent), not a security boundary: a burst at a window's edge may pass twice the
limit, and money is protected by database constraints, not by these.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, wraps

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from rest_framework.throttling import BaseThrottle, SimpleRateThrottle

from core import redis

PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Rate:
    requests: int
    seconds: int


@cache  # a setting's value, read on every request
def rate_parse(rate: str) -> Rate:
    """Read a rate: "10/min" -> Rate(10, 60), the period by its first letter (s, m, h, d) as DRF reads it."""
    try:
        number, period = rate.split("/")
        return Rate(requests=int(number), seconds=PERIODS[period.strip()[0].lower()])
    except (ValueError, KeyError, IndexError):
        raise ImproperlyConfigured(f"{rate!r} is not a rate: write it like '10/min', '5/hour' or '2/s'.") from None


def client_ip(request) -> str:
    """The client's address: REMOTE_ADDR, or the address the trusted proxies (NUM_PROXIES) put in X-Forwarded-For.

    With NUM_PROXIES = 0 the header is ignored, or a client could send a new address with every request and escape
    every per-IP limit."""
    return BaseThrottle().get_ident(request) or "unknown"


def _window(rate: Rate, now: float) -> tuple[int, int]:
    """The current window's number and the whole seconds until it ends (at least 1)."""
    window = int(now // rate.seconds)
    return window, max(1, math.ceil((window + 1) * rate.seconds - now))


def _key(scope: str, ident: str, window: int) -> str:
    return f"idlefleet:ratelimit:{scope}:{ident}:{window}"


@dataclass(frozen=True)
class Counter:
    """The Redis counter of `ident` in `scope` for the current window of a rate, for callers that read or count it in
    a round trip of their own (fleet.authentication counts an agent request's hit with its nonce)."""

    key: str
    limit: int
    ttl_s: int  # the window's number is in the key: it only has to go eventually
    retry_after: int  # seconds until the window ends (at least 1)

    def over(self, used: int) -> int | None:
        """After counting a request: the seconds to wait when `used` is over the limit, else None."""
        return self.retry_after if used > self.limit else None

    def reached(self, used: int) -> int | None:
        """Before counting: the seconds to wait when `used` has already reached the limit, else None."""
        return self.retry_after if used >= self.limit else None


def limit_counter(*, scope: str, ident: str, rate: str) -> Counter:
    parsed = rate_parse(rate)
    window, retry_after = _window(parsed, time.time())
    return Counter(
        key=_key(scope, ident, window), limit=parsed.requests, ttl_s=parsed.seconds + 1, retry_after=retry_after
    )


def limit_hit(*, scope: str, ident: str, rate: str) -> int | None:
    """Count one request of `ident` (an address, say) in `scope`: the seconds to wait (Retry-After) when this request
    is over the limit, None when it may go on. One Redis round trip (INCR is atomic: two processes counting at once
    never lose a hit)."""
    counter = limit_counter(scope=scope, ident=ident, rate=rate)
    (used,) = counters_hit([counter])
    return counter.over(used)


def counters_hit(counters: list[Counter]) -> list[int]:
    """Count one request in each counter, in one Redis round trip: how many each has counted in its window."""
    pipe = redis.client().pipeline(transaction=False)
    for counter in counters:
        pipe.incr(counter.key)
        pipe.expire(counter.key, counter.ttl_s)
    return pipe.execute()[::2]


def too_many_requests(request: HttpRequest, *, retry_after: int, message: str) -> HttpResponse:
    """The 429 page, with the Retry-After header."""
    response = render(request, "429.html", {"message": message, "retry_after": retry_after}, status=429)
    response["Retry-After"] = str(retry_after)
    return response


def rate_limited(scope: str, *, rate_setting: str, message: str, methods: tuple[str, ...] = ("POST",)) -> Callable:
    """Limit an HTML view's `methods` per client address to the rate in `settings.<rate_setting>`; the page itself
    (a GET) is never limited."""

    def decorator(view: Callable) -> Callable:
        @wraps(view)
        def wrapped(request, *args, **kwargs):
            if request.method in methods:
                rate = getattr(settings, rate_setting)
                retry_after = limit_hit(scope=scope, ident=client_ip(request), rate=rate)
                if retry_after is not None:
                    return too_many_requests(request, retry_after=retry_after, message=message)
            return view(request, *args, **kwargs)

        return wrapped

    return decorator


# --- DRF ---------------------------------------------------------------------------------------------------------


class SettingsRateThrottle(SimpleRateThrottle):
    """A DRF throttle whose rate is the setting `rate_setting`, read per request. (DRF reads its own
    DEFAULT_THROTTLE_RATES once, at import: neither the environment of a running test nor a test's `settings` fixture
    would reach it.)"""

    rate_setting: str = ""

    def get_rate(self) -> str:
        return getattr(settings, self.rate_setting)

    def parse_rate(self, rate):
        parsed = rate_parse(rate)
        return parsed.requests, parsed.seconds


class LoginRateThrottle(SettingsRateThrottle):
    """Password attempts on the API (POST /api/v1/auth/token/), per client address."""

    scope = "login"
    rate_setting = "THROTTLE_LOGIN"

    def get_cache_key(self, request, view) -> str:
        return self.cache_format % {"scope": self.scope, "ident": client_ip(request)}


class PublicApiRateThrottle(SettingsRateThrottle):
    """Reads of the public market API (GET /api/v1/market/ and its history), which need no account: per client
    address, so that a scraper cannot load the database with history pages."""

    scope = "public-api"
    rate_setting = "THROTTLE_PUBLIC_API"

    def get_cache_key(self, request, view) -> str:
        return self.cache_format % {"scope": self.scope, "ident": client_ip(request)}
