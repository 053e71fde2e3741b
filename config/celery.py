"""The Celery app. tenant-schemas-celery's CeleryApp carries the publishing schema in
each message and switches to it in the worker; the plain Celery app would silently
run every task in `public`."""

from __future__ import annotations

import os

from tenant_schemas_celery.app import CeleryApp

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.dev")

app = CeleryApp("suifang")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

