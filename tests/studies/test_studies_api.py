"""Studies, subjects, worklist and contact attempts over the API: roles, site scoping on
every endpoint, masking of identifying data, tenant isolation and bad input."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import translation

from sites import services as site_services
from studies import services
from studies.models import FollowUpTask, Subject, SubjectStatus, TaskStatus
from tests.studies.test_enrolment import event
from tests.tenants.test_api import _assert_error_shape

pytestmark = pytest.mark.django_db

# The sites here are in Asia/Shanghai, and "today" is theirs (the server keeps dates by
# the site's time zone): from 16:00 UTC it is already tomorrow there.
TODAY = dt.datetime.now(ZoneInfo("Asia/Shanghai")).date()


def _active_site(code: str):  # type: ignore[no-untyped-def]
    site = site_services.site_create(code=code, name=code, institution="Hospital", country_region="CN",
                                     principal_investigator="Dr Zhou", target_enrolment=50, time_zone="Asia/Shanghai")
    day = dt.date(2026, 1, 5)
    site = site_services.site_update_checklist(site=site, ethics_approval_date=day, contract_signed=day,
                                               staff_trained=day,
                                               ethics_document=SimpleUploadedFile("e.pdf", b"%PDF", "application/pdf"))
    return site_services.site_activate(site=site)


@pytest.fixture
def trial(world, in_tenant, email_of, api):  # type: ignore[no-untyped-def]
    """Alpha with two active sites; the coordinator works at S1, the monitor at both."""
    in_tenant(world.alpha)
    s1, s2 = _active_site("S1"), _active_site("S2")
    users = {role: world.users[email_of(role, "alpha")] for role in ("coordinator", "monitor", "investigator")}
    site_services.site_staff_assign(site=s1, tenant=world.alpha, user=users["coordinator"], role="coordinator",
                                    is_primary=True)
    for site in (s1, s2):
        site_services.site_staff_assign(site=site, tenant=world.alpha, user=users["monitor"], role="monitor")
    site_services.site_staff_assign(site=s2, tenant=world.alpha, user=users["investigator"], role="investigator")
    from django.db import connection

    connection.set_schema_to_public()
    admin = api(world.alpha, email_of("tenant_admin", "alpha"))
    study = admin.post("/api/v1/studies/", {"code": "FU1", "title": "Follow-up", "study_type": "registry",
                                            "target_enrolment": 100}, format="json").json()
    schedule = [event("D7", 7, before=3, after=3), event("D30", 30), event("D90", 90)]
    saved = admin.post(f"/api/v1/studies/{study['id']}/schedule/", {"events": schedule}, format="json")
    assert saved.status_code == 200
    assert admin.post(f"/api/v1/studies/{study['id']}/schedule/publish/").status_code == 200
    assert admin.post(f"/api/v1/studies/{study['id']}/activate/").json()["status"] == "active"
    return {"study": study["id"], "s1": s1.pk, "s2": s2.pk, "admin": admin}


def _enrol(client, trial, site_key="s1", **extra):  # type: ignore[no-untyped-def]
    payload = {"study": trial["study"], "site": trial[site_key], "consent_date": TODAY.isoformat(),
               "name": "王小明", "phone": "13812345678", "national_id": "110101199003077777", **extra}
    return client.post("/api/v1/subjects/", payload, format="json")


def test_coordinator_enrols_at_their_site_and_sees_how_to_reach_the_patient(api, world, email_of, trial):
    coordinator = api(world.alpha, email_of("coordinator", "alpha"))
    response = _enrol(coordinator, trial)
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["subject_code"] == "S1-0001"
    assert body["identifiers"]["phone"] == "13812345678" and body["identifiers"]["name"] == "王小明"
    assert body["identifiers"]["national_id"] == "110101********7777"
    detail = coordinator.get(f"/api/v1/subjects/{body['id']}/").json()
    assert [t["event_code"] for t in detail["tasks"]] == ["D7", "D30", "D90"]
    assert detail["tasks"][0]["target_date"] == (TODAY + dt.timedelta(days=7)).isoformat()


def test_identifying_data_by_role(api, world, email_of, trial):
    subject = _enrol(api(world.alpha, email_of("coordinator", "alpha")), trial).json()
    monitor = api(world.alpha, email_of("monitor", "alpha")).get(f"/api/v1/subjects/{subject['id']}/").json()
    assert monitor["identifiers"]["phone"] == "138****5678" and monitor["identifiers"]["name"] == "王**"
    for role in ("statistician", "viewer"):
        seen = api(world.alpha, email_of(role, "alpha")).get(f"/api/v1/subjects/{subject['id']}/").json()
        assert seen["identifiers"] == {}
        assert "13812345678" not in str(seen) and "5678" not in str(seen)
    admin = trial["admin"].get(f"/api/v1/subjects/{subject['id']}/").json()
    assert admin["identifiers"]["phone"] == "138****5678"


def test_site_scoping_on_subject_endpoints(api, world, email_of, trial):
    subject = _enrol(api(world.alpha, email_of("investigator", "alpha")), trial, site_key="s2").json()
    coordinator = api(world.alpha, email_of("coordinator", "alpha"))
    assert coordinator.get("/api/v1/subjects/").json()["results"] == []
    _assert_error_shape(coordinator.get(f"/api/v1/subjects/{subject['id']}/"), 404)
    # Enrolling at a site that is not theirs is refused on the site field.
    assert "site" in _assert_error_shape(_enrol(coordinator, trial, site_key="s2"), 400)["fields"]
    task = FollowUpTask.objects.filter(subject_id=subject["id"]).first()
    _assert_error_shape(coordinator.post(f"/api/v1/tasks/{task.pk}/attempts/", {"outcome": "reached"},
                                         format="json"), 404)
    assert api(world.alpha, email_of("monitor", "alpha")).get("/api/v1/subjects/").json()["count"] == 1


@pytest.mark.parametrize("role", ["monitor", "data_manager", "statistician", "viewer"])
def test_roles_that_may_not_enrol(api, world, email_of, trial, role):
    _assert_error_shape(_enrol(api(world.alpha, email_of(role, "alpha")), trial), 403)


@pytest.mark.parametrize(("extra", "field"), [
    ({"consent_date": "2999-01-01"}, "consent_date"), ({"consent_date": "not a date"}, "consent_date"),
    ({"phone": "call me"}, "phone"), ({"birth_date": "1990-13-40"}, "birth_date"),
    ({"national_id": "!!"}, "national_id"), ({"study": 999999}, "study"), ({"arm": 12345}, "arm"),
    ({"name": "n" * 151}, "name"), ({"email": "nope"}, "email"),
])
def test_bad_enrolment_input_is_refused_per_field_and_saves_nothing(api, world, email_of, trial, in_tenant,
                                                                      extra, field):
    response = _enrol(api(world.alpha, email_of("coordinator", "alpha")), trial, **extra)
    assert field in _assert_error_shape(response, 400)["fields"]
    in_tenant(world.alpha)
    assert not Subject.objects.exists()


def test_duplicate_national_id_is_a_clear_400(api, world, email_of, trial):
    coordinator = api(world.alpha, email_of("coordinator", "alpha"))
    coordinator.cookies["django_language"] = "en"
    assert _enrol(coordinator, trial).status_code == 201
    error = _assert_error_shape(_enrol(coordinator, trial, national_id="110101 19900307 7777"), 400)
    assert "already enrolled" in error["fields"]["national_id"][0]


def test_worklist_is_mine_scoped_paged_and_sorted_by_urgency(api, world, email_of, trial, in_tenant):
    coordinator = api(world.alpha, email_of("coordinator", "alpha"))
    first = _enrol(coordinator, trial, national_id="").json()
    _enrol(coordinator, trial, national_id="").json()
    in_tenant(world.alpha)
    tasks = FollowUpTask.objects.filter(subject_id=first["id"]).order_by("target_date")
    FollowUpTask.objects.filter(pk=tasks[1].pk).update(status=TaskStatus.OVERDUE)
    FollowUpTask.objects.filter(pk=tasks[2].pk).update(status=TaskStatus.OPEN)
    from django.db import connection

    connection.set_schema_to_public()
    page = coordinator.get("/api/v1/worklist/?page_size=4").json()
    assert page["count"] == 6 and len(page["results"]) == 4
    assert [t["status"] for t in page["results"]][:2] == ["overdue", "open"]
    overdue = coordinator.get("/api/v1/worklist/?bucket=overdue").json()["results"]
    assert [t["event_code"] for t in overdue] == ["D30"]
    assert coordinator.get("/api/v1/worklist/?event=D7").json()["count"] == 2
    assert coordinator.get(f"/api/v1/worklist/?site={trial['s2']}").json()["count"] == 0
    _assert_error_shape(coordinator.get("/api/v1/worklist/?bucket=later"), 400)
    _assert_error_shape(coordinator.get("/api/v1/worklist/?site=abc"), 400)
    for bad in ("?site=²", "?study=" + "9" * 25):  # a Unicode digit int() refuses; past bigint
        assert list(_assert_error_shape(coordinator.get("/api/v1/subjects/" + bad), 400)["fields"]) == [
            bad[1:].split("=")[0]]
    # Someone else's worklist is their own.
    assert api(world.alpha, email_of("monitor", "alpha")).get("/api/v1/worklist/").json()["count"] == 0


def test_failed_contact_attempts_mark_a_subject_lost(api, world, email_of, trial, in_tenant):
    in_tenant(world.alpha)
    from studies.models import Study

    Study.objects.filter(pk=trial["study"]).update(lost_after_failed_attempts=3)
    from django.db import connection

    connection.set_schema_to_public()
    coordinator = api(world.alpha, email_of("coordinator", "alpha"))
    subject = _enrol(coordinator, trial).json()
    task_id = coordinator.get(f"/api/v1/subjects/{subject['id']}/").json()["tasks"][0]["id"]
    url = f"/api/v1/tasks/{task_id}/attempts/"
    _assert_error_shape(coordinator.post(url, {"outcome": "maybe"}, format="json"), 400)
    for outcome in ("no_answer", "wrong_number", "no_answer"):
        assert coordinator.post(url, {"outcome": outcome, "note": "无人接听"}, format="json").status_code == 201
    in_tenant(world.alpha)
    assert Subject.objects.get(pk=subject["id"]).status == SubjectStatus.LOST
    assert set(FollowUpTask.objects.filter(subject_id=subject["id"]).values_list("status", flat=True)) == {
        TaskStatus.CANCELLED}


def test_status_sweep_moves_tasks_and_applies_the_missed_rule(api, world, email_of, trial, in_tenant):
    subject = _enrol(api(world.alpha, email_of("coordinator", "alpha")), trial).json()
    in_tenant(world.alpha)
    later = TODAY + dt.timedelta(days=200)  # every window has closed by then
    counts = services.tasks_refresh_statuses(today_by_time_zone={"Asia/Shanghai": later})
    assert counts["missed"] == 3 and counts["lost"] == 1
    assert Subject.objects.get(pk=subject["id"]).status == SubjectStatus.LOST
    assert services.tasks_refresh_statuses(today_by_time_zone={"Asia/Shanghai": later})["missed"] == 0


def test_studies_and_subjects_never_cross_tenants(api, world, email_of, trial):
    subject = _enrol(api(world.alpha, email_of("coordinator", "alpha")), trial).json()
    beta = api(world.beta, email_of("tenant_admin", "beta"))
    assert beta.get("/api/v1/studies/").json()["results"] == []
    assert beta.get("/api/v1/subjects/").json()["results"] == []
    _assert_error_shape(beta.get(f"/api/v1/subjects/{subject['id']}/"), 404)
    _assert_error_shape(beta.get(f"/api/v1/studies/{trial['study']}/"), 404)


def test_schedule_preview_and_design_are_for_the_sponsor(api, world, email_of, trial):
    coordinator = api(world.alpha, email_of("coordinator", "alpha"))
    _assert_error_shape(coordinator.post(f"/api/v1/studies/{trial['study']}/schedule/",
                                         {"events": [event("X", 1)]}, format="json"), 403)
    _enrol(coordinator, trial)
    admin = trial["admin"]
    saved = admin.post(f"/api/v1/studies/{trial['study']}/schedule/",
                       {"events": [event("D7", 7, before=3, after=3), event("D30", 30)]}, format="json")
    assert saved.status_code == 200 and saved.json()["status"] == "draft"
    preview = admin.get(f"/api/v1/studies/{trial['study']}/schedule/preview/").json()
    assert preview["summary"] == {"create": 0, "update": 0, "cancel": 1}
    bad = admin.post(f"/api/v1/studies/{trial['study']}/schedule/", {"events": [{"code": "x"}]}, format="json")
    assert _assert_error_shape(bad, 400)["fields"]


def test_completing_a_follow_up_replans_events_anchored_on_it(api, world, email_of, trial, in_tenant):
    admin = trial["admin"]
    schedule = [event("D7", 7, before=3, after=3),
                event("CALL", 14, anchor="event", anchor_event="D7", before=2, after=2)]
    admin.post(f"/api/v1/studies/{trial['study']}/schedule/", {"events": schedule}, format="json")
    admin.post(f"/api/v1/studies/{trial['study']}/schedule/publish/")
    coordinator = api(world.alpha, email_of("coordinator", "alpha"))
    enrolled_on = TODAY - dt.timedelta(days=8)
    subject = _enrol(coordinator, trial, consent_date=enrolled_on.isoformat(),
                     enrolment_date=enrolled_on.isoformat()).json()
    tasks = {t["event_code"]: t for t in coordinator.get(f"/api/v1/subjects/{subject['id']}/").json()["tasks"]}
    assert tasks["CALL"]["provisional"] is True
    assert tasks["CALL"]["target_date"] == (enrolled_on + dt.timedelta(days=21)).isoformat()
    done_on = TODAY - dt.timedelta(days=1)
    url = f"/api/v1/tasks/{tasks['D7']['id']}/complete/"
    _assert_error_shape(coordinator.post(url, {"completed_on": (TODAY + dt.timedelta(days=1)).isoformat()},
                                         format="json"), 400)
    assert coordinator.post(url, {"completed_on": done_on.isoformat()}, format="json").json()["status"] == "completed"
    _assert_error_shape(coordinator.post(url, {"completed_on": done_on.isoformat()}, format="json"), 409)
    tasks = {t["event_code"]: t for t in coordinator.get(f"/api/v1/subjects/{subject['id']}/").json()["tasks"]}
    assert tasks["CALL"]["provisional"] is False
    assert tasks["CALL"]["target_date"] == (done_on + dt.timedelta(days=14)).isoformat()
    _assert_error_shape(api(world.alpha, email_of("viewer", "alpha")).post(url, {"completed_on": "2026-01-01"},
                                                                           format="json"), 403)


def test_subject_list_queries_do_not_grow_with_the_page(api, world, email_of, trial):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    coordinator = api(world.alpha, email_of("coordinator", "alpha"))
    _enrol(coordinator, trial, national_id="")

    def count() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert coordinator.get("/api/v1/subjects/").status_code == 200
        return len(queries)

    one = count()
    for _ in range(4):
        _enrol(coordinator, trial, national_id="")
    assert count() == one


@pytest.mark.parametrize("value", ["%00", "a%00b", "bogus"])
def test_an_unknown_subject_status_filter_is_refused(api, world, email_of, trial, value):
    coordinator = api(world.alpha, email_of("coordinator", "alpha"))
    coordinator.raise_request_exception = False
    fields = _assert_error_shape(coordinator.get(f"/api/v1/subjects/?status={value}"), 400)["fields"]
    assert "enrolled" in fields["status"][0]
    _enrol(coordinator, trial)
    assert coordinator.get("/api/v1/subjects/?status=enrolled").json()["count"] == 1
    assert coordinator.get("/api/v1/subjects/?status=lost_to_follow_up").json()["count"] == 0


@pytest.mark.parametrize("at", ["0001-01-01T00:00:00", "0001-01-01T00:00:00+14:00", "1900-01-01T00:00:00",
                                "9999-12-31T23:59:59"])
def test_a_contact_attempt_before_enrolment_or_off_the_calendar_is_refused(api, world, email_of, trial, in_tenant,
                                                                             at):
    coordinator = api(world.alpha, email_of("coordinator", "alpha"))
    coordinator.raise_request_exception = False
    enrolled_on = TODAY - dt.timedelta(days=3)
    subject = _enrol(coordinator, trial, consent_date=enrolled_on.isoformat(),
                     enrolment_date=enrolled_on.isoformat()).json()
    task_id = coordinator.get(f"/api/v1/subjects/{subject['id']}/").json()["tasks"][0]["id"]
    url = f"/api/v1/tasks/{task_id}/attempts/"
    assert "at" in _assert_error_shape(coordinator.post(url, {"outcome": "reached", "at": at}, format="json"),
                                       400)["fields"]
    the_day_before = f"{enrolled_on - dt.timedelta(days=1)}T20:00:00"
    assert "at" in _assert_error_shape(coordinator.post(url, {"outcome": "reached", "at": the_day_before},
                                                        format="json"), 400)["fields"]
    in_tenant(world.alpha)
    from studies.models import ContactAttempt

    assert not ContactAttempt.objects.exists()
    from django.db import connection

    connection.set_schema_to_public()
    on_the_day = f"{enrolled_on}T09:00:00"
    assert coordinator.post(url, {"outcome": "reached", "at": on_the_day}, format="json").status_code == 201


@pytest.fixture
def index_study(api, world, email_of, trial):  # type: ignore[no-untyped-def]
    """An active study whose M3 visit is 90 days after the index date."""
    admin = trial["admin"]
    study = admin.post("/api/v1/studies/", {"code": "IDX", "title": "Index", "study_type": "registry",
                                            "target_enrolment": 100}, format="json").json()
    saved = admin.post(f"/api/v1/studies/{study['id']}/schedule/", {"events": [event("M3", 90, anchor="index")]},
                       format="json")
    assert saved.status_code == 200, saved.content
    assert admin.post(f"/api/v1/studies/{study['id']}/schedule/publish/").status_code == 200
    assert admin.post(f"/api/v1/studies/{study['id']}/activate/").status_code == 200
    return study["id"]


@pytest.mark.parametrize("index_date", ["9999-12-01", "9000-01-01", "0001-01-01", "1800-01-01"])
def test_an_index_date_far_from_enrolment_is_refused_and_saves_nothing(api, world, email_of, trial, index_study,
                                                                         in_tenant, index_date):
    coordinator = api(world.alpha, email_of("coordinator", "alpha"))
    coordinator.raise_request_exception = False
    response = _enrol(coordinator, {**trial, "study": index_study}, index_date=index_date)
    with translation.override(response["Content-Language"]):  # the reader's language
        expected = translation.gettext("The index date must be within %(years)d years of enrolment.") % {"years": 20}
    assert _assert_error_shape(response, 400)["fields"]["index_date"] == [expected]
    in_tenant(world.alpha)
    assert not Subject.objects.exists() and not FollowUpTask.objects.exists()


def test_a_plausible_index_date_plans_from_it(api, world, email_of, trial, index_study):
    coordinator = api(world.alpha, email_of("coordinator", "alpha"))
    operated = TODAY - dt.timedelta(days=365 * 5)
    subject = _enrol(coordinator, {**trial, "study": index_study}, index_date=operated.isoformat())
    assert subject.status_code == 201, subject.content
    tasks = coordinator.get(f"/api/v1/subjects/{subject.json()['id']}/").json()["tasks"]
    assert tasks[0]["target_date"] == (operated + dt.timedelta(days=90)).isoformat()


def test_a_schedule_past_the_calendar_is_a_field_error_not_a_500(world, in_tenant, trial):
    # The enrolment rules keep the index date near enrolment; should a date still plan a
    # visit past year 9999 (called directly, dates checked elsewhere), it is refused.
    from sites.models import Site
    from studies.models import Study

    in_tenant(world.alpha)
    study, site = Study.objects.get(code="FU1"), Site.objects.get(code="S1")
    from studies import enrolment_rules

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(services, "enrolment_check", lambda **kw: enrolment_rules.EnrolmentCheck())
        with pytest.raises(services.ValidationFailed) as refused:
            services.subject_enrol(study=study, site=site, consent_date=dt.date(9999, 12, 25),
                                   enrolment_date=dt.date(9999, 12, 25))
    assert "enrolment_date" in refused.value.fields
    assert not Subject.objects.exists()
