"""Reads of the eCRF, scoped like the follow-up engine: a member sees entries, queries
and casebooks of the subjects at their sites only (studies.selectors)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.db.models import Count, F, Q, QuerySet
from django.utils import timezone

from ecrf.models import Entry, FormDefinition, FormVersion, FormVersionStatus, Query, QueryStatus
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
