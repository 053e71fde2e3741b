"""The bulk subject import in the background.

``subjects_import_start`` (called by the API and the page) checks what can be checked
at once (role, study, size, the file is readable and has the required columns), stores
the file and queues ``subjects_import_task``, which runs ``studies.imports.subjects_import``
in the publishing tenant's schema. Progress and the final report live in the cache under a
key that names the tenant schema as well as the job, so a job id from one tenant reads
nothing in another; ``import_job_state`` also checks that the reader started the job or
administers the tenant. The uploaded file (identifying data) is deleted when the job ends.
"""

from __future__ import annotations

import uuid
from typing import Any

import structlog
from django.conf import settings
from django.core.cache import cache
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.utils import translation
from django.utils.translation import gettext as _

from config.celery import app
from config.db import tenant_connection
from config.errors import Conflict, DomainError, PermissionDenied
from studies import error_codes
from studies.imports import IMPORTING_ROLES, MAX_FILE_BYTES, file_error, is_xlsx, read_rows, subjects_import
from studies.models import Study, StudyStatus
from tenants.selectors import membership_by_id

log = structlog.get_logger(__name__)

PROGRESS_TTL = 24 * 3600
ALLOWED_SUFFIXES = (".csv", ".txt", ".xlsx", ".xlsm")


def progress_key(schema_name: str, job_id: str) -> str:
    return f"import:{schema_name}:{job_id}"


def subjects_import_start(*, study: Study, membership: Any, file_name: str, content: bytes,
                          valid_rows_only: bool = False) -> dict[str, Any]:
    """Check the file, store it, queue the import; returns the job's first state."""
    if membership is None or membership.role not in IMPORTING_ROLES:
        raise PermissionDenied("permission_denied", _("Your role does not allow enrolling subjects."))
    if study.status != StudyStatus.ACTIVE:
        raise Conflict(error_codes.STUDY_NOT_ACTIVE, _("Subjects can only be enrolled in an active study."))
    if not content:
        raise file_error("import_empty", _("The file is empty."))
    if len(content) > MAX_FILE_BYTES:
        raise file_error("import_too_large", _("A file may be at most %(max)d MB.")
                          % {"max": MAX_FILE_BYTES // (1024 * 1024)})
    lowered = (file_name or "").lower()
    if not lowered.endswith(ALLOWED_SUFFIXES) and not is_xlsx(lowered, content):
        raise file_error("import_bad_type", _("Upload a CSV or XLSX file."))
    # Reading is quick (10,000 rows in well under a second) and turns an unreadable file or
    # missing columns into an immediate field error instead of a failed job later.
    _rows, count = read_rows(lowered, content)
    suffix = ".xlsx" if is_xlsx(lowered, content) else ".csv"
    job_id = uuid.uuid4().hex
    schema = tenant_connection.schema_name
    path = default_storage.save(f"imports/{schema}/{job_id}{suffix}", ContentFile(content))
    # The report's messages are written by the worker: in the language of the person who
    # uploaded, not the worker's default.
    state = {"job": job_id, "state": "queued", "done": 0, "total": count, "study": study.pk,
             "user": membership.user_id, "valid_rows_only": valid_rows_only,
             "language": translation.get_language() or settings.LANGUAGE_CODE}
    cache.set(progress_key(schema, job_id), state, PROGRESS_TTL)
    subjects_import_task.apply_async(args=[study.pk, path, membership.pk, valid_rows_only], task_id=job_id)
    log.info("subjects.import_queued", study_id=study.pk, job=job_id, rows=count)
    return state


def import_job_state(*, membership: Any, job_id: str) -> dict[str, Any] | None:
    """The job's state, or None when there is no such job in this tenant for this member."""
    if membership is None or len(job_id) > 64:
        return None
    state: dict[str, Any] | None = cache.get(progress_key(tenant_connection.schema_name, job_id))
    if state is None:
        return None
    if state.get("user") != membership.user_id and membership.role != "tenant_admin":
        return None
    return state


@app.task(bind=True, name="studies.import_tasks.subjects_import_task")
def subjects_import_task(self: Any, study_id: int, storage_path: str, membership_id: int,
                         valid_rows_only: bool = False) -> dict[str, Any]:
    job_id = str(self.request.id)
    key = progress_key(tenant_connection.schema_name, job_id)
    base = {key_: value for key_, value in (cache.get(key) or {}).items()
            if key_ in ("job", "study", "user", "valid_rows_only", "language")}
    base.setdefault("job", job_id)
    with translation.override(base.get("language") or settings.LANGUAGE_CODE):
        return _subjects_import_run(key=key, base=base, study_id=study_id,
                                    storage_path=storage_path, membership_id=membership_id,
                                    valid_rows_only=valid_rows_only)


def _subjects_import_run(*, key: str, base: dict[str, Any], study_id: int, storage_path: str,
                         membership_id: int, valid_rows_only: bool) -> dict[str, Any]:
    result: dict[str, Any]

    def set_state(state: dict[str, Any]) -> None:
        cache.set(key, {**base, **state}, PROGRESS_TTL)

    set_state({"state": "running", "done": 0, "total": None})
    try:
        study = Study.objects.get(pk=study_id)
        membership = membership_by_id(membership_id=membership_id)
        if membership is None:
            raise DomainError("not_a_member", _("The member who started this import is no longer active."))
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
        set_state({"state": "failed", "error": {"code": "import_failed", "fields": {},
                                                "message": _("An unexpected error stopped the import.")}})
        raise
    finally:
        # The file holds identifying data; the report keeps what the user needs.
        default_storage.delete(storage_path)
    result = {"state": "done" if report.ok or report.imported else "refused", "report": report.as_dict(),
              "done": report.total_rows, "total": report.total_rows}
    set_state(result)
    return result
