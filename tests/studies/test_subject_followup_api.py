"""After enrolment, over the API: subject status changes, unscheduled visits, task
reassignment, the bulk-import upload with its job, and arm-specific schedules. Each with
roles, site scoping, other tenants and bad input."""

from __future__ import annotations

import datetime as dt

import pytest
from django.core.cache import cache
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection

from sites import services as site_services
from studies.import_tasks import progress_key, subjects_import_task
from studies.models import FollowUpTask, Subject, SubjectStatus, TaskStatus
from tests.studies.test_enrolment import event
from tests.studies.test_studies_api import TODAY, _active_site, _enrol
from tests.tenants.test_api import _assert_error_shape

pytestmark = pytest.mark.django_db


def _tasks(in_tenant, world, subject_id):  # type: ignore[no-untyped-def]
    in_tenant(world.alpha)
    rows = list(FollowUpTask.objects.filter(subject_id=subject_id).order_by("target_date", "pk"))
    connection.set_schema_to_public()
    return rows


# --- status -----------------------------------------------------------------------------------

def test_withdrawal_cancels_what_is_not_done_and_keeps_what_is(api, world, email_of, trial, in_tenant):
    coordinator = api(world.alpha, email_of("coordinator", "alpha"))
    subject = _enrol(coordinator, trial).json()
    first = _tasks(in_tenant, world, subject["id"])[0]
    in_tenant(world.alpha)
    FollowUpTask.objects.filter(pk=first.pk).update(status=TaskStatus.COMPLETED, completed_on=TODAY)
    connection.set_schema_to_public()
    url = f"/api/v1/subjects/{subject['id']}/status/"
    missing_reason = coordinator.post(url, {"status": "withdrawn", "effective_on": TODAY.isoformat()}, format="json")
    assert "reason" in _assert_error_shape(missing_reason, 400)["fields"]
    future = coordinator.post(url, {"status": "withdrawn", "effective_on": (TODAY + dt.timedelta(days=2)).isoformat(),
                                    "reason": "moved away"}, format="json")
    assert "effective_on" in _assert_error_shape(future, 400)["fields"]
    assert "status" in _assert_error_shape(coordinator.post(url, {"status": "gone", "effective_on": "2026-01-01"},
                                                            format="json"), 400)["fields"]
    assert [t.status for t in _tasks(in_tenant, world, subject["id"])][1:] == [TaskStatus.UPCOMING] * 2

    done = coordinator.post(url, {"status": "withdrawn", "effective_on": TODAY.isoformat(),
                                  "reason": "撤回知情同意"}, format="json")
    assert done.status_code == 200, done.content
    assert done.json()["status"] == "withdrawn" and done.json()["status_reason"] == "撤回知情同意"
    assert [t.status for t in _tasks(in_tenant, world, subject["id"])] == [
        TaskStatus.COMPLETED, TaskStatus.CANCELLED, TaskStatus.CANCELLED]
    # Withdrawn is final.
    again = coordinator.post(url, {"status": "enrolled", "effective_on": TODAY.isoformat(), "reason": "oops"},
                             format="json")
    assert _assert_error_shape(again, 409)["code"] == "bad_transition"
    # The reason is health information: not for the roles that never see identifying data.
    seen = api(world.alpha, email_of("statistician", "alpha")).get(f"/api/v1/subjects/{subject['id']}/").json()
    assert seen["status"] == "withdrawn" and seen["status_reason"] is None


def test_a_lost_subject_found_again_gets_back_the_visits_still_possible(api, world, email_of, trial, in_tenant):
    coordinator = api(world.alpha, email_of("coordinator", "alpha"))
    subject = _enrol(coordinator, trial).json()
    url = f"/api/v1/subjects/{subject['id']}/status/"
    lost = coordinator.post(url, {"status": "lost_to_follow_up", "effective_on": TODAY.isoformat(),
                                  "reason": "phone disconnected"}, format="json")
    assert lost.status_code == 200
    assert {t.status for t in _tasks(in_tenant, world, subject["id"])} == {TaskStatus.CANCELLED}
    found = coordinator.post(url, {"status": "enrolled", "effective_on": TODAY.isoformat(),
                                   "reason": "reached through family"}, format="json")
    assert found.status_code == 200 and found.json()["status"] == "enrolled"
    assert {t.status for t in _tasks(in_tenant, world, subject["id"])} == {TaskStatus.UPCOMING}


def test_status_changes_are_for_the_subjects_own_sites_and_tenant(api, world, email_of, trial):
    subject = _enrol(api(world.alpha, email_of("investigator", "alpha")), trial, site_key="s2").json()
    body = {"status": "deceased", "effective_on": TODAY.isoformat(), "reason": "x"}
    url = f"/api/v1/subjects/{subject['id']}/status/"
    _assert_error_shape(api(world.alpha, email_of("coordinator", "alpha")).post(url, body, format="json"), 404)
    _assert_error_shape(api(world.alpha, email_of("monitor", "alpha")).post(url, body, format="json"), 403)
    _assert_error_shape(api(world.beta, email_of("tenant_admin", "beta")).post(url, body, format="json"), 404)
    assert trial["admin"].get(url).status_code == 405


# --- unscheduled visits -------------------------------------------------------------------------

def test_unscheduled_visits_are_numbered_on_the_worklist_and_never_replanned(api, world, email_of, trial,
                                                                              in_tenant):
    coordinator = api(world.alpha, email_of("coordinator", "alpha"))
    subject = _enrol(coordinator, trial).json()
    url = f"/api/v1/subjects/{subject['id']}/unscheduled-visits/"
    first = coordinator.post(url, {"visit_date": TODAY.isoformat(), "reason": "不良事件随访"}, format="json")
    assert first.status_code == 201, first.content
    second = coordinator.post(url, {"visit_date": (TODAY + dt.timedelta(days=3)).isoformat(), "reason": "AE",
                                    "mode": "phone"}, format="json")
    one, two = first.json(), second.json()
    assert (one["event_code"], one["sequence"], one["unscheduled"], one["status"]) == ("UNS", 1, True, "open")
    assert (two["sequence"], two["mode"], two["status"]) == (2, "phone", "upcoming")
    assert one["window_close"] == (TODAY + dt.timedelta(days=7)).isoformat() and one["reason"] == "不良事件随访"
    worklist = coordinator.get("/api/v1/worklist/?event=UNS").json()
    assert worklist["count"] == 2  # the primary coordinator gets them, like scheduled visits
    # An amendment re-plans the schedule; unscheduled visits are not part of it and stay.
    admin = trial["admin"]
    admin.post(f"/api/v1/studies/{trial['study']}/schedule/", {"events": [event("D30", 30)]}, format="json")
    assert admin.post(f"/api/v1/studies/{trial['study']}/schedule/publish/").status_code == 200
    statuses = {(t.event_code, t.sequence): t.status for t in _tasks(in_tenant, world, subject["id"])}
    assert statuses[("UNS", 1)] == TaskStatus.OPEN and statuses[("UNS", 2)] == TaskStatus.UPCOMING
    assert statuses[("D7", 1)] == TaskStatus.CANCELLED


def test_a_schedule_cannot_take_the_code_of_recorded_unscheduled_visits(api, world, email_of, trial):
    coordinator = api(world.alpha, email_of("coordinator", "alpha"))
    subject = _enrol(coordinator, trial).json()
    added = coordinator.post(f"/api/v1/subjects/{subject['id']}/unscheduled-visits/",
                             {"visit_date": TODAY.isoformat(), "reason": "AE", "event_code": "ae1"}, format="json")
    assert added.json()["event_code"] == "AE1"
    refused = trial["admin"].post(f"/api/v1/studies/{trial['study']}/schedule/",
                                  {"events": [event("D7", 7), event("AE1", 60)]}, format="json")
    assert "events.1.code" in _assert_error_shape(refused, 400)["fields"]


@pytest.mark.parametrize(("body", "field"), [
    ({"reason": ""}, "reason"),
    ({"reason": "x" * 1001}, "reason"),
    ({"event_code": "D30"}, "event_code"),  # a scheduled event's code
    ({"event_code": "bad code!"}, "event_code"),
    ({"visit_date": "2000-01-01"}, "visit_date"),  # before enrolment
    ({"visit_date": "not-a-date"}, "visit_date"),
    ({"window_after": 91}, "window_after"),
    ({"mode": "carrier pigeon"}, "mode"),
    ({"assignee": 987654}, "assignee"),
])
def test_bad_unscheduled_visits_are_refused_per_field(api, world, email_of, trial, in_tenant, body, field):
    coordinator = api(world.alpha, email_of("coordinator", "alpha"))
    subject = _enrol(coordinator, trial).json()
    payload = {"visit_date": TODAY.isoformat(), "reason": "AE", **body}
    response = coordinator.post(f"/api/v1/subjects/{subject['id']}/unscheduled-visits/", payload, format="json")
    assert field in _assert_error_shape(response, 400)["fields"]
    assert len(_tasks(in_tenant, world, subject["id"])) == 3


def test_unscheduled_visits_need_a_subject_in_follow_up_at_my_sites(api, world, email_of, trial):
    coordinator = api(world.alpha, email_of("coordinator", "alpha"))
    subject = _enrol(coordinator, trial).json()
    url = f"/api/v1/subjects/{subject['id']}/unscheduled-visits/"
    body = {"visit_date": TODAY.isoformat(), "reason": "AE"}
    _assert_error_shape(api(world.alpha, email_of("data_manager", "alpha")).post(url, body, format="json"), 403)
    _assert_error_shape(api(world.alpha, email_of("investigator", "alpha")).post(url, body, format="json"), 404)
    _assert_error_shape(api(world.beta, email_of("coordinator", "beta")).post(url, body, format="json"), 404)
    coordinator.post(f"/api/v1/subjects/{subject['id']}/status/",
                     {"status": "deceased", "effective_on": TODAY.isoformat(), "reason": "x"}, format="json")
    _assert_error_shape(coordinator.post(url, body, format="json"), 409)


# --- reassignment -------------------------------------------------------------------------------

def test_tasks_are_reassigned_to_staff_of_their_site_all_or_nothing(api, world, email_of, trial, in_tenant):
    investigator = world.users[email_of("investigator", "alpha")]
    coordinator_user = world.users[email_of("coordinator", "alpha")]
    s1_subject = _enrol(api(world.alpha, email_of("coordinator", "alpha")), trial).json()
    s2_subject = _enrol(api(world.alpha, email_of("investigator", "alpha")), trial, site_key="s2",
                        national_id="").json()
    s1_tasks = [t.pk for t in _tasks(in_tenant, world, s1_subject["id"])]
    s2_tasks = [t.pk for t in _tasks(in_tenant, world, s2_subject["id"])]
    admin = trial["admin"]
    # The investigator works at S2 only: S1's tasks cannot go to them, and nothing moves.
    mixed = admin.post("/api/v1/tasks/reassign/", {"tasks": s1_tasks[:1] + s2_tasks, "assignee": investigator.pk},
                       format="json")
    assert "assignee" in _assert_error_shape(mixed, 400)["fields"]
    assert {t.assignee_id for t in _tasks(in_tenant, world, s2_subject["id"])} == {None}
    moved = admin.post("/api/v1/tasks/reassign/", {"tasks": s2_tasks + s2_tasks[:1], "assignee": investigator.pk},
                       format="json")
    assert moved.status_code == 200 and moved.json() == {"reassigned": 3}
    assert {t.assignee_id for t in _tasks(in_tenant, world, s2_subject["id"])} == {investigator.pk}
    assert api(world.alpha, email_of("investigator", "alpha")).get("/api/v1/worklist/").json()["count"] == 3
    # A coordinator cannot touch tasks of a site that is not theirs (they look missing).
    coordinator = api(world.alpha, email_of("coordinator", "alpha"))
    foreign = coordinator.post("/api/v1/tasks/reassign/", {"tasks": s2_tasks[:1], "assignee": coordinator_user.pk},
                               format="json")
    assert "tasks" in _assert_error_shape(foreign, 400)["fields"]
    # Closed tasks stay with whoever closed them.
    in_tenant(world.alpha)
    FollowUpTask.objects.filter(pk=s1_tasks[0]).update(status=TaskStatus.MISSED)
    connection.set_schema_to_public()
    closed = coordinator.post("/api/v1/tasks/reassign/", {"tasks": s1_tasks, "assignee": coordinator_user.pk},
                              format="json")
    assert _assert_error_shape(closed, 409)["code"] == "bad_transition"


@pytest.mark.parametrize("body", [{"tasks": [], "assignee": 1}, {"tasks": list(range(1, 502)), "assignee": 1},
                                  {"tasks": ["a"], "assignee": 1}, {"tasks": [1]}, {"tasks": 5, "assignee": 1}])
def test_bad_reassignments_are_400(api, world, email_of, trial, body):
    _assert_error_shape(trial["admin"].post("/api/v1/tasks/reassign/", body, format="json"), 400)


def test_reassignment_never_reaches_another_tenant(api, world, email_of, trial, in_tenant):
    subject = _enrol(api(world.alpha, email_of("coordinator", "alpha")), trial).json()
    task_ids = [t.pk for t in _tasks(in_tenant, world, subject["id"])]
    beta_admin = api(world.beta, email_of("tenant_admin", "beta"))
    response = beta_admin.post("/api/v1/tasks/reassign/",
                               {"tasks": task_ids, "assignee": world.users[email_of("coordinator", "beta")].pk},
                               format="json")
    assert "tasks" in _assert_error_shape(response, 400)["fields"]
    _assert_error_shape(api(world.alpha, email_of("viewer", "alpha")).post(
        "/api/v1/tasks/reassign/", {"tasks": task_ids, "assignee": 1}, format="json"), 403)


# --- bulk import upload -------------------------------------------------------------------------

CSV = ("site,consent_date,name,phone,external_ref\n"
       f"S1,{TODAY.isoformat()},张三,13800000001,R1\n"
       f"S1,{TODAY.isoformat()},李四,13800000002,R2\n").encode()


def _upload(client, study_id, content=CSV, name="subjects.csv", **extra):  # type: ignore[no-untyped-def]
    return client.post(f"/api/v1/studies/{study_id}/imports/",
                       {"file": SimpleUploadedFile(name, content, "text/csv"), **extra}, format="multipart")


def test_upload_queues_a_job_whose_progress_and_report_the_uploader_reads(api, world, email_of, trial, in_tenant):
    coordinator = api(world.alpha, email_of("coordinator", "alpha"))
    response = _upload(coordinator, trial["study"])
    assert response.status_code == 202, response.content
    job = response.json()
    assert job["state"] == "queued" and job["total"] == 2 and job["study"] == trial["study"]
    assert response["Location"].endswith(f"/api/v1/imports/{job['job']}/")
    assert coordinator.get(f"/api/v1/imports/{job['job']}/").json()["state"] == "queued"

    # The worker's side of the job, run here in the tenant as the worker would.
    in_tenant(world.alpha)
    path = f"imports/{world.alpha.schema_name}/{job['job']}.csv"
    assert default_storage.exists(path)
    subjects_import_task.apply(args=[trial["study"], path, _membership_id(world, email_of("coordinator", "alpha")),
                                     False], task_id=job["job"])
    assert not default_storage.exists(path)  # identifying data is not kept once imported
    assert Subject.objects.filter(study_id=trial["study"]).count() == 2
    connection.set_schema_to_public()

    done = coordinator.get(f"/api/v1/imports/{job['job']}/").json()
    assert done["state"] == "done" and done["report"]["imported"] == 2 and done["done"] == 2
    # The tenant admin may follow it; another member, or another tenant, finds nothing.
    assert trial["admin"].get(f"/api/v1/imports/{job['job']}/").status_code == 200
    _assert_error_shape(api(world.alpha, email_of("investigator", "alpha")).get(f"/api/v1/imports/{job['job']}/"),
                        404)
    _assert_error_shape(api(world.beta, email_of("tenant_admin", "beta")).get(f"/api/v1/imports/{job['job']}/"),
                        404)
    assert cache.get(progress_key(world.beta.schema_name, job["job"])) is None


def _membership_id(world, email):  # type: ignore[no-untyped-def]
    from tenants.models import TenantMembership

    return TenantMembership.objects.get(tenant=world.alpha, user=world.users[email]).pk


@pytest.mark.parametrize(("content", "name", "field_code"), [
    (b"", "subjects.csv", "file"),
    (b"name,phone\nx,1\n", "subjects.csv", "import_bad_header"),
    (b"\x89PNG\r\n\x1a\n", "photo.png", "import_bad_type"),
    (b"PK\x03\x04 not really a workbook", "subjects.xlsx", "import_unreadable"),
])
def test_unusable_files_are_refused_at_once_and_queue_nothing(api, world, email_of, trial, content, name,
                                                              field_code):
    error = _assert_error_shape(_upload(api(world.alpha, email_of("coordinator", "alpha")), trial["study"],
                                        content=content, name=name), 400)
    assert "file" in error["fields"]
    if field_code != "file":
        assert error["code"] == field_code


def test_upload_is_for_enrolling_roles_of_this_tenants_studies(api, world, email_of, trial):
    _assert_error_shape(_upload(api(world.alpha, email_of("monitor", "alpha")), trial["study"]), 403)
    _assert_error_shape(_upload(api(world.beta, email_of("tenant_admin", "beta")), trial["study"]), 404)
    _assert_error_shape(api(world.alpha, email_of("coordinator", "alpha")).get("/api/v1/imports/" + "f" * 70 + "/"),
                        404)


# --- arm-specific schedules ----------------------------------------------------------------------

def test_arms_follow_their_own_schedule_and_amendments_touch_only_theirs(api, world, email_of, in_tenant):
    in_tenant(world.alpha)
    site = _active_site("A1")
    site_services.site_staff_assign(site=site, tenant=world.alpha, user=world.users[email_of("coordinator", "alpha")],
                                    role="coordinator", is_primary=True)
    connection.set_schema_to_public()
    admin = api(world.alpha, email_of("tenant_admin", "alpha"))
    study = admin.post("/api/v1/studies/", {"code": "ARMS", "title": "Two arms", "study_type": "interventional_trial",
                                            "target_enrolment": 10,
                                            "arms": [{"code": "DRUG", "name": "Drug"},
                                                     {"code": "CTRL", "name": "Control"}]}, format="json").json()
    arms = {a["code"]: a["id"] for a in study["arms"]}
    base = f"/api/v1/studies/{study['id']}/schedule/"
    assert admin.post(base, {"events": [event("M1", 1, "month")]}, format="json").status_code == 200
    assert admin.post(base + "publish/").status_code == 200
    drug = admin.post(base, {"arm": arms["DRUG"], "events": [event("W2", 2, "week"), event("M1", 1, "month")]},
                      format="json")
    assert drug.status_code == 200 and drug.json()["arm"] == arms["DRUG"]
    assert admin.post(base + f"publish/?arm={arms['DRUG']}").status_code == 200
    assert admin.post(f"/api/v1/studies/{study['id']}/activate/").status_code == 200
    coordinator = api(world.alpha, email_of("coordinator", "alpha"))
    payload = {"study": study["id"], "site": site.pk, "consent_date": TODAY.isoformat()}
    on_drug = coordinator.post("/api/v1/subjects/", {**payload, "arm": arms["DRUG"]}, format="json").json()
    on_ctrl = coordinator.post("/api/v1/subjects/", {**payload, "arm": arms["CTRL"]}, format="json").json()
    assert [t.event_code for t in _tasks(in_tenant, world, on_drug["id"])] == ["W2", "M1"]
    assert [t.event_code for t in _tasks(in_tenant, world, on_ctrl["id"])] == ["M1"]
    # An amendment of the drug arm previews and re-plans drug subjects only.
    admin.post(base, {"arm": arms["DRUG"], "events": [event("W2", 2, "week"), event("W6", 6, "week")]},
               format="json")
    preview = admin.get(base + f"preview/?arm={arms['DRUG']}").json()
    assert preview["summary"] == {"create": 1, "update": 0, "cancel": 1}
    assert {row["subject"] for row in preview["sample"]} == {on_drug["subject_code"]}
    assert admin.post(base + "publish/", {"arm": arms["DRUG"]}, format="json").status_code == 200
    assert [(t.event_code, t.status) for t in _tasks(in_tenant, world, on_drug["id"])] == [
        ("W2", TaskStatus.UPCOMING), ("M1", TaskStatus.CANCELLED), ("W6", TaskStatus.UPCOMING)]
    assert [(t.event_code, t.status) for t in _tasks(in_tenant, world, on_ctrl["id"])] == [
        ("M1", TaskStatus.UPCOMING)]
    # An arm of another study, or a made-up one, is a field error.
    bad = admin.post(base, {"arm": 999999, "events": [event("X", 1)]}, format="json")
    assert "arm" in _assert_error_shape(bad, 400)["fields"]
    in_tenant(world.alpha)
    assert Subject.objects.get(pk=on_drug["id"]).status == SubjectStatus.ENROLLED


# --- reminder rules -------------------------------------------------------------------------------

def test_sponsor_configures_reminder_rules_that_are_switched_off_never_deleted(api, world, email_of, trial):
    admin = trial["admin"]
    url = f"/api/v1/studies/{trial['study']}/reminder-rules/"
    before = admin.post(url, {"kind": "patient_before_window", "days": 3, "channel": "sms"}, format="json")
    assert before.status_code == 201, before.content
    rule = before.json()
    assert (rule["days"], rule["channel"], rule["quiet_from"], rule["active"]) == (3, "sms", "21:00:00", True)
    duplicate = admin.post(url, {"kind": "patient_before_window", "days": 3, "channel": "sms"}, format="json")
    assert "kind" in _assert_error_shape(duplicate, 400)["fields"]
    assert admin.post(url, {"kind": "coordinator_overdue"}, format="json").status_code == 201
    coordinator = api(world.alpha, email_of("coordinator", "alpha"))
    assert len(coordinator.get(url).json()) == 2  # members read the rules ...
    _assert_error_shape(coordinator.post(url, {"kind": "coordinator_overdue", "days": 1}, format="json"), 403)
    _assert_error_shape(coordinator.patch(f"/api/v1/reminder-rules/{rule['id']}/", {"active": False},
                                          format="json"), 403)  # ... only the sponsor writes them
    off = admin.patch(f"/api/v1/reminder-rules/{rule['id']}/", {"active": False}, format="json")
    assert off.status_code == 200 and off.json()["active"] is False
    assert admin.delete(f"/api/v1/reminder-rules/{rule['id']}/").status_code == 405
    # Switched off, an identical rule may be added again.
    assert admin.post(url, {"kind": "patient_before_window", "days": 3, "channel": "sms"},
                      format="json").status_code == 201


@pytest.mark.parametrize(("body", "field"), [
    ({"kind": "whenever"}, "kind"),
    ({"kind": "patient_before_window", "days": 400}, "days"),
    ({"kind": "patient_before_window", "days": -1}, "days"),
    ({"kind": "investigator_overdue", "days": 0}, "days"),
    ({"kind": "coordinator_overdue", "channel": "sms"}, "channel"),
    ({"kind": "patient_before_window", "channel": "pigeon"}, "channel"),
    ({"kind": "patient_before_window", "quiet_from": "22:00", "quiet_until": "22:00"}, "quiet_until"),
    ({"kind": "patient_before_window", "quiet_from": "25:00"}, "quiet_from"),
])
def test_bad_reminder_rules_are_refused_per_field(trial, body, field):
    response = trial["admin"].post(f"/api/v1/studies/{trial['study']}/reminder-rules/", body, format="json")
    assert field in _assert_error_shape(response, 400)["fields"]


def test_reminder_rules_stay_in_their_tenant(api, world, email_of, trial):
    rule = trial["admin"].post(f"/api/v1/studies/{trial['study']}/reminder-rules/",
                               {"kind": "coordinator_overdue"}, format="json").json()
    beta = api(world.beta, email_of("tenant_admin", "beta"))
    _assert_error_shape(beta.get(f"/api/v1/studies/{trial['study']}/reminder-rules/"), 404)
    _assert_error_shape(beta.patch(f"/api/v1/reminder-rules/{rule['id']}/", {"active": False}, format="json"), 404)
    bad_patch = trial["admin"].patch(f"/api/v1/reminder-rules/{rule['id']}/", {"kind": "patient_before_window"},
                                     format="json")
    assert "kind" in _assert_error_shape(bad_patch, 400)["fields"]
    _assert_error_shape(trial["admin"].patch(f"/api/v1/reminder-rules/{rule['id']}/", {}, format="json"), 400)


def test_worklist_shows_upcoming_visits_within_a_horizon(api, world, email_of, trial):
    coordinator = api(world.alpha, email_of("coordinator", "alpha"))
    _enrol(coordinator, trial)  # D7, D30 and D90 windows open in 4, 23 and 83 days
    assert [t["event_code"] for t in coordinator.get("/api/v1/worklist/").json()["results"]] == ["D7", "D30", "D90"]
    assert [t["event_code"] for t in coordinator.get("/api/v1/worklist/?horizon=20").json()["results"]] == ["D7"]
    assert coordinator.get("/api/v1/worklist/?horizon=3000").json()["count"] == 3
    for bad in ("0", "x", "99999"):
        assert "horizon" in _assert_error_shape(coordinator.get(f"/api/v1/worklist/?horizon={bad}"), 400)["fields"]
