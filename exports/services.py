"""Study exports: start a job (checked at once), run it in Celery (streaming each format
to a temporary file, then to storage), record a manifest, audit the run and every
download.

Snapshot: a run reads everything in one REPEATABLE READ transaction, and records the
audit chain's last sequence number. A retry reads the same data when that number has
not moved (so its files are byte-identical); when it has, the manifest says the data
changed between attempts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import os
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import date, timedelta
from typing import IO, Any

import structlog
from django.conf import settings
from django.core.cache import cache
from django.core.files import File
from django.db import transaction
from django.db.models import F
from django.utils import timezone, translation
from django.utils.translation import gettext as _

from config.db import tenant_connection as connection
from config.errors import Conflict, NotFound, PermissionDenied, ValidationFailed
from ecrf import audit
from ecrf.models import FormDefinition

# The writers are imported with the service: a worker loads them at start, not during its
# first export (they and what they load take about 0.15 s).
from exports import extract, sdtm, sdtm_columns, tabular, xpt  # noqa: F401 - sdtm_columns, xpt: see above
from exports.cdisc import define_xml, odm
from exports.models import ExportFile, ExportFormat, ExportJob, ExportStatus
from exports.storage import export_storage, file_digest, presigned_download_url
from sites.models import Site
from sites.selectors import site_ids_visible
from studies.models import Study

log = structlog.get_logger(__name__)

# Who may export a study's clinical data (pooled outputs have their own consortium roles).
EXPORT_ROLES = frozenset({"tenant_admin", "data_manager", "statistician"})
# The formats this version writes; the others are refused with a clear message.
AVAILABLE_FORMATS = (ExportFormat.CSV_LONG, ExportFormat.CSV_WIDE, ExportFormat.XLSX, ExportFormat.PARQUET,
                     ExportFormat.ODM, ExportFormat.SDTM)
MAX_FILTER_ITEMS = 200


def _actor(membership: Any) -> audit.AuditActor:
    return audit.AuditActor(user_id=membership.user_id, email=getattr(membership.user, "email", ""),
                            name=getattr(membership, "display_name", "") or "")


def export_start(*, membership: Any, study: Study, formats: Sequence[str], forms: Sequence[str] = (),
                 sites: Sequence[int] = (), date_from: date | None = None, date_to: date | None = None,
                 source: str = "api", queue: bool = True) -> ExportJob:
    """Check the request and queue the job. Field errors name the field; nothing is
    created when anything is wrong."""
    if membership is None or membership.role not in EXPORT_ROLES:
        raise PermissionDenied("permission_denied", _("Your role does not allow exporting study data."))
    problems: dict[str, list[str]] = {}
    wanted = list(dict.fromkeys(formats))
    if not wanted:
        problems["formats"] = [_("Choose at least one format.")]
    unknown = [f for f in wanted if f not in ExportFormat.values]
    if unknown:
        problems["formats"] = [_("Unknown format: %(value)s.") % {"value": ", ".join(map(str, unknown))}]
    elif any(f not in AVAILABLE_FORMATS for f in wanted):
        problems["formats"] = [_("Not available yet: %(value)s. Available: %(available)s.") % {
            "value": ", ".join(f for f in wanted if f not in AVAILABLE_FORMATS),
            "available": ", ".join(AVAILABLE_FORMATS)}]
    if len(forms) > MAX_FILTER_ITEMS or len(sites) > MAX_FILTER_ITEMS:
        problems["forms" if len(forms) > MAX_FILTER_ITEMS else "sites"] = [
            _("At most %(max)d.") % {"max": MAX_FILTER_ITEMS}]
    known_forms = set(FormDefinition.objects.filter(study_id=study.pk).values_list("code", flat=True))
    if set(forms) - known_forms:
        problems["forms"] = [_("Not a form of this study: %(value)s.") % {
            "value": ", ".join(sorted(set(forms) - known_forms))[:300]}]
    visible = site_ids_visible(membership=membership)
    if visible is not None and (not sites or set(sites) - visible):
        # A member assigned to sites exports those sites only, and must say which.
        problems["sites"] = [_("Choose among your own sites.")]
    elif sites and "sites" not in problems:
        # An id that names no site here would give an export that is "done" and empty.
        unknown_sites = set(sites) - set(Site.objects.filter(pk__in=set(sites)).values_list("pk", flat=True))
        if unknown_sites:
            problems["sites"] = [_("No such site: %(value)s.") % {
                "value": ", ".join(str(site) for site in sorted(unknown_sites))[:300]}]
    if date_from and date_to and date_from > date_to:
        problems["date_to"] = [_("The end date is before the start date.")]
    if problems:
        raise ValidationFailed(problems)
    job = ExportJob.objects.create(
        study=study, requested_by_id=membership.user_id, formats=wanted,
        filters={"forms": sorted(forms), "sites": sorted(sites), "date_from": date_from.isoformat() if date_from
                 else None, "date_to": date_to.isoformat() if date_to else None, "source": source,
                 # The worker words a data problem in the requester's language (the page shows it).
                 "language": translation.get_language() or settings.LANGUAGE_CODE})
    if queue:
        _queue_after_commit(job.pk)
    log.info("export.queued", job=job.pk, study=study.pk, formats=wanted)
    return job


QUEUE_UNAVAILABLE_ERROR = "QueueUnavailable"


def _queue_after_commit(job_pk: int) -> None:
    """Publish the job's task once the job is committed. When the broker cannot take it,
    the job is failed (so its page offers Retry, and nothing waits for a task that was
    never sent) and QueueUnavailable (a 503 saying to try again) goes up to the caller."""
    from config.celery import QueueUnavailable, enqueue
    from exports.tasks import export_run_task

    def publish() -> None:
        try:
            enqueue(export_run_task, job_pk)
        except QueueUnavailable:
            ExportJob.objects.filter(pk=job_pk, status=ExportStatus.QUEUED).update(
                status=ExportStatus.FAILED, error=QUEUE_UNAVAILABLE_ERROR, error_is_data=False)
            log.error("export.queue_unavailable", job=job_pk)
            raise

    transaction.on_commit(publish)


def export_retry(*, membership: Any, job: ExportJob) -> bool:
    """Queue a failed job again (the update is conditional: a double click queues one run).
    False when the job is not failed."""
    if membership is None or membership.role not in EXPORT_ROLES:
        raise PermissionDenied("permission_denied", _("Your role does not allow exporting study data."))
    requeued = ExportJob.objects.filter(pk=job.pk, status=ExportStatus.FAILED).update(
        status=ExportStatus.QUEUED, error="", lost_runs=0)
    if requeued:
        _queue_after_commit(job.pk)
        log.info("export.requeued", job=job.pk)
    return bool(requeued)


def _scope(job: ExportJob) -> extract.ExportScope:
    filters = job.filters or {}
    return extract.ExportScope(
        study_id=job.study_id, forms=tuple(filters.get("forms") or ()), sites=tuple(filters.get("sites") or ()),
        date_from=date.fromisoformat(filters["date_from"]) if filters.get("date_from") else None,
        date_to=date.fromisoformat(filters["date_to"]) if filters.get("date_to") else None)


# Audit rows that record reading, not changing, data: they do not move the snapshot.
_READ_ACTIONS = ["export_run", "export_download"]


def _audit_head() -> int:
    """The sequence number of the last audited change of data (exports excluded)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT seq FROM ecrf_auditevent WHERE action <> ALL(%s) ORDER BY seq DESC LIMIT 1",
                       [_READ_ACTIONS])
        row = cursor.fetchone()
    return int(row[0]) if row else 0


class _Hashing:
    """A file object wrapper that hashes and counts what is written through it."""

    def __init__(self, target: IO[bytes]) -> None:
        self.target, self.digest, self.size = target, hashlib.sha256(), 0

    def write(self, data: bytes | str) -> int:
        chunk = data.encode() if isinstance(data, str) else data
        self.digest.update(chunk)
        self.size += len(chunk)
        return self.target.write(chunk)

    def flush(self) -> None:  # zipfile writes to streams it cannot seek (data descriptors)
        self.target.flush()


# Formats whose writer hands PostgreSQL's COPY straight to the file: psycopg2 calls
# write() once per row, and a Python wrapper there cost more (about 0.3 s per million
# rows) than reading the finished file back to hash it (the page cache still holds it).
_HASHED_AFTER = frozenset({ExportFormat.CSV_LONG})


Writer = Callable[[extract.ExportScope, IO[bytes]], int]  # returns the rows written
WRITERS: dict[str, tuple[str, Writer]] = {
    ExportFormat.CSV_LONG: ("long.csv", extract.long_csv_copy),
    ExportFormat.CSV_WIDE: ("wide.zip", tabular.csv_wide),  # one CSV per form; rows = entries
    ExportFormat.XLSX: ("long.xlsx", tabular.xlsx_long),
    ExportFormat.PARQUET: ("long.parquet", tabular.parquet_long),
}
# Writers that also need the job (the snapshot time and file identity go into the files).
JOB_WRITERS: dict[str, str] = {ExportFormat.ODM: "odm.xml", ExportFormat.SDTM: "sdtm.zip"}


def _odm_writer(job: ExportJob) -> Writer:
    def write(scope: extract.ExportScope, out: IO[bytes]) -> int:
        assert job.snapshot_at is not None
        data = extract.study_data(scope, snapshot_at=job.snapshot_at)
        counts = odm.odm_write(out, data, file_oid=f"EXP.{job.study.code}.{job.pk}",  # type: ignore[arg-type]
                           description=job.study.title)
        return counts.items

    return write


def _sdtm_writer(job: ExportJob) -> Writer:
    """Every SDTM domain as SAS XPORT v5, then define.xml (Define-XML 2.1), in one ZIP
    whose entries carry fixed dates, so the same data gives the same bytes. Each XPT goes
    into the ZIP as it is written, deflated on a thread of its own (_ZipEntryBeside)."""

    def write(scope: extract.ExportScope, out: IO[bytes]) -> int:
        import zipfile

        assert job.snapshot_at is not None
        data = extract.study_data(scope, snapshot_at=job.snapshot_at)
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            specs = sdtm.sdtm_write_to(data, studyid=job.study.code,
                                       opener=lambda name: _ZipEntryBeside(archive, _zip_info(name)))
            with archive.open(_zip_info("define.xml"), "w") as define:
                define_xml.define_write(define, data.study, specs,  # type: ignore[arg-type]
                                        file_oid=f"DEF.{job.study.code}.{job.pk}", created=job.snapshot_at)
        return sum(spec.rows for spec in specs)

    return write


def _zip_info(name: str) -> Any:
    import zipfile

    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    # Level 1: a third of level 6's CPU on the XPTs (their fixed-width rows still shrink
    # about 5 times). ZipFile.open() takes the level only from the ZipInfo, whose
    # attribute for it is private until Python 3.13.
    info._compresslevel = 1  # type: ignore[attr-defined]
    return info


class _ZipEntryBeside:
    """A ZIP entry written on a thread: write() hands the bytes over and returns; the
    thread deflates them into the entry (zlib releases the GIL), so the caller makes the
    next bytes on the other core meanwhile. A few blocks wait at most (memory)."""

    def __init__(self, archive: Any, info: Any) -> None:
        import queue

        self._blocks: queue.Queue[bytes | None] = queue.Queue(maxsize=4)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._deflate, args=(archive, info), name="export-zip")
        self._thread.start()

    def _deflate(self, archive: Any, info: Any) -> None:
        handed_over = False
        try:
            with archive.open(info, "w", force_zip64=True) as target:  # an XPT may pass 2 GiB
                while (block := self._blocks.get()) is not None:
                    target.write(block)
                handed_over = True
        except BaseException as error:  # raised to the writer
            self._error = error
            while not handed_over and self._blocks.get() is not None:  # let the writer finish handing over
                pass

    def write(self, data: bytes) -> int:
        if self._error is not None:
            raise self._error
        self._blocks.put(bytes(data))
        return len(data)

    def flush(self) -> None:
        if self._error is not None:
            raise self._error

    def __enter__(self) -> _ZipEntryBeside:
        return self

    def __exit__(self, *exc: object) -> None:
        self._blocks.put(None)
        self._thread.join()
        if self._error is not None and exc[0] is None:
            raise self._error


PROGRESS_TTL = 24 * 3600


def progress_key(schema: str, job_id: int) -> str:
    return f"export:{schema}:{job_id}"


def _progress(schema: str, job: ExportJob) -> None:
    """Progress goes through the cache: the run's own transaction is read-only."""
    cache.set(progress_key(schema, job.pk), {"done": job.rows_done, "total": job.rows_total}, PROGRESS_TTL)


@contextlib.contextmanager
def _run_lock(schema: str, job_id: int) -> Iterator[bool]:
    """One run of a job at a time, across workers (a manual retry and Celery's own retry
    could otherwise overlap): a session-level advisory lock named by schema and job, since
    job ids repeat across tenants. Yields whether this run holds it."""
    key = f"suifang:export:{schema}:{job_id}"
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(('x' || substr(md5(%s), 1, 16))::bit(64)::bigint)", [key])
        acquired = bool(cursor.fetchone()[0])
    try:
        yield acquired
    finally:
        if acquired:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(('x' || substr(md5(%s), 1, 16))::bit(64)::bigint)", [key])


def export_run(*, job_id: int) -> ExportJob:
    """Run (or retry) a job in the current tenant schema; a job already running elsewhere
    is left to that run."""
    job = ExportJob.objects.select_related("study", "requested_by").filter(pk=job_id).first()
    if job is None:
        raise NotFound("not_found", _("No such export."))
    if job.status == ExportStatus.DONE:
        return job
    with _run_lock(connection.schema_name, job.pk) as acquired:
        if not acquired:
            log.info("export.already_running", job=job.pk)
            return job
        job.refresh_from_db()
        if job.status == ExportStatus.DONE:  # finished while this one waited for the lock
            return job
        if job.status == ExportStatus.RUNNING:
            # "Running" with nobody holding the lock: the last run died with its worker
            # (this is the redelivered task, tasks.export_run_task). Counted as lost.
            _mark_lost(job)
        if job.error == LOST_RUN_ERROR and job.lost_runs >= MAX_LOST_RUNS:
            # A job that keeps ending its worker (out of memory, say) stops here instead
            # of looping through redeliveries; its page offers Retry (which starts afresh).
            log.warning("export.lost_too_often", job=job.pk, lost_runs=job.lost_runs)
            return job
        return _export_run(job)


# Runs of one job that may end with their worker process before its redelivered task
# stops trying (a user's Retry resets the count).
MAX_LOST_RUNS = 3
LOST_RUN_ERROR = "WorkerLost"
# Not judged in its first seconds (a job marked running by hand, or by a run that has
# just begun, is left alone).
LOST_RUN_GRACE = timedelta(seconds=30)


def _mark_lost(job: ExportJob) -> None:
    if ExportJob.objects.filter(pk=job.pk, status=ExportStatus.RUNNING).update(
            status=ExportStatus.FAILED, error=LOST_RUN_ERROR, error_is_data=False, lost_runs=F("lost_runs") + 1):
        log.warning("export.worker_lost", job=job.pk, attempts=job.attempts)
    job.refresh_from_db()


def job_lost_check(job: ExportJob) -> ExportJob:
    """A job shown as running whose run lock nobody holds lost its worker (a run holds
    the lock from before it marks the job running until it marks it done or failed):
    it is failed, so its page stops waiting and offers Retry. A redelivered task may
    still pick it up; it then runs as a retry would."""
    if job.status == ExportStatus.RUNNING and job.started_at is not None and \
            job.started_at < timezone.now() - LOST_RUN_GRACE:
        with _run_lock(connection.schema_name, job.pk) as acquired:
            if acquired:
                _mark_lost(job)
    return job


def _export_run(job: ExportJob) -> ExportJob:
    with translation.override((job.filters or {}).get("language") or settings.LANGUAGE_CODE):
        return _export_run_as_asked(job)


def _export_run_as_asked(job: ExportJob) -> ExportJob:
    job.attempts += 1
    job.status, job.started_at, job.error = ExportStatus.RUNNING, timezone.now(), ""
    job.save(update_fields=["attempts", "status", "started_at", "error"])
    # A retry starts from nothing, not from the failed attempt's last figure (still cached).
    job.rows_done = job.rows_total = 0
    _progress(connection.schema_name, job)
    scope = _scope(job)
    schema = connection.schema_name
    outermost = not connection.in_atomic_block
    try:
        with transaction.atomic():
            if outermost:  # one snapshot for every file and count of the run
                extract.read_snapshot()
            head = _audit_head()
            first_attempt = job.snapshot_seq is None
            changed_since = not first_attempt and head != job.snapshot_seq
            if first_attempt or changed_since:
                job.snapshot_seq, job.snapshot_at = head, timezone.now()
            if outermost:  # other connections of the run may read the same snapshot
                scope = dataclasses.replace(scope, snapshot=_snapshot_export())
            # The manifest's counts: added up by the Parquet writer when the run writes
            # Parquet; otherwise a query, on a second connection in this run's snapshot (on
            # the other core) while this one writes the files.
            parquet_counts: dict[tuple[str, str], int] | None = \
                {} if ExportFormat.PARQUET in job.formats else None
            pending = extract.in_snapshot_beside(scope, lambda: _counts(scope)) \
                if outermost and parquet_counts is None else None
            counts = _counts(scope) if parquet_counts is None and pending is None else None
            files = []
            for fmt in job.formats:
                if fmt in JOB_WRITERS:
                    suffix = JOB_WRITERS[fmt]
                    writer = _odm_writer(job) if fmt == ExportFormat.ODM else _sdtm_writer(job)
                elif fmt == ExportFormat.PARQUET:
                    suffix, writer = WRITERS[fmt][0], functools.partial(tabular.parquet_long, counts=parquet_counts)
                else:
                    suffix, writer = WRITERS[fmt]
                name = f"{job.study.code}_{suffix}"
                file = _write_file(job, schema, name, fmt, writer, scope)
                files.append(file)
                if counts is None and fmt == ExportFormat.PARQUET:
                    counts = tabular.manifest_counts(parquet_counts or {})
                elif counts is None and pending is not None:
                    counts = pending.result()
                # Until the counts are known (Parquet comes later), this file's rows stand
                # for every file's.
                per_file = sum(row["values"] for row in counts) if counts is not None else file.rows
                job.rows_total = per_file * len(job.formats)
                job.rows_done += per_file
                _progress(schema, job)
            assert counts is not None
            job.rows_total = job.rows_done = sum(row["values"] for row in counts) * len(job.formats)
        manifest = {
            "job": job.pk, "study": job.study.code, "formats": job.formats, "filters": job.filters,
            "snapshot": {"audit_seq": job.snapshot_seq, "at": job.snapshot_at.isoformat() if job.snapshot_at else None,
                         "changed_since_first_attempt": changed_since},
            "form_versions": extract.published_versions(scope),
            "rows_by_form_and_site": counts,
            "files": [{"name": f.name, "format": f.format, "bytes": f.size, "sha256": f.sha256, "rows": f.rows}
                      for f in files],
        }
        with transaction.atomic():
            ExportFile.objects.filter(job=job).delete()
            ExportFile.objects.bulk_create(files)
            job.manifest, job.status, job.finished_at = manifest, ExportStatus.DONE, timezone.now()
            job.save(update_fields=["manifest", "status", "finished_at", "snapshot_seq", "snapshot_at", "rows_done",
                                    "rows_total"])
            audit.audit_record(action="export_run", source=(job.filters or {}).get("source", "api"),
                               actor=audit.AuditActor(user_id=job.requested_by_id, email=job.requested_by.email),
                               detail={"export": job.pk, "formats": job.formats,
                                       "files": [f.name for f in files], "snapshot_seq": job.snapshot_seq})
    except Exception as error:  # recorded on the job (the worker retries)
        job.status = ExportStatus.FAILED
        job.error, job.error_is_data = _failure(error)
        job.save(update_fields=["status", "error", "error_is_data"])
        if job.error_is_data:  # the data cannot be written in that format: nothing to debug
            log.warning("export.data_error", job=job.pk, kind=type(error).__name__)
        else:
            log.exception("export.failed", job=job.pk)
        raise
    log.info("export.done", job=job.pk, files=len(files))
    return job


def is_data_error(error: BaseException) -> bool:
    """The data cannot be written in the format as it is (a writer's own error, naming
    the dataset, variable and row): the people who run the export fix the data."""
    return isinstance(error, tabular.ExportDataError | sdtm.SdtmError | xpt.XptError | odm.CdiscInputError)


def _failure(error: Exception) -> tuple[str, bool]:
    """(message for the job, is a data problem). Anything but a data error is recorded by
    kind only: its message may hold anything (the details are in the logs)."""
    if is_data_error(error):
        return str(error)[:2000], True
    return type(error).__name__, False


def _snapshot_export() -> str:
    """This transaction's snapshot, for other connections of the run to import."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_export_snapshot()")
        return str(cursor.fetchone()[0])


def _counts(scope: extract.ExportScope) -> list[dict[str, Any]]:
    """Item values per form and site (the manifest's row counts), from the same query."""
    with connection.cursor() as cursor:
        raw = cursor.cursor
        cursor.execute(extract.count_query(scope).as_string(raw))
        return [{"form": form, "site": site, "values": int(n)} for form, site, n in cursor.fetchall()]


def _write_file(job: ExportJob, schema: str, name: str, fmt: str, writer: Writer,
                scope: extract.ExportScope) -> ExportFile:
    """Stream the format into a temporary file, then into storage under a key that names
    the tenant schema and the job (never guessable from another tenant)."""
    handle, path = tempfile.mkstemp(prefix="suifang-export-", suffix="-" + name)
    try:
        with os.fdopen(handle, "wb", buffering=1 << 20) as raw, \
                _file_progress(schema, job, name, handle):  # COPY writes row by row
            if fmt in _HASHED_AFTER:
                rows = writer(scope, raw)
            else:
                hashing = _Hashing(raw)
                rows = writer(scope, hashing)  # type: ignore[arg-type]
                size, sha256 = hashing.size, hashing.digest.hexdigest()
        if fmt in _HASHED_AFTER:
            with open(path, "rb") as written:
                size, sha256 = file_digest(written)
        key = f"exports/{schema}/{job.pk}/{name}"
        storage = export_storage()
        if storage.exists(key):
            storage.delete(key)  # a retry replaces the earlier attempt's file
        with open(path, "rb") as stored:
            saved = storage.save(key, _FinishedFile(stored, name=name, path=path))
        return ExportFile(job=job, name=name, format=fmt, storage_name=saved, size=size, sha256=sha256,
                          rows=rows)
    finally:
        with contextlib.suppress(FileNotFoundError):  # moved into place by a local storage
            os.unlink(path)


# How often a file being written reports its size to the job's page.
FILE_PROGRESS_EVERY = 1.0


@contextlib.contextmanager
def _file_progress(schema: str, job: ExportJob, name: str, fileno: int) -> Iterator[None]:
    """While a file is written, a thread reports how large it has grown, every second,
    next to the rows of the files already done: a single large file otherwise shows no
    sign of life until it is finished. It reads the file's size from the operating
    system (no wrapper on the writer: COPY writes row by row), so it costs nothing per
    row; the size lags by the write buffer."""
    stop = threading.Event()

    def report() -> None:
        while not stop.wait(FILE_PROGRESS_EVERY):
            try:
                written = os.fstat(fileno).st_size
                cache.set(progress_key(schema, job.pk), {"done": job.rows_done, "total": job.rows_total,
                                                         "file": name, "bytes": written}, PROGRESS_TTL)
            except Exception:  # progress is a courtesy: never the export's failure
                return

    reporter = threading.Thread(target=report, name="export-progress", daemon=True)
    reporter.start()
    try:
        yield
    finally:
        stop.set()
        reporter.join(timeout=5)  # a cache that hangs must not hold the export


class _FinishedFile(File):
    """A written temporary file: a file-system storage moves it into place (as it does
    with large uploads) instead of copying every byte again; S3 reads it."""

    def __init__(self, file: IO[bytes], *, name: str, path: str) -> None:
        super().__init__(file, name=name)
        self._path = path

    def temporary_file_path(self) -> str:
        return self._path


def export_file_open(*, membership: Any, file: ExportFile) -> IO[bytes]:
    """Open an export file for download, auditing it; only exporting roles, and only
    exports of their own tenant (the caller found the file in this schema)."""
    if membership is None or membership.role not in EXPORT_ROLES:
        raise PermissionDenied("permission_denied", _("Your role does not allow downloading exports."))
    if file.job.status != ExportStatus.DONE:
        raise Conflict("export_not_ready", _("This export is not finished."))
    try:
        handle = export_storage().open(file.storage_name, "rb")
    except FileNotFoundError as error:
        raise _file_gone() from error
    _audit_download(membership, file)
    return handle


def _file_gone() -> Conflict:
    # Lost from storage after the run (a bucket lifecycle rule, a restore from backup):
    # the export's record is still right, its bytes are not there to serve.
    return Conflict("export_file_missing", _("This file is no longer stored. Run the export again."))


def export_file_check_stored(*, file: ExportFile) -> None:
    """409 when the file's bytes are gone from storage, before a link is handed out for it
    (once per link, not per download). A store that cannot answer (S3 refusing the check,
    say) does not block the link: the download then meets the store's own answer."""
    try:
        stored = export_storage().exists(file.storage_name)
    except Exception:  # botocore's ClientError and kin: the check is a courtesy
        log.warning("export.file_check_failed", export=file.job_id, file=file.pk)
        return
    if not stored:
        raise _file_gone()


def _audit_download(membership: Any, file: ExportFile) -> None:
    with transaction.atomic():
        audit.audit_record(action="export_download", source="api", actor=_actor(membership),
                           detail={"export": file.job_id, "file": file.name, "sha256": file.sha256})


def export_file_download_url(*, membership: Any, file: ExportFile) -> str | None:
    """A presigned object-store URL (60 s: it works for whoever holds it, so it lives only
    as long as the redirect needs) after the same checks and audit as a download; None
    when exports are on local storage (then the API streams the file itself)."""
    if membership is None or membership.role not in EXPORT_ROLES:
        raise PermissionDenied("permission_denied", _("Your role does not allow downloading exports."))
    if file.job.status != ExportStatus.DONE:
        raise Conflict("export_not_ready", _("This export is not finished."))
    url = presigned_download_url(export_storage(), file.storage_name, filename=file.name, expires=60)
    if url is not None:
        _audit_download(membership, file)
    return url


def job_state(job: ExportJob) -> dict[str, Any]:
    job = job_lost_check(job)
    done, total = job.rows_done, job.rows_total
    writing: dict[str, Any] | None = None
    if job.status == ExportStatus.RUNNING:
        live = cache.get(progress_key(connection.schema_name, job.pk)) or {}
        done, total = int(live.get("done") or 0), int(live.get("total") or 0)
        if live.get("file"):  # a file being written: its name and size so far
            writing = {"file": str(live["file"]), "bytes": int(live.get("bytes") or 0)}
    return {"id": job.pk, "study": job.study_id, "status": job.status, "rows_done": done, "rows_total": total,
            "writing": writing,
            "progress": min(1.0, round(done / total, 4)) if total
            else (1.0 if job.status == ExportStatus.DONE else 0.0),
            "attempts": job.attempts, "formats": job.formats, "filters": job.filters,
            "created": job.created, "finished_at": job.finished_at, "error": job.error,
            "error_is_data": job.error_is_data,
            "snapshot_at": job.snapshot_at, "manifest": job.manifest if job.status == ExportStatus.DONE else None,
            "files": [{"id": f.pk, "name": f.name, "format": f.format, "bytes": f.size, "sha256": f.sha256,
                       "rows": f.rows} for f in job.files.all()] if job.status == ExportStatus.DONE else []}
