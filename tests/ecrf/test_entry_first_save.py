"""A form's first save outside any transaction (as in production, where nothing wraps a
request in one): the entry, the visit's completion and the audit rows go to PostgreSQL as
ONE query of several statements, which it runs as one implicit transaction. Tested on
committed data in autocommit (no test transaction around it), which is the only place
this path differs from the savepoint it takes inside a caller's transaction."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.db import DataError, connection, transaction
from django.test.utils import CaptureQueriesContext

from config.errors import Conflict
from ecrf import audit, selectors
from ecrf import services as ecrf_services
from ecrf.models import Entry, Query, Signature
from ecrf.models_audit import AuditEvent
from ecrf.samples import VITALS
from ecrf.services import PreconditionFailed
from studies.models import FollowUpTask, TaskStatus
from tests.ecrf.committed import committed_ecrf_study
from tests.ecrf.test_entries import GOOD

pytestmark = pytest.mark.django_db

COORDINATOR = "coordinator@alpha.example.org"


@pytest.fixture(scope="module")
def committed_world(world, django_db_blocker):  # type: ignore[no-untyped-def]
    """Committed, in alpha: an active site with its coordinator, a study whose D3 visit
    (open today) collects VITALS, and a subject per test; removed afterwards."""
    with django_db_blocker.unblock(), committed_ecrf_study(
            world, site_code="FS1", study_code="FSS", roles=("coordinator",), definitions=(VITALS,),
            subjects=[str(n) for n in range(8)]) as data:
        yield {"form": data["forms"]["VITALS"], "tasks": [data["tasks"][str(n)] for n in range(8)],
               "subjects": [data["subjects"][str(n)] for n in range(8)]}


def _committed(act: Any, world: Any) -> Any:
    """`act` on a connection of its own, in autocommit and in alpha's schema (the test's
    own connection is inside the test's transaction)."""
    from tests.browser.server_env import committed

    return committed(act, tenant=world.alpha)


def _in_alpha(world: Any) -> None:
    connection.set_tenant(world.alpha)


def _audit_rows(subject_id: int) -> int:
    return AuditEvent.objects.filter(subject_id=subject_id).count()


def _put_capturing(client: Any, task: Any, form: Any, payload: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """PUT the form of the visit: (the 200 response's body, every SQL statement sent)."""
    with CaptureQueriesContext(connection) as sent:
        saved = client.put(f"/api/v1/tasks/{task.pk}/forms/{form.pk}/entry/", payload, format="json")
    assert saved.status_code == 200, saved.content
    return saved.json(), [q["sql"] for q in sent.captured_queries]


def test_an_api_first_save_is_one_statement_with_its_audit_and_the_visit_done(committed_world, world, api):
    task, form = committed_world["tasks"][0], committed_world["form"]

    def act() -> None:
        client = api(world.alpha, COORDINATOR)
        body, statements = _put_capturing(client, task, form, {"values": GOOD, "version": 0, "complete": True})
        assert not any("FOR UPDATE" in sql for sql in statements)  # no locking read: no row to lock yet
        writes = [sql for sql in statements if "ecrf_audit_append" in sql]
        assert len(writes) == 1 and 'INSERT INTO "ecrf_entry"' in writes[0] and "studies_followuptask" in writes[0]
        assert not any(sql.startswith("SAVEPOINT") for sql in statements)  # its own transaction, not a savepoint
        _in_alpha(world)
        entry = Entry.objects.get(task=task, form=form)
        assert entry.pk == body["entry"] and entry.version == 1 and entry.values["weight"] == 70.5
        assert FollowUpTask.objects.get(pk=task.pk).status == TaskStatus.COMPLETED
        assert _audit_rows(task.subject_id) == len(body["changed"]) + 1  # every item, then the completion
        assert audit.audit_chain_verify().ok
        assert client.delete("/api/v1/auth/token/current/").status_code in (200, 204)  # committed: revoke

    _committed(act, world)


def test_a_failing_append_leaves_neither_the_entry_nor_the_visit_done(committed_world, world, monkeypatch):
    """The audit append fails (a value too long for its column, in PostgreSQL): the
    entry's INSERT and the visit's UPDATE before it in the same query are rolled back."""
    task, form = committed_world["tasks"][1], committed_world["form"]
    real_payload = audit._row_payload

    def too_long(index: int, row: Any, problems: Any) -> dict[str, Any]:
        return {**real_payload(index, row, problems), "action": "x" * 41}

    def act() -> None:
        before = AuditEvent.objects.count()
        monkeypatch.setattr(audit, "_row_payload", too_long)
        with pytest.raises(DataError):
            _save(world, _target(world, task, form), values=GOOD, complete=True)
        monkeypatch.undo()
        assert not Entry.objects.filter(task=task).exists()
        assert FollowUpTask.objects.get(pk=task.pk).status != TaskStatus.COMPLETED
        assert AuditEvent.objects.count() == before
        # Nothing was left half done: the same save goes through now.
        _save(world, _target(world, task, form), values=GOOD, complete=True)
        assert Entry.objects.get(task=task).version == 1
        assert FollowUpTask.objects.get(pk=task.pk).status == TaskStatus.COMPLETED

    _committed(act, world)


def test_two_first_saves_that_both_read_no_entry_give_one_entry_and_a_412(committed_world, world):
    task, form = committed_world["tasks"][2], committed_world["form"]

    def act() -> None:
        first, second = _target(world, task, form), _target(world, task, form)  # both before either saves
        assert first.new_entry is not None and second.new_entry is not None
        _save(world, first, values=GOOD)
        audited = _audit_rows(task.subject_id)
        with pytest.raises(PreconditionFailed):
            _save(world, second, values={**GOOD, "weight": "71"})
        assert Entry.objects.filter(task=task).count() == 1
        assert Entry.objects.get(task=task).values["weight"] == 70.5
        assert _audit_rows(task.subject_id) == audited  # the refused save left no audit row
        assert audit.audit_chain_verify().ok

    _committed(act, world)


def test_a_first_save_that_raises_queries_takes_the_locked_path(committed_world, world, api):
    task, form = committed_world["tasks"][3], committed_world["form"]

    def act() -> None:
        client = api(world.alpha, COORDINATOR)
        body, statements = _put_capturing(client, task, form, {"values": {**GOOD, "weight": "30"}, "version": 0})
        assert body["queries_raised"] == 1
        assert any("FOR UPDATE" in sql for sql in statements)
        _in_alpha(world)
        assert Query.objects.filter(subject_id=task.subject_id, item="weight", status="open").count() == 1
        connection.set_schema_to_public()
        assert client.delete("/api/v1/auth/token/current/").status_code in (200, 204)  # committed: revoke

    _committed(act, world)


def test_a_slot_that_says_the_casebook_is_locked_refuses_the_save(committed_world, world):
    task, form = committed_world["tasks"][4], committed_world["form"]

    def act() -> None:
        target = _target(world, task, form)
        assert target.new_entry is not None
        locked = selectors.NewEntrySlot(casebook_locked=True, signed=False, new_id=target.new_entry.new_id)
        with pytest.raises(Conflict):
            ecrf_services.entry_save(subject=target.subject, task=target.task, form=target.form, values=GOOD,
                                     base_version=0, actor=_actor(world), current_version=target.version,
                                     new_entry=locked)
        assert not Entry.objects.filter(task=task).exists()

    _committed(act, world)


def _actor(world: Any) -> ecrf_services.Actor:
    user = world.users[COORDINATOR]
    return ecrf_services.Actor(user_id=user.pk, label=user.email, role="coordinator", source="api")


def _target(world: Any, task: Any, form: Any) -> selectors.EntryTarget:
    from tenants.models import TenantMembership

    membership = TenantMembership.objects.get(tenant=world.alpha, user=world.users[COORDINATOR])
    target = selectors.entry_target_get(membership=membership, task_id=task.pk, form_id=form.pk, for_save=True)
    assert target is not None
    return target


def _save(world: Any, target: selectors.EntryTarget, *, values: dict[str, Any], complete: bool = False) -> Any:
    return ecrf_services.entry_save(subject=target.subject, task=target.task, form=target.form, values=values,
                                    base_version=0, actor=_actor(world), complete=complete,
                                    current_version=target.version, new_entry=target.new_entry,
                                    context={"_today": dt.date.today().isoformat()})



# --- a casebook locked or signed after the save read it was not (the guard) ---------------------

def _lock_casebook(world: Any, subject: Any) -> None:
    manager = world.users["data_manager@alpha.example.org"]
    ecrf_services.casebook_lock_set(subject=subject, locked_state=True, reason="", actor=ecrf_services.Actor(
        user_id=manager.pk, label=manager.email, role="data_manager"))


def test_a_casebook_locked_after_the_target_was_read_refuses_the_save(committed_world, world):
    """The slot says "not locked" (read before the lock committed): the statement's guard
    sees the lock, nothing is written, and the locked path refuses with 409."""
    task, form, subject = committed_world["tasks"][5], committed_world["form"], committed_world["subjects"][5]

    def act() -> None:
        target = _target(world, task, form)
        assert target.new_entry is not None and not target.new_entry.casebook_locked
        _lock_casebook(world, subject)
        before = AuditEvent.objects.filter(subject_id=subject.pk).count()
        with pytest.raises(Conflict):
            _save(world, target, values=GOOD, complete=True)
        assert not Entry.objects.filter(task=task).exists()
        assert FollowUpTask.objects.get(pk=task.pk).status != TaskStatus.COMPLETED
        assert target.task.status != TaskStatus.COMPLETED  # not left "completed" in memory either
        assert AuditEvent.objects.filter(subject_id=subject.pk).count() == before

    _committed(act, world)


def test_a_casebook_signed_after_the_target_was_read_gets_its_signature_voided(committed_world, world):
    task, form, subject = committed_world["tasks"][6], committed_world["form"], committed_world["subjects"][6]

    def act() -> None:
        target = _target(world, task, form)
        assert target.new_entry is not None and not target.new_entry.signed
        investigator = world.users["investigator@alpha.example.org"]
        signature = Signature.objects.create(subject=subject, signer=investigator, signer_name="Dr I",
                                             meaning="review", content_hash="0" * 64)
        _save(world, target, values=GOOD, complete=True)  # the guard sends it down the locked path
        assert Entry.objects.get(task=task).version == 1
        assert FollowUpTask.objects.get(pk=task.pk).status == TaskStatus.COMPLETED
        signature.refresh_from_db()
        assert signature.invalidated_at is not None
        assert AuditEvent.objects.filter(subject_id=subject.pk, action="signature_invalidated").exists()

    _committed(act, world)


def test_signing_waits_for_the_audit_lock_so_no_earlier_save_is_left_out(committed_world, world):
    """A save whose append holds the audit lock has not committed yet: signing waits for
    it (then reads the casebook with that save in it) instead of signing without it."""
    import threading

    from tests.conftest import PASSWORD

    task, form, subject = committed_world["tasks"][7], committed_world["form"], committed_world["subjects"][7]
    _committed(lambda: _save(world, _target(world, task, form), values=GOOD, complete=True), world)
    held, release = threading.Event(), threading.Event()

    def hold_the_audit_lock() -> None:  # as a save between its append and its commit
        from django.db.models import F

        with transaction.atomic():
            audit.audit_lock()
            Entry.objects.filter(task=task).update(version=F("version") + 1)  # the save's change
            held.set()
            release.wait(30)

    investigator = world.users["investigator@alpha.example.org"]

    def sign() -> None:
        ecrf_services.casebook_sign(subject=subject, user=investigator, password=PASSWORD, meaning="review",
                                    signer_name="Dr I", actor=ecrf_services.Actor(
                                        user_id=investigator.pk, label=investigator.email, role="investigator"))

    failed: list[BaseException] = []

    def run(act: Any) -> None:
        try:
            _committed(act, world)
        except BaseException as error:  # shown by the assertions below
            failed.append(error)

    holder = threading.Thread(target=run, args=(hold_the_audit_lock,))
    holder.start()
    assert held.wait(30)
    signer = threading.Thread(target=run, args=(sign,))
    signer.start()
    try:
        waiting = False
        for _attempt in range(200):  # until the signer's backend waits on the advisory lock
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_stat_clear_snapshot()")  # else one snapshot per transaction
                cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                               "AND wait_event = 'advisory' AND datname = current_database()")
                waiting = cursor.fetchone()[0] > 0
            if waiting:
                break
            signer.join(0.05)
        assert waiting and signer.is_alive(), failed
    finally:
        release.set()
        holder.join(30)
        signer.join(30)
    assert not signer.is_alive() and not failed, failed
    signed, current = _committed(lambda: (
        Signature.objects.get(subject=subject, invalidated_at__isnull=True).content_hash,
        ecrf_services.casebook_hash(subject_id=subject.pk)), world)
    assert signed == current  # what was signed includes the save that held the lock
