"""Baselines for bench/followup_metrics.py: the follow-up engine's code as it was before
issue 3's performance work (commit d217fbb), kept here so that each new figure is
printed next to the old code measured in the same run, on the same data.

- `legacy_generate`: plan_occurrences per subject, a FollowUpTask instance per
  occurrence, bulk_create in batches of 10,000 (the old bench path; it now also sets
  the task's study and site, which the table requires).
- `legacy_task_counts`: the metrics aggregate grouped on the subject's study and site
  (a join of every task to its subject).
- `legacy_worklist`: the worklist filtered through the subject's site and study; run it
  under the old index (`old_worklist_index`).
- `legacy_reminders_scan`: the reminder scan loading whole tasks, subjects (decrypting
  every identifying field), sites and assignees, with one query per overdue task for the
  site's investigators.
- `legacy_apply_missed_rule`: the consecutive-missed-visits rule with one query per
  subject that has a missed visit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from typing import Any


def legacy_generate(*, version: Any, study_id: int, today: date, assignee_by_site: dict[int, int | None],
                    batch_size: int = 10_000) -> int:
    from studies.models import FollowUpTask, Subject
    from studies.schedule import event_spec_from_dict, plan_occurrences
    from studies.services import task_status_on

    specs = [event_spec_from_dict(raw) for raw in version.events]
    modes = {raw["code"]: raw.get("mode", "any") for raw in version.events}
    made = 0
    batch: list[FollowUpTask] = []
    subjects = Subject.objects.filter(study_id=study_id).values_list("pk", "site_id", "enrolment_date", "index_date")
    for subject_id, site_id, enrolment_date, index_date in subjects.iterator(chunk_size=batch_size):
        for occ in plan_occurrences(events=specs, enrolment_date=enrolment_date, index_date=index_date):
            batch.append(FollowUpTask(
                subject_id=subject_id, study_id=study_id, site_id=site_id, schedule_version=version,
                event_code=occ.event_code, sequence=occ.sequence, mode=modes.get(occ.event_code, "any"),
                target_date=occ.target, window_open=occ.window_open, window_close=occ.window_close,
                provisional=occ.provisional, assignee_id=assignee_by_site.get(site_id),
                status=task_status_on(window_open=occ.window_open, target=occ.target,
                                      window_close=occ.window_close, today=today)))
        if len(batch) >= batch_size:
            FollowUpTask.objects.bulk_create(batch)
            made += len(batch)
            batch = []
    if batch:
        FollowUpTask.objects.bulk_create(batch)
        made += len(batch)
    return made


def legacy_task_counts(*, today: date) -> list[dict[str, Any]]:
    from django.db.models import Count, F, Q

    from studies.models import FollowUpTask, TaskStatus

    due = Q(window_close__lt=today) | Q(status=TaskStatus.COMPLETED)
    completed = Q(status=TaskStatus.COMPLETED)
    on_time = completed & Q(completed_on__gte=F("window_open"), completed_on__lte=F("window_close"))
    # Named study_id/site_id in the original; those names are now the task's own columns.
    rows = list(
        FollowUpTask.objects.exclude(status=TaskStatus.CANCELLED)
        .values(subject_study_id=F("subject__study_id"), subject_site_id=F("subject__site_id"),
                event=F("event_code"))
        .annotate(
            due=Count("pk", filter=due),
            completed=Count("pk", filter=completed),
            on_time=Count("pk", filter=on_time),
            overdue=Count("pk", filter=Q(status=TaskStatus.OVERDUE)),
            missed=Count("pk", filter=due & Q(status=TaskStatus.MISSED)),
        )
        .order_by()
    )
    for row in rows:
        row["study_id"], row["site_id"] = row.pop("subject_study_id"), row.pop("subject_site_id")
    return rows


def legacy_worklist(*, membership: Any, user_id: int, bucket: str | None = None) -> Any:
    from django.db.models import Case, IntegerField, Value, When

    from sites.selectors import site_ids_visible
    from studies.models import FollowUpTask, TaskStatus

    urgency = Case(When(status=TaskStatus.OVERDUE, then=Value(0)), When(status=TaskStatus.OPEN, then=Value(1)),
                   default=Value(2), output_field=IntegerField())
    statuses = {"overdue": [TaskStatus.OVERDUE], "open": [TaskStatus.OPEN], "upcoming": [TaskStatus.UPCOMING]}.get(
        bucket or "", [TaskStatus.OVERDUE, TaskStatus.OPEN, TaskStatus.UPCOMING])
    tasks = FollowUpTask.objects.select_related("subject", "subject__site", "subject__study").filter(
        assignee_id=user_id, status__in=statuses)
    ids = site_ids_visible(membership=membership)
    if ids is not None:
        tasks = tasks.filter(subject__site_id__in=ids)
    return tasks.annotate(urgency=urgency).order_by("urgency", "window_close", "target_date", "pk")


@contextmanager
def old_worklist_index() -> Iterator[None]:
    """Inside a transaction that is rolled back: the worklist index as it was
    (assignee, status, target_date) instead of task_worklist_urgency_idx."""
    from django.db import connection, transaction

    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("DROP INDEX task_worklist_urgency_idx")
            cursor.execute("CREATE INDEX task_worklist_idx ON studies_followuptask (assignee_id, status, target_date)")
        yield
        transaction.set_rollback(True)


def legacy_reminders_scan(*, now: datetime) -> int:
    from django.db import transaction

    from notifications.models import ReminderRule
    from notifications.services import outbox_enqueue
    from studies.models import StudyStatus

    written = 0
    rules = ReminderRule.objects.filter(active=True, study__status=StudyStatus.ACTIVE).select_related("study")
    with transaction.atomic():
        for rule in rules:
            written += outbox_enqueue(messages=list(_legacy_messages_for(rule, now)))
    return written


def _legacy_messages_for(rule: Any, now: datetime) -> Iterator[Any]:
    from django.utils.translation import gettext as _
    from django.utils.translation import override

    from notifications.models import ReminderKind
    from notifications.services import Outgoing
    from sites.models import SiteStaff
    from studies.models import FollowUpTask, SubjectStatus, TaskStatus
    from studies.reminders import _today, next_allowed_instant

    tasks = (FollowUpTask.objects.select_related("subject", "subject__site", "assignee")
             .filter(subject__study=rule.study, subject__status=SubjectStatus.ENROLLED))
    if rule.kind == ReminderKind.PATIENT_BEFORE_WINDOW:
        horizon = now.date() + timedelta(days=rule.days + 1)
        tasks = tasks.filter(status=TaskStatus.UPCOMING, window_open__lte=horizon,
                             subject__reminders_opt_out=False)
    elif rule.kind == ReminderKind.COORDINATOR_OVERDUE:
        tasks = tasks.filter(status=TaskStatus.OVERDUE, assignee__isnull=False)
    else:
        tasks = tasks.filter(status=TaskStatus.OVERDUE)
    for task in tasks.iterator(chunk_size=2000):
        site = task.subject.site
        today = _today(site.time_zone, now)
        not_before = next_allowed_instant(now=now, tz_name=site.time_zone, quiet_from=rule.quiet_from,
                                          quiet_until=rule.quiet_until)
        key = f"{rule.pk}:{task.pk}:1"
        if rule.kind == ReminderKind.PATIENT_BEFORE_WINDOW:
            if not (today <= task.window_open <= today + timedelta(days=rule.days)):
                continue
            recipient = task.subject.email if rule.channel == "email" else task.subject.phone
            if not recipient:
                continue
            with override(task.subject.language):
                subject = _("Your follow-up visit is coming up")
                body = _("Your next follow-up (%(event)s) is due between %(start)s and %(end)s. "
                         "Your study team will contact you.") % {
                    "event": task.event_code, "start": task.window_open.isoformat(),
                    "end": task.window_close.isoformat()}
            yield Outgoing(key=key, channel=rule.channel, recipient=recipient, subject=subject, body=body,
                           language=task.subject.language, not_before=not_before)
        elif rule.kind == ReminderKind.COORDINATOR_OVERDUE:
            if task.assignee is None:
                continue
            yield Outgoing(key=key, channel="email", recipient=task.assignee.email,
                           subject=_("Overdue follow-up: %(subject)s %(event)s") % {
                               "subject": task.subject.subject_code, "event": task.event_code},
                           body=_("Follow-up %(event)s of %(subject)s is overdue; its window closes on %(end)s.") % {
                               "event": task.event_code, "subject": task.subject.subject_code,
                               "end": task.window_close.isoformat()},
                           language="zh-hans", not_before=not_before)
        else:
            if (today - task.target_date).days < rule.days:
                continue
            for staff in SiteStaff.objects.filter(site=site, role="investigator").select_related("user"):
                yield Outgoing(key=f"{key}:{staff.user_id}", channel="email", recipient=staff.user.email,
                               subject=_("Follow-up overdue for %(days)d days: %(subject)s") % {
                                   "days": (today - task.target_date).days, "subject": task.subject.subject_code},
                               body=_("Follow-up %(event)s of %(subject)s at site %(site)s is overdue.") % {
                                   "event": task.event_code, "subject": task.subject.subject_code,
                                   "site": site.code},
                               language="zh-hans", not_before=not_before)


def legacy_apply_missed_rule() -> int:
    from django.db import transaction

    from studies.models import Study, Subject, SubjectStatus, TaskStatus
    from studies.services import _mark_lost

    lost = 0
    for study in Study.objects.filter(lost_after_missed__gt=0):
        limit = study.lost_after_missed
        for subject in Subject.objects.filter(study=study, status=SubjectStatus.ENROLLED,
                                              tasks__status=TaskStatus.MISSED).distinct():
            closed = list(subject.tasks.filter(status__in=[TaskStatus.COMPLETED, TaskStatus.MISSED])
                          .order_by("-target_date").values_list("status", flat=True)[:limit])
            if len(closed) == limit and all(s == TaskStatus.MISSED for s in closed):
                with transaction.atomic():
                    _mark_lost(Subject.objects.select_for_update().get(pk=subject.pk))
                lost += 1
    return lost
