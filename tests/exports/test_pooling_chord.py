"""The pooled run as a Celery chord on a real worker process (prefork, two processes): a
part per tenant in parallel, then the combine step; the output is byte for byte what the
synchronous run writes; a tenant whose part fails fails the run naming the tenant and
never quoting a value; a part whose process is killed fails the run too (through the
chord's error callback): a run never stays "running".

The worker is another process, so it must see the data: three tenants are created and
seeded through the real services and committed (in a module fixture, outside the tests'
transactions), then dropped with their schemas at the end; what a test changes for the
worker to see is committed on a connection of its own (`run_committed`). The worker talks to a
redis-server of its own (the suite flushes its Redis db between tests) and writes to a
media folder this module shares with it (workers share storage, never temp paths)."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.core.files.storage import default_storage
from django.db import connection
from django.test import override_settings

from exports.pooling.aggregate import pooled_run_execute
from exports.pooling.models import Consortium, DataSharingAgreement, PooledRun
from tests.browser.server_env import committed as run_committed
from tests.conftest import PASSWORD
from tests.exports.test_pooling import FIELDS, _identity
from tests.notifications.test_reminder_guarantees import PrivateRedis, _wait_for
from tests.test_celery_worker import database_url

# Sets the test database up and opens each test's transaction; what the worker must see
# is committed elsewhere (the module fixture, `run_committed`).
pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]
APP_NAME = "pooling-chord"  # PostgreSQL application_name of the worker's processes
# Unique per session: the tenants' admin users outlive their tenants (deleting a user
# walks relations into tenant schemas), so a name is never reused.
SLUGS = tuple(f"chord-{letter}-{uuid.uuid4().hex[:6]}" for letter in "abc")
CONSORTIUM = "chordpool"
TASK = "exports.pooling.tasks.pooled_run_task"


# --- committed tenants -------------------------------------------------------------------------

@dataclass
class Committed:
    consortium: Consortium
    admin: Any
    storages: dict[str, Any]
    media: Path
    seeded: dict[str, list[dict[str, str]]]


def _seed_tenant(tenant: Any, admin: Any, subjects: int) -> list[dict[str, str]]:
    """In the tenant's schema: an active site, the CRF study collecting VITALS at D7, and
    `subjects` enrolled subjects with identifying data, each with one D7 entry."""
    from ecrf import services as ecrf_services
    from ecrf.samples import VITALS
    from studies import services as study_services
    from tests.ecrf.test_entries import GOOD
    from tests.studies.test_enrolment import event
    from tests.studies.test_studies_api import _active_site

    connection.set_tenant(tenant)
    try:
        site = _active_site("S1")
        study = study_services.study_create(code="CRF", title="Pooled", study_type="registry", target_enrolment=50)
        study_services.schedule_publish(version=study_services.schedule_draft_save(
            study=study, events=[{**event("D7", 7), "forms": ["VITALS"]}]))
        study = study_services.study_activate(study=study)
        actor = ecrf_services.Actor(user_id=admin.pk, label=admin.email, role="data_manager")
        version = ecrf_services.form_draft_save(study=study, definition=VITALS, actor=actor)
        version = ecrf_services.form_publish(version=version, actor=actor)
        identities = []
        for n in range(subjects):
            identity = _identity(tenant.slug, n)
            subject = study_services.subject_enrol(study=study, site=site, consent_date=study_services.site_today(site),
                                                   **identity)
            task = subject.tasks.get(event_code="D7")
            values = {**GOOD, "notes": f"Called {identity['name']} on {identity['phone']}"}
            ecrf_services.entry_save(subject=subject, task=task, form=version.form, values=values, base_version=0,
                                     actor=actor)
            identities.append(identity)
        return identities
    finally:
        connection.set_schema_to_public()


def _remove_committed() -> None:
    from tenants.models import Tenant

    connection.set_schema_to_public()
    for consortium in Consortium.objects.filter(slug=CONSORTIUM):
        PooledRun.objects.filter(consortium=consortium).delete()
        DataSharingAgreement.objects.filter(consortium=consortium).delete()
        consortium.delete()
    for tenant in Tenant.objects.filter(slug__startswith="chord-"):
        tenant.delete(force_drop=True)  # its schema, domain and memberships too


@pytest.fixture(scope="module")
def committed(django_db_setup, django_db_blocker, tmp_path_factory) -> Iterator[Committed]:  # type: ignore[no-untyped-def]
    from django.conf import settings

    from tenants import services as tenant_services
    from tenants.models import User

    media = tmp_path_factory.mktemp("pool-media")
    storages = {**settings.STORAGES, "default": {"BACKEND": "django.core.files.storage.FileSystemStorage",
                                                 "OPTIONS": {"location": str(media)}}}
    with override_settings(STORAGES=storages), django_db_blocker.unblock():
        _remove_committed()  # leftovers of an interrupted earlier run
        try:
            seeded, tenants, admin = {}, [], None
            for index, slug in enumerate(SLUGS):
                tenant = tenant_services.tenant_create(name=f"Chord {slug}", slug=slug, kind="hospital",
                                                       admin_email=f"admin@{slug}.example.org",
                                                       admin_password=PASSWORD)
                user = User.objects.get(email=f"admin@{slug}.example.org")
                admin = admin or user
                seeded[slug] = _seed_tenant(tenant, user, subjects=5 + index)  # sizes differ: 5, 6, 7
                tenants.append(tenant)
            consortium = Consortium.objects.create(
                slug=CONSORTIUM, name="Chord registry", coordinating_organisation="CDC",
                common_data_elements=[{
                    "form": "VITALS", "items": ["visit_date", "sex", "weight", "height", "notes", "meds"],
                    "safe_text": [], "harmonise": {"weight": {"unit": "kg"}, "sex": {"codes": {"1": "M", "2": "F"}}}}],
                quasi_identifiers=["age"], k=3)
            for tenant in tenants:
                DataSharingAgreement.objects.create(consortium=consortium, tenant=tenant, study_code="CRF",
                                                    fields=FIELDS, accepted_by=admin)
            yield Committed(consortium=consortium, admin=admin, storages=storages, media=media, seeded=seeded)
        finally:
            _remove_committed()


# --- the worker ----------------------------------------------------------------------------------

@dataclass
class Worker:
    queue: str
    hostname: str
    client: Any
    log: Path
    pid: int

    def pool_processes(self) -> list[int]:
        """The prefork pool's processes (the worker's children), from /proc."""
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as stat:
                        if int(stat.read().rsplit(")", 1)[1].split()[1]) == self.pid:
                            found.append(int(entry))
                except (OSError, IndexError, ValueError):
                    continue
        return found

    def output(self) -> str:
        return "worker log (tail):\n" + self.log.read_text(errors="replace")[-4000:]

    def start_run(self, run_id: int) -> None:
        self.client.send_task(TASK, args=[run_id], queue=self.queue)


def _our_sessions() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                       "AND application_name = %s", [APP_NAME])
        return int(cursor.fetchone()[0])


@pytest.fixture(scope="module")
def worker(committed, django_db_blocker, tmp_path_factory) -> Iterator[Worker]:  # type: ignore[no-untyped-def]
    """`celery worker --concurrency 2` (prefork: two processes take the tenants' parts at
    once) on the test database, a private Redis and the module's media folder."""
    from tenant_schemas_celery.app import CeleryApp

    folder = tmp_path_factory.mktemp("pool-worker")
    broker = PrivateRedis(folder / "redis")
    broker.start()
    queue = f"test-pool-{uuid.uuid4().hex[:10]}"
    hostname = f"{queue}@localhost"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.test",
           "DATABASE_URL": database_url(connection.settings_dict), "REDIS_URL": broker.url,
           "CELERY_BROKER_URL": broker.url, "CELERY_RESULT_BACKEND": broker.url, "CELERY_TASK_DEFAULT_QUEUE": queue,
           "MEDIA_ROOT": str(committed.media), "PGAPPNAME": APP_NAME}
    log = folder / "worker.log"
    with log.open("wb") as out:  # a file, not a pipe: a chatty worker must not block
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "config", "worker", "--concurrency", "2", "-Q", queue,
             "-n", hostname, "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "WARNING"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    client = CeleryApp("pooling-chord", broker=broker.url, backend=broker.url, set_as_current=False)
    handle = Worker(queue=queue, hostname=hostname, client=client, log=log, pid=proc.pid)

    def answers() -> bool:
        try:
            return len(client.control.ping(destination=[hostname], timeout=0.5) or []) > 0
        except Exception:  # the broker connection is still coming up
            return False

    try:
        _wait_for(answers, timeout=90, what="the worker to start", details=handle.output)
        yield handle
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        with django_db_blocker.unblock():
            _wait_for(lambda: _our_sessions() == 0, timeout=30, what="the worker's database sessions to end")
        broker.stop()


# --- the tests -----------------------------------------------------------------------------------

def _run_on_worker(worker: Worker, committed: Committed, *, meanwhile: Any = None) -> PooledRun:
    run = run_committed(lambda: PooledRun.objects.create(consortium=committed.consortium, requested_by=committed.admin))
    worker.start_run(run.pk)
    if meanwhile is not None:
        meanwhile()

    def ended() -> bool:
        return PooledRun.objects.get(pk=run.pk).status in ("done", "failed")

    _wait_for(ended, timeout=180, what=f"pooled run {run.pk} to end", details=worker.output)
    return PooledRun.objects.get(pk=run.pk)


def _files(run: PooledRun) -> dict[str, bytes]:
    found = {}
    for described in run.manifest["files"]:
        with default_storage.open(described["storage"], "rb") as handle:
            found[described["name"]] = handle.read()
    return found


def _parts_left(committed: Committed, run: PooledRun) -> list[str]:
    folder = committed.media / "pooling" / CONSORTIUM / str(run.pk) / "parts"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_the_chord_on_a_real_worker_writes_what_the_in_process_run_writes(committed, worker, settings):
    settings.STORAGES = committed.storages
    remote = _run_on_worker(worker, committed)
    local = PooledRun.objects.create(consortium=committed.consortium, requested_by=committed.admin)
    local = pooled_run_execute(run_id=local.pk)
    assert remote.status == "done", remote.error + "\n" + worker.output()
    assert local.status == "done", local.error
    remote_files, local_files = _files(remote), _files(local)
    assert remote_files == local_files and set(remote_files) == {"pooled_long.csv", "pooled_long.parquet",
                                                                 "pooled_subjects.csv"}
    assert [(f["sha256"], f["rows"], f["bytes"]) for f in remote.manifest["files"]] == [
        (f["sha256"], f["rows"], f["bytes"]) for f in local.manifest["files"]]
    assert remote.manifest["tenants"] == local.manifest["tenants"]
    assert remote.manifest["deidentification"] == local.manifest["deidentification"]
    assert [t["tenant"] for t in remote.manifest["tenants"]] == list(SLUGS)
    assert [t["subjects"] for t in remote.manifest["tenants"]] == [5, 6, 7]
    assert all(t["rows_released"] > 0 and t["values_harmonised"] == {"VITALS.sex": t["entries"]}
               for t in remote.manifest["tenants"])
    # The worker wrote its output to the shared storage and removed the parts.
    assert (committed.media / remote.manifest["files"][0]["storage"]).is_file()
    assert _parts_left(committed, remote) == [] and _parts_left(committed, local) == []
    everything = b"".join(remote_files.values())
    for identities in committed.seeded.values():
        for identity in identities:
            assert not any(value.encode() in everything for value in identity.values())


def _set_first_visit_date(slug: str, value: str | None) -> Any:
    """The tenant's first entry's visit date set behind the services' back (as a bad import
    or a manual fix might); returns the previous one."""
    from ecrf.models import Entry
    from tenants.models import Tenant

    connection.set_tenant(Tenant.objects.get(slug=slug))
    entry = Entry.objects.order_by("pk").first()
    assert entry is not None
    Entry.objects.filter(pk=entry.pk).update(values={**entry.values, "visit_date": value})
    return entry.values["visit_date"]


def test_a_tenant_part_failing_on_the_worker_fails_the_run_naming_the_tenant(committed, worker, settings):
    settings.STORAGES = committed.storages
    phi = committed.seeded[SLUGS[1]][0]["name"]
    kept = run_committed(lambda: _set_first_visit_date(SLUGS[1], f"{phi} 2026-13-45"))  # no date de-id can shift
    try:
        run = _run_on_worker(worker, committed)
    finally:
        run_committed(lambda: _set_first_visit_date(SLUGS[1], kept))
    assert run.status == "failed" and run.finished_at is not None, worker.output()
    assert SLUGS[1] in run.error and "DeidError" in run.error
    assert SLUGS[0] not in run.error and SLUGS[2] not in run.error
    assert phi not in run.error and "2026-13-45" not in run.error
    assert run.manifest == {} and _parts_left(committed, run) == []  # the other parts were removed too
    worker_log = worker.log.read_text(errors="replace")
    assert "pooling.tenant_failed" in worker_log and phi not in worker_log and "2026-13-45" not in worker_log


def test_a_part_whose_process_dies_fails_the_run_instead_of_leaving_it_running(committed, worker, settings):
    """The third tenant's part waits on a lock this test holds; the pool's processes are
    killed (as the kernel's OOM killer would), then the lock is released. The part never
    returns, so Celery fails the chord and its error callback fails the run."""
    import signal
    import threading

    from django.db import connections

    settings.STORAGES = committed.storages
    locked, release = threading.Event(), threading.Event()

    def hold_lock() -> None:
        from django.db import transaction

        from tenants.models import Tenant

        try:
            connection.set_tenant(Tenant.objects.get(slug=SLUGS[2]))
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute("LOCK TABLE ecrf_entry IN ACCESS EXCLUSIVE MODE")
                locked.set()
                release.wait(timeout=180)
        finally:
            connections.close_all()

    def waiting_on_the_lock() -> bool:
        return bool(run_committed(lambda: _sessions_waiting_on_a_lock()))

    def kill_the_pool() -> None:
        _wait_for(waiting_on_the_lock, timeout=120, what="a part to wait on the lock", details=worker.output)
        for pid in worker.pool_processes():
            os.kill(pid, signal.SIGKILL)
        release.set()

    holder = threading.Thread(target=hold_lock, name="lock-holder")
    holder.start()
    try:
        assert locked.wait(timeout=60)
        run = _run_on_worker(worker, committed, meanwhile=kill_the_pool)
    finally:
        release.set()
        holder.join(timeout=60)
    assert run.status == "failed" and "did not finish" in run.error, worker.output()
    assert run.finished_at is not None and _parts_left(committed, run) == []


def _sessions_waiting_on_a_lock() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                       "AND application_name = %s AND wait_event_type = 'Lock'", [APP_NAME])
        return int(cursor.fetchone()[0])


# --- a study export on two connections ------------------------------------------------------------

def test_a_study_export_in_two_halves_on_two_connections_writes_the_same_bytes(committed, monkeypatch):
    """An export run (outermost transaction, committed data) writes a large study's long
    CSV in two halves by entry rank, the second on another connection that imports the
    run's snapshot; the file, and the Parquet made from the same COPY, are byte for byte
    what one COPY writes, and the manifest's counts add up to the rows. The threshold is
    lowered here so that this tenant's 7 entries are "large"."""
    from exports import extract, tabular
    from exports.models import ExportFile, ExportJob
    from exports.services import export_run
    from exports.storage import export_storage
    from studies.models import Study
    from tenants.models import Tenant

    tenant = Tenant.objects.get(slug=SLUGS[2])
    copies: list[bool] = []
    real_copy = extract.copy_out

    def recording_copy(query: Any, out: Any, *, header: bool) -> int:
        copies.append(header)
        return real_copy(query, out, header=header)

    monkeypatch.setattr(extract, "copy_out", recording_copy)
    monkeypatch.setattr(extract, "PARALLEL_MIN_ENTRIES", 2)

    def export() -> dict[str, Any]:
        connection.set_tenant(tenant)
        study = Study.objects.get(code="CRF")
        scope = extract.ExportScope(study_id=study.pk)
        one_csv, one_parquet = io.BytesIO(), io.BytesIO()
        rows = extract.long_csv_copy(scope, one_csv)  # no snapshot to share: one COPY
        tabular.parquet_long(scope, one_parquet)
        assert copies == [True, True]
        job = ExportJob.objects.create(study=study, requested_by=committed.admin, formats=["csv_long", "parquet"],
                                       filters={})
        job = export_run(job_id=job.pk)
        files = {}
        for file in ExportFile.objects.filter(job=job):
            with export_storage().open(file.storage_name, "rb") as stored:
                files[file.format] = (stored.read(), file.rows)
        return {"rows": rows, "csv": one_csv.getvalue(), "parquet": one_parquet.getvalue(), "job": job,
                "files": files}

    result = run_committed(export)
    job = result["job"]
    assert job.status == "done", job.error
    # Both formats of the run were written in halves: a header-less second COPY each.
    assert sorted(copies[2:]) == [False, False, True, True]
    assert result["files"]["csv_long"] == (result["csv"], result["rows"])
    assert result["files"]["parquet"] == (result["parquet"], result["rows"])
    # Every subject once, whole (the reference itself holds the 7 entries, none cut).
    per_subject = Counter(row[2] for row in list(csv.reader(io.StringIO(result["csv"].decode())))[1:])
    assert len(per_subject) == 7 and len(set(per_subject.values())) == 1
    assert sum(row["values"] for row in job.manifest["rows_by_form_and_site"]) == result["rows"]


# --- SDTM cells read on other connections ---------------------------------------------------------

@contextlib.contextmanager
def _exported_snapshot(study: Any) -> Iterator[Any]:
    """An export scope of `study` whose snapshot other connections can import, as an
    export run's (inside its REPEATABLE READ transaction)."""
    from django.db import transaction

    from exports import extract

    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        cursor.execute("SELECT pg_export_snapshot()")
        yield extract.ExportScope(study_id=study.pk, snapshot=cursor.fetchone()[0])


def _plain(chunk: Any) -> tuple[Any, ...]:
    """A CellChunk as comparable lists: cells by (entry, item) (they come in no set order;
    the build sorts them), NaN as None."""
    def value(item: Any) -> Any:
        return None if isinstance(item, float) and item != item else item

    cells = sorted(zip(*(map(value, getattr(chunk, name).tolist()) for name in (
        "entry", "index", "orres", "stresn", "raw", "missing")), strict=True), key=lambda cell: cell[:2])
    return (cells, *(list(getattr(chunk, name)) for name in (
        "entry_key", "entry_subject", "entry_event", "entry_sequence", "entry_form", "entry_version", "entry_date",
        "entry_days")))


def test_sdtm_cells_are_read_on_other_connections_in_the_run_snapshot(committed, monkeypatch, tmp_path):
    """Within an export run (committed data, a snapshot to share), the SDTM findings cells
    are read beside the build: one connection lists the entries into groups of whole
    subjects, two others read each group's cells, all in the run's snapshot. What they
    read equals what one connection reads in one transaction, in the same order; and the
    SDTM export of the run writes what the Python path writes."""
    import dataclasses
    import zipfile

    from django.db import transaction

    from exports import extract
    from exports.models import ExportFile, ExportJob
    from exports.records import CellItem
    from exports.sdtm import sdtm_write
    from exports.services import export_run
    from exports.storage import export_storage
    from studies.models import Study
    from tenants.models import Tenant

    tenant = Tenant.objects.get(slug=SLUGS[2])
    monkeypatch.setattr(extract, "GROUP_ENTRIES", 2)  # 7 subjects of one entry each: 4 groups
    connections: list[str] = []
    real_beside = extract.in_snapshot_beside

    def beside(scope: Any, work: Any) -> Any:
        connections.append(scope.snapshot)
        return real_beside(scope, work)

    monkeypatch.setattr(extract, "in_snapshot_beside", beside)
    items = [CellItem("VITALS", 1, code, index, precision) for index, (code, precision) in enumerate(
        (("weight", 1), ("height", None), ("sex", None), ("pain", None), ("symptoms", None)))]

    def read() -> dict[str, Any]:
        connection.set_tenant(tenant)
        study = Study.objects.get(code="CRF")
        with _exported_snapshot(study) as scope:
            beside_read = [_plain(chunk) for chunk in extract.SqlSdtmSource(scope).chunks(items)]
            here = [_plain(chunk) for chunk in extract.SqlSdtmSource(
                dataclasses.replace(scope, snapshot=None)).chunks(items)]
            opened = list(connections)
        job = ExportJob.objects.create(study=study, requested_by=committed.admin, formats=["sdtm"], filters={})
        job = export_run(job_id=job.pk)
        file = ExportFile.objects.get(job=job)
        with export_storage().open(file.storage_name, "rb") as stored, zipfile.ZipFile(stored) as archive:
            written = {name: archive.read(name) for name in archive.namelist() if name.endswith(".xpt")}
        with transaction.atomic():
            data = dataclasses.replace(extract.study_data(extract.ExportScope(study_id=study.pk),
                                                          snapshot_at=job.snapshot_at), sdtm_source=None)
            specs = sdtm_write(data, studyid="CRF", directory=tmp_path)
        python = {spec.file_name: (tmp_path / spec.file_name).read_bytes() for spec in specs}
        return {"beside": beside_read, "here": here, "job": job, "written": written, "python": python,
                "opened": opened, "snapshot": scope.snapshot}

    result = run_committed(read)
    assert result["opened"] == [result["snapshot"]] * 3  # the listing and two readers, in the shared snapshot
    assert result["beside"] == result["here"]
    groups = result["beside"]
    assert len(groups) == 4 and sum(len(group[1]) for group in groups) == 7  # every entry once
    subjects = [subject for group in groups for subject in group[2]]
    assert subjects == sorted(subjects)  # one site: USUBJID order is the subject codes' order
    assert sum(len(group[0]) for group in groups) >= 7 * 4  # weight, height, sex, pain, symptoms
    assert result["job"].status == "done", result["job"].error
    assert result["written"] == result["python"] and "dm.xpt" in result["written"]


@pytest.mark.parametrize("failing", ["_cell_chunk", "_stream"])
def test_a_failure_reading_sdtm_cells_beside_reaches_the_build(committed, monkeypatch, failing):
    """A group's cells failing on a reading connection, or the listing of the entries
    failing on its own, is raised to the SDTM build (which fails the export with it); the
    threads end and their connections close (no export left waiting)."""

    from exports import extract
    from exports.records import CellItem
    from studies.models import Study
    from tenants.models import Tenant

    tenant = Tenant.objects.get(slug=SLUGS[2])
    monkeypatch.setattr(extract, "GROUP_ENTRIES", 2)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise OSError("connection lost")

    monkeypatch.setattr(extract, failing, broken)

    def read() -> str:
        connection.set_tenant(tenant)
        with _exported_snapshot(Study.objects.get(code="CRF")) as scope, \
                pytest.raises(OSError, match="connection lost"):
            list(extract.SqlSdtmSource(scope).chunks([CellItem("VITALS", 1, "weight", 0, 1)]))
        return "raised"

    assert run_committed(read) == "raised"
    assert _our_sessions_now() == 0


def _our_sessions_now() -> int:
    """Other sessions of this test database still open in a transaction (a reader left behind)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                       "AND pid <> pg_backend_pid() AND state LIKE 'idle in transaction%'")
        return int(cursor.fetchone()[0])


def test_sdtm_cells_reading_closed_before_its_first_group_stops_its_threads(committed):
    """A build that fails before it asks for any cells (a data error in the walk) closes
    the reading: its three threads end and their connections close."""
    import threading

    from exports import extract
    from exports.records import CellItem
    from studies.models import Study
    from tenants.models import Tenant

    tenant = Tenant.objects.get(slug=SLUGS[2])

    def read() -> list[str]:
        connection.set_tenant(tenant)
        with _exported_snapshot(Study.objects.get(code="CRF")) as scope:
            chunks = extract.SqlSdtmSource(scope).chunks([CellItem("VITALS", 1, "weight", 0, 1)])
            chunks.close()  # type: ignore[attr-defined]
            return [thread.name for thread in threading.enumerate() if thread.name.startswith("export-beside")]

    assert run_committed(read) == []
    assert _our_sessions_now() == 0
