"""Follow-up metrics (issue #3, section 6): follow-up, on-time and missed rates, overdue
count, lost-to-follow-up rate and enrolment against target, per study, site and event.

Everything is counted by PostgreSQL in two grouped aggregate queries (tasks by study,
site, event and status; subjects by study, site and enrolment month); Python only adds up
the few hundred resulting groups. Scoped by the member's sites exactly like
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
    """One row per (study, site, event_code) with the task counts.

    PostgreSQL groups by (study, site, event, status) with two filtered counts, and the
    few hundred groups are folded into TASK_COUNTS here: at a million tasks that is
    cheaper than five filtered counts per row. Grouped on the task's own study and
    site (copies of the subject's), so no task is joined to its subject."""
    groups = (
        tasks.exclude(status=TaskStatus.CANCELLED)
        .values("study_id", "site_id", "event_code", "status")
        .annotate(
            tasks=Count("status"),
            closed=Count("status", filter=Q(window_close__lt=today)),
            in_window=Count("status", filter=Q(completed_on__gte=F("window_open"),
                                               completed_on__lte=F("window_close"))),
        )
        .order_by()
    )
    counts: dict[tuple[int, int, str], dict[str, int]] = defaultdict(lambda: dict.fromkeys(TASK_COUNTS, 0))
    for group in groups:
        row = counts[(group["study_id"], group["site_id"], group["event_code"])]
        if group["status"] == TaskStatus.COMPLETED:  # due whatever its window
            row["due"] += group["tasks"]
            row["completed"] += group["tasks"]
            row["on_time"] += group["in_window"]
            continue
        row["due"] += group["closed"]
        if group["status"] == TaskStatus.MISSED:
            row["missed"] += group["closed"]
        elif group["status"] == TaskStatus.OVERDUE:
            row["overdue"] += group["tasks"]
    return [{"study_id": study_id, "site_id": site_id, "event": event, **row}
            for (study_id, site_id, event), row in counts.items()]


def _subject_groups(subjects: Any) -> list[dict[str, Any]]:
    """One row per (study, site, enrolment month) with subjects enrolled (not screening)
    and lost: one scan of the subjects serves both the per-site counts and the
    enrolment series."""
    return list(
        subjects.annotate(month=TruncMonth("enrolment_date")).values("study_id", "site_id", "month")
        .annotate(enrolled=Count("pk"), lost=Count("pk", filter=Q(status=SubjectStatus.LOST)))
        .order_by()
    )


def _subject_counts(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (study, site) with subjects enrolled (not screening) and lost."""
    counts: dict[tuple[int, int], dict[str, int]] = defaultdict(lambda: dict.fromkeys(SUBJECT_COUNTS, 0))
    for group in groups:
        for key in SUBJECT_COUNTS:
            counts[(group["study_id"], group["site_id"])][key] += group[key]
    return [{"study_id": study_id, "site_id": site_id, **row} for (study_id, site_id), row in counts.items()]


def _enrolment(groups: list[dict[str, Any]], studies: dict[int, Study]) -> list[dict[str, Any]]:
    by_month: dict[tuple[int, Any], int] = defaultdict(int)
    for group in groups:
        by_month[(group["study_id"], group["month"])] += group["enrolled"]
    series: dict[int, list[dict[str, Any]]] = defaultdict(list)
    totals: dict[int, int] = defaultdict(int)
    for (study_id, month), enrolled in sorted(by_month.items()):
        totals[study_id] += enrolled
        series[study_id].append({"month": month.strftime("%Y-%m"), "enrolled": enrolled,
                                 "cumulative": totals[study_id]})
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
        tasks = tasks.filter(site_id__in=visible)
        subjects = subjects.filter(site_id__in=visible)
    if study_id is not None:
        tasks = tasks.filter(study_id=study_id)
        subjects = subjects.filter(study_id=study_id)
        study_rows = study_rows.filter(pk=study_id)
    if site_id is not None:
        tasks = tasks.filter(site_id=site_id)
        subjects = subjects.filter(site_id=site_id)

    task_rows = _task_counts(tasks, today)
    subject_groups = _subject_groups(subjects)
    subject_rows = _subject_counts(subject_groups)
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
        "enrolment": _enrolment(subject_groups, studies),
    }
