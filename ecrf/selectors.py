"""Reads of the eCRF, scoped like the follow-up engine: a member sees entries, queries
and casebooks of the subjects at their sites only (studies.selectors)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db import connection
from django.db.models import Count, F, Q, QuerySet
from django.utils import timezone

from config.caching import PerSchemaCache
from config.db import are_row_ids, execute_prepared, instance_from_row
from ecrf.models import Entry, FormDefinition, FormVersion, FormVersionStatus, Query, QueryStatus
from sites.models import Site
from sites.selectors import site_scope_sql
from studies.models import FollowUpTask, Subject
from studies.selectors import subjects_visible, tasks_visible

ENTRY_ROLES = frozenset({"coordinator", "investigator"})
FORM_DESIGN_ROLES = frozenset({"tenant_admin", "data_manager"})
# Roles that never see clinical data item by item (the statistician gets exports).
NO_ENTRY_READ_ROLES = frozenset({"viewer"})


def forms_of_study(*, study_id: int) -> QuerySet[FormDefinition]:
    return FormDefinition.objects.filter(study_id=study_id).prefetch_related("versions").order_by("code")


def form_get(*, membership: Any, form_id: int) -> FormDefinition | None:
    if membership is None:
        return None
    return FormDefinition.objects.filter(pk=form_id).first()


# A data-entry request never shows who the patient is: loading a subject without these
# saves decrypting six fields on every save.
SUBJECT_PII = tuple(f"subject__{name}" for name in ("name", "phone", "email", "national_id", "birth_date",
                                                     "address", "status_reason"))


def entry_task_get(*, membership: Any, task_id: int) -> Any:
    """The follow-up task (with its subject) if it is at one of the member's sites."""
    return (tasks_visible(membership=membership).select_related("subject__study").defer(*SUBJECT_PII)
            .filter(pk=task_id).first())


# --- the target of a data-entry request, in one statement ---------------------------------------
#
# Every save and every form opened starts here, so this is one hand-written query instead
# of four ORM reads (task, subject, site, form, entry, current version): the ORM's query
# building cost more than the database did (docs/BENCHMARKS.md §5). The rows become
# model instances with Model.from_db; fields not selected are deferred, so reading one
# later still works (one extra query) instead of failing.

_TASK_COLUMNS = ("id", "subject_id", "study_id", "site_id", "schedule_version_id", "event_code", "sequence",
                 "unscheduled", "mode", "target_date", "window_open", "window_close", "provisional", "status",
                 "assignee_id", "completed_on")
# Never the encrypted identifiers: a data-entry request does not show who the patient is.
_SUBJECT_COLUMNS = ("id", "study_id", "site_id", "arm_id", "subject_code", "status", "enrolment_date", "language")
_SITE_COLUMNS = ("id", "code", "time_zone")
_FORM_COLUMNS = ("id", "study_id", "code")

_TARGET_SELECT = (  # column names are constants above, never input
    "SELECT " + ", ".join(  # noqa: S608
        [f"t.{c}" for c in _TASK_COLUMNS] + [f"s.{c}" for c in _SUBJECT_COLUMNS] + [f"si.{c}" for c in _SITE_COLUMNS]
        + [f"f.{c}" for c in _FORM_COLUMNS]) + ", e.id, e.form_version_id, "
    "(SELECT v.id FROM ecrf_formversion v WHERE v.form_id = f.id AND v.status = %(published)s "
    "ORDER BY v.number DESC LIMIT 1) ")
_TARGET_FROM = (
    "FROM studies_followuptask t "
    "JOIN studies_subject s ON s.id = t.subject_id "
    "JOIN sites_site si ON si.id = s.site_id "
    "LEFT JOIN ecrf_formdefinition f ON f.id = %(form)s AND f.study_id = s.study_id "
    "LEFT JOIN ecrf_entry e ON e.task_id = t.id AND e.form_id = f.id "
    "WHERE t.id = %(task)s")
_TARGET_SQL = _TARGET_SELECT + _TARGET_FROM
# For a save: also what a first save needs to write without a locking read (ecrf.services
# entry_save, the direct path), read in the same round trip: whether the casebook is
# locked or signed, and the id a new entry takes (none when the entry exists).
_SAVE_COLUMNS = (
    ", EXISTS (SELECT 1 FROM ecrf_casebooklock c WHERE c.subject_id = s.id)"
    ", EXISTS (SELECT 1 FROM ecrf_signature g WHERE g.subject_id = s.id AND g.invalidated_at IS NULL)"
    ", CASE WHEN e.id IS NULL AND f.id IS NOT NULL THEN nextval(pg_get_serial_sequence('ecrf_entry', 'id')) END ")
_TARGET_FOR_SAVE_SQL = _TARGET_SELECT + _SAVE_COLUMNS + _TARGET_FROM


@dataclass(frozen=True)
class NewEntrySlot:
    """A form of a visit that had no entry when its target was read (no lock: a save that
    uses it must let the unique (task, form) row decide a race)."""

    casebook_locked: bool
    signed: bool
    new_id: int


@dataclass(frozen=True)
class EntryTarget:
    """One form of one visit, as a member may reach it. `form` is None when the form is
    not of the subject's study; `version` is the entry's form version, else the form's
    newest published one (None: not published yet)."""

    task: FollowUpTask  # .subject and .subject.site loaded
    form: FormDefinition | None
    entry_id: int | None
    version: FormVersion | None
    new_entry: NewEntrySlot | None = None  # only read `for_save`, when there is no entry yet

    @property
    def subject(self) -> Subject:
        return self.task.subject


def entry_target_get(*, membership: Any, task_id: int, form_id: int, for_save: bool = False) -> EntryTarget | None:
    """None when the task does not exist or is not at one of the member's sites.
    `for_save`: also fill `new_entry` when the form has no entry yet."""
    if membership is None or not are_row_ids(task_id, form_id):
        return None
    scope, params = site_scope_sql(membership=membership, column="s.site_id")
    sql = (_TARGET_FOR_SAVE_SQL if for_save else _TARGET_SQL) + (f" AND {scope}" if scope else "")
    params.update({"task": task_id, "form": form_id, "published": FormVersionStatus.PUBLISHED.value})
    with connection.cursor() as cursor:
        execute_prepared(cursor, sql, params)
        row = cursor.fetchone()
    if row is None:
        return None
    at = 0

    def take(columns: tuple[str, ...]) -> list[Any]:
        nonlocal at
        values = list(row[at:at + len(columns)])
        at += len(columns)
        return values

    task = instance_from_row(FollowUpTask, _TASK_COLUMNS, take(_TASK_COLUMNS))
    subject = instance_from_row(Subject, _SUBJECT_COLUMNS, take(_SUBJECT_COLUMNS))
    subject.site = instance_from_row(Site, _SITE_COLUMNS, take(_SITE_COLUMNS))
    task.subject = subject
    form_values = take(_FORM_COLUMNS)
    entry_id, entry_version_id, published_id = row[at:at + 3]
    form = instance_from_row(FormDefinition, _FORM_COLUMNS, form_values) if form_values[0] is not None else None
    version_id = entry_version_id or published_id
    version = form_version_cached(version_id=version_id) if form is not None and version_id else None
    if version is not None and form is not None and version.form_id == form.pk:
        version.form = form
    new_entry = None
    if for_save and row[at + 5] is not None:
        new_entry = NewEntrySlot(casebook_locked=bool(row[at + 3]), signed=bool(row[at + 4]), new_id=row[at + 5])
    return EntryTarget(task=task, form=form, entry_id=entry_id, version=version, new_entry=new_entry)


# Published form versions never change (ecrf.services refuses to edit them).
_VERSIONS: PerSchemaCache[FormVersion] = PerSchemaCache(256)


def form_version_cached(*, version_id: int) -> FormVersion | None:
    version = _VERSIONS.get(version_id)
    if version is not None:  # a fresh instance: callers may set attributes on it
        return FormVersion(pk=version.pk, form_id=version.form_id, number=version.number, status=version.status,
                           definition=version.definition, published_at=version.published_at)
    version = FormVersion.objects.filter(pk=version_id).defer("note").first()
    if version is not None and version.status == FormVersionStatus.PUBLISHED:
        _VERSIONS.put(version_id, version)
    return version


def record_locked(*, subject_id: int, task_id: int, form_id: int) -> bool:
    """Whether the subject's casebook, or this form of this visit, is locked."""
    from ecrf.models import CasebookLock

    return CasebookLock.objects.filter(subject_id=subject_id).exists() or Entry.objects.filter(
        task_id=task_id, form_id=form_id, locked=True).exists()


def entries_visible(*, membership: Any) -> QuerySet[Entry]:
    return Entry.objects.filter(subject__in=subjects_visible(membership=membership)).select_related(
        "form", "form_version", "task", "subject")


def entry_get(*, membership: Any, entry_id: int) -> Entry | None:
    return entries_visible(membership=membership).filter(pk=entry_id).first()


def entry_for(*, task_id: int, form_id: int) -> Entry | None:
    return Entry.objects.select_related("form_version").filter(task_id=task_id, form_id=form_id).first()


# Form version id -> whether its logic refers to other forms or events. Published
# versions never change, so the answer is kept for the life of the process.
_EXTERNAL_REFERENCES: dict[int, bool] = {}


def refers_to_other_forms(version: FormVersion) -> bool:
    """True when a condition, calculation or check reads "FORM.item" or "EVENT.FORM.item"."""
    known = _EXTERNAL_REFERENCES.get(version.pk) if version.status == FormVersionStatus.PUBLISHED else None
    if known is not None:
        return known
    from ecrf.definition import iter_items
    from ecrf.logic import LogicError, logic_variables

    expressions = []
    for item in iter_items(version.definition.get("items") or []):
        expressions += [item.get("show_if"), item.get("calc")] + [c.get("rule") for c in item.get("checks") or []]
    found = False
    for expression in (e for e in expressions if e is not None):
        try:
            if any(name.split(".", 1)[0][:1].isupper() for name in logic_variables(expression)):
                found = True
                break
        except LogicError:
            continue
    if version.status == FormVersionStatus.PUBLISHED:
        _EXTERNAL_REFERENCES[version.pk] = found
    return found


def entry_context(*, subject: Any, task: Any, form_code: str, today: Any,
                  version: FormVersion | None = None) -> dict[str, Any]:
    """What JSON Logic may refer to beyond the form itself: the other forms of this visit
    ("FORM.item"), the first occurrence of every event ("EVENT.FORM.item"), and today.
    With the form's `version`, the other entries are read only if its logic uses them."""
    context: dict[str, Any] = {"_today": today.isoformat()}
    if version is not None and not refers_to_other_forms(version):
        return context
    rows = (Entry.objects.filter(subject_id=subject.pk).select_related("form", "task")
            .only("values", "form__code", "task__event_code", "task__sequence", "task_id"))
    for entry in rows:
        if entry.task_id == task.pk and entry.form.code != form_code:
            context[entry.form.code] = entry.values
        if entry.task.sequence == 1:
            context.setdefault(entry.task.event_code, {})[entry.form.code] = entry.values
    return context


def queries_visible(*, membership: Any) -> QuerySet[Query]:
    return Query.objects.filter(subject__in=subjects_visible(membership=membership)).select_related(
        "entry__form", "entry__task", "subject", "site")


def query_report(*, membership: Any) -> list[dict[str, Any]]:
    """Per site: open, answered and closed queries, and how long the open ones have waited
    (0-7, 8-30, over 30 days). One grouped query."""
    now = timezone.now()
    is_open = Q(status=QueryStatus.OPEN)
    rows = (queries_visible(membership=membership).values("site_id", site_code=F("site__code"))
            .annotate(open=Count("pk", filter=is_open),
                      answered=Count("pk", filter=Q(status=QueryStatus.ANSWERED)),
                      closed=Count("pk", filter=Q(status=QueryStatus.CLOSED)),
                      open_0_7_days=Count("pk", filter=is_open & Q(created__gte=now - timedelta(days=7))),
                      open_8_30_days=Count("pk", filter=is_open & Q(created__lt=now - timedelta(days=7),
                                                                     created__gte=now - timedelta(days=30))),
                      open_over_30_days=Count("pk", filter=is_open & Q(created__lt=now - timedelta(days=30))))
            .order_by("site_code"))
    return [{"site": row.pop("site_id"), **row} for row in rows]


def forms_for_task(task: Any, *, cache: dict[Any, Any] | None = None) -> list[tuple[FormDefinition, FormVersion]]:
    """The forms collected at a visit, each with its newest published version, in the
    schedule's order: the forms its event lists (in the task's schedule version, else the
    subject's current one); for an unscheduled visit, every published form of the study.
    `cache` (any dict kept for one page) saves the repeated reads of a list of tasks."""
    from studies.services import schedule_for_subject

    cache = {} if cache is None else cache
    key = ("published", task.study_id)
    if key not in cache:
        published: dict[str, tuple[FormDefinition, FormVersion]] = {}
        for version in (FormVersion.objects.filter(form__study_id=task.study_id, status=FormVersionStatus.PUBLISHED)
                        .select_related("form").order_by("form__code", "-number")):
            published.setdefault(version.form.code, (version.form, version))
        cache[key] = published
    published = cache[key]
    if task.unscheduled:
        return list(published.values())
    schedule_key = ("schedule", task.schedule_version_id or ("subject", task.subject_id))
    if schedule_key not in cache:
        schedule = task.schedule_version or schedule_for_subject(subject=task.subject)
        cache[schedule_key] = schedule.events if schedule is not None else []
    listed = next((list(raw.get("forms") or []) for raw in cache[schedule_key] if raw.get("code") == task.event_code),
                  [])
    return [published[code] for code in dict.fromkeys(listed) if code in published]
