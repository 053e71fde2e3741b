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

# Fixed PII keys so demo data survives restarts. INSECURE, public, dev only: they decode to
# "dev-only-insecure-pii-key-000001" and "dev-only-insecure-pii-hash-key-1".
PII_ENCRYPTION_KEYS = PII_ENCRYPTION_KEYS or "ZGV2LW9ubHktaW5zZWN1cmUtcGlpLWtleS0wMDAwMDE="  # noqa: F405
PII_HASH_KEY = PII_HASH_KEY or "ZGV2LW9ubHktaW5zZWN1cmUtcGlpLWhhc2gta2V5LTE="  # noqa: F405
POOLING_SECRET = POOLING_SECRET or "dev-only-insecure-pooling-secret-0000000000001"  # noqa: F405
