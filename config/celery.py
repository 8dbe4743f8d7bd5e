"""The Celery app. Its settings are the CELERY_* names in config/settings (beat schedule included)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

app = Celery("idlefleet")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
