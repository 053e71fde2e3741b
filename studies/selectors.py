"""Reads of the follow-up engine. Every subject and task read is filtered by the
member's sites (sites.selectors.site_ids_visible); identifying data is shown by role."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.db.models import Prefetch, QuerySet
from django.utils import timezone

from config.caching import PerSchemaCache
from sites.selectors import site_ids_visible
from studies.models import (
    TASK_URGENCY,
    WORKLIST_STATUSES,
    FollowUpTask,
    ScheduleStatus,
    ScheduleVersion,
    Study,
    Subject,
    TaskStatus,
)
from studies.pii import mask_address, mask_birth_date, mask_name, mask_national_id, mask_phone

PII_FIELDS = ("name", "phone", "email", "national_id", "birth_date", "address")
_MASKS = {"name": mask_name, "phone": mask_phone, "national_id": mask_national_id, "birth_date": mask_birth_date,
          "address": mask_address, "email": mask_name}
# Roles that work with patients at their sites and so may see how to reach them.
CONTACT_ROLES = frozenset({"coordinator", "investigator"})
# Roles that enrol subjects and work their follow-ups (calls, completion, imports).
ENROLLING_ROLES = frozenset({"tenant_admin", "coordinator", "investigator"})
# Roles that never see identifying data, not even masked.
NO_PII_ROLES = frozenset({"statistician", "viewer"})


def studies_visible(*, membership: Any) -> QuerySet[Study]:
    return Study.objects.prefetch_related("arms").order_by("code")


def study_get(*, membership: Any, study_id: int) -> Study | None:
    return studies_visible(membership=membership).filter(pk=study_id).first()


def subjects_visible(*, membership: Any) -> QuerySet[Subject]:
    ids = site_ids_visible(membership=membership)
    subjects = Subject.objects.select_related("site", "study", "arm")
    return subjects if ids is None else subjects.filter(site_id__in=ids)


def subject_get(*, membership: Any, subject_id: int) -> Subject | None:
    return subjects_visible(membership=membership).filter(pk=subject_id).first()


def subject_identifiers(*, membership: Any, subject: Subject) -> dict[str, str | None]:
    """Identifying data as this member may see it: in clear for the coordinator or
    investigator of the subject's site (they phone the patient), masked for the other
    clinical roles, absent for statisticians and viewers."""
    if membership.role in NO_PII_ROLES:
        return {}
    at_their_site = membership.role in CONTACT_ROLES and subject.site_id in (
        site_ids_visible(membership=membership) or frozenset())
    shown: dict[str, str | None] = {}
    for field in PII_FIELDS:
        value = getattr(subject, field)
        clear = at_their_site and field in ("name", "phone")
        shown[field] = value if clear or value is None else _MASKS[field](value)
    return shown


def tasks_visible(*, membership: Any) -> QuerySet[FollowUpTask]:
    """Follow-up tasks of the member's sites."""
    tasks = FollowUpTask.objects.select_related("subject", "subject__site")
    ids = site_ids_visible(membership=membership)
    if ids is not None:
        tasks = tasks.filter(subject__site_id__in=ids)
    return tasks


def task_get(*, membership: Any, task_id: int) -> FollowUpTask | None:
    """A follow-up task, only if it belongs to one of the member's sites."""
    return tasks_visible(membership=membership).filter(pk=task_id).first()


# The same expression as task_worklist_urgency_idx, so that index serves the ORDER BY.
URGENCY = TASK_URGENCY


# How far ahead the worklist shows upcoming visits by default (days).
UPCOMING_DAYS = 90
MAX_UPCOMING_DAYS = 3660


def worklist(
    *, membership: Any, user_id: int, site_id: int | None = None, study_id: int | None = None,
    event_code: str | None = None, mode: str | None = None, bucket: str | None = None,
    upcoming_days: int = UPCOMING_DAYS,
) -> QuerySet[FollowUpTask]:
    """My follow-up tasks: overdue first (closing soonest first), then open, then the
    upcoming ones whose window opens within `upcoming_days` (a coordinator plans weeks
    ahead, not the whole study: two years of visits would bury today's work).

    Filters and order use only the task's own columns (site and study are copies of the
    subject's), so a page is read from task_worklist_urgency_idx in order, and only the
    page's subjects are read."""
    statuses = {"overdue": [TaskStatus.OVERDUE], "open": [TaskStatus.OPEN], "upcoming": [TaskStatus.UPCOMING]}.get(
        bucket or "", list(WORKLIST_STATUSES))
    # The subjects (with site and study) of the page only, in a second query: joined in
    # the main query, the rows a deep page skips would be joined too.
    tasks = FollowUpTask.objects.prefetch_related(
        Prefetch("subject", queryset=Subject.objects.select_related("site", "study"))
    ).filter(assignee_id=user_id, status__in=statuses)
    ids = site_ids_visible(membership=membership)
    if ids is not None:
        tasks = tasks.filter(site_id__in=ids)
    if site_id:
        tasks = tasks.filter(site_id=site_id)
    if study_id:
        tasks = tasks.filter(study_id=study_id)
    if event_code:
        tasks = tasks.filter(event_code=event_code)
    if mode:
        tasks = tasks.filter(mode=mode)
    if TaskStatus.UPCOMING in statuses:
        # UTC's date: a site's today is within a day of it, which a horizon of weeks absorbs.
        horizon = timezone.now().date() + timedelta(days=upcoming_days)
        tasks = tasks.exclude(status=TaskStatus.UPCOMING, window_open__gt=horizon)
    return tasks.annotate(urgency=URGENCY).order_by("urgency", "window_close", "target_date", "pk")


# Published schedule versions never change (only drafts are edited); a form save reads its
# visit's schedule on every completion.
_SCHEDULES: PerSchemaCache[ScheduleVersion] = PerSchemaCache(256)


def schedule_version_cached(*, version_id: int) -> ScheduleVersion | None:
    version = _SCHEDULES.get(version_id)
    if version is not None:
        return version
    version = ScheduleVersion.objects.filter(pk=version_id).first()
    if version is not None and version.status == ScheduleStatus.PUBLISHED:
        _SCHEDULES.put(version_id, version)
    return version
