"""Deploy-time migrate benchmark: time to migrate 100 and 1,000 tenants with nothing to
apply, and with one new migration to apply; ours (tenants.deploy_migrate) next to
django-tenants' `migrate_schemas` measured in the same run.

    .venv/bin/python bench/migrate_tenants.py                      # 100 and 1,000 tenants
    .venv/bin/python bench/migrate_tenants.py --sizes 100          # quick
    .venv/bin/python bench/migrate_tenants.py --no-baseline-1000   # skip the slow baseline

It DROPS and recreates the database of config/settings/bench.py (suifang_bench).
It prints figures, never pass/fail; it aborts only if a method leaves a schema behind.

Nothing to apply: every tenant is up to date.
  - ours: tenants.deploy_migrate.migrate_tenants(jobs=J) (public first, then one query
    finds that no schema is behind). Median of 3 runs (each is short).
  - baseline: `migrate_schemas` (public, then every tenant; standard executor), once.

One new migration to apply (bench/synthetic/migrations_next/0002_reviewed_at.py: a
nullable column and an index on 5 of the 25 synthetic models). That phase runs in a
child process with BENCH_MIGRATIONS=next, so the tests' bench/synthetic/migrations is
untouched. Every method starts from the same tenants in the same state: before each
method all tenants are put back to 0001 (untimed: the reverse of 0002 is recorded once
with Django on one schema, then replayed into the others), so each method sees the
same catalog and the same number of behind schemas.
  - ours: migrate_tenants(jobs=J): migrate one schema for real while recording its SQL,
    replay the recording into the others in J threads.
  - ours, replay=False: migrate_tenants(jobs=J, replay=False): Django's migrate in every
    schema, J processes.
  - baseline: `migrate_schemas` (public, then every tenant; standard executor).
Each method is verified: tenants.deploy_migrate.schemas_behind() returns {} and the new
column and index exist in every tenant schema.

A django-tenants run longer than --budget seconds (default 600) is stopped after the
schema it is on and its total is extrapolated from its own per-schema rate (the rate is
constant within a run: the catalog does not change). Extrapolated figures are marked
"~ (extrapolated)". The remaining schemas are then finished untimed by ours.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common
from bench.common import log

NEXT_APP, NEXT_MIGRATION = "synthetic", "0002_reviewed_at"
CHECK_TABLE, CHECK_COLUMN, CHECK_INDEX = "synthetic_thing20", "reviewed_at", "synth20_reviewed_idx"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,1000", help="tenant counts (default 100,1000)")
    parser.add_argument("--jobs", type=int, default=4,
                        help="workers for ours (default 4, the migrate_tenants command's default)")
    parser.add_argument("--baseline-1000", action=argparse.BooleanOptionalAction, default=True,
                        help="also run django-tenants' migrate_schemas at 1,000+ tenants (default on)")
    parser.add_argument("--budget", type=float, default=600.0,
                        help="seconds after which a django-tenants run is stopped and extrapolated")
    parser.add_argument("--child-next", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.sizes_list = [int(x) for x in args.sizes.split(",") if x.strip()]
    if not args.sizes_list or args.sizes_list != sorted(args.sizes_list) or args.sizes_list[0] < 2:
        parser.error("--sizes must be increasing integers >= 2")
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    return args


# --- django-tenants' migrate_schemas, with a time budget ----------------------------------

class BudgetExceeded(Exception):
    pass


def run_migrate_schemas(*, budget: float, total_tenants: int) -> dict[str, Any]:
    """`migrate_schemas` (public + every tenant, standard executor). Stops after the
    schema during which `budget` ran out and extrapolates from the per-schema rate."""
    from django.core.management import call_command
    from django_tenants.signals import schema_migrated

    from config.db import tenant_connection as connection

    done = 0
    public_at = 0.0
    started = time.perf_counter()

    def on_migrated(sender: Any, schema_name: str, **kwargs: Any) -> None:
        nonlocal done, public_at
        now = time.perf_counter() - started
        if schema_name == "public":
            public_at = now
            return
        done += 1
        if now > budget and done < total_tenants:
            raise BudgetExceeded

    schema_migrated.connect(on_migrated, dispatch_uid="bench_budget")
    try:
        call_command("migrate_schemas", interactive=False, verbosity=0, executor="standard")
        return {"seconds": time.perf_counter() - started, "extrapolated": False, "done": done}
    except BudgetExceeded:
        elapsed = time.perf_counter() - started
        rate = (elapsed - public_at) / done
        return {"seconds": public_at + rate * total_tenants, "extrapolated": True,
                "done": done, "elapsed": elapsed, "per_schema": rate}
    finally:
        schema_migrated.disconnect(dispatch_uid="bench_budget")
        connection.set_schema_to_public()


def fmt_seconds(result: dict[str, Any]) -> str:
    if result.get("skipped"):
        return "not run"
    if result["extrapolated"]:
        return f"~{result['seconds']:.{0 if result['seconds'] >= 100 else 1}f} (extrapolated)"
    return f"{result['seconds']:.1f}"


def describe_extrapolation(label: str, result: dict[str, Any], total: int) -> None:
    if result.get("extrapolated"):
        log(f"   {label}: stopped after {result['done']}/{total} schemas at {result['elapsed']:.0f} s "
            f"({result['per_schema']:.2f} s per schema); total extrapolated to ~{result['seconds']:.0f} s")


# --- checks ---------------------------------------------------------------------------------

def verify_up_to_date(label: str, *, with_column: bool | None = None) -> None:
    from config.db import tenant_connection as connection
    from tenants.deploy_migrate import schemas_behind, tenant_schema_names
    from tenants.schema_pool import expected_migrations

    schemas = tenant_schema_names()
    behind = schemas_behind(schemas=schemas, expected=expected_migrations())
    if behind:
        example = next(iter(behind.items()))
        raise SystemExit(f"BROKEN after {label}: {len(behind)} schema(s) behind, e.g. {example}")
    if with_column is not None:
        columns, indexes = count_column_and_index(schemas)
        want = len(schemas) if with_column else 0
        if columns != want or indexes != want:
            raise SystemExit(f"BROKEN after {label}: {columns} schemas have the column and {indexes} "
                             f"the index, expected {want} of {len(schemas)}")
    connection.set_schema_to_public()


def count_column_and_index(schemas: list[str]) -> tuple[int, int]:
    from config.db import tenant_connection as connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(DISTINCT n.nspname) FROM pg_attribute a "
            "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relname = %s AND a.attname = %s AND NOT a.attisdropped AND n.nspname = ANY(%s)",
            [CHECK_TABLE, CHECK_COLUMN, schemas])
        columns = int(cursor.fetchone()[0])
        cursor.execute("SELECT count(*) FROM pg_indexes WHERE indexname = %s AND schemaname = ANY(%s)",
                       [CHECK_INDEX, schemas])
        indexes = int(cursor.fetchone()[0])
    return columns, indexes


# --- phase 1: nothing to apply (parent process, 0001 state) ---------------------------------

def nothing_to_apply(size: int, args: argparse.Namespace) -> dict[str, Any]:
    from tenants.deploy_migrate import migrate_tenants

    ours = []
    for _ in range(3):
        report = migrate_tenants(jobs=args.jobs)
        if report.behind or report.failed:
            raise SystemExit(f"BROKEN: nothing-to-apply run found {report.behind} behind, "
                             f"{len(report.failed)} failed")
        ours.append(report.seconds_total)
        log(f"   ours: {report.seconds_total:.2f} s (check {report.seconds_check:.2f} s, "
            f"{report.tenants_total} tenants, behind {report.behind})")
    verify_up_to_date("ours (nothing to apply)")
    if size >= 1000 and not args.baseline_1000:
        baseline: dict[str, Any] = {"skipped": True, "seconds": float("nan"), "extrapolated": False}
        log("   django-tenants migrate_schemas: not run (--no-baseline-1000)")
    else:
        log(f"   django-tenants migrate_schemas (standard executor, budget {args.budget:.0f} s) ...")
        baseline = run_migrate_schemas(budget=args.budget, total_tenants=size)
        log(f"   django-tenants migrate_schemas: {fmt_seconds(baseline)} s")
        describe_extrapolation("django-tenants", baseline, size)
        verify_up_to_date("migrate_schemas (nothing to apply)")
    return {"ours": ours, "baseline": baseline}


# --- phase 2: one new migration (child process, BENCH_MIGRATIONS=next) ------------------------

def _replay_chunk(chunk: list[str], script: str) -> list[str]:
    from django.db import connections

    from tenants.deploy_migrate import _replay_into

    try:
        return [f"{name}: {err}" for name in chunk if (err := _replay_into(name, script))]
    finally:
        connections.close_all()


def rollback_to_0001(jobs: int) -> float:
    """Put every tenant back at synthetic 0001 (untimed setup): Django unapplies 0002 in
    one schema while its SQL is recorded; the recording is replayed into the others."""
    from django.core.management import call_command

    from config.db import tenant_connection as connection
    from tenants.deploy_migrate import schemas_behind, tenant_schema_names
    from tenants.schema_pool import expected_migrations, record_statements

    started = time.perf_counter()
    schemas = tenant_schema_names()
    behind = schemas_behind(schemas=schemas, expected=expected_migrations())
    todo = [s for s in schemas if s not in behind]
    if todo:
        first, rest = todo[0], todo[1:]
        with record_statements() as recorded:
            call_command("migrate_schemas", NEXT_APP, "0001_initial", tenant=True, schema_name=first,
                         interactive=False, verbosity=0)
        connection.set_schema_to_public()
        # Django unrecords 0002 with `DELETE ... WHERE id IN (<that schema's row id>)`;
        # ids differ between schemas, so that statement is replaced by one by name.
        statements = [sql for sql in recorded if "django_migrations" not in sql]
        statements.append(f"DELETE FROM django_migrations WHERE app = '{NEXT_APP}' "
                          f"AND name = '{NEXT_MIGRATION}'")
        script = ";\n".join(statements) + ";\n"
        chunks = [rest[i::jobs] for i in range(jobs) if rest[i::jobs]]
        errors: list[str] = []
        if chunks:
            with ThreadPoolExecutor(max_workers=len(chunks)) as pool:
                for result in pool.map(lambda c: _replay_chunk(c, script), chunks):
                    errors.extend(result)
        if errors:
            raise SystemExit(f"rollback failed in {len(errors)} schema(s): {errors[0][:300]}")
    behind = schemas_behind(schemas=schemas, expected=expected_migrations())
    wanted = frozenset({(NEXT_APP, NEXT_MIGRATION)})
    if len(behind) != len(schemas) or any(m != wanted for m in behind.values()):
        raise SystemExit("rollback did not leave every tenant exactly one migration behind")
    columns, indexes = count_column_and_index(schemas)
    if columns or indexes:
        raise SystemExit(f"rollback left the column in {columns} and the index in {indexes} schemas")
    return time.perf_counter() - started


def child_next(args: argparse.Namespace) -> int:
    """Runs with BENCH_MIGRATIONS=next: every tenant is one migration behind."""
    common.setup_django(migrations="next")
    from tenants.deploy_migrate import migrate_tenants, tenant_schema_names

    size = len(tenant_schema_names())
    results: dict[str, Any] = {}
    for method in ("ours", "ours_noreplay", "baseline"):
        seconds = rollback_to_0001(args.jobs)
        log(f"   (all {size} tenants put back at 0001 in {seconds:.0f} s, untimed)")
        if method == "baseline":
            if size >= 1000 and not args.baseline_1000:
                results[method] = {"skipped": True, "seconds": float("nan"), "extrapolated": False}
                log("   django-tenants migrate_schemas: not run (--no-baseline-1000)")
                continue
            log(f"   django-tenants migrate_schemas (standard executor, budget {args.budget:.0f} s) ...")
            result = run_migrate_schemas(budget=args.budget, total_tenants=size)
            describe_extrapolation("django-tenants", result, size)
            if result["extrapolated"]:
                finish = migrate_tenants(jobs=args.jobs, migrate_public=False)
                log(f"   (the remaining {finish.behind} schemas finished by ours, untimed)")
            results[method] = result
            log(f"   django-tenants migrate_schemas: {fmt_seconds(result)} s")
        else:
            replay = method == "ours"
            report = migrate_tenants(jobs=args.jobs, replay=replay)
            if report.failed:
                raise SystemExit(f"BROKEN: {len(report.failed)} schemas failed: "
                                 f"{next(iter(report.failed.items()))}")
            results[method] = {"seconds": report.seconds_total, "extrapolated": False,
                               "behind": report.behind, "replayed": report.replayed,
                               "migrated": report.migrated, "check": report.seconds_check}
            log(f"   ours{'' if replay else ', replay=False'}: {report.seconds_total:.1f} s "
                f"(behind {report.behind}, replayed {report.replayed}, migrated {report.migrated}, "
                f"check {report.seconds_check:.2f} s)")
        verify_up_to_date(method, with_column=True)
    # Leave the tenants as the parent (0001 on disk) expects them.
    rollback_to_0001(args.jobs)
    print("RESULT " + json.dumps(results), flush=True)
    return 0


def one_migration(args: argparse.Namespace) -> dict[str, Any]:
    from django.db import connections

    connections.close_all()
    env = {**os.environ, "BENCH_MIGRATIONS": "next"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child-next", "--jobs", str(args.jobs),
           "--budget", str(args.budget),
           "--baseline-1000" if args.baseline_1000 else "--no-baseline-1000"]
    result: dict[str, Any] | None = None
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) as child:
        assert child.stdout is not None
        for line in child.stdout:
            if line.startswith("RESULT "):
                result = json.loads(line[len("RESULT "):])
            else:
                print(line, end="", flush=True)
    if child.returncode != 0 or result is None:
        raise SystemExit(f"the one-migration phase failed (exit {child.returncode})")
    return result


# --- main -------------------------------------------------------------------------------------

def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.child_next:
        return child_next(args)
    common.recreate_database()
    common.setup_django()
    common.migrate_shared()
    log("Deploy-time migrate benchmark (bench/migrate_tenants.py)")
    log(common.machine_info())
    log(f"sizes {args.sizes_list}; jobs {args.jobs}; django-tenants budget {args.budget:.0f} s; "
        f"baseline at 1000: {'on' if args.baseline_1000 else 'off'}")

    from tenants import schema_pool

    schema_pool.pool_refill(target_size=0)  # capture the template once (untimed)
    noop: dict[int, dict[str, Any]] = {}
    one: dict[int, dict[str, Any]] = {}
    total = time.perf_counter()
    try:
        for size in args.sizes_list:
            seconds = common.fill_tenants(target=size, prefix="fill")
            log(f"\n== {common.tenant_count()} tenants (fill took {seconds:.0f} s, untimed)")
            log(" -- nothing to apply")
            noop[size] = nothing_to_apply(size, args)
            log(" -- one new migration to apply (child process, BENCH_MIGRATIONS=next)")
            one[size] = one_migration(args)
    finally:
        purged = common.purge_bench_queue()
    report(args, noop, one)
    log(f"(run took {time.perf_counter() - total:.0f} s; {purged} queued pool-refill tasks purged)")
    return 0


def report(args: argparse.Namespace, noop: dict[int, dict[str, Any]], one: dict[int, dict[str, Any]]) -> None:
    rows = []
    for size, data in noop.items():
        ours = common.median(data["ours"])
        base = data["baseline"]
        rows.append([size, f"ours, jobs={args.jobs} (median of 3)", f"{ours:.2f}", "1.00x"])
        rows.append([size, "django-tenants migrate_schemas", fmt_seconds(base),
                     "n/a" if base.get("skipped") else common.ratio(base["seconds"], ours)])
    log("\nNothing to apply: seconds to migrate public + every tenant (all up to date)")
    log(common.table(["tenants", "method", "seconds", "vs ours"], rows))

    rows = []
    labels = {"ours": f"ours, jobs={args.jobs} (replay)",
              "ours_noreplay": f"ours, jobs={args.jobs}, replay=False",
              "baseline": "django-tenants migrate_schemas"}
    for size, data in one.items():
        ours = data["ours"]["seconds"]
        for method in ("ours", "ours_noreplay", "baseline"):
            result = data[method]
            rows.append([size, labels[method], fmt_seconds(result),
                         "n/a" if result.get("skipped") else common.ratio(result["seconds"], ours)])
    log("\nOne new migration (0002: a nullable column + an index on 5 models) to apply in every tenant:"
        " seconds, public + every tenant")
    log(common.table(["tenants", "method", "seconds", "vs ours"], rows))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
