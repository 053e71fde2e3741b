"""The reminder scan: finds tasks that a study's rules say need a reminder and writes
them to the outbox, in one transaction, keyed (rule, task, occurrence) so that running
the scan twice, or twice at once, writes each reminder once."""

from __future__ import annotations

import zoneinfo
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, time, timedelta

import structlog
from django.conf import settings
from django.db import transaction
from django.db.models import CharField, Exists, OuterRef, QuerySet, Value
from django.db.models.functions import Cast, Concat
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import override

from config.db import tenant_connection
from notifications.models import OutboxMessage, ReminderKind, ReminderRule
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


def _rule_key(rule: ReminderRule) -> Concat:
    """The outbox key f"{rule.pk}:{task.pk}:1" as SQL, for the task in the outer query."""
    return Concat(Value(f"{rule.pk}:"), Cast(OuterRef("pk"), output_field=CharField()), Value(":1"))


class _SiteClock:
    """Per rule and time zone, computed once: the site's today and the first instant
    outside the rule's quiet hours (the same for every task at sites in that zone)."""

    def __init__(self, rule: ReminderRule, now: datetime) -> None:
        self.rule, self.now = rule, now
        self._cache: dict[str, tuple[date, datetime]] = {}

    def __call__(self, tz_name: str) -> tuple[date, datetime]:
        if tz_name not in self._cache:
            self._cache[tz_name] = (_today(tz_name, self.now), next_allowed_instant(
                now=self.now, tz_name=tz_name, quiet_from=self.rule.quiet_from, quiet_until=self.rule.quiet_until))
        return self._cache[tz_name]


def _messages_for(rule: ReminderRule, now: datetime) -> Iterator[Outgoing]:
    # Filtered on the task's own study (a copy of the subject's), and reading only the
    # columns a message needs: loading whole subjects would decrypt all six identifying
    # fields of every candidate.
    columns = ["id", "event_code", "target_date", "window_open", "window_close", "site_id", "assignee_id",
               "subject__subject_code", "subject__language", "site__time_zone", "site__code", "assignee__email",
               "assignee__preferred_language"]
    if rule.kind == ReminderKind.PATIENT_BEFORE_WINDOW:
        columns.append("subject__email" if rule.channel == "email" else "subject__phone")
    tasks = (FollowUpTask.objects.select_related("subject", "site", "assignee")
             .filter(study_id=rule.study_id, subject__status=SubjectStatus.ENROLLED).only(*columns))
    clock = _SiteClock(rule, now)
    if rule.kind == ReminderKind.PATIENT_BEFORE_WINDOW:
        # Candidates: window opens within the next `days` days (per site's today, checked below).
        horizon = now.date() + timedelta(days=rule.days + 1)
        tasks = tasks.filter(status=TaskStatus.UPCOMING, window_open__lte=horizon, subject__reminders_opt_out=False)
    elif rule.kind == ReminderKind.COORDINATOR_OVERDUE:
        tasks = tasks.filter(status=TaskStatus.OVERDUE, assignee__isnull=False)
    else:
        # Overdue for `days` days at the site: a superset in UTC dates here (a site's
        # today is within a day of UTC's), the exact check below.
        tasks = tasks.filter(status=TaskStatus.OVERDUE,
                             target_date__lte=now.astimezone(UTC).date() + timedelta(days=1 - rule.days))
    if rule.kind != ReminderKind.INVESTIGATOR_OVERDUE:
        # A reminder already in the outbox would be skipped by outbox_enqueue; skipping
        # its task here saves building (and decrypting) it again on every scan.
        tasks = tasks.exclude(Exists(OutboxMessage.objects.filter(key=_rule_key(rule))))
    if rule.kind == ReminderKind.PATIENT_BEFORE_WINDOW:
        yield from _patient_messages(rule, tasks, clock)
    elif rule.kind == ReminderKind.COORDINATOR_OVERDUE:
        yield from _coordinator_messages(rule, tasks, clock)
    else:
        yield from _investigator_messages(rule, tasks, clock)


class _Texts:
    """A message's texts per language, translated once per scan (not once per message:
    thousands at a large study). `make` calls gettext; it runs under the language."""

    def __init__(self, make: Callable[[], tuple[str, str]]) -> None:
        self.make = make
        self._cache: dict[str, tuple[str, str]] = {}

    def __call__(self, language: str) -> tuple[str, str]:
        if language not in self._cache:
            with override(language):
                self._cache[language] = self.make()
        return self._cache[language]


def _staff_language(preferred: str | None) -> str:
    """The staff member's own language, else their tenant's (the scan runs in one tenant,
    outside any request, so nothing else has chosen one)."""
    tenant = getattr(tenant_connection, "tenant", None)
    return preferred or getattr(tenant, "default_language", "") or settings.LANGUAGE_CODE


def _patient_messages(rule: ReminderRule, tasks: QuerySet[FollowUpTask], clock: _SiteClock) -> Iterator[Outgoing]:
    texts = _Texts(lambda: (_("Your follow-up visit is coming up"),
                            _("Your next follow-up (%(event)s) is due between %(start)s and %(end)s. "
                              "Your study team will contact you.")))
    for task in tasks.iterator(chunk_size=2000):
        today, not_before = clock(task.site.time_zone)
        if not (today <= task.window_open <= today + timedelta(days=rule.days)):
            continue
        recipient = task.subject.email if rule.channel == "email" else task.subject.phone
        if not recipient:
            continue
        language = task.subject.language
        subject, body = texts(language)
        yield Outgoing(key=f"{rule.pk}:{task.pk}:1", channel=rule.channel, recipient=recipient, subject=subject,
                       body=body % {"event": task.event_code, "start": task.window_open.isoformat(),
                                    "end": task.window_close.isoformat()},
                       language=language, not_before=not_before)


def _coordinator_messages(rule: ReminderRule, tasks: QuerySet[FollowUpTask],
                          clock: _SiteClock) -> Iterator[Outgoing]:
    texts = _Texts(lambda: (_("Overdue follow-up: %(subject)s %(event)s"),
                            _("Follow-up %(event)s of %(subject)s is overdue; its window closes on %(end)s.")))
    for task in tasks.iterator(chunk_size=2000):
        if task.assignee is None:
            continue
        not_before = clock(task.site.time_zone)[1]
        code = task.subject.subject_code
        language = _staff_language(task.assignee.preferred_language)
        subject_text, body_text = texts(language)
        yield Outgoing(key=f"{rule.pk}:{task.pk}:1", channel="email", recipient=task.assignee.email,
                       subject=subject_text % {"subject": code, "event": task.event_code},
                       body=body_text % {"event": task.event_code, "subject": code,
                                         "end": task.window_close.isoformat()},
                       language=language, not_before=not_before)


def _investigator_messages(rule: ReminderRule, tasks: QuerySet[FollowUpTask],
                           clock: _SiteClock) -> Iterator[Outgoing]:
    # The investigators of every site of the study, read once, not once per task.
    investigators: dict[int, list[tuple[int, str, str]]] = defaultdict(list)
    for site_id, user_id, email, preferred in (SiteStaff.objects.filter(role="investigator").values_list(
            "site_id", "user_id", "user__email", "user__preferred_language")):
        investigators[site_id].append((user_id, email, _staff_language(preferred)))
    texts = _Texts(lambda: (_("Follow-up overdue for %(days)d days: %(subject)s"),
                            _("Follow-up %(event)s of %(subject)s at site %(site)s is overdue.")))
    for task in tasks.iterator(chunk_size=2000):
        today, not_before = clock(task.site.time_zone)
        days_overdue = (today - task.target_date).days
        if days_overdue < rule.days:
            continue
        for user_id, email, language in investigators.get(task.site_id, ()):
            subject_text, body_text = texts(language)
            yield Outgoing(key=f"{rule.pk}:{task.pk}:1:{user_id}", channel="email", recipient=email,
                           subject=subject_text % {"days": days_overdue, "subject": task.subject.subject_code},
                           body=body_text % {"event": task.event_code, "subject": task.subject.subject_code,
                                             "site": task.site.code},
                           language=language, not_before=not_before)
