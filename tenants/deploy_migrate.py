"""Deploy-time migration of every tenant schema, fast.

django-tenants' `migrate_schemas` runs Django's full `migrate` in every schema, even when
nothing is to be done; each run introspects the whole catalog, so the cost per schema
grows with the number of schemas (75 s for 300 up-to-date tenants measured here).

This module instead:

1. migrates `public` with django-tenants as usual;
2. finds the schemas that are behind with **one query** over every schema's
   `django_migrations`, compared with the migration files on disk;
3. groups the behind schemas by what they miss. For each group it migrates one schema
   for real while recording the SQL (tenants.schema_pool.record_statements). When the
   plan contains no RunPython (whose effect may depend on each schema's data), the
   recording is **replayed** into the other schemas of the group, in parallel threads,
   one transaction per schema. A replay that fails (say, a constraint that is named
   differently in an old schema) rolls back and that schema is migrated for real;
4. otherwise it migrates each schema for real, in parallel processes.

Spare schemas are not migrated: the pool drops stale spares and builds new ones.
"""

from __future__ import annotations

import multiprocessing
import time
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

import structlog
from django.core.management import call_command
from django.db import connections, transaction
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.operations.special import RunPython, SeparateDatabaseAndState

from config.db import tenant_connection as connection
from tenants.schema_pool import expected_migrations, quote_ident, record_statements

log = structlog.get_logger(__name__)

Key = tuple[str, str]


@dataclass
class MigrateReport:
    tenants_total: int = 0
    behind: int = 0
    replayed: int = 0
    migrated: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    seconds_check: float = 0.0
    seconds_total: float = 0.0


def tenant_schema_names() -> list[str]:
    from tenants.models import Tenant

    return list(
        Tenant.objects.exclude(schema_name="public").order_by("schema_name")
        .values_list("schema_name", flat=True)
    )


def schemas_behind(*, schemas: list[str], expected: set[Key]) -> dict[str, frozenset[Key]]:
    """{schema: migrations it lacks} for every schema that lacks any. One round trip."""
    if not schemas:
        return {}
    keys = sorted(f"{app}.{name}" for app, name in expected)
    # A schema without a django_migrations table lacks everything.
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relname = 'django_migrations' AND c.relkind = 'r' AND n.nspname = ANY(%s)",
            [schemas],
        )
        with_table = {row[0] for row in cursor.fetchall()}
        # Schema names come from the Tenant table and are quoted; identifiers cannot be
        # bound as parameters.
        parts = [
            f"SELECT {index}, m.app || '.' || m.name FROM {quote_ident(name)}.django_migrations m"  # noqa: S608
            for index, name in enumerate(schemas) if name in with_table
        ]
        applied: dict[str, set[str]] = defaultdict(set)
        if parts:
            cursor.execute(" UNION ALL ".join(parts))
            for index, key in cursor.fetchall():
                applied[schemas[index]].add(key)
    expected_keys = set(keys)
    behind: dict[str, frozenset[Key]] = {}
    for name in schemas:
        missing = expected_keys - applied.get(name, set())
        if missing:
            behind[name] = frozenset(tuple(key.split(".", 1)) for key in missing)  # type: ignore[misc]
    return behind


def _migrate_one(schema_name: str) -> None:
    call_command("migrate_schemas", tenant=True, schema_name=schema_name, interactive=False,
                 verbosity=0)
    connection.set_schema_to_public()


def _plan_is_replayable(schema_name: str) -> bool:
    connection.set_schema(schema_name)
    try:
        executor = MigrationExecutor(connection)
        plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    finally:
        connection.set_schema_to_public()

    def has_python(operations: Iterable[object]) -> bool:
        for op in operations:
            if isinstance(op, RunPython):
                return True
            if isinstance(op, SeparateDatabaseAndState) and has_python(op.database_operations):
                return True
        return False

    return not any(has_python(migration.operations) for migration, _backwards in plan)


def _replay_into(schema_name: str, script: str) -> str | None:
    """Replay `script` into one schema in its own transaction. Returns an error or None."""
    try:
        connection.set_schema_to_public()
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(f"SET LOCAL search_path TO {quote_ident(schema_name)}, public")
            cursor.execute(script)
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


def _replay_chunk(chunk: list[str], script: str) -> dict[str, str]:
    try:
        return {name: err for name in chunk if (err := _replay_into(name, script)) is not None}
    finally:
        connections.close_all()


def _real_migrate_worker(schema_name: str) -> tuple[str, str | None]:
    try:
        _migrate_one(schema_name)
        return schema_name, None
    except Exception as exc:
        return schema_name, f"{type(exc).__name__}: {exc}"


def _migrate_for_real(schemas: list[str], *, jobs: int) -> dict[str, str]:
    if not schemas:
        return {}
    if jobs <= 1 or len(schemas) == 1:
        return {n: e for n, e in map(_real_migrate_worker, schemas) if e}
    connections.close_all()  # never share a socket with forked children
    context = multiprocessing.get_context("fork")
    with context.Pool(processes=jobs, initializer=connections.close_all) as pool:
        results = pool.map(_real_migrate_worker, schemas, chunksize=max(1, len(schemas) // (jobs * 4)))
    return {n: e for n, e in results if e}


def migrate_tenants(*, jobs: int = 4, replay: bool = True, migrate_public: bool = True) -> MigrateReport:
    report = MigrateReport()
    started = time.perf_counter()
    if migrate_public:
        call_command("migrate_schemas", shared=True, interactive=False, verbosity=0)
    schemas = tenant_schema_names()
    report.tenants_total = len(schemas)
    behind = schemas_behind(schemas=schemas, expected=expected_migrations())
    report.seconds_check = time.perf_counter() - started
    report.behind = len(behind)

    groups: dict[frozenset[Key], list[str]] = defaultdict(list)
    for name, missing in behind.items():
        groups[missing].append(name)

    for members in groups.values():
        first, rest = members[0], members[1:]
        try:
            replayable = replay and bool(rest) and _plan_is_replayable(first)
            if replayable:
                with record_statements() as recorded:
                    _migrate_one(first)
        except Exception as exc:
            # The group's first schema failed: report it and migrate the others one by
            # one, so a single broken schema never stops the rest of the deploy.
            connection.set_schema_to_public()
            report.failed[first] = f"{type(exc).__name__}: {exc}"
            failed = _migrate_for_real(rest, jobs=jobs)
            report.migrated += len(rest) - len(failed)
            report.failed.update(failed)
            continue
        if replayable:
            report.migrated += 1
            script = ";\n".join(recorded) + ";\n" if recorded else ""
            failures: dict[str, str] = {}
            if jobs <= 1:
                # In this thread and connection (also what tests use).
                failures = {name: err for name in rest if (err := _replay_into(name, script)) is not None}
            else:
                chunks = [rest[i::jobs] for i in range(jobs) if rest[i::jobs]]
                with ThreadPoolExecutor(max_workers=len(chunks)) as pool:
                    for result in pool.map(partial(_replay_chunk, script=script), chunks):
                        failures.update(result)
            report.replayed += len(rest) - len(failures)
            for name, error in failures.items():
                log.warning("migrate.replay_failed", schema=name, error=error[:200])
            retry_failed = _migrate_for_real(sorted(failures), jobs=jobs)
            report.migrated += len(failures) - len(retry_failed)
            report.failed.update(retry_failed)
        else:
            failed = _migrate_for_real(members, jobs=jobs)
            report.migrated += len(members) - len(failed)
            report.failed.update(failed)

    connection.set_schema_to_public()
    report.seconds_total = time.perf_counter() - started
    log.info("migrate.done", tenants=report.tenants_total, behind=report.behind,
             replayed=report.replayed, migrated=report.migrated, failed=len(report.failed),
             seconds=round(report.seconds_total, 2))
    return report
