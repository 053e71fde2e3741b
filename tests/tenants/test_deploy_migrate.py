"""Deploy-time migrate: find behind schemas in one query, replay where safe, never let
one broken schema stop the others."""

from __future__ import annotations

import pytest
from django.db import connection

from tenants import deploy_migrate, schema_pool, services
from tenants.deploy_migrate import migrate_tenants, schemas_behind, tenant_schema_names

pytestmark = pytest.mark.django_db

NEXT = {"synthetic": "bench.synthetic.migrations_next"}  # adds synthetic.0002_reviewed_at


def _make_tenants(count: int) -> list[str]:
    return [services.tenant_create(name=f"Mig {i}", slug=f"mig-{i}", kind="hospital",
                                   admin_email=f"admin{i}@mig.example.org").schema_name
            for i in range(count)]


def _columns(schema: str, table: str) -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT column_name FROM information_schema.columns "
                       "WHERE table_schema = %s AND table_name = %s", [schema, table])
        return {row[0] for row in cursor.fetchall()}


def test_up_to_date_schemas_are_found_in_one_query(django_assert_max_num_queries):
    _make_tenants(2)
    schemas = tenant_schema_names()
    expected = schema_pool.expected_migrations()
    # The catalog lookup and one UNION ALL over every schema (plus django-tenants' SET
    # search_path when the connection has not set it yet): the count does not grow with
    # the number of tenants.
    with django_assert_max_num_queries(3):
        assert schemas_behind(schemas=schemas, expected=expected) == {}


def test_a_new_migration_is_applied_everywhere_by_replay(settings):
    made = _make_tenants(3)
    settings.MIGRATION_MODULES = NEXT
    schemas = tenant_schema_names()
    behind = schemas_behind(schemas=schemas, expected=schema_pool.expected_migrations())
    assert set(behind) == set(schemas) and set(made) <= set(schemas)
    assert all(missing == {("synthetic", "0002_reviewed_at")} for missing in behind.values())

    report = migrate_tenants(jobs=1, migrate_public=False)

    assert report.failed == {}
    assert (report.migrated, report.replayed) == (1, len(schemas) - 1)
    assert schemas_behind(schemas=schemas, expected=schema_pool.expected_migrations()) == {}
    for schema in schemas:
        assert "reviewed_at" in _columns(schema, "synthetic_thing05")


def test_one_broken_schema_does_not_stop_the_others(settings, monkeypatch):
    made = _make_tenants(3)
    settings.MIGRATION_MODULES = NEXT
    schemas = tenant_schema_names()
    first = schemas[0]

    def broken_plan(schema_name: str) -> bool:
        raise RuntimeError(f"cannot read the plan of {schema_name}")

    monkeypatch.setattr(deploy_migrate, "_plan_is_replayable", broken_plan)
    report = migrate_tenants(jobs=1, migrate_public=False)

    assert set(report.failed) == {first}
    assert report.migrated == len(schemas) - 1
    for schema in schemas[1:]:
        assert "reviewed_at" in _columns(schema, "synthetic_thing00")
    assert set(made) <= set(schemas)


def test_a_schema_whose_replay_fails_is_migrated_for_real(settings, monkeypatch):
    _make_tenants(2)
    settings.MIGRATION_MODULES = NEXT
    schemas = tenant_schema_names()
    victim = schemas[-1]
    real_replay = deploy_migrate._replay_into

    def replay(schema_name: str, script: str) -> str | None:
        return "ProgrammingError: constraint named differently" if schema_name == victim else real_replay(
            schema_name, script)

    monkeypatch.setattr(deploy_migrate, "_replay_into", replay)
    report = migrate_tenants(jobs=1, migrate_public=False)
    assert report.failed == {}
    assert report.replayed == len(schemas) - 2 and report.migrated == 2
    assert "reviewed_at" in _columns(victim, "synthetic_thing00")


def test_fingerprint_changes_when_a_migration_is_edited_under_the_same_name(monkeypatch):
    from pathlib import Path

    before = schema_pool.migration_fingerprint()
    real_read = Path.read_bytes

    def edited(self: Path) -> bytes:
        data = real_read(self)
        return data + b"\n# edited" if self.name == "0001_initial.py" and "synthetic" in str(self) else data

    monkeypatch.setattr(Path, "read_bytes", edited)
    assert schema_pool.migration_fingerprint() != before
