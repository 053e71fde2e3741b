"""Writes on a subject's follow-up after enrolment: status changes (withdrawn, deceased,
completed, lost, reinstated), unscheduled visits, and (re)assigning tasks.

Dates are calendar dates at the subject's site, like the rest of the engine."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import date, timedelta

import structlog
from django.db import transaction
from django.db.models import Max
from django.utils.translation import gettext as _

from config.errors import Conflict, ValidationFailed
from sites.models import SiteRole, SiteStaff
from sites.selectors import primary_coordinator_id
from studies import error_codes
from studies.models import DONE_TASK_STATUSES, FollowUpTask, Subject, SubjectStatus, TaskStatus, VisitMode
from studies.services import schedule_for_subject, site_today, task_status_on

log = structlog.get_logger(__name__)

# Which status may follow which. Withdrawn, deceased and completed are final; a subject
# lost to follow-up who is found again is reinstated (back to enrolled).
STATUS_TRANSITIONS: dict[str, frozenset[str]] = {
    SubjectStatus.SCREENING: frozenset({SubjectStatus.ENROLLED, SubjectStatus.WITHDRAWN}),
    SubjectStatus.ENROLLED: frozenset({SubjectStatus.COMPLETED, SubjectStatus.WITHDRAWN, SubjectStatus.LOST,
                                       SubjectStatus.DECEASED}),
    SubjectStatus.LOST: frozenset({SubjectStatus.ENROLLED, SubjectStatus.WITHDRAWN, SubjectStatus.DECEASED}),
}
ENDING_STATUSES = frozenset({SubjectStatus.COMPLETED, SubjectStatus.WITHDRAWN, SubjectStatus.LOST,
                             SubjectStatus.DECEASED})
# Ending follow-up for these needs a reason a monitor can read later.
REASON_REQUIRED = frozenset({SubjectStatus.WITHDRAWN, SubjectStatus.LOST, SubjectStatus.DECEASED,
                             SubjectStatus.ENROLLED})
MAX_REASON = 1000

UNSCHEDULED_CODE = "UNS"
UNSCHEDULED_CODE_RE = re.compile(r"^[A-Z0-9][A-Z0-9_-]{0,19}$")
MAX_UNSCHEDULED_WINDOW = 90
# Roles at a site that may be given follow-up tasks.
ASSIGNABLE_SITE_ROLES = frozenset({SiteRole.COORDINATOR, SiteRole.INVESTIGATOR})
MAX_REASSIGN = 500


# --- status ---------------------------------------------------------------------------------

def subject_status_change(*, subject: Subject, status: str, effective_on: date, reason: str = "") -> Subject:
    """Change a subject's status. Ending follow-up (withdrawn, deceased, completed, lost)
    cancels every task that is not done yet; reinstating a lost subject re-opens the
    cancelled tasks whose window has not closed. Done tasks are never touched."""
    reason = (reason or "").strip()
    today = site_today(subject.site)
    errors: dict[str, list[str]] = {}
    if status not in SubjectStatus.values:
        errors["status"] = [_("Choose one of: %(choices)s.") % {"choices": ", ".join(SubjectStatus.values)}]
    if effective_on > today:
        errors["effective_on"] = [_("The date is in the future.")]
    elif effective_on < subject.enrolment_date:
        errors["effective_on"] = [_("The date is before the subject's enrolment.")]
    if status in REASON_REQUIRED and not reason:
        errors["reason"] = [_("Give a reason.")]
    if len(reason) > MAX_REASON:
        errors["reason"] = [_("At most %(max)d characters.") % {"max": MAX_REASON}]
    if errors:
        raise ValidationFailed(errors)
    with transaction.atomic():
        locked = Subject.objects.select_for_update().select_related("site").get(pk=subject.pk)
        if status not in STATUS_TRANSITIONS.get(locked.status, frozenset()):
            raise Conflict(error_codes.BAD_TRANSITION,
                           _("A subject who is %(current)s cannot become %(new)s.")
                           % {"current": SubjectStatus(locked.status).label, "new": SubjectStatus(status).label},
                           fields={"status": [_("Not allowed from the current status.")]})
        previous = locked.status
        locked.status = status
        locked.status_changed_on = effective_on
        locked.status_reason = reason or None
        locked.save(update_fields=["status", "status_changed_on", "status_reason"])
        tasks = FollowUpTask.objects.filter(subject=locked)
        if status in ENDING_STATUSES:
            changed = tasks.exclude(status__in=DONE_TASK_STATUSES).update(status=TaskStatus.CANCELLED)
        else:
            changed = _reopen_cancelled(locked, today)
    log.info("subject.status_changed", subject_id=locked.pk, previous=previous, status=status, tasks=changed)
    return locked


def _reopen_cancelled(subject: Subject, today: date) -> int:
    """Give a reinstated subject back the visits they can still make."""
    reopened = []
    for task in FollowUpTask.objects.filter(subject=subject, status=TaskStatus.CANCELLED, window_close__gte=today):
        task.status = task_status_on(window_open=task.window_open, target=task.target_date,
                                     window_close=task.window_close, today=today)
        reopened.append(task)
    FollowUpTask.objects.bulk_update(reopened, ["status"])
    return len(reopened)


# --- unscheduled visits -----------------------------------------------------------------------

def unscheduled_visit_add(
    *, subject: Subject, visit_date: date, reason: str, mode: str = VisitMode.CLINIC, event_code: str = "",
    window_after: int = 7, assignee_id: int | None = None,
) -> FollowUpTask:
    """Add a visit outside the schedule (an adverse-event check, a patient who walks in).
    It is a follow-up task like any other: on the worklist, with a window for entering its
    data (from the visit date to `window_after` days later), and never re-planned."""
    reason = (reason or "").strip()
    code = (event_code or UNSCHEDULED_CODE).strip().upper()
    today = site_today(subject.site)
    errors: dict[str, list[str]] = {}
    if not reason:
        errors["reason"] = [_("Give a reason for the unscheduled visit.")]
    elif len(reason) > MAX_REASON:
        errors["reason"] = [_("At most %(max)d characters.") % {"max": MAX_REASON}]
    if mode not in VisitMode.values:
        errors["mode"] = [_("Choose one of: %(choices)s.") % {"choices": ", ".join(VisitMode.values)}]
    if not UNSCHEDULED_CODE_RE.fullmatch(code):
        errors["event_code"] = [_("Use up to 20 capital letters, digits, hyphens or underscores.")]
    else:
        version = schedule_for_subject(subject=subject)
        scheduled_codes = {raw.get("code") for raw in (version.events if version is not None else [])}
        if code in scheduled_codes:
            errors["event_code"] = [_("%(code)s is a scheduled event; choose another code.") % {"code": code}]
    if not 0 <= window_after <= MAX_UNSCHEDULED_WINDOW:
        errors["window_after"] = [_("Between 0 and %(max)d days.") % {"max": MAX_UNSCHEDULED_WINDOW}]
    elif visit_date < subject.enrolment_date:
        errors["visit_date"] = [_("The date is before the subject's enrolment.")]
    elif visit_date > today + timedelta(days=365):
        errors["visit_date"] = [_("Plan unscheduled visits at most a year ahead.")]
    elif visit_date + timedelta(days=window_after) < today:
        errors["visit_date"] = [_("The data-entry window of this visit would already be closed; widen the "
                                  "window or check the date.")]
    if errors:
        raise ValidationFailed(errors)
    with transaction.atomic():
        locked = Subject.objects.select_for_update().get(pk=subject.pk)
        if locked.status not in (SubjectStatus.ENROLLED, SubjectStatus.SCREENING):
            raise Conflict(error_codes.BAD_TRANSITION,
                           _("Visits can only be added while the subject is in follow-up."))
        if assignee_id is not None:
            _check_assignable(site_id=locked.site_id, user_id=assignee_id, field_name="assignee")
        else:
            assignee_id = _default_assignee(locked)
        # The subject row is locked, so two people adding visits at once get 1 and 2.
        last = FollowUpTask.objects.filter(subject=locked, event_code=code).aggregate(m=Max("sequence"))["m"] or 0
        window_close = visit_date + timedelta(days=window_after)
        task = FollowUpTask.objects.create(
            subject=locked, study_id=locked.study_id, site_id=locked.site_id, event_code=code, sequence=last + 1,
            unscheduled=True, mode=mode, target_date=visit_date, window_open=visit_date, window_close=window_close,
            status=task_status_on(window_open=visit_date, target=visit_date, window_close=window_close, today=today),
            assignee_id=assignee_id, reason=reason,
        )
    log.info("task.unscheduled_added", subject_id=locked.pk, task_id=task.pk)
    return task


def _default_assignee(subject: Subject) -> int | None:
    """Whoever follows this subject already (their latest task), else the site's primary."""
    current = (FollowUpTask.objects.filter(subject=subject, assignee__isnull=False).order_by("-target_date")
               .values_list("assignee_id", flat=True).first())
    if current is not None:
        return current
    return primary_coordinator_id(site_id=subject.site_id)


# --- assignment -------------------------------------------------------------------------------

def _check_assignable(*, site_id: int, user_id: int, field_name: str) -> None:
    if not SiteStaff.objects.filter(site_id=site_id, user_id=user_id, role__in=ASSIGNABLE_SITE_ROLES).exists():
        raise ValidationFailed({field_name: [
            _("This person is not a coordinator or investigator at the subject's site.")]})


def tasks_reassign(*, tasks: Sequence[FollowUpTask], assignee_id: int) -> int:
    """Give follow-up tasks to another coordinator or investigator of their site (for
    example when a coordinator leaves). All or nothing: one task the new assignee may not
    take refuses the whole request, naming it. Done tasks are refused too."""
    if not tasks:
        raise ValidationFailed({"tasks": [_("Choose at least one task.")]})
    if len(tasks) > MAX_REASSIGN:
        raise ValidationFailed({"tasks": [_("At most %(max)d tasks at a time.") % {"max": MAX_REASSIGN}]})
    site_ids = {t.site_id for t in tasks}
    allowed_sites = set(SiteStaff.objects.filter(site_id__in=site_ids, user_id=assignee_id,
                                                 role__in=ASSIGNABLE_SITE_ROLES).values_list("site_id", flat=True))
    problems = [_("Task %(id)d: this person is not a coordinator or investigator at its site.") % {"id": t.pk}
                for t in tasks if t.site_id not in allowed_sites]
    if problems:
        raise ValidationFailed({"assignee": problems})
    with transaction.atomic():
        locked = list(FollowUpTask.objects.select_for_update().filter(pk__in=[t.pk for t in tasks]).order_by("pk"))
        closed = [t.pk for t in locked if t.status in DONE_TASK_STATUSES]
        if closed:
            raise Conflict(error_codes.BAD_TRANSITION, _("Closed follow-ups cannot be reassigned."),
                           fields={"tasks": [_("Task %(id)d is closed.") % {"id": pk} for pk in closed]})
        changed = FollowUpTask.objects.filter(pk__in=[t.pk for t in locked]).update(assignee_id=assignee_id)
    log.info("tasks.reassigned", tasks=changed, assignee_id=assignee_id)
    return changed
