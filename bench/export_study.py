"""Study export benchmark (issue 5): time and peak memory of a study export, next to a raw
PostgreSQL COPY of the same rows in the same run.

    .venv/bin/python bench/export_study.py                         # 100k and 1M item values
    .venv/bin/python bench/export_study.py --levels 100000,1000000,5000000

It DROPS and recreates its scratch database (BENCH_DATABASE_URL, default
postgresql://postgres@127.0.0.1:5432/suifang_bench): one tenant, 10 sites, a study with
five scheduled events that each collect a 20-item form (numbers, codes, dates, text),
subjects and their tasks, then entries written straight with SQL until the study holds
the level's number of item values (untimed setup).

Per level and format (--formats, default csv_long,parquet,sdtm), each in a fresh child
process (so its peak resident memory is its own):
- baseline: `COPY (SELECT e.id, kv.key, kv.value FROM ecrf_entry e, jsonb_each(e.values)
  kv) TO STDOUT` into a file: one row per item value, nothing joined, nothing formatted;
- export: exports.services.export_run end to end for that one format: the REPEATABLE READ
  snapshot, the manifest counts, the file (csv_long: joined to site, subject, visit, form
  and version, ordered; parquet: the same rows; sdtm: DM/SV/DS/findings as XPT v5 plus
  define.xml, zipped), SHA-256, and the file saved to storage. The clock starts after the
  child has imported the export modules and opened the cache client, as a Celery worker
  has before its first export (about 0.6 s of imports, pyarrow mostly).

Per level, --repeat rounds (default 3) of the COPY then each format; prints the median
seconds (min-max), the highest peak RSS of the child processes, bytes written and the
ratio of the medians.
Figures, not pass/fail. With --profile DIR, each export child also runs under cProfile and
leaves DIR/<level>-<format>.prof (read it with `python -m pstats`); its seconds are then
the profiled ones, slower than the plain run's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, log, machine_info, ratio, recreate_database, setup_django, table

ITEMS = 20
EVENTS = 5
SITES = 10
SLUG = "exportbench"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default="100000,1000000", help="item values, comma separated")
    parser.add_argument("--formats", default="csv_long,parquet,sdtm", help="export formats, comma separated")
    parser.add_argument("--profile", default="", help="a directory for each export's cProfile statistics")
    parser.add_argument("--repeat", type=int, default=3,
                        help="rounds per level (COPY, then each format), medians reported: the raw COPY alone "
                             "varies by 30-50%% between runs on this VM")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def form_definition() -> dict[str, Any]:
    label = {"en": "x", "zh-hans": "x"}
    items: list[dict[str, Any]] = []
    for n in range(ITEMS):
        kind = ("decimal", "integer", "single_choice", "date", "text")[n % 5]
        item: dict[str, Any] = {"code": f"i{n:02d}", "type": kind, "label": label}
        if kind == "single_choice":
            item["code_list"] = "YN"
        if kind in ("decimal", "integer"):  # findings for SDTM: VS for decimals, LB for integers
            domain = "VS" if kind == "decimal" else "LB"
            item["cdisc"] = {"domain": domain, "variable": f"{domain}ORRES", "testcd": f"T{n:02d}",
                             "test": f"Test {n}", "orresu": "kg" if kind == "decimal" else "mmol/L"}
        items.append(item)
    return {"code": "F20", "title": label, "items": items,
            "code_lists": {"YN": [{"value": "1", "labels": label}, {"value": "2", "labels": label}]}}


def setup(levels: list[int]) -> dict[str, Any]:
    recreate_database()
    setup_django()
    from django.utils import timezone

    from bench.common import migrate_shared
    from config.db import tenant_connection as connection
    from ecrf import services as ecrf_services
    from sites.models import Site
    from studies.bulk import tasks_generate
    from studies.models import ScheduleStatus, ScheduleVersion, Study, StudyStatus, Subject, SubjectStatus
    from tenants import schema_pool, services
    from tenants.models import User

    migrate_shared()
    schema_pool.pool_refill(target_size=1)
    tenant = services.tenant_create(name="Export bench", slug=SLUG, kind="hospital",
                                    admin_email=f"admin@{SLUG}.example.org", admin_password=None)
    connection.set_tenant(tenant)
    sites = [Site.objects.create(code=f"S{i:02d}", name=f"Site {i}", institution="H", country_region="CN",
                                 principal_investigator="Dr", target_enrolment=100_000, time_zone="Asia/Shanghai",
                                 status="active") for i in range(SITES)]
    study = Study.objects.create(code="EXP", title="Export bench", study_type="registry",
                                 status=StudyStatus.ACTIVE, target_enrolment=1_000_000)
    events = [{"code": f"V{n}", "name_en": f"V{n}", "name_zh": f"V{n}", "anchor": "enrolment", "anchor_event": None,
               "offset": {"amount": 30 * n, "unit": "day"}, "window_before": 7, "window_after": 7, "mode": "clinic",
               "forms": ["F20"], "repeat_every": None, "repeat_until": None} for n in range(1, EVENTS + 1)]
    version = ScheduleVersion.objects.create(study=study, number=1, status=ScheduleStatus.PUBLISHED, events=events,
                                             published_at=timezone.now())
    admin = User.objects.get(email=f"admin@{SLUG}.example.org")
    actor = ecrf_services.Actor(user_id=admin.pk, label="bench", role="data_manager")
    form_version = ecrf_services.form_draft_save(study=study, definition=form_definition(), actor=actor)
    ecrf_services.form_publish(version=form_version, actor=actor)
    subjects_needed = max(levels) // (ITEMS * EVENTS) + 1
    today = date.today()
    batch = [Subject(study=study, site=sites[i % SITES], subject_code=f"E-{i:07d}", status=SubjectStatus.ENROLLED,
                     consent_date=today - timedelta(days=200 + i % 300),
                     enrolment_date=today - timedelta(days=200 + i % 300)) for i in range(subjects_needed)]
    Subject.objects.bulk_create(batch, batch_size=5000)
    subjects = Subject.objects.filter(study=study).values_list("pk", "study_id", "site_id", "enrolment_date",
                                                                 "index_date")
    tasks_generate(version=version, subjects=subjects.iterator(chunk_size=5000), today=today,
                   assignee_by_site={})
    return {"tenant": tenant.pk, "study": study.pk, "form": form_version.form_id, "version": form_version.pk,
            "admin": admin.pk}


def fill_entries(world: dict[str, Any], values: int) -> None:
    """Entries straight with SQL: one per task until `values` item values exist."""
    from config.db import tenant_connection as connection

    entries = values // ITEMS
    parts = []
    for n in range(ITEMS):
        kind = n % 5
        expression = ("to_jsonb(round((random() * 100)::numeric, 1))", "to_jsonb((random() * 200)::int)",
                      "to_jsonb(((random() * 1)::int + 1)::text)",
                      "to_jsonb(to_char(current_date - (random() * 500)::int, 'YYYY-MM-DD'))",
                      "to_jsonb('note ' || md5(t.id::text || '" + str(n) + "'))")[kind]
        parts.append(f"'i{n:02d}', {expression}")
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE ecrf_entry RESTART IDENTITY CASCADE")
        cursor.execute(f"""
            INSERT INTO ecrf_entry (subject_id, task_id, form_id, form_version_id, status, values, missing,
                                    item_versions, verified, version, locked, created, updated)
            SELECT t.subject_id, t.id, %s, %s, 'complete', jsonb_build_object({', '.join(parts)}), '{{}}', '{{}}',
                   '{{}}', 1, false, now(), now()
              FROM studies_followuptask t ORDER BY t.id LIMIT %s""", [world["form"], world["version"], entries])
        cursor.execute("VACUUM ANALYZE ecrf_entry")
        # Autovacuum would long since have analysed the subjects and visits setup() bulk
        # inserted; without row counts the planner joins 250,000 visits by nested loop.
        cursor.execute("ANALYZE")


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs in a fresh process: one measurement, with its own peak RSS."""
    setup_django()
    from config.db import tenant_connection as connection
    from tenants.models import Tenant

    connection.set_tenant(Tenant.objects.get(pk=spec["tenant"]))
    if spec["kind"] != "copy":
        # What a Celery worker has loaded before its first export (its modules, pyarrow,
        # the cache client) is not the export's cost: loaded here, before the clock.
        from django.core.cache import cache

        import exports.services  # noqa: F401

        cache.get("bench-warm-up")
    began = time.perf_counter()
    if spec["kind"] == "copy":
        with tempfile.NamedTemporaryFile("wb") as out, connection.cursor() as cursor:
            cursor.cursor.copy_expert("COPY (SELECT e.id, kv.key, kv.value FROM ecrf_entry e, jsonb_each(e.values) kv)"
                                      " TO STDOUT", out, size=1 << 20)
            out.flush()
            size = os.path.getsize(out.name)
        rows = None
    else:
        from exports.models import ExportJob
        from exports.services import export_run

        job = ExportJob.objects.create(study_id=spec["study"], requested_by_id=spec["admin"],
                                       formats=[spec["format"]], filters={})
        if spec.get("profile"):
            import cProfile

            with cProfile.Profile() as profile:
                job = export_run(job_id=job.pk)
            profile.dump_stats(spec["profile"])
        else:
            job = export_run(job_id=job.pk)
        size = sum(f["bytes"] for f in job.manifest["files"])
        rows = sum(f["rows"] for f in job.manifest["files"])
        counted = sum(c["values"] for c in job.manifest["rows_by_form_and_site"])
        if spec["format"] != "sdtm" and counted != rows:  # the manifest's counts and the file must agree
            raise SystemExit(f"manifest counts {counted} != rows written {rows}")
    seconds = time.perf_counter() - began
    return {"seconds": seconds, "peak_mb": _own_peak_kb() / 1024, "bytes": size, "rows": rows}


def _own_peak_kb() -> int:
    """This process's own peak resident size (VmHWM). Not ru_maxrss: Linux carries the
    parent's resident size at fork over exec into it, so a small child reported the
    benchmark parent's size (196 MB once the 5M setup had grown it)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def measure(kind: str, world: dict[str, Any], fmt: str = "", profile: str = "") -> dict[str, Any]:
    spec = {**world, "kind": kind, "format": fmt, "profile": profile}
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, cwd=ROOT,
                          check=True, env={**os.environ, "LOG_LEVEL": "ERROR"})
    return json.loads(done.stdout.decode().strip().splitlines()[-1])


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    levels = [int(x) for x in args.levels.split(",") if x.strip()]
    log(f"setup: {max(levels):,} item values at most ...")
    world = setup(levels)
    log(machine_info())
    formats = [f for f in args.formats.split(",") if f.strip()]
    rows = []
    for level in levels:
        fill_entries(world, level)
        copies: list[dict[str, Any]] = []
        exports: dict[str, list[dict[str, Any]]] = {fmt: [] for fmt in formats}
        for round_number in range(1, args.repeat + 1):
            copies.append(measure("copy", world))
            for fmt in formats:
                profile = ""
                if args.profile and round_number == 1:
                    Path(args.profile).mkdir(parents=True, exist_ok=True)
                    profile = str(Path(args.profile).resolve() / f"{level}-{fmt}.prof")
                    log(f"  profile: {profile}")
                exports[fmt].append(measure("export", world, fmt, profile))
                log(f"  {level:,} {fmt}, round {round_number}: COPY {copies[-1]['seconds']:.2f} s, "
                    f"export {exports[fmt][-1]['seconds']:.2f} s, {exports[fmt][-1]['rows']:,} rows")
        copy_seconds = statistics.median(c["seconds"] for c in copies)
        for fmt in formats:
            done = exports[fmt]
            seconds = statistics.median(e["seconds"] for e in done)
            rows.append([f"{level:,}", fmt, _spread(copies), f"{max(c['peak_mb'] for c in copies):.0f} MB",
                         _spread(done), f"{max(e['peak_mb'] for e in done):.0f} MB",
                         f"{done[0]['bytes'] / 1e6:.0f} MB", f"{done[0]['rows']:,}", ratio(seconds, copy_seconds)])
    log(f"{args.repeat} rounds per level; times are the median (min-max); peak RSS the highest; the ratio is "
        "of the medians")
    log(table(["item values", "format", "raw COPY", "COPY peak RSS", "export", "export peak RSS", "file size",
               "rows", "export / COPY"], rows))


def _spread(measured: list[dict[str, Any]]) -> str:
    seconds = [m["seconds"] for m in measured]
    return f"{statistics.median(seconds):.2f} s ({min(seconds):.2f}-{max(seconds):.2f})"


if __name__ == "__main__":
    main(sys.argv[1:])
