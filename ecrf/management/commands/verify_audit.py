"""Recompute the audit hash chain of every tenant schema (or one) and report each changed,
removed and inserted row. Exits non-zero when any schema has a problem.

    manage.py verify_audit                 # every schema holding an audit trail
    manage.py verify_audit --schema t_acme # one schema
"""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django_tenants.utils import schema_context

from config.db import tenant_connection as connection
from ecrf.audit import audit_chain_verify
from tenants.schema_pool import SCRATCH_SCHEMA_PREFIX, SPARE_SCHEMA_PREFIX

# Every schema that holds the partitioned audit table, but the pool's spares and the
# template recorder's scratch schemas (nobody writes there; they become tenants later).
_SCHEMAS_SQL = """
    SELECT n.nspname
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.relname = 'ecrf_auditevent' AND c.relkind = 'p'
       AND n.nspname NOT LIKE %s AND n.nspname NOT LIKE %s
     ORDER BY n.nspname
"""


def audit_schemas() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute(_SCHEMAS_SQL, [SPARE_SCHEMA_PREFIX + "%", SCRATCH_SCHEMA_PREFIX + "%"])
        return [name for (name,) in cursor.fetchall()]


class Command(BaseCommand):
    help = "Verify the audit trail's hash chain in every tenant schema (or --schema); non-zero exit on tampering."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--schema", action="append", help="only this schema (repeatable)")

    def handle(self, *args: Any, **opts: Any) -> None:
        available = audit_schemas()
        schemas = opts["schema"] or available
        unknown = [s for s in schemas if s not in available]
        if unknown:
            raise CommandError(f"no audit trail in schema(s): {', '.join(unknown)}")
        failed = []
        for schema in schemas:
            started = time.perf_counter()
            # Operator tooling that visits every tenant by design (like pii_rotate).
            with schema_context(schema):
                report = audit_chain_verify()
            seconds = time.perf_counter() - started
            summary = f"{schema}: {report.rows} row(s), head #{report.head_seq}, {seconds:.2f} s"
            if report.ok:
                self.stdout.write(f"{summary}: ok")
                continue
            failed.append(schema)
            self.stdout.write(self.style.ERROR(f"{summary}: {len(report.problems)} problem(s)"))
            for problem in report.problems:
                self.stdout.write(f"  {problem}")
        if failed:
            raise CommandError(f"audit chain broken in {len(failed)} schema(s): {', '.join(failed)}")
        self.stdout.write(self.style.SUCCESS(f"audit chain intact in {len(schemas)} schema(s)"))
