"""Pooled export benchmark (issue 5): a pooled run over 20 tenants as a Celery chord on a
real worker with two processes, next to a raw PostgreSQL COPY of the same rows.

    .venv/bin/python bench/export_pooled.py                        # 20 tenants, 1,000,000 values
    .venv/bin/python bench/export_pooled.py --values 50000         # while developing

It DROPS and recreates its scratch database (BENCH_DATABASE_URL, default
postgresql://postgres@127.0.0.1:5432/suifang_bench) and uses the Redis database of
BENCH_REDIS_URL (default redis://127.0.0.1:6379/11) as the Celery broker and result
backend; files go to a temporary MEDIA_ROOT. Untimed setup: --tenants tenants, each with
a site, a study with five scheduled events that each collect a 20-item form (numbers,
codes, dates, text), subjects with birth dates, their tasks, and entries written straight
with SQL until the tenants hold --values item values in total. Every second tenant keeps
its decimals in lb. A consortium pools all 20 items (the text ones marked safe, so every
value flows), harmonises the codes and the lb values to kg, and asks for 5-anonymity on
age; every tenant has an active agreement.

Measured, in the same run:
- baseline: per tenant schema, `COPY (SELECT e.id, kv.key, kv.value FROM ecrf_entry e,
  jsonb_each(e.values) kv) TO STDOUT` into a file (the same rows, nothing joined or
  formatted: the baseline of bench/export_study.py), summed over the tenants; printed
  beside it, the COPY of the study export's long query (joined, ordered, formatted);
- pooled run: from publishing exports.pooling.tasks.pooled_run_task to the run marked
  done, on `celery -A config worker --concurrency 2` started here against the bench
  database (the chord: one part per tenant on either process, then the combine step);
  --rounds times, the worker kept warm between rounds.

Prints seconds, the pooled/COPY ratio (target: at most 4x), values and rows, and the peak
RSS (VmHWM) of the worker's processes. Figures, not pass/fail.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import date, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, db_url, log, machine_info, ratio, recreate_database, setup_django, table

ITEMS = 20
EVENTS = 5
SLUG = "poolbench"
DEFAULT_REDIS = "redis://127.0.0.1:6379/11"
LB_TO_KG = 0.45359237


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--values", type=int, default=1_000_000, help="item values over all tenants")
    parser.add_argument("--tenants", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes")
    parser.add_argument("--rounds", type=int, default=2, help="pooled runs on the warm worker")
    parser.add_argument("--reuse", action="store_true",
                        help="keep the database of an earlier run with the same --values/--tenants (no setup)")
    return parser.parse_args(argv)


def form_definition(*, weight_unit: str) -> dict[str, Any]:
    label = {"en": "x", "zh-hans": "x"}
    items: list[dict[str, Any]] = []
    for n in range(ITEMS):
        kind = ("decimal", "integer", "single_choice", "date", "text")[n % 5]
        item: dict[str, Any] = {"code": f"i{n:02d}", "type": kind, "label": label}
        if kind == "single_choice":
            item["code_list"] = "YN"
        if kind == "decimal":
            item["unit"] = weight_unit
        items.append(item)
    return {"code": "F20", "title": label, "items": items,
            "code_lists": {"YN": [{"value": "1", "labels": label}, {"value": "2", "labels": label}]}}


def common_data_elements() -> list[dict[str, Any]]:
    codes = [f"i{n:02d}" for n in range(ITEMS)]
    harmonise: dict[str, Any] = {}
    for n, code in enumerate(codes):
        if n % 5 == 0:
            harmonise[code] = {"unit": "kg", "factors": {"lb": LB_TO_KG}, "precision": 1}
        elif n % 5 == 2:
            harmonise[code] = {"codes": {"1": "Y", "2": "N"}}
    return [{"form": "F20", "items": codes, "safe_text": [c for n, c in enumerate(codes) if n % 5 == 4],
             "harmonise": harmonise}]


def _tenant_study(tenant: Any, index: int, values: int) -> dict[str, Any]:
    """In the tenant's schema: one site, the study, its schedule and form, subjects and
    tasks, then `values` item values as entries (SQL)."""
    from django.utils import timezone

    from config.db import tenant_connection as connection
    from ecrf import services as ecrf_services
    from sites.models import Site
    from studies.bulk import tasks_generate
    from studies.models import ScheduleStatus, ScheduleVersion, Study, StudyStatus, Subject, SubjectStatus
    from tenants.models import User

    connection.set_tenant(tenant)
    site = Site.objects.create(code="S01", name="Site", institution="H", country_region="CN",
                               principal_investigator="Dr", target_enrolment=100_000, time_zone="Asia/Shanghai",
                               status="active")
    study = Study.objects.create(code="POOL", title="Pool bench", study_type="registry", status=StudyStatus.ACTIVE,
                                 target_enrolment=1_000_000)
    events = [{"code": f"V{n}", "name_en": f"V{n}", "name_zh": f"V{n}", "anchor": "enrolment", "anchor_event": None,
               "offset": {"amount": 30 * n, "unit": "day"}, "window_before": 7, "window_after": 7, "mode": "clinic",
               "forms": ["F20"], "repeat_every": None, "repeat_until": None} for n in range(1, EVENTS + 1)]
    version = ScheduleVersion.objects.create(study=study, number=1, status=ScheduleStatus.PUBLISHED, events=events,
                                             published_at=timezone.now())
    admin = User.objects.get(email=f"admin@{tenant.slug}.example.org")
    actor = ecrf_services.Actor(user_id=admin.pk, label="bench", role="data_manager")
    form_version = ecrf_services.form_draft_save(
        study=study, definition=form_definition(weight_unit="lb" if index % 2 else "kg"), actor=actor)
    ecrf_services.form_publish(version=form_version, actor=actor)
    entries = values // ITEMS
    today = date.today()
    subjects = [Subject(study=study, site=site, subject_code=f"P-{i:07d}", status=SubjectStatus.ENROLLED,
                        consent_date=today - timedelta(days=200 + i % 300),
                        enrolment_date=today - timedelta(days=200 + i % 300),
                        birth_date=f"{1940 + i % 60}-0{1 + i % 9}-15")
                for i in range(entries // EVENTS + 1)]
    Subject.objects.bulk_create(subjects, batch_size=5000)
    rows = Subject.objects.filter(study=study).values_list("pk", "study_id", "site_id", "enrolment_date", "index_date")
    tasks_generate(version=version, subjects=rows.iterator(chunk_size=5000), today=today, assignee_by_site={})
    parts = []
    for n in range(ITEMS):
        expression = ("to_jsonb(round((random() * 100 + 40)::numeric, 1))", "to_jsonb((random() * 200)::int)",
                      "to_jsonb(((random() * 1)::int + 1)::text)",
                      "to_jsonb(to_char(current_date - (random() * 500)::int, 'YYYY-MM-DD'))",
                      "to_jsonb('note ' || md5(t.id::text || '" + str(n) + "'))")[n % 5]
        parts.append(f"'i{n:02d}', {expression}")
    with connection.cursor() as cursor:
        cursor.execute(f"""
            INSERT INTO ecrf_entry (subject_id, task_id, form_id, form_version_id, status, values, missing,
                                    item_versions, verified, version, locked, created, updated)
            SELECT t.subject_id, t.id, %s, %s, 'complete', jsonb_build_object({', '.join(parts)}), '{{}}', '{{}}',
                   '{{}}', 1, false, now(), now()
              FROM studies_followuptask t ORDER BY t.id LIMIT %s""",
                       [form_version.form_id, form_version.pk, entries])
        # As a database in use would be: statistics, hint bits and the visibility map set
        # (right after the load, the first reads set hint bits and autovacuum wakes up).
        for table in ("ecrf_entry", "studies_followuptask", "studies_subject"):
            cursor.execute(f"VACUUM (ANALYZE) {table}")
    connection.set_schema_to_public()
    return {"schema": tenant.schema_name, "study": study.pk, "admin": admin.pk}


def setup(args: argparse.Namespace) -> dict[str, Any]:
    recreate_database()
    setup_django()
    from bench.common import migrate_shared
    from exports.pooling.models import Consortium, DataSharingAgreement
    from tenants import schema_pool, services
    from tenants.models import Tenant

    migrate_shared()
    schema_pool.pool_refill(target_size=args.tenants)
    studies = []
    per_tenant = args.values // args.tenants
    for index in range(args.tenants):
        slug = f"{SLUG}-{index:02d}"
        tenant = services.tenant_create(name=f"Pool bench {index}", slug=slug, kind="hospital",
                                        admin_email=f"admin@{slug}.example.org", admin_password=None)
        studies.append(_tenant_study(tenant, index, per_tenant))
        log(f"  ... tenant {index + 1}/{args.tenants}")
    consortium = Consortium.objects.create(slug="bench", name="Pool bench", coordinating_organisation="Bench",
                                           common_data_elements=common_data_elements(), quasi_identifiers=["age"],
                                           k=5)
    fields = [f"F20.i{n:02d}" for n in range(ITEMS)]
    for study in studies:
        tenant = Tenant.objects.get(schema_name=study["schema"])
        DataSharingAgreement.objects.create(consortium=consortium, tenant=tenant, study_code="POOL", fields=fields,
                                            accepted_by_id=study["admin"])
    return {"consortium": consortium.pk, "studies": studies, "admin": studies[0]["admin"]}


def reuse(args: argparse.Namespace) -> dict[str, Any]:
    """The world of an earlier setup in the same database (for repeated measurements)."""
    setup_django()
    from config.db import tenant_connection as connection
    from exports.pooling.models import Consortium, DataSharingAgreement
    from studies.models import Study

    consortium = Consortium.objects.get(slug="bench")
    studies = []
    for agreement in DataSharingAgreement.objects.filter(consortium=consortium).select_related("tenant") \
            .order_by("tenant__slug"):
        connection.set_tenant(agreement.tenant)
        studies.append({"schema": agreement.tenant.schema_name, "study": Study.objects.get(code="POOL").pk,
                        "admin": agreement.accepted_by_id})
        connection.set_schema_to_public()
    if len(studies) != args.tenants:
        raise SystemExit(f"the database holds {len(studies)} tenants, not {args.tenants}: run without --reuse")
    return {"consortium": consortium.pk, "studies": studies, "admin": studies[0]["admin"]}


RAW_COPY = "COPY (SELECT e.id, kv.key, kv.value FROM ecrf_entry e, jsonb_each(e.values) kv) TO STDOUT"


def copy_baseline(world: dict[str, Any]) -> tuple[float, int, float]:
    """In every tenant schema, summed: the raw COPY of the item values (the baseline of
    bench/export_study.py: one row per value, nothing joined or formatted) and, for
    reference, the COPY of the study export's long query (joined, ordered, formatted).
    Returns (raw seconds, raw rows, long-query seconds)."""
    from psycopg2 import sql as pgsql

    from config.db import tenant_connection as connection
    from exports import extract

    raw_seconds, raw_rows, long_seconds = 0.0, 0, 0.0
    for study in world["studies"]:
        connection.set_schema(study["schema"])
        query = extract.long_query(extract.ExportScope(study_id=study["study"], forms=("F20",)))
        with connection.cursor() as cursor:
            raw = cursor.cursor
            long_statement = pgsql.SQL("COPY ({}) TO STDOUT WITH (FORMAT csv)").format(query).as_string(raw)
            for statement in (RAW_COPY, long_statement):
                with tempfile.NamedTemporaryFile("wb") as out:
                    began = time.perf_counter()
                    raw.copy_expert(statement, out, size=1 << 20)
                    out.flush()
                    elapsed = time.perf_counter() - began
                if statement == RAW_COPY:
                    raw_seconds += elapsed
                    raw_rows += int(raw.rowcount)
                else:
                    long_seconds += elapsed
    connection.set_schema_to_public()
    return raw_seconds, raw_rows, long_seconds


def _process_tree(pid: int) -> list[int]:
    """The pid and its descendants, from /proc (no third-party package)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parents[int(entry)] = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [pid], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def _peak_rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


class Worker:
    """`celery -A config worker --concurrency N` on the bench database and Redis."""

    def __init__(self, *, concurrency: int, env: dict[str, str], log_path: Path) -> None:
        self.hostname = f"poolbench-{uuid.uuid4().hex[:8]}@localhost"
        self.log_path = log_path
        with log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "config", "worker", "--concurrency", str(concurrency),
                 "-Q", "suifang-bench", "-n", self.hostname, "--without-gossip", "--without-mingle",
                 "--without-heartbeat", "-l", "WARNING"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 120) -> None:
        from config.celery import app

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the worker exited:\n{self.log_path.read_text(errors='replace')[-3000:]}")
            try:
                if app.control.ping(destination=[self.hostname], timeout=0.5):
                    return
            except Exception as exc:  # the broker connection is still coming up
                log(f"  (worker not answering yet: {type(exc).__name__})")
            time.sleep(0.2)
        raise SystemExit("the worker did not answer")

    def peak_rss(self) -> list[tuple[int, float]]:
        return [(pid, _peak_rss_mb(pid)) for pid in _process_tree(self.proc.pid)]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def pooled_run(world: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    from exports.pooling.models import PooledRun
    from exports.pooling.tasks import pooled_run_task

    run = PooledRun.objects.create(consortium_id=world["consortium"], requested_by_id=world["admin"])
    began = time.perf_counter()
    pooled_run_task.delay(run.pk)
    while True:
        status = PooledRun.objects.filter(pk=run.pk).values_list("status", flat=True).get()
        if status in ("done", "failed"):
            break
        time.sleep(0.02)
    seconds = time.perf_counter() - began
    run.refresh_from_db()
    if run.status != "done":
        raise SystemExit(f"pooled run {run.pk} failed: {run.error}")
    return seconds, run.manifest


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    media = tempfile.mkdtemp(prefix="suifang-poolbench-media-")
    redis_url = os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS)
    # The worker and this process share the broker, the result backend and the storage.
    os.environ.update({"REDIS_URL": redis_url, "CELERY_BROKER_URL": redis_url, "CELERY_RESULT_BACKEND": redis_url,
                       "MEDIA_ROOT": media})
    log(f"setup: {args.tenants} tenants, {args.values:,} item values ...")
    world = reuse(args) if args.reuse else setup(args)
    log(machine_info())
    from bench.common import purge_bench_queue

    purge_bench_queue()  # the pool refills tenant_create queued: the worker must not run them
    copy_seconds, copy_rows, long_seconds = copy_baseline(world)
    log(f"  raw COPY: {copy_seconds:.2f} s, {copy_rows:,} rows; the export's long query COPY: {long_seconds:.2f} s")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.bench", "BENCH_DATABASE_URL": db_url(),
           "LOG_LEVEL": "ERROR"}
    worker = Worker(concurrency=args.concurrency, env=env, log_path=Path(media) / "worker.log")
    rows = []
    try:
        worker.wait_ready()
        timings = []
        for round_number in range(1, args.rounds + 1):
            seconds, manifest = pooled_run(world)
            timings.append(seconds)
            extracted = sum(t["values_extracted"] for t in manifest["tenants"])
            unmapped = sum(sum(t["values_unmapped"].values()) for t in manifest["tenants"])
            released = manifest["files"][0]["rows"]
            log(f"  round {round_number}: pooled run {seconds:.2f} s, {extracted:,} values extracted, "
                f"{unmapped:,} unmapped, {released:,} rows released "
                f"(k={manifest['deidentification']['achieved_k']}, "
                f"{manifest['deidentification']['records_suppressed']} subjects suppressed)")
            if extracted + unmapped != copy_rows:
                log(f"  !! the pooled run saw {extracted + unmapped:,} values, the COPY {copy_rows:,}")
            rows.append([f"{args.values:,}", str(args.tenants), str(args.concurrency), str(round_number),
                         f"{copy_seconds:.2f} s", f"{seconds:.2f} s", ratio(seconds, copy_seconds),
                         f"{released:,}", f"{manifest['files'][0]['bytes'] / 1e6:.0f} MB"])
        peaks = worker.peak_rss()
    finally:
        worker.stop()
        purge_bench_queue()
    log(table(["item values", "tenants", "worker processes", "round", "raw COPY (summed)", "pooled run",
               "pooled / COPY", "rows released", "pooled_long.csv"], rows))
    log(f"median pooled / COPY: {ratio(statistics.median(timings), copy_seconds)}")
    log("worker peak RSS (VmHWM): " + ", ".join(
        f"{'main' if pid == worker.proc.pid else 'child'} {pid}: {mb:.0f} MB" for pid, mb in peaks))


if __name__ == "__main__":
    main(sys.argv[1:])
