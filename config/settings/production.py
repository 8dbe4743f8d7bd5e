"""Production settings: DEBUG is off and SECRET_KEY must come from the environment (there is no default).

`python manage.py check --deploy` is clean with these settings (a test checks it).
"""

import os

os.environ.setdefault("DEBUG", "false")

from .base import *  # noqa: F403
from .base import env

SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=60 * 60 * 24 * 365)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
X_FRAME_OPTIONS = "DENY"

# Production runs behind one reverse proxy (README, "Production"): trust its X-Forwarded-For, or every client would
# share the proxy's address and its rate limits. Set NUM_PROXIES=0 only when clients reach the app directly.
NUM_PROXIES = env.int("NUM_PROXIES", default=1)
REST_FRAMEWORK = {**REST_FRAMEWORK, "NUM_PROXIES": NUM_PROXIES}  # noqa: F405
