"""Development and demo settings: DEBUG on and a dev-only secret, unless the environment says otherwise."""

import os

os.environ.setdefault("DEBUG", "true")
os.environ.setdefault("SECRET_KEY", "django-insecure-idlefleet-local-development-only")

from .base import *  # noqa: F403
