"""Writes of the follow-up engine: studies, schedules, enrolment and task planning.

Dates of visits are calendar dates at the subject's site (its time zone decides what
"today" is); instants (created, completed) are stored in UTC."""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import structlog
from django.db import IntegrityError, connection, transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from config.errors import Conflict, ValidationFailed
from sites.models import Site, SiteStatus
from sites.selectors import primary_coordinator_id
from studies import error_codes
from studies.bulk import tasks_insert
from studies.enrolment_rules import duplicate_national_id_message, enrolment_check
from studies.models import (
    DONE_TASK_STATUSES,
    Arm,
    ContactAttempt,
    ContactOutcome,
    FollowUpTask,
    ScheduleStatus,
    ScheduleVersion,
    Study,
    StudyStatus,
    StudyType,
    Subject,
    SubjectSequence,
    SubjectStatus,
    TaskStatus,
)
from studies.schedule import (
    Occurrence,
    ScheduleError,
    event_spec_from_dict,
    local_date,
    plan_occurrences,
    validate_schedule,
)

log = structlog.get_logger(__name__)

CODE_RE = re.compile(r"^[A-Z0-9][A-Z0-9_-]{0,29}$")
PATTERN_TOKEN_RE = re.compile(r"\{(SITE|STUDY|SEQ(?::0?[1-9])?)\}")


# --- studies and schedules --------------------------------------------------------------

def _validate_pattern(pattern: str) -> list[str]:
    leftovers = PATTERN_TOKEN_RE.sub("", pattern)
    problems = []
    if "{SEQ" not in pattern:
        problems.append(_("The pattern must contain {SEQ} (for example {SEQ:04})."))
    if "{" in leftovers or "}" in leftovers:
        problems.append(_("Only {SITE}, {STUDY} and {SEQ} or {SEQ:0n} may appear in braces."))
    if len(pattern) > 60 or not re.fullmatch(r"[A-Za-z0-9{}:_\-]*", pattern):
        problems.append(_("Use at most 60 letters, digits, hyphens or underscores around the placeholders."))
    return problems


def subject_code_format(*, pattern: str, study_code: str, site_code: str, sequence: int) -> str:
    def replace(match: re.Match[str]) -> str:
        placeholder = match.group(1)
        if placeholder == "SITE":
            return site_code
        if placeholder == "STUDY":
            return study_code
        width = int(placeholder.split(":")[1]) if ":" in placeholder else 1
        return str(sequence).zfill(width)

    return PATTERN_TOKEN_RE.sub(replace, pattern)


def study_create(
    *, code: str, title: str, study_type: str, target_enrolment: int,
    subject_id_pattern: str = "{SITE}-{SEQ:04}", arms: Sequence[tuple[str, str]] = (),
) -> Study:
    code = (code or "").strip().upper()
    errors: dict[str, list[str]] = {}
    if not CODE_RE.match(code):
        errors["code"] = [_("Use 1-30 capital letters, digits, hyphens or underscores.")]
    elif Study.objects.filter(code=code).exists():
        errors["code"] = [_("A study with code %(code)s already exists.") % {"code": code}]
    title = (title or "").strip()
    if not title or len(title) > 300:
        errors["title"] = [_("Enter a title of at most 300 characters.")]
    if study_type not in StudyType.values:
        errors["study_type"] = [_("Choose one of: %(choices)s.") % {"choices": ", ".join(StudyType.values)}]
    if isinstance(target_enrolment, bool) or not isinstance(target_enrolment, int) or not 0 < target_enrolment <= 10**7:
        errors["target_enrolment"] = [_("Enter a whole number between 1 and 10,000,000.")]
    pattern_problems = _validate_pattern(subject_id_pattern or "")
    if pattern_problems:
        errors["subject_id_pattern"] = pattern_problems
    seen: set[str] = set()
    for index, (arm_code, arm_name) in enumerate(arms):
        if not CODE_RE.match(arm_code or "") or arm_code in seen or not (arm_name or "").strip():
            errors[f"arms.{index}"] = [_("Each arm needs a unique code and a name.")]
        seen.add(arm_code)
    if errors:
        raise ValidationFailed(errors)
    try:
        with transaction.atomic():
            study = Study.objects.create(code=code, title=title, study_type=study_type,
                                         target_enrolment=target_enrolment, subject_id_pattern=subject_id_pattern)
            Arm.objects.bulk_create([Arm(study=study, code=c, name=n.strip()) for c, n in arms])
    except IntegrityError as exc:
        raise ValidationFailed({"code": [_("A study with code %(code)s already exists.") % {"code": code}]}) from exc
    return study


def schedule_draft_save(
    *, study: Study, events: list[dict[str, Any]], arm: Arm | None = None, note: str = ""
) -> ScheduleVersion:
    """Create or replace the draft schedule of a study (or of one arm). Validated in full:
    a draft that cannot be published is refused now, with field-level messages."""
    if arm is not None and arm.study_id != study.pk:
        raise ValidationFailed({"arm": [_("This arm belongs to another study.")]})
    if not isinstance(events, list) or not events:
        raise ValidationFailed({"events": [_("Add at least one event.")]})
    if len(note) > 500:
        raise ValidationFailed({"note": [_("At most 500 characters.")]})
    specs = []
    errors: dict[str, list[str]] = {}
    for index, raw in enumerate(events):
        try:
            specs.append(event_spec_from_dict(raw))
        except ScheduleError as exc:
            errors.update({f"events.{index}.{k}" if not k.startswith("events.") else k: v
                           for k, v in exc.fields.items()})
    if not errors:
        errors.update(validate_schedule(specs))
    if not errors:
        # A scheduled event may not take the code of unscheduled visits already recorded:
        # their numbering would collide when the schedule is published.
        taken = set(FollowUpTask.objects.filter(study=study, unscheduled=True,
                                                event_code__in=[spec.code for spec in specs])
                    .values_list("event_code", flat=True))
        for index, spec in enumerate(specs):
            if spec.code in taken:
                errors[f"events.{index}.code"] = [
                    _("%(code)s is already used for unscheduled visits in this study.") % {"code": spec.code}]
    if errors:
        raise ValidationFailed(errors)
    with transaction.atomic():
        # Lock the study row: drafts of one study are saved one at a time.
        Study.objects.select_for_update().filter(pk=study.pk).first()
        versions = ScheduleVersion.objects.filter(study=study, arm=arm).order_by("-number")
        draft = versions.filter(status=ScheduleStatus.DRAFT).first()
        if draft is None:
            latest = versions.order_by("-number").first()
            draft = ScheduleVersion(study=study, arm=arm, number=(latest.number + 1) if latest else 1)
        draft.events = events
        draft.note = note
        draft.save()
    return draft


def schedule_for_subject(*, subject: Subject) -> ScheduleVersion | None:
    """The newest published schedule of the subject's arm, else of the whole study."""
    published = ScheduleVersion.objects.filter(study_id=subject.study_id, status=ScheduleStatus.PUBLISHED)
    if subject.arm_id is not None:
        own = published.filter(arm_id=subject.arm_id).order_by("-number").first()
        if own is not None:
            return own
    return published.filter(arm__isnull=True).order_by("-number").first()


def site_today(site: Site) -> date:
    return timezone.now().astimezone(zoneinfo.ZoneInfo(site.time_zone)).date()


def task_status_on(*, window_open: date, target: date, window_close: date, today: date) -> str:
    if today < window_open:
        return TaskStatus.UPCOMING
    if today <= target:
        return TaskStatus.OPEN
    if today <= window_close:
        return TaskStatus.OVERDUE
    return TaskStatus.MISSED


def _planned(subject: Subject, version: ScheduleVersion, actual_dates: dict[str, date]) -> list[Occurrence]:
    specs = [event_spec_from_dict(raw) for raw in version.events]
    return plan_occurrences(events=specs, enrolment_date=subject.enrolment_date, index_date=subject.index_date,
                            actual_dates=actual_dates)


def _modes(version: ScheduleVersion) -> dict[str, str]:
    return {raw["code"]: raw.get("mode", "any") for raw in version.events}


def _actual_dates(subject: Subject) -> dict[str, date]:
    """First completed occurrence of each event: what "previous event's actual date" anchors use."""
    dates: dict[str, date] = {}
    for event_code, completed_on in (FollowUpTask.objects.filter(subject=subject, status=TaskStatus.COMPLETED,
                                                                  sequence=1, completed_on__isnull=False)
                                     .values_list("event_code", "completed_on")):
        if completed_on is not None:
            dates[event_code] = completed_on
    return dates


@dataclass
class ReplanPlan:
    """What re-planning would do. Done tasks never appear here: they are never touched."""

    create: list[FollowUpTask] = field(default_factory=list)
    update: list[FollowUpTask] = field(default_factory=list)
    cancel: list[FollowUpTask] = field(default_factory=list)
    # Unchanged tasks that only move to the new schedule version (not shown as changes).
    relink: list[FollowUpTask] = field(default_factory=list)

    def summary(self) -> dict[str, int]:
        return {"create": len(self.create), "update": len(self.update), "cancel": len(self.cancel)}


def _replan_subject(*, subject: Subject, version: ScheduleVersion, today: date, assignee_id: int | None,
                    plan: ReplanPlan) -> None:
    existing = {(t.event_code, t.sequence): t for t in subject.tasks.filter(unscheduled=False)}
    planned = _planned(subject, version, _actual_dates(subject))
    modes = _modes(version)
    planned_keys = set()
    for occ in planned:
        key = (occ.event_code, occ.sequence)
        planned_keys.add(key)
        status = task_status_on(window_open=occ.window_open, target=occ.target, window_close=occ.window_close,
                                today=today)
        task = existing.get(key)
        if task is None:
            plan.create.append(FollowUpTask(
                subject=subject, study_id=subject.study_id, site_id=subject.site_id,
                schedule_version=version, event_code=occ.event_code, sequence=occ.sequence,
                mode=modes.get(occ.event_code, "any"), target_date=occ.target, window_open=occ.window_open,
                window_close=occ.window_close, provisional=occ.provisional, status=status, assignee_id=assignee_id,
            ))
        elif task.status not in DONE_TASK_STATUSES:
            changed = (task.target_date, task.window_open, task.window_close, task.provisional, task.mode,
                       task.status) != (occ.target, occ.window_open, occ.window_close, occ.provisional,
                                        modes.get(occ.event_code, "any"), status)
            if changed:
                task.target_date, task.window_open, task.window_close = occ.target, occ.window_open, occ.window_close
                task.provisional, task.status = occ.provisional, status
                task.mode, task.schedule_version = modes.get(occ.event_code, "any"), version
                plan.update.append(task)
            elif task.schedule_version_id != version.pk:
                task.schedule_version = version
                plan.relink.append(task)
    for key, task in existing.items():
        if key not in planned_keys and task.status not in DONE_TASK_STATUSES:
            task.status = TaskStatus.CANCELLED
            plan.cancel.append(task)


def tasks_replan_preview(*, version: ScheduleVersion, subjects: Iterable[Subject] | None = None) -> ReplanPlan:
    """What publishing `version` would change for existing subjects (nothing is saved)."""
    plan = ReplanPlan()
    targets = subjects if subjects is not None else _subjects_following(version)
    # One lookup per site, not per subject.
    primaries: dict[int, int | None] = {}
    for subject in targets:
        if subject.site_id not in primaries:
            primaries[subject.site_id] = primary_coordinator_id(site_id=subject.site_id)
        _replan_subject(subject=subject, version=version, today=site_today(subject.site),
                        assignee_id=primaries[subject.site_id], plan=plan)
    return plan


def _subjects_following(version: ScheduleVersion) -> Iterable[Subject]:
    live = Subject.objects.select_related("site").filter(
        study_id=version.study_id, status__in=[SubjectStatus.ENROLLED, SubjectStatus.SCREENING])
    if version.arm_id is not None:
        return live.filter(arm_id=version.arm_id)
    arms_with_own = ScheduleVersion.objects.filter(study_id=version.study_id, status=ScheduleStatus.PUBLISHED,
                                                   arm__isnull=False).values_list("arm_id", flat=True)
    return live.exclude(arm_id__in=arms_with_own)


# Plans with at least this many new tasks are written with COPY (studies.bulk): about
# 1.5 times faster than bulk_create at this size, but the instances get no primary key.
# Smaller plans (an enrolment, a completed visit) keep bulk_create and their keys.
COPY_MIN_TASKS = 1000


def _apply(plan: ReplanPlan) -> None:
    if len(plan.create) >= COPY_MIN_TASKS:
        tasks_insert(plan.create)
    else:
        FollowUpTask.objects.bulk_create(plan.create, batch_size=5000)
    FollowUpTask.objects.bulk_update(
        plan.update, ["target_date", "window_open", "window_close", "provisional", "status", "mode",
                      "schedule_version"], batch_size=5000)
    FollowUpTask.objects.bulk_update(plan.cancel, ["status"], batch_size=5000)
    FollowUpTask.objects.bulk_update(plan.relink, ["schedule_version"], batch_size=5000)


def schedule_publish(*, version: ScheduleVersion) -> ReplanPlan:
    """Publish a draft and re-plan the not-yet-done tasks of the subjects who follow it,
    in one transaction. Done tasks (completed, missed, cancelled) are never touched."""
    with transaction.atomic():
        locked = ScheduleVersion.objects.select_for_update().get(pk=version.pk)
        if locked.status == ScheduleStatus.PUBLISHED:
            raise Conflict(error_codes.SCHEDULE_PUBLISHED, _("This schedule version is already published."))
        locked.status = ScheduleStatus.PUBLISHED
        locked.published_at = timezone.now()
        locked.save(update_fields=["status", "published_at"])
        plan = tasks_replan_preview(version=locked)
        _apply(plan)
    log.info("schedule.published", study_id=locked.study_id, version=locked.number, **plan.summary())
    return plan


def study_activate(*, study: Study) -> Study:
    with transaction.atomic():
        locked = Study.objects.select_for_update().get(pk=study.pk)
        if locked.status != StudyStatus.DRAFT:
            raise Conflict(error_codes.BAD_TRANSITION, _("Only a draft study can be activated."))
        if not ScheduleVersion.objects.filter(study=locked, status=ScheduleStatus.PUBLISHED).exists():
            raise Conflict(error_codes.NO_SCHEDULE, _("Publish a visit schedule before activating the study."))
        locked.status = StudyStatus.ACTIVE
        locked.save(update_fields=["status"])
    return locked


# --- enrolment ----------------------------------------------------------------------------

def subject_enrol(
    *, study: Study, site: Site, consent_date: date, enrolment_date: date | None = None,
    index_date: date | None = None, arm: Arm | None = None, language: str = "zh-hans",
    name: str = "", phone: str = "", email: str = "", national_id: str = "", birth_date: str = "",
    address: str = "",
) -> Subject:
    """Enrol a subject: a gapless subject ID, encrypted identifying data, and one
    follow-up task per scheduled occurrence, all in one transaction."""
    today = site_today(site)
    enrolled_on: date = enrolment_date or today
    parsed_birth: date | None = None
    birth_problem = None
    if birth_date:
        try:
            parsed_birth = date.fromisoformat(birth_date)
        except ValueError:
            birth_problem = _("Use the form YYYY-MM-DD.")
    check = enrolment_check(today=today, consent_date=consent_date, enrolment_date=enrolled_on,
                            index_date=index_date, birth_date=parsed_birth, language=language, name=name,
                            phone=phone, email=email, national_id=national_id, address=address)
    if birth_problem:
        check.add("birth_date", birth_problem)
    if arm is not None and arm.study_id != study.pk:
        check.add("arm", _("This arm belongs to another study."))
    national_hash = check.national_id_hash
    if national_hash is not None and Subject.objects.filter(national_id_hash=national_hash).exists():
        check.add("national_id", duplicate_national_id_message())
    errors = check.as_field_errors()
    if errors:
        raise ValidationFailed(errors)
    if study.status != StudyStatus.ACTIVE:
        raise Conflict(error_codes.STUDY_NOT_ACTIVE, _("Subjects can only be enrolled in an active study."))
    if site.status != SiteStatus.ACTIVE:
        raise Conflict(error_codes.SITE_NOT_ACTIVE, _("Only an active site can enrol subjects."),
                       fields={"site": [_("This site is not active.")]})
    try:
        with transaction.atomic():
            sequence, _created = SubjectSequence.objects.get_or_create(study=study, site=site)
            sequence = SubjectSequence.objects.select_for_update().get(pk=sequence.pk)
            sequence.last_value += 1
            sequence.save(update_fields=["last_value"])
            subject = Subject.objects.create(
                study=study, site=site, arm=arm, status=SubjectStatus.ENROLLED,
                subject_code=subject_code_format(pattern=study.subject_id_pattern, study_code=study.code,
                                                 site_code=site.code, sequence=sequence.last_value),
                consent_date=consent_date, enrolment_date=enrolled_on, index_date=index_date,
                language=language, name=name or None, phone=phone or None, email=email or None,
                national_id=national_id or None, birth_date=birth_date or None, address=address or None,
                national_id_hash=national_hash,
            )
            version = schedule_for_subject(subject=subject)
            if version is None:
                raise Conflict(error_codes.NO_SCHEDULE, _("This study has no published schedule for this arm."))
            plan = ReplanPlan()
            _replan_subject(subject=subject, version=version, today=today,
                            assignee_id=primary_coordinator_id(site_id=site.pk), plan=plan)
            _apply(plan)
    except IntegrityError as exc:
        if "subject_national_id_uniq" in str(exc):
            raise ValidationFailed({"national_id": [duplicate_national_id_message()]}) from exc
        raise
    except OverflowError as exc:
        # A date the checks let through still planned a visit past year 1 or 9999 (the
        # transaction is rolled back: no subject, no sequence number used).
        raise ValidationFailed({"index_date" if index_date else "enrolment_date": [
            _("The visit schedule from this date falls outside the calendar.")]}) from exc
    log.info("subject.enrolled", subject_id=subject.pk, study_id=study.pk, site_id=site.pk, tasks=len(plan.create))
    return subject




# --- working the follow-up --------------------------------------------------------------

FAILED_OUTCOMES = frozenset({"no_answer", "wrong_number", "call_back_later"})


def contact_attempt_record(*, task: FollowUpTask, user_id: int, outcome: str, note: str = "",
                           at: datetime | None = None) -> ContactAttempt:
    """Record one phone contact attempt. Enough failed attempts in a row (the study's
    rule) mark the subject lost to follow-up and cancel their open tasks."""
    errors: dict[str, list[str]] = {}
    if outcome not in ContactOutcome.values:
        errors["outcome"] = [_("Choose one of: %(choices)s.") % {"choices": ", ".join(ContactOutcome.values)}]
    if len(note or "") > 2000:
        errors["note"] = [_("At most %(max)d characters.") % {"max": 2000}]
    when = at or timezone.now()
    if when > timezone.now() + timedelta(minutes=5):
        errors["at"] = [_("The attempt cannot be in the future.")]
    elif local_date(when, task.subject.site.time_zone) < task.subject.enrolment_date:
        # A call before enrolment is a typo, and the lost-to-follow-up rule would count it.
        errors["at"] = [_("The date is before the subject's enrolment.")]
    if errors:
        raise ValidationFailed(errors)
    if task.status in DONE_TASK_STATUSES:
        raise Conflict(error_codes.BAD_TRANSITION, _("This follow-up is already closed."))
    with transaction.atomic():
        attempt = ContactAttempt.objects.create(task=task, outcome=outcome, note=note or None, by_id=user_id, at=when)
        subject = Subject.objects.select_for_update().select_related("study").get(pk=task.subject_id)
        limit = subject.study.lost_after_failed_attempts
        if limit and outcome in FAILED_OUTCOMES and subject.status == SubjectStatus.ENROLLED:
            recent = list(ContactAttempt.objects.filter(task__subject=subject).order_by("-at", "-pk")
                          .values_list("outcome", flat=True)[:limit])
            if len(recent) == limit and all(o in FAILED_OUTCOMES for o in recent):
                _mark_lost(subject)
    return attempt


def _mark_lost(subject: Subject) -> None:
    subject.status = SubjectStatus.LOST
    subject.save(update_fields=["status"])
    FollowUpTask.objects.filter(subject=subject).exclude(status__in=DONE_TASK_STATUSES).update(
        status=TaskStatus.CANCELLED)
    log.info("subject.lost_to_follow_up", subject_id=subject.pk)


def tasks_refresh_statuses(*, today_by_time_zone: dict[str, date] | None = None) -> dict[str, int]:
    """Move not-done tasks along upcoming → open → overdue → missed by each site's
    "today", then apply the consecutive-missed-visits rule. Set-based UPDATEs: one pass
    over a million tasks is a handful of statements. Run by beat in every tenant."""
    counts = {"open": 0, "overdue": 0, "missed": 0, "lost": 0}
    zones = set(Site.objects.values_list("time_zone", flat=True))
    for zone in zones:
        today = (today_by_time_zone or {}).get(zone) or timezone.now().astimezone(zoneinfo.ZoneInfo(zone)).date()
        live = FollowUpTask.objects.filter(site__time_zone=zone)
        counts["missed"] += live.filter(status__in=[TaskStatus.UPCOMING, TaskStatus.OPEN, TaskStatus.OVERDUE],
                                        window_close__lt=today).update(status=TaskStatus.MISSED)
        counts["overdue"] += live.filter(status__in=[TaskStatus.UPCOMING, TaskStatus.OPEN],
                                         target_date__lt=today).update(status=TaskStatus.OVERDUE)
        counts["open"] += live.filter(status=TaskStatus.UPCOMING, window_open__lte=today).update(
            status=TaskStatus.OPEN)
    if counts["missed"]:
        counts["lost"] = _apply_missed_rule()
    return counts


# Enrolled subjects whose `lost_after_missed` (> 0) newest closed visits (completed or
# missed, newest target date first) are all missed: a trailing run of consecutive missed
# visits at least as long as their study's threshold. One pass over the closed tasks,
# numbered per subject by a window; the subject qualifies when its row number
# `lost_after_missed` exists and no completed visit comes before it. Of two visits with
# the same target date, the completed one counts as the newer (it breaks the run).
MISSED_RUN_SQL = """
SELECT subject_id
  FROM (SELECT task.subject_id,
               study.lost_after_missed,
               row_number() OVER newest_first AS position,
               count(*) FILTER (WHERE task.status = %(completed)s) OVER newest_first AS completed_so_far
          FROM studies_followuptask AS task
          JOIN studies_subject AS subject ON subject.id = task.subject_id
          JOIN studies_study AS study ON study.id = subject.study_id
         WHERE study.lost_after_missed > 0
           AND subject.status = %(enrolled)s
           AND task.status IN (%(completed)s, %(missed)s)
        WINDOW newest_first AS (PARTITION BY task.subject_id
                                ORDER BY task.target_date DESC, task.status = %(completed)s DESC, task.id DESC
                                ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)) AS closed
 WHERE position = lost_after_missed AND completed_so_far = 0
"""


def _apply_missed_rule() -> int:
    """Mark lost to follow-up every enrolled subject with their study's number of
    consecutive missed visits (0 = rule off). The candidates come from one query; each
    is then marked like any other loss (_mark_lost), under its row lock, if still enrolled."""
    with connection.cursor() as cursor:
        cursor.execute(MISSED_RUN_SQL, {"completed": TaskStatus.COMPLETED, "missed": TaskStatus.MISSED,
                                        "enrolled": SubjectStatus.ENROLLED})
        subject_ids = [row[0] for row in cursor.fetchall()]
    lost = 0
    for subject_id in subject_ids:
        with transaction.atomic():
            subject = Subject.objects.select_for_update().filter(pk=subject_id, status=SubjectStatus.ENROLLED).first()
            if subject is not None:
                _mark_lost(subject)
                lost += 1
    return lost


_TASK_COMPLETE_SQL = ("UPDATE studies_followuptask SET status = %s, completed_on = %s, updated = %s "
                      "WHERE id = %s AND NOT (status = ANY(%s))")
_DONE = sorted(status.value for status in DONE_TASK_STATUSES)


def _completion_check(subject: Subject, completed_on: date) -> date:
    today = site_today(subject.site)
    if completed_on > today:
        raise ValidationFailed({"completed_on": [_("The date is in the future.")]})
    if completed_on < subject.enrolment_date:
        raise ValidationFailed({"completed_on": [_("The date is before the subject's enrolment.")]})
    return today


def _anchors_others(*, sequence: int, unscheduled: bool, event_code: str, version: ScheduleVersion | None) -> bool:
    """Only the first occurrence's actual date anchors other events; when no event anchors
    on this one, completing it moves nothing and the re-plan is skipped."""
    return version is not None and sequence == 1 and not unscheduled and any(
        raw.get("anchor") == "event" and raw.get("anchor_event") == event_code for raw in version.events)


def task_complete(*, task: FollowUpTask, completed_on: date,
                  schedule: ScheduleVersion | None = None) -> FollowUpTask:
    """Record a follow-up as done (for example a phone follow-up reached the patient).
    Events anchored on this one's actual date are re-planned; done tasks stay as they are."""
    subject = task.subject
    today = _completion_check(subject, completed_on)
    now = timezone.now()
    # No savepoint when nested (a form save completing its visit): a failure here fails
    # the caller's transaction anyway.
    with transaction.atomic(savepoint=False):
        # One guarded UPDATE instead of lock-read-save: the row lock is the same.
        with connection.cursor() as cursor:
            cursor.execute(_TASK_COMPLETE_SQL + " RETURNING sequence, unscheduled, event_code, assignee_id",
                           [TaskStatus.COMPLETED.value, completed_on, now, task.pk, _DONE])
            row = cursor.fetchone()
        # Refused below, outside the block: raising inside it would break the caller's
        # transaction (there is no savepoint), and nothing was written.
        if row is not None:
            task.status, task.completed_on, task.updated = TaskStatus.COMPLETED, completed_on, now
            sequence, unscheduled, event_code, assignee_id = row
            # Only a first, scheduled occurrence can anchor others: read the schedule then only.
            anchor_candidate = sequence == 1 and not unscheduled
            version = (schedule or schedule_for_subject(subject=subject)) if anchor_candidate else None
            if version is not None and _anchors_others(sequence=sequence, unscheduled=unscheduled,
                                                       event_code=event_code, version=version):
                plan = ReplanPlan()
                _replan_subject(subject=subject, version=version, today=today, assignee_id=assignee_id, plan=plan)
                _apply(plan)
    if row is None:
        raise Conflict(error_codes.BAD_TRANSITION, _("This follow-up is already closed."))
    return task


def task_complete_statement(*, task: FollowUpTask, completed_on: date,
                            schedule: ScheduleVersion | None) -> tuple[str, list[Any]] | None:
    """The statement that completes the task, for a caller that sends it later in its own
    transaction together with other statements (a form save: with its audit append), or
    None when completing it re-plans other events (call task_complete instead). A task
    closed in the meantime is left as it is (the guard). `task` is updated in memory."""
    _completion_check(task.subject, completed_on)
    if _anchors_others(sequence=task.sequence, unscheduled=task.unscheduled, event_code=task.event_code,
                       version=schedule):
        return None
    now = timezone.now()
    task.status, task.completed_on, task.updated = TaskStatus.COMPLETED, completed_on, now
    return _TASK_COMPLETE_SQL, [TaskStatus.COMPLETED.value, completed_on, now, task.pk, _DONE]
