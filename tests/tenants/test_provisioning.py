"""Tenant provisioning: ready tenants, clear errors for bad input, nothing half-made."""

from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from config.errors import ValidationFailed
from tenants import schema_pool, services
from tenants.models import Domain, SpareSchema, Tenant, TenantMembership

pytestmark = pytest.mark.django_db

PASSWORD = "another-long-pass-42"


def _schema_exists(name: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [name])
        return cursor.fetchone() is not None


def _tables_in(schema: str) -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", [schema])
        return {row[0] for row in cursor.fetchall()}


def _create(**overrides):  # type: ignore[no-untyped-def]
    args = {"name": "Gamma Hospital", "slug": "gamma", "kind": "hospital",
            "admin_email": "Admin@Gamma.example.org", "admin_password": PASSWORD}
    args.update(overrides)
    return services.tenant_create(**args)


def test_created_tenant_is_ready_and_its_admin_can_log_in(web):
    tenant = _create()
    assert tenant.schema_name == "t_gamma"
    assert _schema_exists("t_gamma")
    # The tenant schema carries the tenant apps' tables (here the synthetic app).
    assert "synthetic_thing00" in _tables_in("t_gamma") and "django_migrations" in _tables_in("t_gamma")
    assert "tenants_tenant" not in _tables_in("t_gamma")
    assert Domain.objects.get(tenant=tenant).domain == "gamma.localhost"
    membership = TenantMembership.objects.get(tenant=tenant)
    assert (membership.user.email, membership.role) == ("admin@gamma.example.org", "tenant_admin")
    assert membership.user.password.startswith("argon2$argon2id$")
    response = web(tenant).post("/login/", {"email": "admin@gamma.example.org", "password": PASSWORD})
    assert response.status_code == 302


def test_creation_takes_a_spare_from_the_pool():
    schema_pool.pool_refill(target_size=2)
    spares_before = set(SpareSchema.objects.values_list("schema_name", flat=True))
    _create()
    spares_after = set(SpareSchema.objects.values_list("schema_name", flat=True))
    used = spares_before - spares_after
    assert len(used) == 1
    assert not _schema_exists(used.pop())  # renamed, not copied


def test_creation_builds_the_schema_when_the_pool_is_empty():
    for spare in list(SpareSchema.objects.all()):
        schema_pool.pool_drop_spare(spare=spare)
    tenant = _create(slug="gamma-two")
    assert "synthetic_thing24" in _tables_in(tenant.schema_name)


@pytest.mark.parametrize(
    ("overrides", "field", "fragment"),
    [
        ({"slug": "www"}, "slug", "reserved"),
        ({"slug": "public"}, "slug", "reserved"),
        ({"slug": "admin"}, "slug", "reserved"),
        ({"slug": "api"}, "slug", "reserved"),
        ({"slug": "template"}, "slug", "reserved"),
        ({"slug": "spare-abc"}, "slug", "reserved"),
        ({"slug": "pg-toast"}, "slug", "reserved"),
        ({"slug": "Has Space"}, "slug", "lower-case"),
        ({"slug": "under_score"}, "slug", "lower-case"),
        ({"slug": "ends-"}, "slug", "lower-case"),
        ({"slug": "double--hyphen"}, "slug", "lower-case"),
        ({"slug": "9starts-with-digit"}, "slug", "lower-case"),
        ({"slug": "ab"}, "slug", "lower-case"),
        ({"slug": "x" * 41}, "slug", "lower-case"),
        ({"slug": "drop;table"}, "slug", "lower-case"),
        ({"slug": "医院"}, "slug", "lower-case"),
        ({"name": "N" * 121}, "name", "at most 120"),
        ({"name": "   "}, "name", "Enter"),
        ({"kind": "pharmacy"}, "kind", "Choose one of"),
        ({"time_zone": "Mars/Olympus"}, "time_zone", "not a known time zone"),
        ({"default_language": "fr"}, "default_language", "zh-hans or en"),
        ({"admin_email": "not-an-email"}, "admin_email", "valid email"),
        ({"admin_password": "short"}, "admin_password", "too short"),
    ],
)
def test_bad_input_is_refused_with_a_field_message_and_nothing_is_made(overrides, field, fragment):
    tenants_before = Tenant.objects.count()
    spares_before = SpareSchema.objects.count()
    with pytest.raises(ValidationFailed) as caught:
        _create(**overrides)
    assert field in caught.value.fields
    assert any(fragment in message for message in caught.value.fields[field]), caught.value.fields
    assert Tenant.objects.count() == tenants_before
    assert SpareSchema.objects.count() == spares_before
    assert not _schema_exists("t_gamma")


def test_duplicate_slug_is_refused(world):
    with pytest.raises(ValidationFailed) as caught:
        _create(slug="alpha")
    assert "already taken" in caught.value.fields["slug"][0]


def test_failure_midway_leaves_no_schema_domain_or_membership(monkeypatch):
    schema_pool.pool_refill(target_size=2)
    spares_before = set(SpareSchema.objects.values_list("schema_name", flat=True))

    def broken_create(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("database went away while writing the domain")

    monkeypatch.setattr(Domain.objects, "create", broken_create)
    with pytest.raises(RuntimeError):
        _create()
    assert not Tenant.objects.filter(slug="gamma").exists()
    assert not Domain.objects.filter(domain="gamma.localhost").exists()
    assert not TenantMembership.objects.filter(user__email="admin@gamma.example.org").exists()
    assert not _schema_exists("t_gamma")
    # The spare it had claimed is back in the pool, untouched.
    assert set(SpareSchema.objects.values_list("schema_name", flat=True)) == spares_before
    assert all(_schema_exists(name) for name in spares_before)


def test_failure_midway_with_an_empty_pool_leaves_no_schema(monkeypatch):
    for spare in list(SpareSchema.objects.all()):
        schema_pool.pool_drop_spare(spare=spare)

    def broken_add(**kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("boom while adding the admin")

    monkeypatch.setattr(services, "_membership_add", broken_add)
    with pytest.raises(RuntimeError):
        _create()
    assert not _schema_exists("t_gamma")
    assert not Tenant.objects.filter(slug="gamma").exists()


def test_command_creates_a_tenant(monkeypatch, capsys):
    monkeypatch.setenv("NEW_ADMIN_PASSWORD", PASSWORD)
    call_command("tenant_create", "--name", "Delta CDC", "--slug", "delta", "--kind", "cdc",
                 "--admin-email", "boss@delta.example.org", "--admin-password-env", "NEW_ADMIN_PASSWORD")
    assert "delta.localhost" in capsys.readouterr().out
    assert Tenant.objects.get(slug="delta").kind == "cdc"


def test_command_reports_field_errors():
    with pytest.raises(CommandError) as caught:
        call_command("tenant_create", "--name", "X", "--slug", "www", "--kind", "cdc",
                     "--admin-email", "nope")
    text = str(caught.value)
    assert "slug:" in text and "reserved" in text and "admin_email:" in text


def test_replayed_schema_matches_a_migrated_schema():
    """The pool's replayed SQL must build exactly what Django's migrate builds."""
    from django.core.management import call_command as cc

    with connection.cursor() as cursor:
        cursor.execute('CREATE SCHEMA "cmp_migrated"')
    cc("migrate_schemas", tenant=True, schema_name="cmp_migrated", interactive=False, verbosity=0)
    connection.set_schema_to_public()
    schema_pool.schema_build(schema_name="cmp_replayed")

    def shape(schema: str) -> dict[str, list]:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT table_name, column_name, data_type, is_nullable, column_default IS NOT NULL "
                "FROM information_schema.columns WHERE table_schema = %s ORDER BY 1, 2", [schema])
            columns = cursor.fetchall()
            cursor.execute(
                "SELECT conname, contype, replace(pg_get_constraintdef(c.oid), %s, 'S') FROM pg_constraint c "
                "JOIN pg_namespace n ON n.oid = c.connamespace WHERE n.nspname = %s ORDER BY 1", [schema + '.', schema])
            constraints = cursor.fetchall()
            cursor.execute("SELECT indexname, replace(indexdef, %s, 'S') FROM pg_indexes "
                           "WHERE schemaname = %s ORDER BY 1", [schema, schema])
            indexes = cursor.fetchall()
            cursor.execute(f'SELECT app, name FROM "{schema}".django_migrations ORDER BY app, name')
            applied = cursor.fetchall()
        return {"columns": columns, "constraints": constraints, "indexes": indexes, "applied": applied}

    migrated, replayed = shape("cmp_migrated"), shape("cmp_replayed")
    assert len(migrated["columns"]) > 200 and len(migrated["indexes"]) > 50
    assert replayed == migrated


def test_pool_refill_drops_older_spares_but_keeps_spares_of_newer_code():
    """During a rolling deploy the old beat must not throw away the new code's spares."""
    from tenants.models import SchemaTemplate

    schema_pool.pool_refill(target_size=1)
    ours = sorted(f"{app}.{name}" for app, name in schema_pool.expected_migrations())
    SchemaTemplate.objects.create(fingerprint="older", statements={"sql": "", "migrations": ours[:-1]})
    SchemaTemplate.objects.create(fingerprint="newer", statements={"sql": "", "migrations": [*ours, "x.0099_next"]})
    for name, fingerprint in (("spare_older", "older"), ("spare_newer", "newer")):
        with connection.cursor() as cursor:
            cursor.execute(f'CREATE SCHEMA "{name}"')
        SpareSchema.objects.create(schema_name=name, fingerprint=fingerprint)

    schema_pool.pool_refill(target_size=1)

    assert not SpareSchema.objects.filter(fingerprint="older").exists() and not _schema_exists("spare_older")
    assert SpareSchema.objects.filter(fingerprint="newer").exists() and _schema_exists("spare_newer")
    # And this code never hands the newer spare out.
    tenant = _create()
    assert _schema_exists(tenant.schema_name) and _schema_exists("spare_newer")


def test_a_leftover_schema_blocks_its_address_with_a_clear_message():
    with connection.cursor() as cursor:
        cursor.execute('CREATE SCHEMA "t_ghost"')
    with pytest.raises(ValidationFailed) as refused:
        _create(slug="ghost")
    assert "already taken" in refused.value.fields["slug"][0]
