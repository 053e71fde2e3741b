"""Liveness and readiness checks."""

from __future__ import annotations

from collections.abc import Callable

import redis
from django.conf import settings
from django.core.files.storage import default_storage
from django.db import connection


def check_postgres() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def check_redis() -> None:
    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=1, socket_connect_timeout=1)
    try:
        client.ping()
    finally:
        client.close()


def check_storage() -> None:
    # exists() is a cheap round trip on both the filesystem and S3 (HEAD).
    default_storage.exists(".readyz")


READINESS_CHECKS: dict[str, Callable[[], None]] = {
    "postgres": check_postgres,
    "redis": check_redis,
    "storage": check_storage,
}


def readiness() -> tuple[bool, dict[str, str]]:
    results: dict[str, str] = {}
    for name, check in READINESS_CHECKS.items():
        try:
            check()
        except Exception as exc:  # any failure means "not ready"; report which one
            results[name] = f"fail: {type(exc).__name__}"
        else:
            results[name] = "ok"
    return all(value == "ok" for value in results.values()), results
