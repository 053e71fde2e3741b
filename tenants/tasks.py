"""Celery tasks of the tenants app (thin wrappers over services)."""

from __future__ import annotations

from typing import Any

import structlog
from django.core.cache import cache

from config.celery import app
from config.db import tenant_connection as connection
from tenants import schema_pool

log = structlog.get_logger(__name__)


@app.task(name="tenants.tasks.schema_pool_refill", ignore_result=True)
def schema_pool_refill() -> int:
    # Serialised through a PostgreSQL advisory lock: two refills at once would
    # overshoot the target size.
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(hashtext('suifang.schema_pool_refill'))")
        (locked,) = cursor.fetchone()
    if not locked:
        return 0
    try:
        return schema_pool.pool_refill()
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(hashtext('suifang.schema_pool_refill'))")


@app.task(name="tenants.tasks.tenant_heartbeat")
def tenant_heartbeat() -> dict[str, Any]:
    """Runs once per live tenant from beat (fan-out) and reports which schema it ran in.
    It is the smallest proof, in production logs, that tasks run in their tenant."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_schema()")
        (current_schema,) = cursor.fetchone()
    tenant = getattr(connection, "tenant", None)
    result = {
        "schema": current_schema,
        "connection_schema": connection.schema_name,
        "tenant": getattr(tenant, "slug", None),
    }
    # Operators read the last heartbeat per tenant to see that periodic jobs reach it.
    cache.set(f"tenant-heartbeat:{connection.schema_name}", result, timeout=24 * 3600)
    log.info("tenant.heartbeat", **result)
    return result
