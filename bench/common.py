"""Helpers shared by the benchmark scripts (bench/tenant_provisioning.py,
bench/migrate_tenants.py). Benchmarks print figures, never pass/fail; every figure is
printed next to a baseline measured in the same run.

Everything here runs against the dedicated database of config/settings/bench.py
(BENCH_DATABASE_URL, default postgresql://postgres@127.0.0.1:5432/suifang_bench), which
`recreate_database()` drops and creates again.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DB_URL = "postgresql://postgres@127.0.0.1:5432/suifang_bench"
PASSWORD = "Bench-admin-password-2024!"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def db_url() -> str:
    return os.environ.get("BENCH_DATABASE_URL", DEFAULT_DB_URL)


def recreate_database() -> None:
    """DROP and CREATE the bench database, through the server's `postgres` database."""
    import psycopg2
    from psycopg2 import sql

    parts = urlsplit(db_url())
    name = unquote(parts.path.lstrip("/"))
    if not name or name in {"postgres", "template0", "template1", "suifang", "suifang_test_base"}:
        raise SystemExit(f"refusing to drop database {name!r}: set BENCH_DATABASE_URL to a scratch db")
    conn = psycopg2.connect(
        host=parts.hostname or "127.0.0.1", port=parts.port or 5432,
        user=unquote(parts.username or "postgres"), password=unquote(parts.password or ""),
        dbname="postgres",
    )
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    conn.close()


def setup_django(*, migrations: str = "initial") -> None:
    """django.setup() with config.settings.bench. `migrations="next"` adds the second
    synthetic migration (bench/synthetic/migrations_next)."""
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings.bench"
    os.environ["BENCH_MIGRATIONS"] = migrations
    os.environ.setdefault("BENCH_DATABASE_URL", DEFAULT_DB_URL)
    import django

    django.setup()


def migrate_shared() -> None:
    from django.core.management import call_command

    call_command("migrate_schemas", shared=True, interactive=False, verbosity=0)


def tenant_count() -> int:
    from tenants.models import Tenant

    return Tenant.objects.exclude(schema_name="public").count()


def fill_tenants(*, target: int, prefix: str = "fill", batch: int = 50,
                 progress: bool = True) -> float:
    """Bring the number of tenants up to `target` the cheap way: our tenant_create with
    no admin password (no Argon2), spares built in batches beforehand. Untimed setup;
    returns the seconds it took, for the log."""
    from tenants import schema_pool, services
    from tenants.models import Tenant

    started = time.perf_counter()
    have = tenant_count()
    serial = Tenant.objects.filter(slug__startswith=f"{prefix}-").count()
    while have < target:
        size = min(batch, target - have)
        schema_pool.pool_refill(target_size=size)
        for _ in range(size):
            serial += 1
            slug = f"{prefix}-{serial:05d}"
            services.tenant_create(
                name=f"Filler {serial}", slug=slug, kind="hospital",
                admin_email=f"admin@{slug}.example.org", admin_password=None,
            )
        have += size
        if progress:
            log(f"  ... {have}/{target} tenants ({time.perf_counter() - started:.0f} s)")
    return time.perf_counter() - started


def purge_bench_queue() -> int:
    """Drop the pool-refill tasks that tenant_create queued (nobody consumes them)."""
    from django.conf import settings

    from config.celery import app

    try:
        with app.connection_for_write() as conn:
            return int(conn.default_channel.queue_purge(settings.CELERY_TASK_DEFAULT_QUEUE) or 0)
    except Exception as exc:  # the figures do not depend on it
        log(f"(could not purge the Celery queue {settings.CELERY_TASK_DEFAULT_QUEUE}: {exc})")
        return 0


# --- statistics and printing ---------------------------------------------------------

def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def p90(values: Sequence[float]) -> float:
    """90th percentile, linear interpolation between closest ranks (inclusive)."""
    if not values:
        return math.nan
    if len(values) == 1:
        return values[0]
    ordered = sorted(values)
    pos = 0.9 * (len(ordered) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def ratio(value: float, base: float) -> str:
    if not base or math.isnan(base) or math.isnan(value):
        return "n/a"
    return f"{value / base:.2f}x"


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def log(message: str) -> None:
    print(message, flush=True)


def machine_info() -> str:
    import django
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        (pg_version,) = cursor.fetchone()
    try:
        import django_tenants

        dt_version = getattr(django_tenants, "__version__", None)
        if dt_version is None:
            from importlib.metadata import version

            dt_version = version("django-tenants")
    except Exception:
        dt_version = "?"
    return (
        f"date {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {os.cpu_count()} cores; "
        f"PostgreSQL {pg_version} (local, {db_url().rsplit('@', 1)[-1]}); "
        f"Python {platform.python_version()}; Django {django.get_version()}; "
        f"django-tenants {dt_version}"
    )
