"""The reminder scan: finds tasks that a study's rules say need a reminder and writes
them to the outbox, in one transaction, keyed (rule, task, occurrence) so that running
the scan twice, or twice at once, writes each reminder once."""

from __future__ import annotations

import zoneinfo
from collections.abc import Iterator
from datetime import date, datetime, time, timedelta

import structlog
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import override

from notifications.models import ReminderKind, ReminderRule
from notifications.services import Outgoing, outbox_enqueue
from sites.models import SiteStaff
from studies.models import FollowUpTask, StudyStatus, SubjectStatus, TaskStatus

log = structlog.get_logger(__name__)


def next_allowed_instant(*, now: datetime, tz_name: str, quiet_from: time, quiet_until: time) -> datetime:
    """`now` if it is outside quiet hours in `tz_name`, else the end of the quiet period."""
    zone = zoneinfo.ZoneInfo(tz_name)
    local = now.astimezone(zone)
    moment = local.time()
    overnight = quiet_from > quiet_until
    quiet = (moment >= quiet_from or moment < quiet_until) if overnight else (quiet_from <= moment < quiet_until)
    if not quiet:
        return now
    end_day = local.date() + timedelta(days=1) if overnight and moment >= quiet_from else local.date()
    return datetime.combine(end_day, quiet_until, tzinfo=zone).astimezone(zoneinfo.ZoneInfo("UTC"))


def _today(tz_name: str, now: datetime) -> date:
    return now.astimezone(zoneinfo.ZoneInfo(tz_name)).date()


def reminders_scan(*, now: datetime | None = None) -> int:
    """Write due reminders to the outbox. Returns how many new messages were written."""
    now = now or timezone.now()
    written = 0
    rules = ReminderRule.objects.filter(active=True, study__status=StudyStatus.ACTIVE).select_related("study")
    with transaction.atomic():
        for rule in rules:
            written += outbox_enqueue(messages=list(_messages_for(rule, now)))
    if written:
        log.info("reminders.scanned", written=written)
    return written


def _messages_for(rule: ReminderRule, now: datetime) -> Iterator[Outgoing]:
    tasks = (FollowUpTask.objects.select_related("subject", "subject__site", "assignee")
             .filter(subject__study=rule.study, subject__status=SubjectStatus.ENROLLED))
    if rule.kind == ReminderKind.PATIENT_BEFORE_WINDOW:
        # Candidates: window opens within the next `days` days (per site's today, checked below).
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
