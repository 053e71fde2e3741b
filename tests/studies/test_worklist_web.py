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
    assert page.get("/worklist/?bucket=nonsense&mode=%00&page=abc").status_code == 400
    assert page.get("/worklist/?page=abc").status_code == 200
    assert page.post("/tasks/999999/attempts/", {"outcome": "reached"}).status_code == 404


def test_a_bad_worklist_filter_is_said_at_its_field_and_the_good_ones_still_apply(api, web, world, email_of,
                                                                                   trial):
    _enrol(api(world.alpha, email_of("coordinator", "alpha")), trial)  # D7, D30, D90 by phone
    page = web(world.alpha)
    page.cookies["django_language"] = "en"
    _login(page, email_of("coordinator", "alpha"))
    response = page.get("/worklist/?bucket=nonsense&event=" + "A" * 30)
    html = response.content.decode()
    assert response.status_code == 400
    assert '<p class="error" id="id_bucket-error">Show: Select a valid choice.' in html
    assert '<p class="error" id="id_event-error">Event: Ensure this value has at most 20 characters' in html
    assert 'value="' + "A" * 30 + '"' in html  # what was typed stays in the field
    # The valid filter next to a bad one is applied, not dropped with it.
    narrowed = page.get("/worklist/?mode=clinic&event=" + "A" * 30).content.decode()
    assert "S1-0001" not in narrowed and "S1-0001" in page.get("/worklist/?mode=phone").content.decode()


def _first_task(in_tenant, world):  # type: ignore[no-untyped-def]
    from django.db import connection

    from studies.models import FollowUpTask

    in_tenant(world.alpha)
    task = FollowUpTask.objects.order_by("target_date").first()
    connection.set_schema_to_public()
    return task


def test_a_call_not_recorded_keeps_the_note_says_why_and_stays_on_the_filtered_page(api, web, world, email_of,
                                                                                     trial, in_tenant):
    _enrol(api(world.alpha, email_of("coordinator", "alpha")), trial)
    task = _first_task(in_tenant, world)
    page = web(world.alpha)
    page.cookies["django_language"] = "en"
    _login(page, email_of("coordinator", "alpha"))
    listed = page.get("/worklist/?mode=phone&event=D7").content.decode()
    assert '<input type="hidden" name="next" value="mode=phone&amp;event=D7">' in listed
    note = "long call summary " * 120  # 2,160 characters
    response = page.post(f"/tasks/{task.pk}/attempts/",
                         {"outcome": "reached", "note": note, "next": "mode=phone&event=D7"})
    html = response.content.decode()
    assert response.status_code == 400
    assert "Choose an outcome" not in html
    assert f'id="id_{task.pk}_note-error">Ensure this value has at most 2000 characters' in html
    assert note.strip() in html and "<details class=\"attempt\" open>" in html
    assert '<option value="reached" selected>' in html
    # Still the filtered list (D7 only), and the filter links lead back to the worklist.
    assert "D30" not in html and 'action="/worklist/"' in html
    in_tenant(world.alpha)
    assert not ContactAttempt.objects.exists()


def test_a_recorded_call_returns_to_the_same_filtered_page(api, web, world, email_of, trial, in_tenant):
    _enrol(api(world.alpha, email_of("coordinator", "alpha")), trial)
    task = _first_task(in_tenant, world)
    page = web(world.alpha)
    _login(page, email_of("coordinator", "alpha"))
    response = page.post(f"/tasks/{task.pk}/attempts/", {
        "outcome": "no_answer", "next": "bucket=upcoming&mode=phone&page=2&evil=https://example.org"})
    assert response.status_code == 302 and response["Location"] == "/worklist/?bucket=upcoming&mode=phone&page=2"
    # Only the worklist's own parameters are carried: `next` cannot lead elsewhere.
    response = page.post(f"/tasks/{task.pk}/attempts/", {"outcome": "no_answer", "next": "//example.org/x"})
    assert response["Location"] == "/worklist/"


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
