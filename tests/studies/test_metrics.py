"""Follow-up metrics (studies/metrics.py, studies/metrics_api.py) on a small dataset
whose figures are worked out by hand below.

TODAY = 2026-06-15. Study FU (target 10), sites A and B; the coordinator works at A.

subject   site status      enrolled
a1        A    enrolled    2026-01-10
a2        A    lost        2026-01-20
a3        A    screening   2026-02-01   (never counted)
b1        B    enrolled    2026-03-05

task subject event window            status     completed_on   due?  on time?
1    a1      D30   02-01..02-16      completed  02-05          yes   yes
2    a1      D90   04-01..04-20      completed  04-25          yes   no (late)
3    a1      D180  07-01..07-20      upcoming                  no (window not closed)
4    a2      D30   02-10..02-26      missed                    yes
5    a2      D90   06-10..06-26      open                      no (window open)
6    a2      D180  03-01..03-10      cancelled                 never counted
7    b1      D30   04-01..04-10      completed  04-08          yes   yes
8    b1      D90   06-01..06-20      overdue                   no (window still open)
9    b1      D180  09-01..09-20      completed  06-10          yes (completed) no (early)

overall: due 5, completed 4, on time 2, missed 1, overdue 1 -> 0.8 / 0.4 / 0.2;
         enrolled 3, lost 1 -> 0.3333
site A:  due 3 (1,2,4), completed 2, on time 1, missed 1 -> 0.6667 / 0.3333 / 0.3333; lost 1/2
site B:  due 2 (7,9), completed 2, on time 1, missed 0, overdue 1 -> 1.0 / 0.5 / 0.0; lost 0/1
D30: due 3, completed 2, on time 2, missed 1; D90: due 1 (2), completed 1, on time 0, overdue 1;
D180: due 1 (9), completed 1, on time 0.

A second study OTHER (target 5) has one subject at A (2026-05-02) with one on-time task.
"""

from __future__ import annotations

import datetime as dt

import pytest
from rest_framework.test import APIRequestFactory, force_authenticate

from sites import services as site_services
from studies.metrics import followup_metrics
from studies.metrics_api import FollowUpMetricsView
from studies.models import FollowUpTask, Study, Subject, SubjectStatus, TaskStatus
from tenants.selectors import membership_for

pytestmark = pytest.mark.django_db

TODAY = dt.date(2026, 6, 15)


def d(month: int, day: int) -> dt.date:
    return dt.date(2026, month, day)


def _site(code: str):  # type: ignore[no-untyped-def]
    return site_services.site_create(code=code, name=code, institution="Hospital", country_region="CN",
                                     principal_investigator="Dr Li", target_enrolment=20, time_zone="Asia/Shanghai")


def _subject(study, site, code, enrolled, status=SubjectStatus.ENROLLED):  # type: ignore[no-untyped-def]
    return Subject.objects.create(study=study, site=site, subject_code=code, status=status, consent_date=enrolled,
                                  enrolment_date=enrolled)


def _task(subject, event, window, status, completed_on=None):  # type: ignore[no-untyped-def]
    opens, closes = window
    return FollowUpTask(subject=subject, study_id=subject.study_id, site_id=subject.site_id, event_code=event,
                        window_open=opens, target_date=opens,
                        window_close=closes, status=status, completed_on=completed_on)


@pytest.fixture
def data(world, in_tenant, email_of):  # type: ignore[no-untyped-def]
    in_tenant(world.alpha)
    site_a, site_b = _site("A"), _site("B")
    coordinator = world.users[email_of("coordinator", "alpha")]
    site_services.site_staff_assign(site=site_a, tenant=world.alpha, user=coordinator, role="coordinator")
    study = Study.objects.create(code="FU", title="Follow-up", study_type="registry", target_enrolment=10)
    other = Study.objects.create(code="OTHER", title="Other", study_type="registry", target_enrolment=5)
    a1 = _subject(study, site_a, "A-1", d(1, 10))
    a2 = _subject(study, site_a, "A-2", d(1, 20), SubjectStatus.LOST)
    a3 = _subject(study, site_a, "A-3", d(2, 1), SubjectStatus.SCREENING)
    b1 = _subject(study, site_b, "B-1", d(3, 5))
    c1 = _subject(other, site_a, "C-1", d(5, 2))
    FollowUpTask.objects.bulk_create([
        _task(a1, "D30", (d(2, 1), d(2, 16)), TaskStatus.COMPLETED, d(2, 5)),
        _task(a1, "D90", (d(4, 1), d(4, 20)), TaskStatus.COMPLETED, d(4, 25)),
        _task(a1, "D180", (d(7, 1), d(7, 20)), TaskStatus.UPCOMING),
        _task(a2, "D30", (d(2, 10), d(2, 26)), TaskStatus.MISSED),
        _task(a2, "D90", (d(6, 10), d(6, 26)), TaskStatus.OPEN),
        _task(a2, "D180", (d(3, 1), d(3, 10)), TaskStatus.CANCELLED),
        _task(a3, "D30", (d(3, 1), d(3, 10)), TaskStatus.CANCELLED),
        _task(b1, "D30", (d(4, 1), d(4, 10)), TaskStatus.COMPLETED, d(4, 8)),
        _task(b1, "D90", (d(6, 1), d(6, 20)), TaskStatus.OVERDUE),
        _task(b1, "D180", (d(9, 1), d(9, 20)), TaskStatus.COMPLETED, d(6, 10)),
        _task(c1, "D30", (d(5, 20), d(6, 5)), TaskStatus.COMPLETED, d(6, 5)),
    ])
    return {
        "study": study, "other": other, "a": site_a, "b": site_b,
        "admin": membership_for(user=world.users[email_of("tenant_admin", "alpha")], tenant=world.alpha),
        "coordinator": membership_for(user=coordinator, tenant=world.alpha),
    }


def _counts(row: dict) -> tuple:
    return (row["due"], row["completed"], row["on_time"], row["missed"], row["overdue"])


def _rates(row: dict) -> tuple:
    return (row["follow_up_rate"], row["on_time_rate"], row["missed_rate"])


def test_overall_rates_count_only_due_tasks_and_never_cancelled_ones(data):  # type: ignore[no-untyped-def]
    result = followup_metrics(membership=data["admin"], study_id=data["study"].pk, today=TODAY)
    overall = result["overall"]
    assert _counts(overall) == (5, 4, 2, 1, 1)
    assert _rates(overall) == (0.8, 0.4, 0.2)
    assert (overall["enrolled"], overall["lost"], overall["lost_to_follow_up_rate"]) == (3, 1, 0.3333)


def test_by_site_and_by_event(data):  # type: ignore[no-untyped-def]
    result = followup_metrics(membership=data["admin"], study_id=data["study"].pk, today=TODAY)
    sites = {row["site_code"]: row for row in result["by_site"]}
    assert set(sites) == {"A", "B"}
    assert _counts(sites["A"]) == (3, 2, 1, 1, 0)
    assert _rates(sites["A"]) == (0.6667, 0.3333, 0.3333)
    assert sites["A"]["lost_to_follow_up_rate"] == 0.5
    assert _counts(sites["B"]) == (2, 2, 1, 0, 1)
    assert _rates(sites["B"]) == (1.0, 0.5, 0.0)
    assert sites["B"]["lost_to_follow_up_rate"] == 0.0
    events = {row["event_code"]: row for row in result["by_event"]}
    assert [row["event_code"] for row in result["by_event"]] == ["D180", "D30", "D90"]
    assert _counts(events["D30"]) == (3, 2, 2, 1, 0)
    assert _rates(events["D30"]) == (0.6667, 0.6667, 0.3333)
    assert _counts(events["D90"]) == (1, 1, 0, 0, 1)
    assert _counts(events["D180"]) == (1, 1, 0, 0, 0)
    assert all(row["study_code"] == "FU" for row in result["by_site"] + result["by_event"])


def test_a_window_that_closes_tomorrow_becomes_due_tomorrow(data):  # type: ignore[no-untyped-def]
    # Task 8 (overdue, window closes 06-20) and task 5 (open, closes 06-26) are not due yet.
    later = followup_metrics(membership=data["admin"], study_id=data["study"].pk, today=d(6, 21))
    assert later["overall"]["due"] == 6  # task 8 joined
    assert later["overall"]["follow_up_rate"] == round(4 / 6, 4)
    on_close_day = followup_metrics(membership=data["admin"], study_id=data["study"].pk, today=d(6, 20))
    assert on_close_day["overall"]["due"] == 5


def test_every_study_when_none_is_chosen_and_study_filter(data):  # type: ignore[no-untyped-def]
    everything = followup_metrics(membership=data["admin"], today=TODAY)
    assert _counts(everything["overall"]) == (6, 5, 3, 1, 1)
    assert {row["study_code"] for row in everything["by_site"]} == {"FU", "OTHER"}
    other = followup_metrics(membership=data["admin"], study_id=data["other"].pk, today=TODAY)
    assert _counts(other["overall"]) == (1, 1, 1, 0, 0)
    assert [e["study_code"] for e in other["enrolment"]] == ["OTHER"]


def test_coordinator_sees_only_their_sites_numbers(data):  # type: ignore[no-untyped-def]
    result = followup_metrics(membership=data["coordinator"], study_id=data["study"].pk, today=TODAY)
    assert _counts(result["overall"]) == (3, 2, 1, 1, 0)
    assert _rates(result["overall"]) == (0.6667, 0.3333, 0.3333)
    assert [row["site_code"] for row in result["by_site"]] == ["A"]
    assert _counts({row["event_code"]: row for row in result["by_event"]}["D30"]) == (2, 1, 1, 1, 0)
    assert result["enrolment"][0]["series"] == [{"month": "2026-01", "enrolled": 2, "cumulative": 2}]
    # Asking for a site that is not theirs gives nothing, with no rate to divide by zero.
    elsewhere = followup_metrics(membership=data["coordinator"], site_id=data["b"].pk, today=TODAY)
    assert _counts(elsewhere["overall"]) == (0, 0, 0, 0, 0)
    assert _rates(elsewhere["overall"]) == (None, None, None)
    assert elsewhere["overall"]["lost_to_follow_up_rate"] is None
    assert elsewhere["by_site"] == [] and elsewhere["by_event"] == []


def test_enrolment_by_month_with_cumulative_sum_and_target(data):  # type: ignore[no-untyped-def]
    result = followup_metrics(membership=data["admin"], today=TODAY)
    by_study = {row["study_code"]: row for row in result["enrolment"]}
    fu = by_study["FU"]
    assert (fu["target_enrolment"], fu["enrolled"], fu["progress"]) == (10, 3, 0.3)
    # a3 is still in screening: not enrolled, so February is empty.
    assert fu["series"] == [{"month": "2026-01", "enrolled": 2, "cumulative": 2},
                            {"month": "2026-03", "enrolled": 1, "cumulative": 3}]
    assert by_study["OTHER"]["series"] == [{"month": "2026-05", "enrolled": 1, "cumulative": 1}]
    only_b = followup_metrics(membership=data["admin"], study_id=data["study"].pk, site_id=data["b"].pk, today=TODAY)
    assert only_b["enrolment"][0]["series"] == [{"month": "2026-03", "enrolled": 1, "cumulative": 1}]


def test_metrics_are_a_handful_of_queries(data):  # type: ignore[no-untyped-def]
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        followup_metrics(membership=data["coordinator"], today=TODAY)
    # django-tenants sends a SET search_path before each; the real work is five SELECTs:
    # the member's sites, tasks grouped, subjects grouped (per site and enrolment month),
    # studies, site codes.
    selects = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("SELECT")]
    assert len(selects) == 5


def _get(world, membership, query=""):  # type: ignore[no-untyped-def]
    request = APIRequestFactory().get(f"/api/v1/metrics/{query}")
    request.tenant = world.alpha
    request.membership = membership
    force_authenticate(request, user=membership.user)
    response = FollowUpMetricsView.as_view()(request)
    response.render()
    return response


def test_view_is_scoped_and_validates_its_query(world, data):  # type: ignore[no-untyped-def]
    response = _get(world, data["coordinator"], f"?study={data['study'].pk}")
    assert response.status_code == 200
    body = response.data
    assert set(body) == {"overall", "by_site", "by_event", "enrolment"}
    assert [row["site_code"] for row in body["by_site"]] == ["A"]
    # The view computes for the real today: it gives what the selector gives.
    assert body == followup_metrics(membership=data["coordinator"], study_id=data["study"].pk)
    not_theirs = _get(world, data["coordinator"], f"?site={data['b'].pk}")
    assert not_theirs.status_code == 404
    assert not_theirs.data["error"]["code"] == "not_found"
    bad = _get(world, data["admin"], "?study=abc&site=0")
    assert bad.status_code == 400
    assert set(bad.data["error"]["fields"]) == {"study", "site"}
    no_study = _get(world, data["admin"], "?study=999999")
    assert no_study.status_code == 404
    everything = _get(world, data["admin"], f"?study={data['study'].pk}&site={data['b'].pk}")
    assert everything.status_code == 200
    assert [row["site_code"] for row in everything.data["by_site"]] == ["B"]


def test_view_refuses_anonymous_requests(world, data):  # type: ignore[no-untyped-def]
    request = APIRequestFactory().get("/api/v1/metrics/")
    request.tenant = world.alpha
    request.membership = None
    response = FollowUpMetricsView.as_view()(request)
    assert response.status_code in (401, 403)
