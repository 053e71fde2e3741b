"""`make run`: a local demo. infra/bootstrap.py sets DATABASE_URL/REDIS_URL to the
embedded servers when none are configured."""

import os

os.environ.setdefault("SECRET_KEY", "dev-only-insecure-key-change-me-0123456789abcdefghijklmnop")
os.environ.setdefault("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
os.environ.setdefault("LOG_FORMAT", "console")
os.environ.setdefault("SITE_SCHEME", "http")
os.environ.setdefault("SITE_PORT", "8000")

from config.settings.base import *  # noqa: F403

DEBUG = True
SCHEMA_POOL_TARGET_SIZE = 3

# Static files are served from the app directories; collectstatic is for images.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True
STATIC_ROOT = None  # type: ignore[assignment]
