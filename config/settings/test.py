"""Test settings: like local, with fast password hashing and an embedded Redis port of its own."""

import os

# A demo running on the same machine keeps its embedded Redis on 6389; the tests never share it.
os.environ.setdefault("EMBEDDED_REDIS_PORT", "6399")
os.environ.setdefault("DEBUG", "false")
# Beat ticks every second in tests, so the end-to-end heartbeat test sees several ticks quickly.
os.environ.setdefault("PLATFORM_HEARTBEAT_SECONDS", "1")
# Known-answer probes are random: tests that count a lease's items turn them on where they mean to (rate 1).
os.environ.setdefault("VERIFICATION_PROBE_RATE", "0")
# New cars' results are all run twice (BOINC's rule), so that tests of replicas see them every time; the product's
# share (config/settings/base.py) is tested by tests/marketplace/test_verification.py.
os.environ.setdefault("VERIFICATION_NEW_CAR_RATE", "1")

from .local import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":  # noqa: F405
    # A file, not SQLite's shared in-memory database: that one locks whole tables and ignores the busy timeout,
    # so a test's live server or Celery worker thread would fail on "database table is locked".
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test-idlefleet.sqlite3")}  # noqa: F405
else:
    # Parallel runs on one machine (a developer's and CI's, say) must not share a test database: each run that uses
    # its own Redis database number gets its own PostgreSQL test database too.
    _redis_db = os.environ.get("REDIS_URL", "").rstrip("/").rsplit("/", 1)[-1]
    if _redis_db.isdigit() and _redis_db != "0":
        DATABASES["default"]["TEST"] = {"NAME": f"test_{DATABASES['default']['NAME']}_{_redis_db}"}  # noqa: F405

# The suite logs in, signs up and sends agent requests far faster than people and cars do; the limits themselves are
# proven by tests/security/test_throttling.py, which sets small rates.
THROTTLE_LOGIN = THROTTLE_SIGNUP = THROTTLE_AGENT = THROTTLE_AGENT_FAILURES = THROTTLE_PUBLIC_API = "100000/min"
THROTTLE_PASSWORD_RESET = THROTTLE_LOGIN
