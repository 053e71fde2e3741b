"""Celery task of the bulk subject import: runs studies.imports.subjects_import in the
background (in the publishing tenant's schema) and keeps its progress and final report
in the cache under ``import:<task id>`` for the page or API that polls it."""

from __future__ import annotations

from typing import Any

from django.core.cache import cache
from django.core.files.storage import default_storage

from config.celery import app
from config.errors import DomainError
from studies.imports import subjects_import
from studies.models import Study
from tenants.selectors import membership_by_id

PROGRESS_TTL = 24 * 3600


def progress_key(task_id: str) -> str:
    return f"import:{task_id}"


@app.task(bind=True, name="studies.import_tasks.subjects_import_task")
def subjects_import_task(self: Any, study_id: int, storage_path: str, membership_id: int,
                         valid_rows_only: bool = False) -> dict[str, Any]:
    key = progress_key(str(self.request.id))

    def set_state(state: dict[str, Any]) -> None:
        cache.set(key, state, PROGRESS_TTL)

    set_state({"state": "running", "done": 0, "total": None})
    try:
        study = Study.objects.get(pk=study_id)
        membership = membership_by_id(membership_id=membership_id)
        if membership is None:
            raise DomainError("not_a_member", "The member who started this import is no longer active.")
        with default_storage.open(storage_path, "rb") as handle:
            content = handle.read()
        report = subjects_import(
            study=study, file_name=storage_path, content=content, membership=membership,
            valid_rows_only=valid_rows_only,
            progress=lambda done, total: set_state({"state": "running", "done": done, "total": total}),
        )
    except DomainError as exc:
        result = {"state": "failed", "error": {"code": exc.code, "message": str(exc.message), "fields": exc.fields}}
        set_state(result)
        return result
    except Exception:
        set_state({"state": "failed", "error": {"code": "import_failed", "message": "The import failed.",
                                                "fields": {}}})
        raise
    result = {"state": "done", "report": report.as_dict()}
    set_state(result)
    return result
