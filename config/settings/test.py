"""pytest. Real PostgreSQL and Redis: DATABASE_URL/REDIS_URL if set, otherwise the
embedded servers started by infra/bootstrap.py (see tests/conftest.py)."""

import os

os.environ.setdefault("SECRET_KEY", "test-only-insecure-key-0123456789abcdefghijklmnopqrstuv")
os.environ.setdefault("LOG_FORMAT", "console")
os.environ.setdefault("LOG_LEVEL", "WARNING")

from config.settings.base import *  # noqa: F403

# Argon2 with its production cost makes a suite of many logins slow; the hasher is
# still argon2 (tests assert the prefix), only its cost is lowered.
PASSWORD_HASHERS = ["tenants.auth.FastArgon2PasswordHasher"]
SCHEMA_POOL_TARGET_SIZE = 2
EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
STORAGES = {
    **STORAGES,  # noqa: F405
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

# A realistic 25-model tenant app (bench/synthetic) so tests of schema replay and
# provisioning run on more than an empty schema.
TENANT_APPS = [*TENANT_APPS, "bench.synthetic"]  # noqa: F405
INSTALLED_APPS = [*INSTALLED_APPS, "bench.synthetic"]  # noqa: F405
# Each test session uses its own queue so a developer's running worker never takes
# the test's tasks (and the reverse).
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("CELERY_TASK_DEFAULT_QUEUE", "suifang-test")

# Static files are served from the app directories; collectstatic is for images.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True
STATIC_ROOT = None  # type: ignore[assignment]

# Fixed PII keys for the suite. INSECURE, public, tests only: they decode to
# "test-only-insecure-pii-key-00001" and "test-only-insecure-pii-hash-key1".
PII_ENCRYPTION_KEYS = PII_ENCRYPTION_KEYS or "dGVzdC1vbmx5LWluc2VjdXJlLXBpaS1rZXktMDAwMDE="  # noqa: F405
PII_HASH_KEY = PII_HASH_KEY or "dGVzdC1vbmx5LWluc2VjdXJlLXBpaS1oYXNoLWtleTE="  # noqa: F405
POOLING_SECRET = POOLING_SECRET or "test-only-insecure-pooling-secret-000000000001"  # noqa: F405
