"""The consecutive-missed-visits rule (studies.services._apply_missed_rule), now one
set-based query: per study thresholds (0 = off), a completed visit breaking the run,
not-yet-closed and cancelled visits ignored, only enrolled subjects, and the same
decisions as the per-subject loop it replaced on a random mix of histories."""

from __future__ import annotations

import datetime as dt
import random

import pytest

from sites import services as site_services
from studies import services
from studies.models import FollowUpTask, Study, Subject, SubjectStatus, TaskStatus

pytestmark = pytest.mark.django_db

START = dt.date(2025, 1, 6)
M, C, U, X = TaskStatus.MISSED, TaskStatus.COMPLETED, TaskStatus.UPCOMING, TaskStatus.CANCELLED


def _study(code: str, lost_after_missed: int) -> Study:
    return Study.objects.create(code=code, title=code, study_type="registry", target_enrolment=100,
                                lost_after_missed=lost_after_missed)


def _subject(study, site, code, history, status=SubjectStatus.ENROLLED):  # type: ignore[no-untyped-def]
    """A subject whose visits, oldest first, have the statuses in `history`, 30 days apart."""
    subject = Subject.objects.create(study=study, site=site, subject_code=code, status=status,
                                     consent_date=START, enrolment_date=START)
    tasks = []
    for number, status_of_visit in enumerate(history, start=1):
        target = START + dt.timedelta(days=30 * number)
        tasks.append(FollowUpTask(subject=subject, study_id=subject.study_id, site_id=subject.site_id,
                                  event_code=f"V{number}", target_date=target, window_open=target,
                                  window_close=target + dt.timedelta(days=7), status=status_of_visit,
                                  completed_on=target if status_of_visit == C else None))
    FollowUpTask.objects.bulk_create(tasks)
    return subject


def _old_rule(history: list[str], limit: int) -> bool:
    """The per-subject loop this replaced: the `limit` newest completed-or-missed visits
    (by target date) are all missed."""
    closed = [s for s in reversed(history) if s in (C, M)][:limit]
    return limit > 0 and len(closed) == limit and all(s == M for s in closed)


@pytest.fixture
def site(world, in_tenant):  # type: ignore[no-untyped-def]
    in_tenant(world.alpha)
    return site_services.site_create(code="MR", name="MR", institution="Hospital", country_region="CN",
                                     principal_investigator="Dr Li", target_enrolment=100, time_zone="Asia/Shanghai")


def test_each_study_applies_its_own_threshold(site):  # type: ignore[no-untyped-def]
    two, three, off = _study("TWO", 2), _study("THREE", 3), _study("OFF", 0)
    cases = {
        # subject: (study, history oldest first, status, lost afterwards?)
        "two-missed": (two, [C, M, M], SubjectStatus.ENROLLED, True),
        "two-one-missed": (two, [C, C, M], SubjectStatus.ENROLLED, False),
        "two-completed-breaks": (two, [M, M, C], SubjectStatus.ENROLLED, False),
        "two-completed-between": (two, [M, C, M], SubjectStatus.ENROLLED, False),
        # Visits not closed yet (upcoming) and cancelled ones neither count nor break the run.
        "two-open-and-cancelled": (two, [C, M, X, M, U, U], SubjectStatus.ENROLLED, True),
        "two-only-one-visit": (two, [M], SubjectStatus.ENROLLED, False),
        "two-withdrawn": (two, [M, M, M], SubjectStatus.WITHDRAWN, False),
        "three-two-missed": (three, [C, M, M], SubjectStatus.ENROLLED, False),
        "three-three-missed": (three, [M, M, M, U], SubjectStatus.ENROLLED, True),
        "off-all-missed": (off, [M, M, M, M, M], SubjectStatus.ENROLLED, False),
    }
    subjects = {code: _subject(study, site, code, history, status)
                for code, (study, history, status, _lost) in cases.items()}

    assert services._apply_missed_rule() == 3

    for code, (_study_of, _history, status, lost) in cases.items():
        subject = Subject.objects.get(pk=subjects[code].pk)
        assert subject.status == (SubjectStatus.LOST if lost else status), code
        statuses = set(FollowUpTask.objects.filter(subject=subject).values_list("status", flat=True))
        if lost:  # a lost subject's open visits are cancelled; closed ones stay as they were
            assert TaskStatus.UPCOMING not in statuses, code
    # Already lost subjects are not counted again.
    assert services._apply_missed_rule() == 0


def test_same_decisions_as_the_per_subject_loop(site):  # type: ignore[no-untyped-def]
    rng = random.Random(20261127)
    studies = [_study("S0", 0), _study("S1", 1), _study("S2", 2), _study("S4", 4)]
    expected: dict[int, bool] = {}
    for number in range(80):
        study = studies[number % len(studies)]
        history = [rng.choice([M, M, C, X, U]) for _ in range(rng.randint(0, 7))]
        subject = _subject(study, site, f"R-{number:03d}", history)
        expected[subject.pk] = _old_rule(history, study.lost_after_missed)

    assert services._apply_missed_rule() == sum(expected.values())

    lost = set(Subject.objects.filter(status=SubjectStatus.LOST).values_list("pk", flat=True))
    assert lost == {pk for pk, is_lost in expected.items() if is_lost}
