"""The eCRF audit trail (issue 4): item-level rows appended as one chain per tenant schema;
UPDATE, DELETE and TRUNCATE refused by PostgreSQL; every kind of tampering (done as a
superuser with the triggers off, the way an attacker with database access would) found by
`manage.py verify_audit`; two appenders at once still give one gapless chain; tenants'
trails are apart; monthly partitions exist ahead and rows land in theirs.

Tampering happens inside the test's transaction, so it is rolled back afterwards. The
concurrency test needs committed data: it builds a schema of its own from the tenant
template and drops it at the end (audit rows cannot be deleted)."""

from __future__ import annotations

import itertools
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import IntegrityError, connection, connections, transaction
from django.test.utils import CaptureQueriesContext

from config.errors import DomainError
from ecrf.audit import (
    AuditActor,
    AuditRow,
    audit_chain_verify,
    audit_partitions_ensure,
    audit_record,
    audit_record_many,
)
from ecrf.audit_selectors import audit_chain_head, audit_for_subject
from ecrf.models_audit import AuditAction, AuditEvent, AuditSource

pytestmark = pytest.mark.django_db

ACTOR = AuditActor(user_id=7, email="coordinator@alpha.example.org", name="Coordinator Wang")


def _form_save(subject_id: int = 1001, entry_id: int = 501, items: int = 5, reason: str = "") -> list[AuditRow]:
    """What saving one form writes: a row per changed item, then the completion."""
    rows = [AuditRow(action=AuditAction.ITEM_UPDATE if reason else AuditAction.ITEM_CREATE, source=AuditSource.WEB,
                     actor=ACTOR, subject_id=subject_id, entry_id=entry_id, event_code="M3", form_code="VITALS",
                     form_version=2, item=f"meds[{n}].dose" if n % 2 else f"item{n}",
                     old=n if reason else None, new={"value": n + 1, "unit": "mg"}, reason=reason)
            for n in range(items)]
    rows.append(AuditRow(action=AuditAction.ENTRY_COMPLETE, source=AuditSource.WEB, actor=ACTOR,
                         subject_id=subject_id, entry_id=entry_id, event_code="M3", form_code="VITALS",
                         form_version=2, detail={"entry_version": 3}))
    return rows


def _verify(schema: str) -> tuple[bool, str]:
    out = StringIO()
    try:
        call_command("verify_audit", schema=[schema], stdout=out)
    except CommandError as exc:
        return False, out.getvalue() + str(exc)
    return True, out.getvalue()


def _statements(queries: CaptureQueriesContext) -> list[str]:
    return [q["sql"] for q in queries.captured_queries if not q["sql"].startswith("SET search_path")]


def _sql(statement: str, params: list | None = None) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


def _tamper(statement: str, params: list | None = None) -> None:
    """As a superuser with every trigger off, for this transaction only."""
    _sql("SET LOCAL session_replication_role = replica")
    _sql(statement, params)
    _sql("SET LOCAL session_replication_role = origin")


@pytest.fixture
def alpha(world, in_tenant):  # type: ignore[no-untyped-def]
    in_tenant(world.alpha)
    return world.alpha


# --- appending ------------------------------------------------------------------------------

def test_a_form_save_is_one_insert_and_one_chain_link_per_item(alpha) -> None:
    head_before = audit_chain_head()
    assert head_before is not None
    with CaptureQueriesContext(connection) as queries:
        appended = audit_record_many(rows=_form_save(items=30))
    # One statement (the multi-row INSERT and the head update run inside it); django-tenants
    # may first set the search_path.
    assert len(_statements(queries)) == 1, queries.captured_queries

    start = head_before.last_seq
    assert [a.seq for a in appended] == list(range(start + 1, start + 32))
    rows = list(AuditEvent.objects.filter(seq__gt=start).order_by("seq"))
    assert [r.seq for r in rows] == [a.seq for a in appended]
    assert bytes(rows[0].prev_hash) == bytes(head_before.last_hash)
    for previous, row in itertools.pairwise(rows):
        assert bytes(row.prev_hash) == bytes(previous.hash)
    assert len({r.at for r in rows}) == 1 and rows[0].at.tzinfo is not None
    head = audit_chain_head()
    assert head is not None and head.last_seq == start + 31 and bytes(head.last_hash) == bytes(rows[-1].hash)

    first = rows[1]
    assert (first.action, first.source, first.user_id, first.user_email, first.user_name) == (
        "item_create", "web", 7, "coordinator@alpha.example.org", "Coordinator Wang")
    assert (first.subject_id, first.entry_id, first.event_code, first.form_code, first.form_version, first.item) == (
        1001, 501, "M3", "VITALS", 2, "meds[1].dose")
    assert first.old_value is None and first.new_value == {"value": 2, "unit": "mg"}
    assert rows[-1].action == "entry_complete" and rows[-1].detail == {"entry_version": 3}
    assert audit_chain_verify().ok


def test_values_keep_their_json_type_and_no_value_differs_from_null(alpha) -> None:
    appended = audit_record_many(rows=[
        AuditRow(action="item_update", source="api", actor=ACTOR, subject_id=1, item="weight", old=72.5, new=None,
                 reason="entered in the wrong patient"),
        AuditRow(action="item_update", source="import", actor=ACTOR, subject_id=1, item="notes",
                 old={"a": None, "b": [1, "二"]}, new="ok"),
        AuditRow(action="epro_submit", source="epro", actor=AuditActor.of(None), subject_id=1),
    ])
    rows = {r.seq: r for r in AuditEvent.objects.filter(seq__in=[a.seq for a in appended])}
    first, second, third = (rows[a.seq] for a in appended)
    assert (first.old_value, first.new_value, first.reason) == (72.5, None, "entered in the wrong patient")
    assert second.old_value == {"a": None, "b": [1, "二"]}
    assert third.user_id is None and third.user_email == ""
    assert audit_chain_verify().ok


def test_bad_rows_are_refused_with_field_messages_and_nothing_is_written(alpha) -> None:
    head = audit_chain_head()
    assert head is not None
    bad = [
        AuditRow(action="item_sneak", source="web", actor=ACTOR),
        AuditRow(action="item_create", source="fax", actor=ACTOR, item="x" * 201),
        AuditRow(action="item_create", source="web", actor=ACTOR, new=float("nan"), detail={"big": "y" * 5000}),
        AuditRow(action="item_create", source="web", actor=ACTOR, reason="nul\x00"),
    ]
    with pytest.raises(DomainError) as caught:
        audit_record_many(rows=bad)
    assert caught.value.code == "audit_invalid"
    assert set(caught.value.fields) == {"rows[0].action", "rows[1].source", "rows[1].item", "rows[2].new",
                                        "rows[2].detail", "rows[3].reason"}
    assert "item_sneak" in caught.value.fields["rows[0].action"][0]
    after = audit_chain_head()
    assert after is not None and after.last_seq == head.last_seq


def test_appending_needs_a_tenant_schema(world) -> None:
    connection.set_schema_to_public()
    with pytest.raises(RuntimeError, match="tenant schema"):
        audit_record(action="lock", source="web", actor=ACTOR, subject_id=1)


def test_actor_snapshot_comes_from_the_user_and_the_tenant_display_name(world, alpha) -> None:
    user = world.users["monitor@alpha.example.org"]
    actor = AuditActor.of(user, display_name="Monitor Li")
    assert (actor.user_id, actor.email, actor.name) == (user.pk, "monitor@alpha.example.org", "Monitor Li")
    assert AuditActor.of(None) == AuditActor(user_id=None)


# --- append-only ----------------------------------------------------------------------------

@pytest.mark.parametrize("statement", [
    "UPDATE ecrf_auditevent SET reason = 'rewritten' WHERE seq = %(seq)s",
    "DELETE FROM ecrf_auditevent WHERE seq = %(seq)s",
    "UPDATE {partition} SET new_value = '1' WHERE seq = %(seq)s",
    "DELETE FROM {partition} WHERE seq = %(seq)s",
    "TRUNCATE ecrf_auditevent",
    "TRUNCATE {partition}",
    "TRUNCATE ecrf_auditevent_default",
    "UPDATE ecrf_auditchainhead SET last_seq = 0",
    "UPDATE ecrf_auditchainhead SET last_seq = last_seq + 1",
    "DELETE FROM ecrf_auditchainhead",
    "TRUNCATE ecrf_auditchainhead",
])
def test_the_database_refuses_to_change_or_remove_audit_rows(alpha, statement: str) -> None:
    appended = audit_record(action="sdv_set", source="web", actor=ACTOR, subject_id=3, item="weight")
    (partition,) = _sql("SELECT tableoid::regclass::text FROM ecrf_auditevent WHERE seq = %s", [appended.seq])[0]
    with pytest.raises(IntegrityError, match="refused"), transaction.atomic():
        _sql(statement.format(partition=partition) % {"seq": appended.seq})
    assert AuditEvent.objects.filter(seq=appended.seq).exists()
    assert audit_chain_verify().ok


def test_a_partition_made_later_is_protected_too(alpha) -> None:
    audit_partitions_ensure(months_ahead=14)
    month = _month_start(datetime.now(UTC), 13)
    _forge_row_at(month + timedelta(days=3))
    partition = f"ecrf_auditevent_p{month:%Y_%m}"
    for statement in (f"UPDATE {partition} SET reason = 'x'", f"DELETE FROM {partition}", f"TRUNCATE {partition}"):
        with pytest.raises(IntegrityError, match="refused"), transaction.atomic():
            _sql(statement)


# --- tampering is found ---------------------------------------------------------------------

@pytest.fixture
def chain(alpha) -> list[int]:  # type: ignore[no-untyped-def]
    """Ten rows appended in three saves; their seqs."""
    seqs = [a.seq for a in audit_record_many(rows=_form_save(items=4))]
    seqs += [a.seq for a in audit_record_many(rows=_form_save(items=3, reason="typo"))]
    seqs += [audit_record(action="query_open", source="web", actor=ACTOR, subject_id=1001, item="item0").seq]
    assert len(seqs) == 10
    ok, out = _verify(alpha.schema_name)
    assert ok, out
    return seqs


def test_verify_reports_a_changed_row(alpha, chain) -> None:
    _tamper("UPDATE ecrf_auditevent SET new_value = '{\"value\": 99, \"unit\": \"mg\"}' WHERE seq = %s", [chain[4]])
    ok, out = _verify(alpha.schema_name)
    assert not ok
    assert f"CHANGED: seq {chain[4]}" in out and "does not match its hash" in out
    assert out.count("CHANGED") == 1 and "REMOVED" not in out and "INSERTED" not in out


def test_verify_reports_a_changed_row_even_when_its_hash_was_recomputed(alpha, chain) -> None:
    _tamper("UPDATE ecrf_auditevent e SET reason = 'nothing to see' WHERE seq = %s", [chain[4]])
    _tamper("UPDATE ecrf_auditevent e SET hash = ecrf_audit_row_hash(e) WHERE seq = %s", [chain[4]])
    ok, out = _verify(alpha.schema_name)
    assert not ok
    # The row itself now hashes fine; the next row no longer links to it.
    assert f"seq {chain[5]}" in out and "prev_hash does not match" in out


def test_verify_reports_a_changed_row_with_the_trigger_disabled_by_alter_table(alpha, chain) -> None:
    _sql("ALTER TABLE ecrf_auditevent DISABLE TRIGGER ecrf_auditevent_append_only")
    _sql("UPDATE ecrf_auditevent SET user_email = 'someone-else@example.org' WHERE seq = %s", [chain[0]])
    _sql("ALTER TABLE ecrf_auditevent ENABLE TRIGGER ecrf_auditevent_append_only")
    ok, out = _verify(alpha.schema_name)
    assert not ok and f"CHANGED: seq {chain[0]}" in out


def test_verify_reports_a_row_removed_from_the_middle(alpha, chain) -> None:
    _tamper("DELETE FROM ecrf_auditevent WHERE seq = %s", [chain[3]])
    ok, out = _verify(alpha.schema_name)
    assert not ok
    assert f"REMOVED: seq {chain[3]}: seq {chain[3]} missing (gap)" in out
    assert "INSERTED" not in out and "CHANGED" not in out  # the broken link is explained by the gap


def test_verify_reports_several_rows_removed_from_the_middle(alpha, chain) -> None:
    _tamper("DELETE FROM ecrf_auditevent WHERE seq BETWEEN %s AND %s", [chain[2], chain[5]])
    ok, out = _verify(alpha.schema_name)
    assert not ok and f"seq {chain[2]}..{chain[5]} missing (gap)" in out


def test_verify_reports_rows_removed_from_the_tail(alpha, chain) -> None:
    _tamper("DELETE FROM ecrf_auditevent WHERE seq >= %s", [chain[8]])
    ok, out = _verify(alpha.schema_name)
    assert not ok
    assert f"REMOVED: seq {chain[8]}: seq {chain[8]}..{chain[9]} missing: the chain ends before its head" in out


def test_verify_reports_the_last_row_removed_even_with_the_head_moved_back(alpha, chain) -> None:
    _tamper("DELETE FROM ecrf_auditevent WHERE seq = %s", [chain[9]])
    _tamper("UPDATE ecrf_auditchainhead SET last_seq = last_seq - 1")
    ok, out = _verify(alpha.schema_name)
    assert not ok and "the last row's hash differs from the chain head" in out


def test_verify_reports_a_forged_row_with_a_duplicate_seq(alpha, chain) -> None:
    # A well-formed forgery: same seq as a real row, linked to its predecessor, its own
    # hash correct. Only the next row's link tells which one is real.
    forged = _copy_row(chain[6], reason="'backdated correction'")
    _tamper("UPDATE ecrf_auditevent e SET hash = ecrf_audit_row_hash(e) WHERE id = %s", [forged])
    ok, out = _verify(alpha.schema_name)
    assert not ok
    assert f"INSERTED: seq {chain[6]} (id {forged}): a second row with this seq" in out
    assert out.count("INSERTED") == 1 and "CHANGED" not in out


def test_verify_reports_a_forged_row_beyond_the_head(alpha, chain) -> None:
    (head_seq,) = _sql("SELECT last_seq FROM ecrf_auditchainhead")[0]
    forged = _copy_row(chain[9], seq=str(head_seq + 1))
    _tamper("UPDATE ecrf_auditevent e SET prev_hash = decode(repeat('ab', 32), 'hex') WHERE id = %s", [forged])
    _tamper("UPDATE ecrf_auditevent e SET hash = ecrf_audit_row_hash(e) WHERE id = %s", [forged])
    ok, out = _verify(alpha.schema_name)
    assert not ok and f"INSERTED: seq {head_seq + 1} (id {forged}): row beyond the chain head" in out


def test_verify_reports_a_row_inserted_with_the_chain_renumbered_after_it(alpha, chain) -> None:
    # Shift the last row up by one and put a forged row in its place, hash fine, but the
    # shifted row now fails its own hash and the forged one is not linked properly.
    last = chain[9]
    _tamper("UPDATE ecrf_auditevent SET seq = seq + 1 WHERE seq = %s", [last])
    _tamper("UPDATE ecrf_auditchainhead SET last_seq = last_seq + 1")
    forged = _copy_row(last + 1, seq=str(last))
    _tamper("UPDATE ecrf_auditevent e SET prev_hash = decode(repeat('cd', 32), 'hex') WHERE id = %s", [forged])
    _tamper("UPDATE ecrf_auditevent e SET hash = ecrf_audit_row_hash(e) WHERE id = %s", [forged])
    ok, out = _verify(alpha.schema_name)
    assert not ok
    assert f"INSERTED: seq {last} (id {forged}): prev_hash does not match" in out
    assert f"CHANGED: seq {last + 1}" in out


def test_verify_command_checks_every_schema_by_default_and_exits_non_zero(world, alpha, chain) -> None:
    out = StringIO()
    call_command("verify_audit", stdout=out)
    assert world.alpha.schema_name in out.getvalue() and world.beta.schema_name in out.getvalue()
    _tamper("DELETE FROM ecrf_auditevent WHERE seq = %s", [chain[1]])
    with pytest.raises(CommandError, match=world.alpha.schema_name):
        call_command("verify_audit", stdout=StringIO())
    with pytest.raises(CommandError, match="no audit trail"):
        call_command("verify_audit", schema=["public"], stdout=StringIO())
    assert connection.schema_name == world.alpha.schema_name  # left where it was


# --- tenants ------------------------------------------------------------------------------

def test_tenants_have_separate_trails(world, in_tenant) -> None:
    in_tenant(world.alpha)
    alpha_head = audit_chain_head()
    audit_record_many(rows=[AuditRow(action="item_create", source="web", actor=ACTOR, subject_id=4242,
                                     form_code="AE", item="term", new="headache", reason="alpha")] * 3)
    in_tenant(world.beta)
    beta_head = audit_chain_head()
    assert beta_head is not None
    assert all(e.reason != "alpha" for e in audit_for_subject(subject_id=4242))
    beta_rows = audit_record_many(rows=[AuditRow(action="item_create", source="api", actor=ACTOR, subject_id=4242,
                                                 item="term", new="nausea", reason="beta")])
    assert beta_rows[0].seq == beta_head.last_seq + 1  # beta's own numbering
    assert [e.reason for e in audit_for_subject(subject_id=4242)] == ["beta"]
    (namespace,) = _sql("SELECT DISTINCT relnamespace::regnamespace::text FROM ecrf_auditevent e "
                        "JOIN pg_class c ON c.oid = e.tableoid")[0]
    assert namespace == world.beta.schema_name
    assert _verify(world.beta.schema_name)[0]
    in_tenant(world.alpha)
    assert {e.reason for e in audit_for_subject(subject_id=4242)} == {"alpha"}
    head = audit_chain_head()
    assert alpha_head is not None and head is not None and head.last_seq == alpha_head.last_seq + 3
    assert _verify(world.alpha.schema_name)[0]


# --- partitions ---------------------------------------------------------------------------

def _month_start(now: datetime, months: int) -> datetime:
    index = now.year * 12 + now.month - 1 + months
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def _partitions() -> dict[str, str]:
    rows = _sql("""SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i
                   JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'ecrf_auditevent'::regclass""")
    return dict(rows)


def _copy_row(of_seq: int, /, **changes: str) -> int:
    """Insert a copy of the row `of_seq`, with `changes` as SQL expressions per column
    (an INSERT needs no trigger off); returns its id."""
    columns = [c for (c,) in _sql("""SELECT attname FROM pg_attribute WHERE attrelid = 'ecrf_auditevent'::regclass
                                     AND attnum > 0 AND NOT attisdropped ORDER BY attnum""")]
    exprs = [changes.get(c, "nextval('ecrf_auditevent_id_seq')" if c == "id" else c) for c in columns]
    rows = _sql(f"INSERT INTO ecrf_auditevent ({', '.join(columns)}) SELECT {', '.join(exprs)} "
                "FROM ecrf_auditevent WHERE seq = %s ORDER BY id LIMIT 1 RETURNING id", [of_seq])
    return int(rows[0][0])


def _forge_row_at(at: datetime) -> str:
    (head_seq,) = _sql("SELECT last_seq FROM ecrf_auditchainhead")[0]
    rows = _sql("""INSERT INTO ecrf_auditevent (seq, at, action, source, prev_hash, hash)
                   VALUES (%s, %s, 'lock', 'web', decode(repeat('00', 32), 'hex'), decode(repeat('00', 32), 'hex'))
                   RETURNING tableoid::regclass::text""", [head_seq + 1000, at])
    return str(rows[0][0])


def test_the_migration_made_this_month_and_the_next_three(alpha) -> None:
    parts = _partitions()
    now = datetime.now(UTC)
    for ahead in range(4):
        month = _month_start(now, ahead)
        following = _month_start(now, ahead + 1)
        name = f"ecrf_auditevent_p{month:%Y_%m}"
        assert name in parts
        assert parts[name] == (f"FOR VALUES FROM ('{month:%Y-%m-%d} 00:00:00+00') "
                               f"TO ('{following:%Y-%m-%d} 00:00:00+00')")
    assert parts["ecrf_auditevent_default"] == "DEFAULT"


def test_partitions_are_created_ahead_and_rows_land_in_theirs(alpha) -> None:
    now = datetime.now(UTC)
    created = audit_partitions_ensure(months_ahead=6)
    assert created == [f"ecrf_auditevent_p{_month_start(now, n):%Y_%m}" for n in (4, 5, 6)]
    assert audit_partitions_ensure(months_ahead=6) == []  # idempotent
    indexes = {name for (name,) in _sql("SELECT indexdef FROM pg_indexes WHERE tablename = %s",
                                        [created[-1]])}
    assert any("(subject_id, at, seq)" in i for i in indexes) and any("(seq)" in i for i in indexes)
    assert not any("(entry_id" in i for i in indexes)  # reads name the subject (ecrf 0006)

    appended = audit_record(action="lock", source="web", actor=ACTOR, subject_id=9)
    (partition,) = _sql("SELECT tableoid::regclass::text FROM ecrf_auditevent WHERE seq = %s", [appended.seq])[0]
    assert partition == f"ecrf_auditevent_p{now:%Y_%m}"
    assert _forge_row_at(_month_start(now, 5) + timedelta(days=10, hours=5)) == created[1]
    assert _forge_row_at(_month_start(now, 30)) == "ecrf_auditevent_default"


def test_a_month_already_in_the_default_partition_is_skipped_not_broken(alpha) -> None:
    now = datetime.now(UTC)
    _forge_row_at(_month_start(now, 9) + timedelta(days=1))
    created = audit_partitions_ensure(months_ahead=10)
    assert f"ecrf_auditevent_p{_month_start(now, 9):%Y_%m}" not in created
    assert f"ecrf_auditevent_p{_month_start(now, 10):%Y_%m}" in created


def test_months_ahead_is_bounded(alpha) -> None:
    with pytest.raises(DomainError):
        audit_partitions_ensure(months_ahead=37)


def test_the_beat_task_is_scheduled_for_every_tenant_and_runs_in_the_tenant(alpha, tmp_path) -> None:
    from config.beat import SuifangBeatScheduler
    from config.celery import app
    from ecrf.tasks import audit_partitions_ensure as task

    scheduler = SuifangBeatScheduler(app=app, schedule_filename=str(tmp_path / "beat"), lazy=False)
    try:
        entry = scheduler.schedule["audit-partitions-ensure@__all_tenants_only__"]  # fanned out per tenant
        assert entry.task == task.name == "ecrf.tasks.audit_partitions_ensure"
    finally:
        scheduler.close()
    assert task.name in app.tasks
    made = task.run(months_ahead=5)
    assert made == [f"ecrf_auditevent_p{_month_start(datetime.now(UTC), n):%Y_%m}" for n in (4, 5)]


# --- the selector -------------------------------------------------------------------------

def test_audit_for_subject_pages_newest_first_with_filters(alpha) -> None:
    subject = 700_000 + uuid.uuid4().int % 100_000
    audit_record_many(rows=_form_save(subject_id=subject, entry_id=1, items=4))
    audit_record_many(rows=_form_save(subject_id=subject, entry_id=2, items=2, reason="typo"))
    audit_record(action="sign", source="web", actor=ACTOR, subject_id=subject, detail={"meaning": "review"})
    audit_record(action="item_create", source="web", actor=ACTOR, subject_id=subject + 1, item="item0")
    every = audit_for_subject(subject_id=subject)
    assert len(every) == 5 + 3 + 1
    assert [e.seq for e in every] == sorted((e.seq for e in every), reverse=True)
    assert every[0].action == "sign"

    with CaptureQueriesContext(connection) as queries:
        first = audit_for_subject(subject_id=subject, limit=4)
    assert len(_statements(queries)) == 1
    second = audit_for_subject(subject_id=subject, limit=4, before_seq=first[-1].seq)
    third = audit_for_subject(subject_id=subject, limit=4, before_seq=second[-1].seq)
    assert [e.seq for e in first + second + third] == [e.seq for e in every]

    assert {e.entry_id for e in audit_for_subject(subject_id=subject, entry_id=2)} == {2}
    assert [e.item for e in audit_for_subject(subject_id=subject, item="item0")] == ["item0", "item0"]
    assert len(audit_for_subject(subject_id=subject, form_code="VITALS")) == 8
    assert audit_for_subject(subject_id=subject, form_code="NOPE") == []


@pytest.mark.parametrize("kwargs", [{"limit": 0}, {"limit": 501}, {"before_seq": "5"}])
def test_audit_for_subject_refuses_bad_paging(alpha, kwargs) -> None:
    with pytest.raises(DomainError):
        audit_for_subject(subject_id=1, **kwargs)


# --- two appenders at once ----------------------------------------------------------------

@pytest.fixture(scope="module")
def committed_schemas(world, django_db_blocker) -> Iterator[list[str]]:  # type: ignore[no-untyped-def]
    """Two tenant-like schemas built from the template, committed, dropped afterwards."""
    from tenants import schema_pool

    names = [f"auditconc_{uuid.uuid4().hex[:10]}" for _ in range(2)]
    with django_db_blocker.unblock():
        for name in names:
            schema_pool.schema_build(schema_name=name)
    try:
        yield names
    finally:
        with django_db_blocker.unblock(), connections["default"].cursor() as cursor:
            connection.set_schema_to_public()
            for name in names:
                cursor.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture
def committed_schema(committed_schemas) -> str:  # type: ignore[no-untyped-def]
    return str(committed_schemas[0])


def test_two_appenders_at_once_make_one_gapless_valid_chain(committed_schema, django_db_blocker) -> None:
    saves_each, rows_per_save = 15, 6
    barrier = threading.Barrier(2)

    def appender(worker: int) -> list[int]:
        try:
            connection.set_schema(committed_schema)
            barrier.wait(timeout=30)
            seqs = []
            for save in range(saves_each):
                with transaction.atomic():
                    rows = _form_save(subject_id=worker, entry_id=save, items=rows_per_save - 1)
                    seqs += [a.seq for a in audit_record_many(rows=rows)]
            return seqs
        finally:
            connections.close_all()

    with django_db_blocker.unblock():
        connection.set_schema(committed_schema)
        head = audit_chain_head()
        connection.set_schema_to_public()
    assert head is not None
    base = head.last_seq
    with django_db_blocker.unblock(), ThreadPoolExecutor(max_workers=2) as pool:
        first, second = pool.map(appender, range(2))
    total = 2 * saves_each * rows_per_save
    assert sorted(first + second) == list(range(base + 1, base + total + 1))
    # Each save's rows are consecutive: appends never interleave inside one save.
    for seqs in (first, second):
        for start in range(0, len(seqs), rows_per_save):
            block = seqs[start:start + rows_per_save]
            assert block == list(range(block[0], block[0] + rows_per_save))

    with django_db_blocker.unblock():
        try:
            connection.set_schema(committed_schema)
            report = audit_chain_verify()
            assert report.ok, report.problems
            assert (report.rows, report.head_seq) == (base + total, base + total)
            ats = [at for (at,) in _sql("SELECT at FROM ecrf_auditevent ORDER BY seq")]
            assert ats == sorted(ats)  # time follows the chain
        finally:
            connection.set_schema_to_public()


def test_the_append_lock_is_held_to_commit_and_only_in_its_own_schema(committed_schemas, django_db_blocker) -> None:
    mine, other = committed_schemas
    appended = threading.Event()
    release = threading.Event()

    def holder() -> int:
        try:
            connection.set_schema(mine)
            with transaction.atomic():
                seq = audit_record(action="lock", source="web", actor=ACTOR, subject_id=1).seq
                appended.set()
                assert release.wait(timeout=30)
            return seq
        finally:
            connections.close_all()

    def append_in(schema: str) -> int | str:
        try:
            connection.set_schema(schema)
            with transaction.atomic():
                _sql("SET LOCAL lock_timeout = '500ms'")
                return audit_record(action="unlock", source="web", actor=ACTOR, subject_id=1).seq
        except Exception as exc:  # the lock timeout
            return type(exc).__name__ + ": " + str(exc).splitlines()[0]
        finally:
            connections.close_all()

    with django_db_blocker.unblock(), ThreadPoolExecutor(max_workers=3) as pool:
        held = pool.submit(holder)
        assert appended.wait(timeout=30)
        blocked = pool.submit(append_in, mine).result(timeout=30)
        elsewhere = pool.submit(append_in, other).result(timeout=30)
        release.set()
        held_seq = held.result(timeout=30)
        after = pool.submit(append_in, mine).result(timeout=30)
    assert isinstance(blocked, str) and "lock timeout" in blocked  # waits for the holder's commit
    assert isinstance(elsewhere, int)  # another tenant's trail is not held up
    assert after == held_seq + 1  # and nothing was consumed by the timed-out attempt
