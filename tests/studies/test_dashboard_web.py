"""The follow-up metrics dashboard page: the figures of studies.metrics.followup_metrics,
scoped by the member's sites, for sponsors, data managers and monitors only."""

from __future__ import annotations

import datetime as dt
import html
import json
import re
import zoneinfo

import pytest
from django.db import connection
from django.utils import timezone

from sites import services as site_services
from sites.models import Site
from studies import services
from studies.dashboard_views import percent
from studies.metrics import followup_metrics
from studies.models import FollowUpTask, Study, Subject, SubjectStatus, TaskStatus
from tenants.selectors import membership_for
from tests.conftest import PASSWORD
from tests.studies.test_enrolment import event

pytestmark = pytest.mark.django_db


def _today() -> dt.date:
    return timezone.now().astimezone(zoneinfo.ZoneInfo("Asia/Shanghai")).date()  # alpha's time zone


def seed_dashboard(*, prefix: str = "D") -> dict:
    """In the current (alpha) schema: a study (target 8) with events D7, D30 and D60 at two
    active sites, four subjects enrolled 100, 45, 35 and 20 days ago through the real
    enrolment service, a few follow-ups done (on time or late) and one subject lost.
    A second study has one subject at the first site. The figures come out of
    followup_metrics; the tests compare the pages with it, not with hand-made numbers."""
    today = _today()
    ago = lambda days: today - dt.timedelta(days=days)  # noqa: E731
    sites = []
    for code in (f"{prefix}A", f"{prefix}B"):
        site = site_services.site_create(code=code, name=code, institution="Hospital", country_region="CN",
                                         principal_investigator="Dr Li", target_enrolment=20,
                                         time_zone="Asia/Shanghai")
        Site.objects.filter(pk=site.pk).update(status="active")  # onboarding is tested elsewhere
        site.refresh_from_db()
        sites.append(site)
    studies = []
    for code, target in ((f"{prefix}FU", 8), (f"{prefix}OTHER", 5)):
        study = services.study_create(code=code, title=f"Study {code}", study_type="registry",
                                      target_enrolment=target)
        events = [event("D7", 7, before=3, after=3), event("D30", 30), event("D60", 60)]
        services.schedule_publish(version=services.schedule_draft_save(study=study, events=events))
        studies.append(services.study_activate(study=study))
    study, other = studies
    site_a, site_b = sites

    def enrol(target_study, site, days):  # type: ignore[no-untyped-def]
        return services.subject_enrol(study=target_study, site=site, consent_date=ago(days), enrolment_date=ago(days))

    a1, a2, b1, b2 = enrol(study, site_a, 100), enrol(study, site_a, 45), enrol(study, site_b, 35), enrol(
        study, site_b, 20)
    c1 = enrol(other, site_a, 12)

    def done(subject, event_code, after_days):  # type: ignore[no-untyped-def]
        FollowUpTask.objects.filter(subject=subject, event_code=event_code).update(
            status=TaskStatus.COMPLETED, completed_on=subject.enrolment_date + dt.timedelta(days=after_days))

    done(a1, "D7", 7)
    done(a1, "D30", 40)  # late
    done(a2, "D7", 8)
    done(b1, "D7", 6)
    done(c1, "D7", 7)
    Subject.objects.filter(pk=b2.pk).update(status=SubjectStatus.LOST)
    return {"study": study, "other": other, "a": site_a, "b": site_b}


def seed_cleanup(seeded: dict) -> None:
    for study in (seeded["study"], seeded["other"]):
        Subject.objects.filter(study=study).delete()
        Study.objects.filter(pk=study.pk).delete()
    Site.objects.filter(pk__in=[seeded["a"].pk, seeded["b"].pk]).delete()


@pytest.fixture
def data(world, in_tenant, email_of):  # type: ignore[no-untyped-def]
    in_tenant(world.alpha)
    seeded = seed_dashboard()
    seeded["admin"] = membership_for(user=world.users[email_of("tenant_admin", "alpha")], tenant=world.alpha)
    return seeded


def _page(web, world, email):  # type: ignore[no-untyped-def]
    client = web(world.alpha)
    client.cookies["django_language"] = "en"
    assert client.post("/login/", {"email": email, "password": PASSWORD}).status_code == 302
    return client


def _text(response) -> str:  # type: ignore[no-untyped-def]
    return html.unescape(response.content.decode())


def _card(text: str, metric: str) -> str:
    match = re.search(rf'data-metric="{metric}".*?<span class="value">(.*?)</span>', text, re.S)
    assert match, metric
    return match.group(1)


def _row(text: str, attribute: str, key: str) -> list[str]:
    match = re.search(rf'<tr data-{attribute}="{key}">(.*?)</tr>', text, re.S)
    assert match, key
    return [re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<td[^>]*>(.*?)</td>", match.group(1), re.S)]


def test_sponsor_sees_the_metrics_of_the_chosen_study(web, world, email_of, data):
    study = data["study"]
    connection.set_schema_to_public()
    page = _page(web, world, email_of("tenant_admin", "alpha"))
    response = page.get(f"/dashboard/?study={study.pk}")
    assert response.status_code == 200
    text = _text(response)
    connection.set_tenant(world.alpha)
    expected = followup_metrics(membership=data["admin"], study_id=study.pk, today=_today())
    overall = expected["overall"]
    assert _card(text, "follow_up_rate") == percent(overall["follow_up_rate"])
    assert _card(text, "on_time_rate") == percent(overall["on_time_rate"])
    assert _card(text, "missed_rate") == percent(overall["missed_rate"])
    assert _card(text, "overdue") == str(overall["overdue"])
    assert _card(text, "lost_to_follow_up_rate") == percent(overall["lost_to_follow_up_rate"]) == "25.0%"
    assert _card(text, "enrolment") == "4 / 8"
    assert overall["due"] > overall["completed"] > overall["on_time"] > 0 and overall["missed"] > 0
    assert f"{overall['completed']} done of {overall['due']} due" in text
    for row in expected["by_site"]:
        assert _row(text, "site", row["site_code"]) == [
            row["site_code"], str(row["due"]), str(row["completed"]), percent(row["follow_up_rate"]),
            percent(row["on_time_rate"]), percent(row["missed_rate"]), str(row["overdue"]), str(row["enrolled"]),
            percent(row["lost_to_follow_up_rate"])]
    assert [r["event_code"] for r in expected["by_event"]] == ["D30", "D60", "D7"]
    for row in expected["by_event"]:
        assert _row(text, "event", row["event_code"]) == [
            row["event_code"], str(row["due"]), str(row["completed"]), percent(row["follow_up_rate"]),
            percent(row["on_time_rate"]), percent(row["missed_rate"]), str(row["overdue"])]
    # The charts' figures are embedded in the page (no second request) and are the same.
    blob = json.loads(re.search(r'<script id="dashboard-data" type="application/json">(.*?)</script>',
                                response.content.decode(), re.S).group(1))
    assert blob["by_site"]["categories"] == ["DA", "DB"]
    assert blob["by_site"]["series"]["follow_up_rate"] == [r["follow_up_rate"] for r in expected["by_site"]]
    enrolment = expected["enrolment"][0]
    assert blob["enrolment"] == {"months": [p["month"] for p in enrolment["series"]],
                                 "per_month": [p["enrolled"] for p in enrolment["series"]],
                                 "cumulative": [p["cumulative"] for p in enrolment["series"]], "target": 8}
    assert blob["enrolment"]["cumulative"][-1] == 4
    assert "/static/vendor/echarts.min.js" in text and "cdn" not in text.lower()
    assert f"Figures as of {_today():%Y-%m-%d}" in text and "(Asia/Shanghai)" in text
    assert 'href="/dashboard/"' in text and 'href="/"' in text  # nav and breadcrumb


def test_first_study_by_default_and_the_other_study(web, world, email_of, data):
    connection.set_schema_to_public()
    page = _page(web, world, email_of("data_manager", "alpha"))
    default = _text(page.get("/dashboard/"))
    assert f'<option value="{data["study"].pk}" selected>' in default  # FU sorts before OTHER
    other = _text(page.get(f"/dashboard/?study={data['other'].pk}"))
    assert _card(other, "enrolment") == "1 / 5" and _card(other, "follow_up_rate") == "100.0%"
    assert _row(other, "site", "DA")[0] == "DA" and 'data-site="DB"' not in other


def test_monitor_sees_only_their_sites(web, world, email_of, data):
    connection.set_tenant(world.alpha)
    monitor = world.users[email_of("monitor", "alpha")]
    site_services.site_staff_assign(site=data["b"], tenant=world.alpha, user=monitor, role="monitor")
    expected = followup_metrics(membership=membership_for(user=monitor, tenant=world.alpha),
                                study_id=data["study"].pk, today=_today())
    connection.set_schema_to_public()
    text = _text(_page(web, world, email_of("monitor", "alpha")).get(f"/dashboard/?study={data['study'].pk}"))
    assert 'data-site="DB"' in text and 'data-site="DA"' not in text
    assert _card(text, "follow_up_rate") == percent(expected["overall"]["follow_up_rate"])
    assert _card(text, "lost_to_follow_up_rate") == "50.0%" and _card(text, "enrolment") == "2 / 8"


@pytest.mark.parametrize("role", ["coordinator", "investigator", "statistician", "viewer"])
def test_other_roles_are_refused_and_see_no_link(web, world, email_of, data, role):
    connection.set_schema_to_public()
    page = _page(web, world, email_of(role, "alpha"))
    assert page.get("/dashboard/").status_code == 403
    assert 'href="/dashboard/"' not in _text(page.get("/worklist/"))


def test_bad_or_foreign_study_and_anonymous(web, world, email_of, data):
    connection.set_tenant(world.beta)
    beta_study = Study.objects.create(code="BETA", title="Beta", study_type="registry", target_enrolment=3)
    connection.set_schema_to_public()
    page = _page(web, world, email_of("tenant_admin", "alpha"))
    for query in ("abc", "%00", "999999", "-1", ""):
        response = page.get(f"/dashboard/?study={query}")
        assert response.status_code == 400, query
        assert "Select a valid choice" in _text(response) or "This field is required." in _text(response)
    # Beta's study id means nothing on alpha's host (unless alpha happens to have that id).
    connection.set_tenant(world.alpha)
    alpha_ids = set(Study.objects.values_list("pk", flat=True))
    connection.set_schema_to_public()
    if beta_study.pk not in alpha_ids:
        assert page.get(f"/dashboard/?study={beta_study.pk}").status_code == 400
    anonymous = web(world.alpha)
    response = anonymous.get("/dashboard/")
    assert response.status_code == 302 and "/login/" in response["Location"]


def test_no_study_yet(web, world, email_of):
    page = _page(web, world, email_of("tenant_admin", "alpha"))
    response = page.get("/dashboard/")
    assert response.status_code == 200 and "There is no study yet" in _text(response)
    assert "echarts" not in _text(response)
