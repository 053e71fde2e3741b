"""COPY writes of follow-up tasks (studies.bulk): the same rows as bulk_create, text
escaped, defaults and copies of the subject's study and site filled, and the large-plan
path of studies.services._apply."""

from __future__ import annotations

import datetime as dt

import pytest

from studies import bulk, services
from studies.models import FollowUpTask, ScheduleVersion, Subject, TaskStatus
from studies.schedule import event_spec_from_dict, plan_occurrences
from tests.studies import test_enrolment
from tests.studies.test_enrolment import TODAY

# The enrolment tests' fixtures: an active study with a published schedule, a pinned "today".
fixed_today = test_enrolment.fixed_today
study_site = test_enrolment.study_site

pytestmark = pytest.mark.django_db

COMPARED = ("subject_id", "study_id", "site_id", "schedule_version_id", "event_code", "sequence", "unscheduled",
            "mode", "target_date", "window_open", "window_close", "provisional", "status", "assignee_id",
            "completed_on")


def _rows(subject: Subject) -> list[tuple]:  # type: ignore[type-arg]
    return list(FollowUpTask.objects.filter(subject=subject).order_by("event_code", "sequence")
                .values_list(*COMPARED))


def _subject(study, site, code: str, enrolled: dt.date) -> Subject:  # type: ignore[no-untyped-def]
    return Subject.objects.create(study=study, site=site, subject_code=code, consent_date=enrolled,
                                  enrolment_date=enrolled)


def test_tasks_insert_writes_what_bulk_create_writes(study_site):  # type: ignore[no-untyped-def]
    study, site, coordinator = study_site
    first, second = _subject(study, site, "B-1", TODAY), _subject(study, site, "B-2", TODAY)

    def tasks(subject: Subject) -> list[FollowUpTask]:
        # Text that COPY must escape: tab, newline, backslash.
        return [FollowUpTask(subject=subject, study_id=subject.study_id, site_id=subject.site_id,
                             event_code=code, sequence=2, mode="clinic", target_date=TODAY,
                             window_open=TODAY - dt.timedelta(days=3), window_close=TODAY + dt.timedelta(days=3),
                             provisional=True, status=TaskStatus.OPEN, assignee_id=coordinator.pk)
                for code in ("PLAIN", "TAB\tX", "NL\nX", "BS\\X")]

    FollowUpTask.objects.bulk_create(tasks(first))
    assert bulk.tasks_insert(tasks(second)) == 4

    expected = [(second.pk, *row[1:]) for row in _rows(first)]
    assert _rows(second) == expected
    created, updated = FollowUpTask.objects.filter(subject=second).values_list("created", "updated").first()
    assert created is not None and updated is not None


def test_tasks_generate_plans_like_enrolment(study_site):  # type: ignore[no-untyped-def]
    study, site, coordinator = study_site
    version = ScheduleVersion.objects.get(study=study, status="published")
    enrolled = [TODAY - dt.timedelta(days=40), TODAY - dt.timedelta(days=40), TODAY]
    subjects = [_subject(study, site, f"G-{i}", day) for i, day in enumerate(enrolled)]

    made = bulk.tasks_generate(version=version, today=TODAY, assignee_by_site={site.pk: coordinator.pk},
                               subjects=[(s.pk, s.study_id, s.site_id, s.enrolment_date, s.index_date)
                                         for s in subjects])

    specs = [event_spec_from_dict(raw) for raw in version.events]
    expected_total = 0
    for subject in subjects:
        plan = plan_occurrences(events=specs, enrolment_date=subject.enrolment_date, index_date=None)
        expected_total += len(plan)
        expected = sorted(
            (subject.pk, study.pk, site.pk, version.pk, occ.event_code, occ.sequence, False, "phone", occ.target,
             occ.window_open, occ.window_close, occ.provisional,
             services.task_status_on(window_open=occ.window_open, target=occ.target,
                                     window_close=occ.window_close, today=TODAY),
             coordinator.pk, None)
            for occ in plan)
        assert _rows(subject) == expected
    assert made == expected_total


def test_large_plans_are_written_with_copy(study_site, monkeypatch):  # type: ignore[no-untyped-def]
    study, site, _coordinator = study_site
    small = services.subject_enrol(study=study, site=site, consent_date=TODAY)
    copied: list[int] = []
    original = services.tasks_insert
    monkeypatch.setattr(services, "tasks_insert", lambda tasks: copied.append(len(tasks)) or original(tasks))
    monkeypatch.setattr(services, "COPY_MIN_TASKS", 1)
    large = services.subject_enrol(study=study, site=site, consent_date=TODAY)

    assert copied == [len(_rows(small))]
    assert [row[1:] for row in _rows(large)] == [row[1:] for row in _rows(small)]
