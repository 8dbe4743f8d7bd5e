"""Development and demo settings: DEBUG on and a dev-only secret, unless the environment says otherwise."""

import os
from pathlib import Path

import environ

os.environ.setdefault("DEBUG", "true")
os.environ.setdefault("SECRET_KEY", "django-insecure-idlefleet-local-development-only")
# Simulated cars live a day in minutes (and tests replay fixed dates): their clocks may be years from the server's.
os.environ.setdefault("AGENT_CLOCK_MAX_SKEW_SECONDS", str(10 * 366 * 24 * 3600))
# Webhook receivers in development and tests run on this machine (production refuses private addresses).
os.environ.setdefault("WEBHOOK_ALLOW_PRIVATE_URLS", "true")

# Read .env now (base.py reads it again, harmlessly): a Stripe key kept there must count as "set" below.
environ.Env.read_env(Path(__file__).resolve().parent.parent.parent / ".env", overwrite=False)
if not os.environ.get("STRIPE_SECRET_KEY"):
    # No Stripe account configured: use the local fake Stripe (`stripe` in Procfile.demo, billing/localstripe_dev.py).
    # Someone who sets a real sk_test_ key and no API base talks to Stripe's test mode instead.
    os.environ["STRIPE_SECRET_KEY"] = "sk_test_local"  # noqa: S105 - opens nothing real
    os.environ.setdefault("STRIPE_API_BASE", f"http://127.0.0.1:{os.environ.get('DEMO_STRIPE_PORT', '8420')}")
    os.environ.setdefault("STRIPE_WEBHOOK_SECRET", "whsec_local_dev")

from .base import *  # noqa: E402, F403
