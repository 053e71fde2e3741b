"""The pooled run in the background, in the public schema (it enters each tenant's schema
itself, in exports.pooling.aggregate, the only cross-tenant reader)."""

from __future__ import annotations

from typing import Any

from config.celery import app


@app.task(bind=True, name="exports.pooling.tasks.pooled_run_task", max_retries=2, default_retry_delay=60)
def pooled_run_task(self: Any, run_id: int) -> dict[str, Any]:
    from exports.pooling.aggregate import pooled_run_execute

    run = pooled_run_execute(run_id=run_id)
    return {"run": run.pk, "status": run.status}
