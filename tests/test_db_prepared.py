"""config.db.execute_prepared: server-side prepared statements on a schema-per-tenant
database. The property tenant isolation rests on: a statement prepared while one
tenant's schema was current reads the current tenant's tables afterwards."""

from __future__ import annotations

import pytest
from django.db import connection, transaction

from config.db import execute_prepared
from sites.models import Site

pytestmark = pytest.mark.django_db

SQL = "SELECT code FROM sites_site WHERE code LIKE %(prefix)s ORDER BY code LIMIT %(limit)s"


def _codes(prefix: str = "%", limit: int = 10) -> list[str]:
    with connection.cursor() as cursor:
        execute_prepared(cursor, SQL, {"prefix": prefix, "limit": limit})
        return [code for (code,) in cursor.fetchall()]


def _site(code: str) -> None:
    Site.objects.create(code=code, name=code, institution="H", country_region="CN", principal_investigator="Dr",
                        target_enrolment=1, time_zone="Asia/Shanghai")


def test_a_prepared_statement_reads_the_current_tenants_tables(world, in_tenant):
    in_tenant(world.alpha)
    _site("ALPHA1")
    in_tenant(world.beta)
    _site("BETA1")
    before = set(getattr(connection, "_prepared_statements", (None, set()))[1])
    for _ in range(3):  # past the point where PostgreSQL may switch to a generic plan
        in_tenant(world.alpha)
        assert _codes() == ["ALPHA1"]
        in_tenant(world.beta)
        assert _codes() == ["BETA1"]
    # Prepared once per connection, not once per tenant or per call.
    assert len(connection._prepared_statements[1] - before) <= 1


def test_parameters_by_name_and_repeated_names(world, in_tenant):
    in_tenant(world.alpha)
    for code in ("A1", "A2", "B1"):
        _site(code)
    assert _codes("A%", 1) == ["A1"]
    assert _codes("A%", 5) == ["A1", "A2"]
    with connection.cursor() as cursor:
        execute_prepared(cursor, "SELECT %(n)s::int + %(n)s::int + %(m)s::int", {"n": 2, "m": 3})
        assert cursor.fetchone() == (7,)


def test_survives_a_rollback_and_starts_over_on_a_new_connection(world, in_tenant):
    in_tenant(world.alpha)
    _site("R1")
    with pytest.raises(RuntimeError), transaction.atomic():
        assert _codes() == ["R1"]  # prepared inside a transaction that rolls back
        raise RuntimeError
    assert _codes() == ["R1"]  # prepared statements outlive the transaction
    # A new database session has nothing prepared; its connection object is another one.
    with connection.cursor() as cursor:
        cursor.execute("DEALLOCATE ALL")
    connection._prepared_statements = (object(), connection._prepared_statements[1])
    assert _codes() == ["R1"]
    assert connection._prepared_statements[0] is connection.connection


def test_a_reused_server_session_that_still_holds_the_statement_works(world, in_tenant):
    """Behind a session-pooling proxy without a reset query, a "new" connection may be an
    old server session: PREPARE of an existing name would fail, so it is not repeated."""
    in_tenant(world.alpha)
    _site("P1")
    assert _codes() == ["P1"]  # prepared on this session
    connection._prepared_statements = (object(), set())  # as if a new client connection
    assert _codes() == ["P1"]  # no "prepared statement already exists"
