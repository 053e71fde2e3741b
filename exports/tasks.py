"""The export job in the background, in the tenant schema it was started in
(tenant-schemas-celery carries the schema). A failed run is retried a few times; each
retry reads the same snapshot when the data has not changed (exports.services)."""

from __future__ import annotations

from typing import Any

from config.celery import app


# reject_on_worker_lost: a run whose worker process dies (out of memory, a deploy) is
# delivered again instead of acknowledged and forgotten; exports.services bounds how often.
@app.task(bind=True, name="exports.tasks.export_run_task", max_retries=3, default_retry_delay=30,
          acks_late=True, reject_on_worker_lost=True)
def export_run_task(self: Any, job_id: int) -> dict[str, Any]:
    from exports.services import export_run, is_data_error

    try:
        job = export_run(job_id=job_id)
    except Exception as error:
        if is_data_error(error):  # recorded on the job; the same data would fail again
            return {"job": job_id, "status": "failed"}
        raise self.retry(exc=error) from error
    return {"job": job.pk, "status": job.status}
