"""Benchmarks (bench/*.py, docs/BENCHMARKS.md): the test settings, with

- the production password hasher cost: "able to log in" includes hashing the first
  admin's password, so it must cost what it costs in production;
- a dedicated database, BENCH_DATABASE_URL (default .../suifang_bench), which the
  benchmark scripts drop and recreate: never point it at a database you care about;
- the optional second synthetic migration (BENCH_MIGRATIONS=next) used by the
  "one new migration to apply" figure of bench/migrate_tenants.py;
- mail to nowhere and a Celery queue of their own (tenant_create queues a pool refill
  after each sign-up; nobody consumes that queue, the scripts purge it when they end).
"""

import os

os.environ.setdefault("LOG_LEVEL", "ERROR")

from config.env import database_from_url
from config.settings.test import *  # noqa: F403

BENCH_DATABASE_URL = os.environ.get(
    "BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/suifang_bench"
)
DATABASES = {"default": database_from_url(BENCH_DATABASE_URL)}

PASSWORD_HASHERS = ["django.contrib.auth.hashers.Argon2PasswordHasher"]
EMAIL_BACKEND = "django.core.mail.backends.dummy.EmailBackend"
# One refill is queued per sign-up; no worker listens here (refill is measured apart).
CELERY_TASK_DEFAULT_QUEUE = "suifang-bench"

# bench/synthetic/migrations_next = migrations/0001_initial.py + one small 0002.
if os.environ.get("BENCH_MIGRATIONS", "initial") == "next":
    MIGRATION_MODULES = {"synthetic": "bench.synthetic.migrations_next"}

# bench/form_save.py's baseline: a bare DRF endpoint next to the real URLs.
if os.environ.get("BENCH_ECHO_ENDPOINT") == "1":
    ROOT_URLCONF = "bench.echo"
