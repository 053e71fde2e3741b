"""A real Celery worker process (not eager mode) runs tenant tasks in the right schema."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from django.core.cache import cache
from django.db import connection
from django_tenants.utils import schema_context

from config.celery import app as celery_app
from tenants.tasks import tenant_heartbeat

ROOT = Path(__file__).resolve().parent.parent


def database_url(settings_dict: dict) -> str:
    user = settings_dict["USER"] or "postgres"
    password = settings_dict["PASSWORD"] or ""
    host = settings_dict["HOST"] or ""
    name = settings_dict["NAME"]
    if host.startswith("/"):
        return f"postgresql://{user}:{password}@/{name}?host={host}"
    port = settings_dict["PORT"] or "5432"
    return f"postgresql://{user}:{password}@{host}:{port}/{name}"


def wait_for_other_sessions_to_end(django_db_blocker, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    """A stopped subprocess's PostgreSQL backend lingers for a moment; dropping the test
    database at session end fails while it does."""
    import time

    deadline = time.monotonic() + timeout
    with django_db_blocker.unblock():
        try:
            with connection.cursor() as cursor:
                while time.monotonic() < deadline:
                    cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                   "AND pid <> pg_backend_pid()")
                    if cursor.fetchone()[0] == 0:
                        return
                    time.sleep(0.1)
        finally:
            connection.close()  # this module-level connection must not outlive the fixture


@pytest.fixture(scope="module")
def worker_queue(world, django_db_blocker):  # type: ignore[no-untyped-def]
    queue = f"test-{uuid.uuid4().hex[:10]}"
    env = {**os.environ, "DATABASE_URL": database_url(connection.settings_dict),
           "DJANGO_SETTINGS_MODULE": "config.settings.test", "CELERY_TASK_DEFAULT_QUEUE": queue}
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "-P", "solo", "-Q", queue,
         "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "WARNING"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        yield queue
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        wait_for_other_sessions_to_end(django_db_blocker)


@pytest.mark.django_db
@pytest.mark.embedded
def test_task_published_in_each_tenant_runs_in_that_tenants_schema(world, worker_queue):
    with schema_context(world.alpha.schema_name):
        from_alpha = tenant_heartbeat.apply_async(queue=worker_queue)
    with schema_context(world.beta.schema_name):
        from_beta = tenant_heartbeat.apply_async(queue=worker_queue)
    with schema_context("public"):
        from_public = tenant_heartbeat.apply_async(queue=worker_queue)

    alpha_result = from_alpha.get(timeout=90)
    beta_result = from_beta.get(timeout=90)
    public_result = from_public.get(timeout=90)
    # current_schema() is what PostgreSQL itself resolves unqualified names against.
    assert alpha_result == {"schema": "t_alpha", "connection_schema": "t_alpha", "tenant": "alpha"}
    assert beta_result == {"schema": "t_beta", "connection_schema": "t_beta", "tenant": "beta"}
    assert public_result["schema"] == "public" and public_result["tenant"] in (None, "")


@pytest.mark.django_db
def test_beat_fans_a_periodic_task_out_to_every_live_tenant(world, worker_queue, tmp_path):
    from celery.beat import ScheduleEntry

    from config.beat import SuifangBeatScheduler

    for schema in ("t_alpha", "t_beta"):
        cache.delete(f"tenant-heartbeat:{schema}")
    scheduler = SuifangBeatScheduler(app=celery_app, schedule_filename=str(tmp_path / "beat"), lazy=True)
    entry = ScheduleEntry(
        name="tenant-heartbeat@__all_tenants_only__", task="tenants.tasks.tenant_heartbeat",
        schedule=300.0, options={"queue": worker_queue, "headers": {"_all_tenants_only": True}},
        app=celery_app,
    )
    scheduler.apply_entry(entry)

    import time

    deadline = time.monotonic() + 90
    seen: dict[str, dict] = {}
    while time.monotonic() < deadline and len(seen) < 2:
        for schema in ("t_alpha", "t_beta"):
            value = cache.get(f"tenant-heartbeat:{schema}")
            if value:
                seen[schema] = value
        time.sleep(0.2)
    assert seen["t_alpha"]["schema"] == "t_alpha" and seen["t_alpha"]["tenant"] == "alpha"
    assert seen["t_beta"]["schema"] == "t_beta" and seen["t_beta"]["tenant"] == "beta"
