"""The coordinator's worklist page and its contact-attempt dialog."""

from __future__ import annotations

import pytest

from studies.models import ContactAttempt
from tests.conftest import PASSWORD
from tests.studies.test_studies_api import _enrol

pytestmark = pytest.mark.django_db


def _login(client, email):  # type: ignore[no-untyped-def]
    assert client.post("/login/", {"email": email, "password": PASSWORD}).status_code == 302


def test_worklist_page_lists_my_tasks_and_records_a_call(api, web, world, email_of, trial, in_tenant):
    _enrol(api(world.alpha, email_of("coordinator", "alpha")), trial)
    page = web(world.alpha)
    page.cookies["django_language"] = "en"
    _login(page, email_of("coordinator", "alpha"))
    html = page.get("/worklist/").content.decode()
    assert "S1-0001" in html and "tel:13812345678" in html and html.count("Record call") == 3
    from django.db import connection

    in_tenant(world.alpha)
    from studies.models import FollowUpTask

    task = FollowUpTask.objects.order_by("target_date").first()
    connection.set_schema_to_public()
    response = page.post(f"/tasks/{task.pk}/attempts/", {"outcome": "no_answer", "note": "voicemail"})
    assert response.status_code == 302 and response["Location"] == "/worklist/"
    assert "Call to S1-0001 recorded." in page.get("/worklist/").content.decode()
    in_tenant(world.alpha)
    assert ContactAttempt.objects.get(task=task).note == "voicemail"


def test_worklist_filters_and_bad_input(web, world, email_of, trial):
    page = web(world.alpha)
    _login(page, email_of("coordinator", "alpha"))
    assert page.get("/worklist/?bucket=nonsense&mode=%00&page=abc").status_code == 200
    assert page.post("/tasks/999999/attempts/", {"outcome": "reached"}).status_code == 404


def test_viewers_see_no_phone_and_cannot_record(web, world, email_of, trial):
    page = web(world.alpha)
    _login(page, email_of("viewer", "alpha"))
    assert "Record call" not in page.get("/worklist/").content.decode()
    assert page.post("/tasks/1/attempts/", {"outcome": "reached"}).status_code == 403


def test_subject_page_shows_the_timeline_and_respects_scoping(api, web, world, email_of, trial):
    subject = _enrol(api(world.alpha, email_of("coordinator", "alpha")), trial).json()
    page = web(world.alpha)
    page.cookies["django_language"] = "en"
    _login(page, email_of("coordinator", "alpha"))
    html = page.get(f"/subjects/{subject['id']}/").content.decode()
    assert html.count('class="status-upcoming"') == 3 and "D7" in html and "D90" in html
    assert "tel:13812345678" in html and "Back to my worklist" in html
    assert f'/subjects/{subject["id"]}/' in page.get("/worklist/").content.decode()
    other = web(world.alpha)
    _login(other, email_of("investigator", "alpha"))  # works at S2 only
    assert other.get(f"/subjects/{subject['id']}/").status_code == 404
    monitor = web(world.alpha)
    _login(monitor, email_of("monitor", "alpha"))
    masked = monitor.get(f"/subjects/{subject['id']}/").content.decode()
    assert "138****5678" in masked and "13812345678" not in masked
