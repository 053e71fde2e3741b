"""The pooled run in the background, as a Celery chord over tenants. Every task runs in
the public schema; only exports.pooling.aggregate (the only cross-tenant reader) enters
each tenant's schema, inside the per-tenant task.

    pooled_run_task(run)                          marks the run running, lists the tenants
      -> chord([pooled_part_task(run, agreement) for each tenant])   in parallel, any worker
         (pooled_combine_task(parts, run))         k-anonymity, pooled files, manifest

The tasks pass storage keys and small JSON results only (workers may be on different
machines). A part that fails returns its error instead of raising, so the combine step
always runs and marks the run failed naming the tenant; a part whose process dies fails
the chord, whose error callback marks the run failed: a run never stays "running".
"""

from __future__ import annotations

from typing import Any

from celery import chord

from config.celery import app

# At module level on purpose: the worker imports task modules before it forks its pool
# processes, so they start with pandas and the de-identification code already loaded.
from exports.pooling import aggregate


@app.task(name="exports.pooling.tasks.pooled_run_task")
def pooled_run_task(run_id: int) -> dict[str, Any]:
    agreement_ids = aggregate.pooled_run_prepare(run_id=run_id)
    if agreement_ids is None:  # already started: a redelivered message
        return {"run": run_id, "started": False}
    try:
        body = pooled_combine_task.s(run_id)
        # A part that never returns (its process killed, e.g. out of memory) fails the
        # chord instead: Celery then calls the body's error callbacks.
        body.link_error(pooled_run_lost_task.s(run_id))
        if agreement_ids:
            chord([pooled_part_task.s(run_id, agreement_id) for agreement_id in agreement_ids])(body)
        else:
            body.delay([])
    except Exception as error:
        aggregate.pooled_run_fail(run_id=run_id, message=f"could not queue the run ({type(error).__name__})")
        raise
    return {"run": run_id, "started": True, "tenants": len(agreement_ids)}


@app.task(name="exports.pooling.tasks.pooled_part_task")
def pooled_part_task(run_id: int, agreement_id: int) -> dict[str, Any]:
    return aggregate.tenant_part_extract(run_id=run_id, agreement_id=agreement_id)


@app.task(name="exports.pooling.tasks.pooled_combine_task")
def pooled_combine_task(parts: list[dict[str, Any]], run_id: int) -> dict[str, Any]:
    run = aggregate.pooled_run_combine(run_id=run_id, parts=parts)
    return {"run": run.pk, "status": run.status}


@app.task(name="exports.pooling.tasks.pooled_run_lost_task")
def pooled_run_lost_task(task_id: str, run_id: int) -> None:
    """The chord's error callback (Celery passes the failed task's id first)."""
    aggregate.pooled_run_fail(run_id=run_id, message="a tenant's part did not finish (its worker process stopped)")
