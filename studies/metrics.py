"""Follow-up metrics (issue #3, section 6): follow-up, on-time and missed rates, overdue
count, lost-to-follow-up rate and enrolment against target, per study, site and event.

Everything is counted by PostgreSQL in three grouped aggregate queries (tasks by study,
site and event; subjects by study and site; subjects by study and enrolment month); Python
only adds up the few resulting groups. Scoped by the member's sites exactly like
studies.selectors (sites.selectors.site_ids_visible).

Definitions (cancelled tasks never count):
- due: the task's window has closed (window_close < today) or the task is completed;
- follow-up rate = completed / due;
- on-time rate = completed with window_open <= completed_on <= window_close, / due;
- missed rate = missed (and due) / due; overdue = tasks in status overdue;
- lost-to-follow-up rate = subjects lost / subjects enrolled (any status but screening).
A rate is a float rounded to 4 places, or None when its denominator is 0.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date
from typing import Any

from django.db.models import Count, F, Q
from django.db.models.functions import TruncMonth
from django.utils import timezone

from sites.models import Site
from sites.selectors import site_ids_visible
from studies.models import FollowUpTask, Study, Subject, SubjectStatus, TaskStatus

TASK_COUNTS = ("due", "completed", "on_time", "overdue", "missed")
SUBJECT_COUNTS = ("enrolled", "lost")


def _rate(numerator: int, denominator: int) -> float | None:
    return round(numerator / denominator, 4) if denominator else None


def _with_rates(counts: dict[str, Any]) -> dict[str, Any]:
    out = dict(counts)
    if "due" in counts:
        out["follow_up_rate"] = _rate(counts["completed"], counts["due"])
        out["on_time_rate"] = _rate(counts["on_time"], counts["due"])
        out["missed_rate"] = _rate(counts["missed"], counts["due"])
    if "enrolled" in counts:
        out["lost_to_follow_up_rate"] = _rate(counts["lost"], counts["enrolled"])
    return out


def _task_counts(tasks: Any, today: date) -> list[dict[str, Any]]:
    """One row per (study, site, event_code) with the task counts."""
    due = Q(window_close__lt=today) | Q(status=TaskStatus.COMPLETED)
    completed = Q(status=TaskStatus.COMPLETED)
    on_time = completed & Q(completed_on__gte=F("window_open"), completed_on__lte=F("window_close"))
    return list(
        tasks.exclude(status=TaskStatus.CANCELLED)
        .values(study_id=F("subject__study_id"), site_id=F("subject__site_id"), event=F("event_code"))
        .annotate(
            due=Count("pk", filter=due),
            completed=Count("pk", filter=completed),
            on_time=Count("pk", filter=on_time),
            overdue=Count("pk", filter=Q(status=TaskStatus.OVERDUE)),
            missed=Count("pk", filter=due & Q(status=TaskStatus.MISSED)),
        )
        .order_by()
    )


def _subject_counts(subjects: Any) -> list[dict[str, Any]]:
    """One row per (study, site) with subjects enrolled (not screening) and lost."""
    return list(
        subjects.values("study_id", "site_id")
        .annotate(enrolled=Count("pk"), lost=Count("pk", filter=Q(status=SubjectStatus.LOST)))
        .order_by()
    )


def _enrolment(subjects: Any, studies: dict[int, Study]) -> list[dict[str, Any]]:
    rows = (subjects.annotate(month=TruncMonth("enrolment_date")).values("study_id", "month")
            .annotate(enrolled=Count("pk")).order_by("study_id", "month"))
    series: dict[int, list[dict[str, Any]]] = defaultdict(list)
    totals: dict[int, int] = defaultdict(int)
    for row in rows:
        totals[row["study_id"]] += row["enrolled"]
        series[row["study_id"]].append({"month": row["month"].strftime("%Y-%m"), "enrolled": row["enrolled"],
                                        "cumulative": totals[row["study_id"]]})
    result = []
    for study_id, study in sorted(studies.items(), key=lambda item: item[1].code):
        target = study.target_enrolment
        result.append({"study_id": study_id, "study_code": study.code, "target_enrolment": target,
                       "enrolled": totals.get(study_id, 0),
                       "progress": _rate(totals.get(study_id, 0), target),
                       "series": series.get(study_id, [])})
    return result


def followup_metrics(*, membership: Any, study_id: int | None = None, site_id: int | None = None,
                     today: date | None = None) -> dict[str, Any]:
    """Follow-up metrics of the studies and sites this member may see (optionally one
    study and/or one site). Returns {"overall", "by_site", "by_event", "enrolment"}."""
    today = today or timezone.localdate()
    visible = site_ids_visible(membership=membership)
    tasks = FollowUpTask.objects.all()
    subjects = Subject.objects.exclude(status=SubjectStatus.SCREENING)
    study_rows = Study.objects.all()
    if visible is not None:
        tasks = tasks.filter(subject__site_id__in=visible)
        subjects = subjects.filter(site_id__in=visible)
    if study_id is not None:
        tasks = tasks.filter(subject__study_id=study_id)
        subjects = subjects.filter(study_id=study_id)
        study_rows = study_rows.filter(pk=study_id)
    if site_id is not None:
        tasks = tasks.filter(subject__site_id=site_id)
        subjects = subjects.filter(site_id=site_id)

    task_rows = _task_counts(tasks, today)
    subject_rows = _subject_counts(subjects)
    studies = {study.pk: study for study in study_rows.only("id", "code", "target_enrolment")}

    overall: dict[str, int] = dict.fromkeys(TASK_COUNTS + SUBJECT_COUNTS, 0)
    by_site: dict[tuple[int, int], dict[str, int]] = defaultdict(lambda: dict.fromkeys(TASK_COUNTS + SUBJECT_COUNTS, 0))
    by_event: dict[tuple[int, str], dict[str, int]] = defaultdict(lambda: dict.fromkeys(TASK_COUNTS, 0))
    for row in task_rows:
        for key in TASK_COUNTS:
            overall[key] += row[key]
            by_site[(row["study_id"], row["site_id"])][key] += row[key]
            by_event[(row["study_id"], row["event"])][key] += row[key]
    for row in subject_rows:
        for key in SUBJECT_COUNTS:
            overall[key] += row[key]
            by_site[(row["study_id"], row["site_id"])][key] += row[key]

    site_codes = dict(Site.objects.filter(pk__in={s for _, s in by_site}).values_list("pk", "code"))

    def study_code(pk: int) -> str:
        study = studies.get(pk)
        return study.code if study else str(pk)

    return {
        "overall": _with_rates(overall),
        "by_site": [
            _with_rates({"study_id": st, "study_code": study_code(st), "site_id": si,
                         "site_code": site_codes.get(si, str(si)), **counts})
            for (st, si), counts in sorted(by_site.items(),
                                           key=lambda item: (study_code(item[0][0]), site_codes.get(item[0][1], "")))
        ],
        "by_event": [
            _with_rates({"study_id": st, "study_code": study_code(st), "event_code": ev, **counts})
            for (st, ev), counts in sorted(by_event.items(), key=lambda item: (study_code(item[0][0]), item[0][1]))
        ],
        "enrolment": _enrolment(subjects, studies),
    }
