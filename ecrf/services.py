"""Writes of the eCRF: form drafts and publishing, data entry with optimistic
concurrency and reasons for change, queries, source data verification, locks and
signatures. Every change of clinical data is audited item by item (ecrf.audit) in the
same transaction."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import structlog
from django.core.cache import cache
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone
from django.utils.translation import gettext as _

from config.db import execute_prepared, insert_statement, instance_from_row, update_statement
from config.errors import Conflict, DomainError, NotFound, PermissionDenied, ValidationFailed
from ecrf import audit
from ecrf.definition import definition_validate, iter_items
from ecrf.models import (
    CasebookLock,
    Entry,
    EntryStatus,
    FormDefinition,
    FormVersion,
    FormVersionStatus,
    Query,
    QueryMessage,
    QueryOrigin,
    QueryStatus,
    Signature,
)
from ecrf.selectors import NewEntrySlot
from ecrf.validation import Evaluation, entry_evaluate, flatten_values, item_code_of

log = structlog.get_logger(__name__)

SOURCES = ("web", "api", "import", "epro")
MAX_REASON = 1000


class PreconditionFailed(DomainError):
    """The entry changed since the version the client edited (HTTP 412)."""

    status_code = 412


@dataclass
class Actor:
    """Who does something, for permissions and the audit trail. `user_id` is None for a
    patient answering through an ePRO link."""

    user_id: int | None
    label: str
    role: str
    source: str = "web"
    display_name: str = ""

    @property
    def audit(self) -> audit.AuditActor:
        return audit.AuditActor(user_id=self.user_id, email=self.label if self.user_id else "",
                                name=self.display_name or ("" if self.user_id else self.label))


# --- forms -----------------------------------------------------------------------------------

def form_draft_save(*, study: Any, definition: Any, actor: Actor, note: str = "") -> FormVersion:
    """Create or replace the draft of a form (its code comes from the definition).
    Validated in full: a draft that could not be published is refused now."""
    problems = definition_validate(definition)
    if len(note or "") > 500:
        problems.setdefault("note", []).append(_("At most 500 characters."))
    if problems:
        raise ValidationFailed({f"definition.{path}" if path != "note" else path: messages
                                for path, messages in problems.items()})
    with transaction.atomic():
        form, _created = FormDefinition.objects.get_or_create(study_id=study.pk, code=definition["code"])
        form = FormDefinition.objects.select_for_update().get(pk=form.pk)
        draft = form.versions.filter(status=FormVersionStatus.DRAFT).first()
        if draft is None:
            latest = form.versions.order_by("-number").first()
            draft = FormVersion(form=form, number=(latest.number + 1) if latest else 1)
        draft.definition = definition
        draft.note = note or ""
        draft.save()
    return draft


def form_publish(*, version: FormVersion, actor: Actor) -> FormVersion:
    with transaction.atomic():
        locked = FormVersion.objects.select_for_update().select_related("form").get(pk=version.pk)
        if locked.status == FormVersionStatus.PUBLISHED:
            raise Conflict("form_published", _("This version is already published."))
        locked.status = FormVersionStatus.PUBLISHED
        locked.published_at = timezone.now()
        locked.published_by_id = actor.user_id
        locked.save(update_fields=["status", "published_at", "published_by"])
        audit.audit_record_many(rows=[audit.AuditRow(
            action="form_publish", actor=actor.audit, source=actor.source,
            form_code=locked.form.code, form_version=locked.number, new={"number": locked.number})])
    log.info("form.published", form_id=locked.form_id, version=locked.number)
    return locked


def form_current_version(*, form: FormDefinition) -> FormVersion | None:
    return form.versions.filter(status=FormVersionStatus.PUBLISHED).order_by("-number").first()


# --- entries ---------------------------------------------------------------------------------

def _changes(old: Entry | None, evaluation: Evaluation) -> dict[str, tuple[Any, Any]]:
    """Item path -> (old, new) for every value or missing-data code that changes."""
    before = {**flatten_values(old.values), **{p: {"missing": c} for p, c in old.missing.items()}} if old else {}
    after = {**flatten_values(evaluation.values), **{p: {"missing": c} for p, c in evaluation.missing.items()}}
    return {path: (before.get(path), after.get(path)) for path in sorted(set(before) | set(after))
            if before.get(path) != after.get(path)}


@dataclass
class SaveResult:
    entry: Entry
    version: FormVersion
    hard: dict[str, list[str]] = field(default_factory=dict)
    queries_raised: int = 0
    queries_closed: int = 0
    changed: list[str] = field(default_factory=list)


@contextlib.contextmanager
def _first_save_race() -> Iterator[None]:
    """Two first saves of the same form at once both find no entry; the second INSERT
    meets the first one's row (entry_task_form_uniq) at commit of its batch: a 412, like
    any save that lost a race, never a 500. Wraps the transaction, so it has rolled back."""
    try:
        yield
    except IntegrityError as error:
        diag = getattr(error.__cause__, "diag", None)
        if getattr(diag, "constraint_name", None) == "entry_task_form_uniq":
            raise PreconditionFailed(
                "precondition_failed",
                _("Someone else saved this form after you opened it. Reload it; your changes are kept "
                  "in the page."), fields={"version": [_("Changed by someone else.")]}) from error
        raise


def entry_save(
    *, subject: Any, task: Any, form: FormDefinition, values: Any, missing: Any = None, base_version: int | None,
    actor: Actor, complete: bool = False, reason: str = "", reasons: dict[str, str] | None = None,
    context: dict[str, Any] | None = None, language: str = "en", current_version: FormVersion | None = None,
    new_entry: NewEntrySlot | None = None,
) -> SaveResult:
    """Save one form of one event occurrence (whole-form values: what is not given is
    empty). Malformed input saves nothing (400). Hard problems are returned and only
    block `complete`. Soft problems raise queries. A save based on an older version of
    the entry is refused with 412 and the items changed since, never merged silently.
    After the first completion every change needs a reason. All in one transaction.

    `new_entry`: the caller read, without a lock, that the form has no entry yet (the
    view's target read). A first save that then needs nothing but its own writes (no
    query to raise, no signature to void, no visit to re-plan) sends them all in ONE
    statement outside any open transaction: PostgreSQL runs a multi-statement query as one
    implicit transaction, so it saves the BEGIN, locking read and COMMIT round trips of
    the hottest write. The unique (task, form) row decides a race (412); a casebook
    locked or signed since the read is caught after the audit lock (_casebook_guard)
    and the save is done again on the locked path."""
    if actor.source not in SOURCES:
        raise ValidationFailed({"source": [_("Unknown source.")]})
    reasons = reasons or {}
    if len(reason or "") > MAX_REASON or any(len(str(r)) > MAX_REASON for r in reasons.values()):
        raise ValidationFailed({"reason": [_("At most %(max)d characters.") % {"max": MAX_REASON}]})
    if task.subject_id != subject.pk:
        raise ValidationFailed({"task": [_("This visit belongs to another subject.")]})
    if form.study_id != subject.study_id:
        raise ValidationFailed({"form": [_("This form belongs to another study.")]})
    given = _SaveInput(subject=subject, task=task, form=form, values=values, missing=missing,
                       base_version=base_version, actor=actor, complete=complete, reason=reason or "",
                       reasons=reasons, context=context, language=language, current_version=current_version)
    evaluated: Evaluation | None = None
    if new_entry is not None and not new_entry.signed:
        plan = _save_plan(_EntryState(entry=None, casebook_locked=new_entry.casebook_locked, signed=False,
                                      new_id=new_entry.new_id), given)
        if _first_save_direct(plan, given):
            return _saved(plan)
        evaluated = plan.evaluation  # the same input: the locked path need not evaluate it again
    with _first_save_race(), _casebook_changed(), _task_restored_on_error(task), transaction.atomic():
        state = _entry_for_update(task_id=task.pk, form_id=form.pk, subject_id=subject.pk)
        plan = _save_plan(state, given, evaluated=evaluated if state.entry is None else None)
        if plan.entry_write is None:
            return _saved(plan)
        entry, rows, result = plan.entry, plan.rows, plan.result
        if plan.changes and state.signed:
            rows.extend(_invalidate_signatures(subject_id=subject.pk, actor=actor,
                                               why=_("Signed data changed (%(form)s).") % {"form": form.code}))
        if not plan.creating or plan.evaluation.soft:  # a new entry has no queries to close yet
            result.queries_raised, result.queries_closed = _sync_auto_queries(entry, subject, plan.evaluation,
                                                                              actor, rows)
        # The visit's completion goes with the audit append, in one round trip.
        task_statements = _task_completion(task=task, subject=subject, form_code=form.code) if complete else []
        if task_statements is None:
            _task_complete_replanning(task=task, subject=subject)
            task_statements = []
        # Last write before commit: from the append on, other saves in this tenant wait.
        audit.audit_record_many(rows=rows, preceded_by=[plan.entry_write, *task_statements],
                                followed_by=[_casebook_guard(subject.pk, changed=bool(plan.changes))])
    return _saved(plan)


def _first_save_direct(plan: _SavePlan, given: _SaveInput) -> bool:
    """Send a first save's writes, its visit's completion and its audit rows as one
    statement (entry_save). False, with nothing written and `task` as it was, when the
    save needs the locked path: queries to raise, a visit to re-plan, nothing to audit
    (no audit lock to order it after a casebook lock), or a casebook locked or signed
    since the caller's read."""
    task = given.task
    if plan.evaluation.soft or plan.entry_write is None:
        return False
    try:
        with _task_restored_on_error(task):
            statements: list[tuple[str, list[Any]]] = []
            if given.complete:
                completion = _task_completion(task=task, subject=given.subject, form_code=given.form.code)
                if completion is None:  # re-planning writes through the ORM
                    return False
                statements = completion
            writes = [plan.entry_write, *statements]
            guard = [_casebook_guard(given.subject.pk, changed=True)]
            with _first_save_race(), _casebook_changed(retry=True):
                if connection.in_atomic_block or not connection.get_autocommit():
                    with transaction.atomic():  # within the caller's transaction: a savepoint
                        audit.audit_record_many(rows=plan.rows, preceded_by=writes, followed_by=guard)
                else:
                    audit.audit_commit_with(rows=plan.rows, preceded_by=writes, followed_by=guard)
    except _CasebookChanged:
        return False
    return True


_TASK_COMPLETION_FIELDS = ("status", "completed_on", "updated")


@contextlib.contextmanager
def _task_restored_on_error(task: Any) -> Iterator[None]:
    """The completion statement marks `task` completed in memory before it is sent: put
    back what was loaded if the save fails (a deferred field is left deferred: reading it
    here would cost a query)."""
    kept = {name: task.__dict__[name] for name in _TASK_COMPLETION_FIELDS if name in task.__dict__}
    try:
        yield
    except BaseException:
        for name in _TASK_COMPLETION_FIELDS:
            if name in kept:
                setattr(task, name, kept[name])
            else:
                task.__dict__.pop(name, None)
        raise


class _CasebookChanged(Exception):
    """The casebook was locked, or signed, after the save read that it was not."""


_GUARD_SQLSTATE = "SF409"  # raised by ecrf_casebook_open (ecrf migration 0007)


def _casebook_guard(subject_id: int, *, changed: bool) -> tuple[str, list[Any]]:
    """The statement that fails (SQLSTATE SF409) if the subject's casebook is locked, or,
    when the save changed data, signed. Sent after the audit append: by then every lock
    or signature that came first has committed (each takes the audit lock) and is seen."""
    return "SELECT ecrf_casebook_open(%s, %s)", [subject_id, changed]


@contextlib.contextmanager
def _casebook_changed(*, retry: bool = False) -> Iterator[None]:
    """The guard's failure: with `retry`, _CasebookChanged (the direct path falls back to
    the locked one, which reads the lock or signature itself); else a 409, someone locked
    or signed the casebook while this save ran."""
    try:
        yield
    except DatabaseError as error:
        if getattr(error.__cause__, "pgcode", None) != _GUARD_SQLSTATE:
            raise
        if retry:
            raise _CasebookChanged from error
        raise Conflict("locked", _("The casebook was locked or signed while you were saving. Reload the form; "
                                   "your changes are kept in the page.")) from error


@dataclass
class _SaveInput:
    subject: Any
    task: Any
    form: FormDefinition
    values: Any
    missing: Any
    base_version: int | None
    actor: Actor
    complete: bool
    reason: str
    reasons: dict[str, str]
    context: dict[str, Any] | None
    language: str
    current_version: FormVersion | None


@dataclass
class _SavePlan:
    entry: Entry
    creating: bool
    evaluation: Evaluation
    changes: dict[str, tuple[Any, Any]]
    entry_write: tuple[str, list[Any]] | None  # None: nothing changes, nothing to write
    rows: list[audit.AuditRow]
    result: SaveResult


def _save_plan(state: _EntryState, given: _SaveInput, *, evaluated: Evaluation | None = None) -> _SavePlan:
    """Everything a save decides before it writes: refusals (locked, 412, malformed, a
    missing reason, hard problems on completion), the entry's new state, its write
    statement and the audit rows of its item changes. Writes nothing."""
    form, task, subject, actor = given.form, given.task, given.subject, given.actor
    base_version, complete, reason, reasons = given.base_version, given.complete, given.reason, given.reasons
    current_version = given.current_version
    entry = state.entry
    if state.casebook_locked or (entry is not None and entry.locked):
        raise Conflict("locked", _("This record is locked; a data manager must unlock it first."))
    if entry is None:
        if base_version not in (None, 0):
            raise PreconditionFailed("precondition_failed", _("This entry does not exist yet."),
                                     fields={"version": [_("Start from an empty form (version 0).")]})
        # The caller may already have read the current published version (the view does).
        version = current_version if current_version is not None and current_version.form_id == form.pk and \
            current_version.status == FormVersionStatus.PUBLISHED else form_current_version(form=form)
        if version is None:
            raise Conflict("form_not_published", _("This form has no published version yet."))
    else:
        if base_version is None:
            raise ValidationFailed({"version": [_("Say which version of the entry you edited.")]})
        if base_version != entry.version:
            changed_since = sorted(path for path, at in entry.item_versions.items() if at > base_version)
            raise PreconditionFailed(
                "precondition_failed",
                _("Someone else saved this form after you opened it. Reload it; your changes are kept "
                  "in the page."),
                fields={path: [_("Changed by someone else.")] for path in changed_since} or
                {"version": [_("The entry is now at version %(v)d.") % {"v": entry.version}]})
        version = current_version if current_version is not None and \
            current_version.pk == entry.form_version_id else _form_version_of(entry)
        entry.form, entry.form_version = form, version  # the same rows: saves reading them again
    evaluation = evaluated or _evaluation(given, version, subject_id=subject.pk)
    changes = _changes(entry, evaluation)
    calculated = {i["code"] for i in iter_items(version.definition.get("items") or [])
                  if i.get("type") == "calculated"}
    if entry is not None and entry.first_completed_at is not None and changes:
        # Calculated items follow their inputs: the input's reason covers them.
        lacking = [p for p in changes if not (reasons.get(p) or reason or "").strip()
                   and item_code_of(p) not in calculated]
        if lacking:
            raise ValidationFailed({p: [_("Give a reason for this change.")] for p in lacking})
    if complete and evaluation.hard:
        raise ValidationFailed(evaluation.hard, message=_("Fix the items marked before completing the form."))
    if entry is not None and not changes and not (complete and entry.status != EntryStatus.COMPLETE):
        # Nothing changes: nothing is written or audited, and the version stays.
        return _SavePlan(entry=entry, creating=False, evaluation=evaluation, changes={}, entry_write=None, rows=[],
                         result=SaveResult(entry=entry, version=version, hard=evaluation.hard))
    now = timezone.now()
    creating = entry is None
    if entry is None:
        entry = Entry(subject_id=subject.pk, task_id=task.pk, form=form, form_version=version, version=0)
    entry.version += 1
    entry.values, entry.missing = evaluation.values, evaluation.missing
    for path in changes:
        entry.item_versions[path] = entry.version
        entry.verified.pop(path, None)
    if complete and entry.status != EntryStatus.COMPLETE:
        entry.status = EntryStatus.COMPLETE
        entry.completed_at = now
        entry.first_completed_at = entry.first_completed_at or now
    # Written with the audit append, in one round trip (foreign keys to the entry are
    # checked at commit, so queries raised before the INSERT may refer to it).
    if creating:
        entry.pk = state.new_id
        entry_write = insert_statement(entry)
    else:
        entry_write = update_statement(entry, fields=(
            "status", "values", "missing", "item_versions", "verified", "version", "first_completed_at",
            "completed_at"))
    rows = [audit.AuditRow(
        action="item_create" if old is None else ("item_delete" if new is None else "item_update"),
        actor=actor.audit, source=actor.source, subject_id=subject.pk,
        entry_id=entry.pk, event_code=task.event_code, form_code=form.code, form_version=version.number,
        item=path, old=old, new=new,
        reason=(reasons.get(path) or reason or "").strip()
        or (_("Recalculated") if item_code_of(path) in calculated else ""))
        for path, (old, new) in changes.items()]
    if complete and entry.completed_at == now:
        rows.append(audit.AuditRow(action="entry_complete", actor=actor.audit,
                                   source=actor.source, subject_id=subject.pk, entry_id=entry.pk,
                                   event_code=task.event_code, form_code=form.code, form_version=version.number))
    if creating and not rows:  # a form saved before anything was typed in it: its creation is audited
        rows.append(audit.AuditRow(action="entry_create", actor=actor.audit, source=actor.source,
                                   subject_id=subject.pk, entry_id=entry.pk, event_code=task.event_code,
                                   form_code=form.code, form_version=version.number))
    result = SaveResult(entry=entry, version=version, hard=evaluation.hard, changed=list(changes))
    return _SavePlan(entry=entry, creating=creating, evaluation=evaluation, changes=changes, entry_write=entry_write,
                     rows=rows, result=result)


def _evaluation(given: _SaveInput, version: FormVersion, *, subject_id: int) -> Evaluation:
    """The values checked against the version: 400 for anything malformed (files too)."""
    from ecrf.files import file_values_check

    evaluation = entry_evaluate(definition=version.definition, values=given.values, missing=given.missing,
                                context=given.context, language=given.language)
    if not evaluation.malformed:
        evaluation.malformed.update(file_values_check(subject_id=subject_id, form_id=given.form.pk,
                                                      values=evaluation.values, definition=version.definition))
    if evaluation.malformed:
        raise ValidationFailed(evaluation.malformed)
    return evaluation


def _saved(plan: _SavePlan) -> SaveResult:
    entry = plan.entry
    log.info("entry.saved", entry_id=entry.pk, created=plan.creating, version=entry.version,
             changed=len(plan.changes), complete=entry.status == EntryStatus.COMPLETE)
    return plan.result


_ENTRY_COLUMNS = tuple(f.attname for f in Entry._meta.concrete_fields)
# One statement whether or not the entry exists yet; the lateral sub-select takes the row
# lock (a locking clause cannot apply to the nullable side of the outer join itself).
_ENTRY_FOR_UPDATE = (
    "SELECT EXISTS (SELECT 1 FROM ecrf_casebooklock c WHERE c.subject_id = %(subject)s), "  # noqa: S608
    "EXISTS (SELECT 1 FROM ecrf_signature g WHERE g.subject_id = %(subject)s AND g.invalidated_at IS NULL), "
    + ", ".join(f"e.{c}" for c in _ENTRY_COLUMNS)  # fixed column names
    # A new entry's id, taken now, so the entry's INSERT can go with the audit append
    # (whose rows name it) in one round trip. An id left unused by a refused save is harmless.
    + ", CASE WHEN e.id IS NULL THEN nextval(pg_get_serial_sequence('ecrf_entry', 'id')) END"
    + " FROM (SELECT 1) AS one LEFT JOIN LATERAL (SELECT * FROM ecrf_entry WHERE task_id = %(task)s "
    "AND form_id = %(form)s FOR UPDATE) AS e ON true")


@dataclass
class _EntryState:
    """What a save starts from: the entry (None: not saved yet; otherwise row-locked until
    commit, by _entry_for_update), whether the casebook is locked and whether it is signed."""

    entry: Entry | None
    casebook_locked: bool
    signed: bool  # the subject has a valid signature
    new_id: int | None = None  # the id a new entry takes


def _entry_for_update(*, task_id: int, form_id: int, subject_id: int) -> _EntryState:
    """The entry (locked), whether the casebook is locked and whether it is signed.
    Hand-written: it runs on every save, one statement instead of three ORM reads."""
    with connection.cursor() as cursor:
        execute_prepared(cursor, _ENTRY_FOR_UPDATE, {"subject": subject_id, "task": task_id, "form": form_id})
        row = cursor.fetchone()
    entry_values = row[2:-1]
    entry = instance_from_row(Entry, _ENTRY_COLUMNS, entry_values) if entry_values[0] is not None else None
    return _EntryState(entry=entry, casebook_locked=bool(row[0]), signed=bool(row[1]), new_id=row[-1])


def _form_version_of(entry: Entry) -> FormVersion:
    from ecrf.selectors import form_version_cached

    version = form_version_cached(version_id=entry.form_version_id)
    assert version is not None  # a foreign key: the row exists
    return version


def _sync_auto_queries(entry: Entry, subject: Any, evaluation: Evaluation, actor: Actor,
                       rows: list[audit.AuditRow]) -> tuple[int, int]:
    """Soft problems raise one open query per (item, check); a query whose problem is
    gone closes itself. Answered queries are left for the person who raised them, and so
    is one a person re-opened: they disagreed with its closing, a passing check does not
    overrule them."""
    open_auto = {(q.item, q.check_code): q for q in Query.objects.filter(
        entry=entry, origin=QueryOrigin.AUTO, status__in=[QueryStatus.OPEN, QueryStatus.ANSWERED]).annotate(
        reopened=Exists(QueryMessage.objects.filter(query=OuterRef("pk"), kind="reopen")))}
    wanted = {(p.path, p.check_code): p for p in evaluation.soft}
    raised = closed = 0
    now = timezone.now()
    for key, problem in wanted.items():
        if key in open_auto:
            continue
        query = Query.objects.create(entry=entry, subject_id=subject.pk, site_id=subject.site_id, item=problem.path,
                                     origin=QueryOrigin.AUTO, check_code=problem.check_code)
        QueryMessage.objects.create(query=query, author_id=actor.user_id, kind="raise", text=problem.message)
        rows.append(_query_row("query_open", query, actor, entry, new={"text": problem.message}))
        raised += 1
    for key, query in open_auto.items():
        if key not in wanted and query.status == QueryStatus.OPEN and not query.reopened:
            query.status, query.closed_at = QueryStatus.CLOSED, now
            query.save(update_fields=["status", "closed_at"])
            QueryMessage.objects.create(query=query, author_id=actor.user_id, kind="close",
                                        text=_("Resolved by a data change."))
            rows.append(_query_row("query_close", query, actor, entry, new={"auto": True}))
            closed += 1
    return raised, closed


def _query_row(action: str, query: Query, actor: Actor, entry: Entry, **extra: Any) -> audit.AuditRow:
    return audit.AuditRow(action=action, actor=actor.audit, source=actor.source,
                          subject_id=query.subject_id, entry_id=entry.pk, form_code=entry.form.code,
                          item=query.item, detail={"query": query.pk, "check": query.check_code}, **extra)


def _task_completion(*, task: Any, subject: Any, form_code: str) -> list[tuple[str, list[Any]]] | None:
    """What completing `form_code` does to its visit, which is done when every form the
    schedule lists for it is complete (for an unscheduled visit, or an event that lists
    none, when one form is). The schedule is the task's own version (re-linked on
    amendments), as on the data-entry page. Returns [] when the visit stays open (or is
    closed already), the statement that completes it (sent with the save's other writes;
    it marks `task` completed in memory), or None when completing it re-plans other
    events: then call _task_complete_replanning, which writes through the ORM."""
    from studies.services import site_today, task_complete_statement

    if task.status in ("completed", "missed", "cancelled"):
        return []
    version = _schedule_of(task, subject)
    listed: set[str] = set()
    if version is not None and not task.unscheduled:
        listed = next((set(raw.get("forms") or []) for raw in version.events if raw.get("code") == task.event_code),
                      set())
    # The form just completed is the only one listed (the usual visit): nothing to read.
    # Otherwise the others must be complete already (this one is being completed now: its
    # row is written with the statement returned here).
    if listed and listed != {form_code}:
        complete_codes = set(Entry.objects.filter(task_id=task.pk, status=EntryStatus.COMPLETE)
                             .values_list("form__code", flat=True))
        if not listed <= complete_codes | {form_code}:
            return []
    statement = task_complete_statement(task=task, completed_on=site_today(subject.site), schedule=version)
    return None if statement is None else [statement]


def _task_complete_replanning(*, task: Any, subject: Any) -> None:
    from studies.services import site_today, task_complete

    task_complete(task=task, completed_on=site_today(subject.site), schedule=_schedule_of(task, subject))


def _schedule_of(task: Any, subject: Any) -> Any:
    from studies.selectors import schedule_version_cached
    from studies.services import schedule_for_subject

    return (schedule_version_cached(version_id=task.schedule_version_id) if task.schedule_version_id
            else schedule_for_subject(subject=subject))


# --- signatures ------------------------------------------------------------------------------

def casebook_hash(*, subject_id: int) -> str:
    """SHA-256 over every entry of the casebook (id, version, values, missing codes)."""
    digest = hashlib.sha256()
    for row in Entry.objects.filter(subject_id=subject_id).order_by("pk").values("pk", "version", "values",
                                                                                   "missing"):
        digest.update(json.dumps(row, sort_keys=True, separators=(",", ":"), default=str).encode())
    return digest.hexdigest()


def _invalidate_signatures(*, subject_id: int, actor: Actor, why: str) -> list[audit.AuditRow]:
    """Invalidate the subject's valid signatures; one UPDATE (on every save, usually
    touching nothing), one audit row per signature invalidated."""
    with connection.cursor() as cursor:
        cursor.execute("UPDATE ecrf_signature SET invalidated_at = %s, invalidated_reason = %s "
                       "WHERE subject_id = %s AND invalidated_at IS NULL RETURNING id, signer_id",
                       [timezone.now(), why[:300], subject_id])
        invalidated = sorted(cursor.fetchall())
    return [audit.AuditRow(action="signature_invalidated", actor=actor.audit, source=actor.source,
                           subject_id=subject_id, detail={"signature": signature_id, "signer": signer_id})
            for signature_id, signer_id in invalidated]


SIGN_FAILURE_LIMIT = 5
SIGN_FAILURE_WINDOW = 15 * 60


def casebook_sign(*, subject: Any, user: Any, password: str, meaning: str, actor: Actor,
                  signer_name: str) -> Signature:
    """An investigator signs a casebook by entering their password again (11.200(a)(1))."""
    from ecrf.models import SignatureMeaning

    if actor.role != "investigator":
        raise PermissionDenied("permission_denied", _("Only an investigator signs casebooks."))
    if meaning not in SignatureMeaning.values:
        raise ValidationFailed({"meaning": [_("Choose the meaning of your signature.")]})
    failures_key = f"sign-failures:{user.pk}"
    if int(cache.get(failures_key) or 0) >= SIGN_FAILURE_LIMIT:
        raise DomainError("too_many_attempts", _("Too many wrong passwords. Wait %(minutes)d minutes, then try again.")
                          % {"minutes": SIGN_FAILURE_WINDOW // 60},
                          fields={"password": [_("Too many wrong passwords. Wait %(minutes)d minutes, then try "
                                                 "again.") % {"minutes": SIGN_FAILURE_WINDOW // 60}]},
                          status_code=429)
    if not password or not user.check_password(password):
        # Wrong passwords count against the signer, on the page and the API alike (11.300(d)).
        cache.add(failures_key, 0, SIGN_FAILURE_WINDOW)
        with contextlib.suppress(ValueError):
            cache.incr(failures_key)
        raise ValidationFailed({"password": [_("The password is not correct.")]})
    with transaction.atomic():
        # The audit lock first (held to commit): a save that appended before has committed
        # and is in what is signed; one after waits, then its guard sees this signature.
        audit.audit_lock()
        incomplete = Entry.objects.filter(subject_id=subject.pk).exclude(status=EntryStatus.COMPLETE).count()
        if not Entry.objects.filter(subject_id=subject.pk).exists() or incomplete:
            raise Conflict("casebook_incomplete", _("Only a casebook whose forms are all complete can be signed."))
        signature = Signature.objects.create(subject_id=subject.pk, signer=user, signer_name=signer_name[:200],
                                             meaning=meaning, content_hash=casebook_hash(subject_id=subject.pk))
        audit.audit_record_many(rows=[audit.AuditRow(
            action="sign", actor=actor.audit, source=actor.source,
            subject_id=subject.pk, new={"meaning": meaning, "hash": signature.content_hash},
            detail={"signature": signature.pk})])
    return signature




# --- queries ---------------------------------------------------------------------------------

QUERY_RAISING_ROLES = frozenset({"monitor", "data_manager"})
QUERY_ANSWERING_ROLES = frozenset({"coordinator", "investigator"})
MAX_QUERY_TEXT = 4000


def _query_text(text: str) -> str:
    text = (text or "").strip()
    if not text:
        raise ValidationFailed({"text": [_("Write the message.")]})
    if len(text) > MAX_QUERY_TEXT:
        raise ValidationFailed({"text": [_("At most %(max)d characters.") % {"max": MAX_QUERY_TEXT}]})
    return text


def query_raise(*, entry: Entry, item: str, text: str, actor: Actor) -> Query:
    """A monitor or data manager asks about one item of an entry."""
    if actor.role not in QUERY_RAISING_ROLES:
        raise PermissionDenied("permission_denied", _("Only monitors and data managers raise queries."))
    text = _query_text(text)
    known = set(flatten_values(entry.values)) | set(entry.missing) | {
        i["code"] for i in entry.form_version.definition.get("items") or []}
    if item not in known:
        raise ValidationFailed({"item": [_("No such item in this entry.")]})
    with transaction.atomic():
        query = Query.objects.create(entry=entry, subject_id=entry.subject_id, site_id=entry.subject.site_id,
                                     item=item, origin=QueryOrigin.MANUAL, raised_by_id=actor.user_id)
        QueryMessage.objects.create(query=query, author_id=actor.user_id, kind="raise", text=text)
        audit.audit_record_many(rows=[_query_row("query_open", query, actor, entry, new={"text": text})])
    return query


QUERY_TRANSITIONS = {
    # action: (allowed from, to, roles)
    "answer": ({QueryStatus.OPEN}, QueryStatus.ANSWERED, QUERY_ANSWERING_ROLES),
    "close": ({QueryStatus.OPEN, QueryStatus.ANSWERED}, QueryStatus.CLOSED, QUERY_RAISING_ROLES),
    "reopen": ({QueryStatus.ANSWERED, QueryStatus.CLOSED}, QueryStatus.OPEN, QUERY_RAISING_ROLES),
}


def query_act(*, query: Query, action: str, text: str, actor: Actor) -> Query:
    """Answer (site), close or re-open (monitor, data manager) a query, with a message."""
    if action not in QUERY_TRANSITIONS:
        raise ValidationFailed({"action": [_("Choose answer, close or reopen.")]})
    allowed_from, target, roles = QUERY_TRANSITIONS[action]
    if actor.role not in roles:
        raise PermissionDenied("permission_denied", _("Your role does not allow this."))
    text = _query_text(text)
    with transaction.atomic():
        locked = Query.objects.select_for_update().select_related("entry__form").get(pk=query.pk)
        if locked.status not in allowed_from:
            done = {"answer": _("answered"), "close": _("closed"), "reopen": _("re-opened")}[action]
            raise Conflict("bad_transition", _("A query that is %(status)s cannot be %(action)s.")
                           % {"status": QueryStatus(locked.status).label, "action": done})
        now = timezone.now()
        locked.status = target
        if target == QueryStatus.ANSWERED:
            locked.answered_at = now
        locked.closed_at = now if target == QueryStatus.CLOSED else None
        locked.save(update_fields=["status", "answered_at", "closed_at"])
        QueryMessage.objects.create(query=locked, author_id=actor.user_id, kind=action, text=text)
        audit.audit_record_many(rows=[_query_row(f"query_{action}", locked, actor, locked.entry,
                                                 new={"status": target, "text": text})])
    return locked


# --- source data verification and locks --------------------------------------------------------

def entry_verify(*, entry: Entry, items: list[str] | None, actor: Actor) -> Entry:
    """A monitor marks items (or, with None, every item with data) as verified against the
    source. Changing an item later clears its verification (entry_save)."""
    if actor.role != "monitor":
        raise PermissionDenied("permission_denied", _("Only monitors verify source data."))
    with transaction.atomic():
        locked = Entry.objects.select_for_update().select_related("form").get(pk=entry.pk)
        present = set(flatten_values(locked.values)) | set(locked.missing)
        wanted = sorted(present) if items is None else list(dict.fromkeys(items))
        unknown = [i for i in wanted if i not in present]
        if unknown:
            raise ValidationFailed({"items": [_("Not in this entry: %(items)s.") % {"items": ", ".join(unknown[:20])}]})
        if not wanted:
            raise ValidationFailed({"items": [_("There is nothing to verify yet.")]})
        stamp = {"by": actor.user_id, "at": timezone.now().isoformat()}
        for path in wanted:
            locked.verified[path] = stamp
        locked.save(update_fields=["verified", "updated"])
        audit.audit_record_many(rows=[audit.AuditRow(
            action="sdv_set", actor=actor.audit, source=actor.source,
            subject_id=locked.subject_id, entry_id=locked.pk, form_code=locked.form.code, item=path)
            for path in wanted])
    return locked


LOCKING_ROLES = frozenset({"data_manager"})


def _lock_change_check(*, locked_state: bool, reason: str, actor: Actor) -> str:
    """Who may lock, and the reason an unlock needs; returns the cleaned reason."""
    if actor.role not in LOCKING_ROLES:
        raise PermissionDenied("permission_denied", _("Only data managers lock and unlock records."))
    reason = (reason or "").strip()
    if not locked_state and not reason:
        raise ValidationFailed({"reason": [_("Give a reason for unlocking.")]})
    if len(reason) > MAX_REASON:
        raise ValidationFailed({"reason": [_("At most %(max)d characters.") % {"max": MAX_REASON}]})
    return reason


def entry_lock_set(*, entry: Entry, locked_state: bool, reason: str, actor: Actor) -> Entry:
    """A data manager locks an entry; unlocking needs a reason. Both are audited."""
    reason = _lock_change_check(locked_state=locked_state, reason=reason, actor=actor)
    with transaction.atomic():
        locked = Entry.objects.select_for_update().select_related("form").get(pk=entry.pk)
        if locked.locked == locked_state:
            raise Conflict("bad_transition", _("The record is already locked.") if locked_state
                           else _("The record is not locked."))
        locked.locked = locked_state
        locked.save(update_fields=["locked", "updated"])
        audit.audit_record_many(rows=[audit.AuditRow(
            action="lock" if locked_state else "unlock", actor=actor.audit,
            source=actor.source, subject_id=locked.subject_id, entry_id=locked.pk, form_code=locked.form.code,
            reason=reason)])
    return locked


def casebook_lock_set(*, subject: Any, locked_state: bool, reason: str, actor: Actor) -> bool:
    """Freeze (or, with a reason, unfreeze) a subject's whole casebook."""
    reason = _lock_change_check(locked_state=locked_state, reason=reason, actor=actor)
    with transaction.atomic():
        existing = CasebookLock.objects.select_for_update().filter(subject_id=subject.pk).first()
        if locked_state == (existing is not None):
            raise Conflict("bad_transition", _("The casebook is already locked.") if locked_state
                           else _("The casebook is not locked."))
        if locked_state:
            CasebookLock.objects.create(subject_id=subject.pk, locked_by_id=actor.user_id)
        else:
            assert existing is not None
            existing.delete()
        audit.audit_record_many(rows=[audit.AuditRow(
            action="lock" if locked_state else "unlock", actor=actor.audit,
            source=actor.source, subject_id=subject.pk, reason=reason, detail={"scope": "casebook"})])
    return locked_state


# --- REDCap data dictionaries ------------------------------------------------------------------

def forms_import_redcap(*, study: Any, content: bytes, file_name: str, actor: Actor) -> dict[str, Any]:
    """A REDCap data dictionary becomes draft forms of the study, all or none. The
    report lists, line by line, everything not translated (never dropped silently)."""
    from ecrf.redcap import redcap_dictionary_import

    result = redcap_dictionary_import(content=content, file_name=file_name)
    if not result.forms_ok:
        fields = {f"{code}.{path}": messages for code, problems in result.problems.items()
                  for path, messages in problems.items()} or {"file": [_("The dictionary has no usable form.")]}
        # And why, line by line (every field's type unknown, say): the report of an import
        # that was refused is what the user needs most.
        for entry in result.report:
            if entry.get("severity") == "error":
                fields.setdefault(f"line {entry['line']}", []).append(
                    f"{entry.get('field') or entry.get('column') or ''}: {entry['message']}".lstrip(": "))
        raise DomainError("dictionary_invalid", _("The dictionary could not be turned into forms."), fields=fields)
    taken = {code for code in FormDefinition.objects.filter(study_id=study.pk, versions__status="published")
             .values_list("code", flat=True)}
    with transaction.atomic():
        drafts = [form_draft_save(study=study, definition=definition, actor=actor,
                                  note=_("Imported from %(file)s") % {"file": (file_name or "REDCap")[:200]})
                  for definition in result.forms]
    log.info("forms.imported_redcap", study_id=study.pk, forms=len(drafts), errors=result.error_count,
             warnings=result.warning_count)
    return {"forms": [{"id": d.form_id, "code": d.form.code, "version": d.number,
                       "new_version_of_published_form": d.form.code in taken} for d in drafts],
            "report": result.report, "field_count": result.field_count, "item_count": result.item_count,
            "error_count": result.error_count, "warning_count": result.warning_count}


def forms_export_redcap(*, study: Any) -> tuple[bytes, list[dict[str, Any]]]:
    """The study's forms (newest version of each, draft or published) as a REDCap dictionary."""
    from ecrf.redcap import redcap_dictionary_export

    definitions = []
    for form in FormDefinition.objects.filter(study_id=study.pk).order_by("code"):
        newest = form.versions.order_by("-number").first()
        if newest is not None:
            definitions.append(newest.definition)
    if not definitions:
        raise NotFound("no_forms", _("This study has no forms yet."))
    return redcap_dictionary_export(forms=definitions)
