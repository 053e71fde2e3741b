"""The subject page's actions (unscheduled visit, status change) and the bulk-import
pages: typed data kept on errors, roles, site scoping, other tenants."""

from __future__ import annotations

import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection

from studies.import_tasks import subjects_import_task
from studies.models import FollowUpTask, Subject, SubjectStatus, TaskStatus
from tests.studies.test_studies_api import TODAY, _enrol
from tests.studies.test_worklist_web import _login

pytestmark = pytest.mark.django_db


def _page(web, world, email):  # type: ignore[no-untyped-def]
    page = web(world.alpha)
    page.cookies["django_language"] = "en"
    _login(page, email)
    return page


def test_unscheduled_visit_from_the_subject_page_keeps_typed_data_on_error(api, web, world, email_of, trial,
                                                                          in_tenant):
    subject = _enrol(api(world.alpha, email_of("coordinator", "alpha")), trial).json()
    page = _page(web, world, email_of("coordinator", "alpha"))
    url = f"/subjects/{subject['id']}/unscheduled/"
    added_page = page.post(url, {"visit_date": TODAY.isoformat(), "mode": "phone", "window_after": "5",
                                 "reason": "胸痛复查"}, follow=True)
    assert added_page.status_code == 200
    in_tenant(world.alpha)
    added = FollowUpTask.objects.get(subject_id=subject["id"], unscheduled=True)
    assert (added.event_code, added.mode, added.reason) == ("UNS", "phone", "胸痛复查")
    connection.set_schema_to_public()
    html = added_page.content.decode()
    assert "Unscheduled visit UNS #1 added." in html and "胸痛复查" in html and "Unscheduled" in html

    # Refused by the service on its field; what was typed is still there.
    refused = page.post(url, {"visit_date": "2001-01-01", "mode": "clinic", "window_after": "7",
                              "reason": "typed reason kept"})
    assert refused.status_code == 400
    body = refused.content.decode()
    assert "The date is before the subject&#x27;s enrolment." in body and "typed reason kept" in body
    assert 'value="2001-01-01"' in body
    missing = page.post(url, {"visit_date": "", "mode": "clinic", "window_after": "100", "reason": ""})
    assert missing.status_code == 400 and missing.content.decode().count('class="error"') >= 3


def test_status_change_from_the_subject_page(api, web, world, email_of, trial, in_tenant):
    subject = _enrol(api(world.alpha, email_of("coordinator", "alpha")), trial).json()
    page = _page(web, world, email_of("coordinator", "alpha"))
    url = f"/subjects/{subject['id']}/status/"
    html = page.get(f"/subjects/{subject['id']}/").content.decode()
    offered = set(re.findall(r'<option value="([a-z_]+)"', html.split('id="status"')[1]))
    assert offered >= {"withdrawn", "deceased", "completed", "lost_to_follow_up"}
    assert "screening" not in offered and "enrolled" not in offered
    no_reason = page.post(url, {"status": "withdrawn", "effective_on": TODAY.isoformat(), "reason": ""})
    assert no_reason.status_code == 400 and "Give a reason." in no_reason.content.decode()
    done = page.post(url, {"status": "withdrawn", "effective_on": TODAY.isoformat(), "reason": "moved abroad"},
                     follow=True)
    assert "S1-0001 is now Withdrawn." in done.content.decode()
    in_tenant(world.alpha)
    assert Subject.objects.get(pk=subject["id"]).status == SubjectStatus.WITHDRAWN
    assert set(FollowUpTask.objects.filter(subject_id=subject["id"]).values_list("status", flat=True)) == {
        TaskStatus.CANCELLED}
    connection.set_schema_to_public()
    # Withdrawn is final: no more actions on the page; a forged post is a field error.
    after = page.get(f"/subjects/{subject['id']}/").content.decode()
    assert 'id="status"' not in after and 'id="unscheduled"' not in after
    assert page.post(url, {"status": "enrolled", "effective_on": TODAY.isoformat(), "reason": "x"}).status_code == 400


def test_subject_actions_by_role_site_and_tenant(api, web, world, email_of, trial):
    subject = _enrol(api(world.alpha, email_of("investigator", "alpha")), trial, site_key="s2").json()
    body = {"status": "deceased", "effective_on": TODAY.isoformat(), "reason": "x"}
    monitor = _page(web, world, email_of("monitor", "alpha"))
    html = monitor.get(f"/subjects/{subject['id']}/").content.decode()
    assert 'id="status"' not in html and 'id="unscheduled"' not in html
    assert monitor.post(f"/subjects/{subject['id']}/status/", body).status_code == 403
    coordinator = _page(web, world, email_of("coordinator", "alpha"))  # works at S1 only
    assert coordinator.post(f"/subjects/{subject['id']}/status/", body).status_code == 404
    assert coordinator.post(f"/subjects/{subject['id']}/unscheduled/", {}).status_code == 404
    beta = web(world.beta)
    _login(beta, email_of("tenant_admin", "beta"))
    assert beta.post(f"/subjects/{subject['id']}/status/", body).status_code == 404


def test_import_pages_upload_follow_and_report(web, world, email_of, trial, in_tenant):
    page = _page(web, world, email_of("coordinator", "alpha"))
    form = page.get("/subjects/import/").content.decode()
    assert "FU1" in form and "external_ref" in form
    # A bad file is refused on the form, with the study still chosen.
    bad = page.post("/subjects/import/", {"study": trial["study"], "file": SimpleUploadedFile("x.csv", b"a,b\n1,2\n")})
    assert bad.status_code == 400 and "Required columns are missing" in bad.content.decode()
    assert f'<option value="{trial["study"]}" selected>' in bad.content.decode()
    rows = (f"site,consent_date,phone\nS1,{TODAY.isoformat()},13800000001\nS9,{TODAY.isoformat()},13800000002\n"
            ).encode()
    started = page.post("/subjects/import/", {"study": trial["study"], "file": SimpleUploadedFile("s.csv", rows)})
    assert started.status_code == 302
    job_url = started["Location"]
    job_id = job_url.rstrip("/").rsplit("/", 1)[1]
    queued = page.get(job_url).content.decode()
    assert 'http-equiv="refresh"' in queued and "<progress" in queued
    in_tenant(world.alpha)
    from tenants.models import TenantMembership

    membership = TenantMembership.objects.get(tenant=world.alpha, user=world.users[email_of("coordinator", "alpha")])
    subjects_import_task.apply(args=[trial["study"], f"imports/{world.alpha.schema_name}/{job_id}.csv",
                                     membership.pk, False], task_id=job_id)
    connection.set_schema_to_public()
    report = page.get(job_url).content.decode()
    assert "Nothing was imported" in report and "No such site, or it is not one of yours." in report
    assert 'http-equiv="refresh"' not in report
    # Not the uploader's job: as good as missing. Roles that do not enrol never get the pages.
    assert _page(web, world, email_of("investigator", "alpha")).get(job_url).status_code == 404
    viewer = _page(web, world, email_of("viewer", "alpha"))
    assert viewer.get("/subjects/import/").status_code == 403
    assert "Import subjects" not in viewer.get("/worklist/").content.decode()
