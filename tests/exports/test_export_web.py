"""The study export pages (session login): who may see them (403 for other roles, 404 for
another tenant's study or job), the form keeping what was chosen with messages next to
the fields, a started job, the paged job list in the tenant's time zone, the finished
job's files and manifest against the downloaded file, and retrying a failed job."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
from collections import Counter
from typing import Any

import pytest
from django.db import connection
from lxml import html as lxml_html

from exports import services
from exports.models import ExportFormat, ExportJob
from tests.conftest import PASSWORD
from tests.ecrf.test_entries import GOOD, crf  # noqa: F401 (fixture)

pytestmark = pytest.mark.django_db

NOT_EXPORTING = ("coordinator", "investigator", "monitor", "viewer")
EXPORTING = ("tenant_admin", "data_manager", "statistician")


@pytest.fixture
def page_as(web, world, email_of):  # type: ignore[no-untyped-def]
    """page_as(role, tenant=alpha) -> a logged-in English-speaking test client."""

    def make(role: str, tenant=None):  # type: ignore[no-untyped-def]
        tenant = tenant or world.alpha
        client = web(tenant)
        client.cookies["django_language"] = "en"
        assert client.post("/login/", {"email": email_of(role, tenant.slug), "password": PASSWORD}).status_code == 302
        return client

    return make


@pytest.fixture
def exported(crf):  # noqa: F811
    """One subject's saved D7 VITALS (with a repeating group) in alpha's study CRF."""
    values = {**GOOD, "meds": [{"med_name": "Aspirin", "med_dose": 100}, {"med_name": "Metformin, XR",
                                                                           "med_dose": 500}]}
    saved = crf["coordinator"].put(crf["url"], {"values": values, "version": 0}, format="json")
    assert saved.status_code == 200, saved.content
    return crf


def _tree(response) -> Any:  # type: ignore[no-untyped-def]
    return lxml_html.fromstring(response.content.decode())


def _jobs(world) -> list[ExportJob]:  # type: ignore[no-untyped-def]
    connection.set_tenant(world.alpha)
    try:
        return list(ExportJob.objects.order_by("pk"))
    finally:
        connection.set_schema_to_public()


def _job(world, **fields: Any) -> ExportJob:  # type: ignore[no-untyped-def]
    connection.set_tenant(world.alpha)
    try:
        return ExportJob.objects.create(**fields)
    finally:
        connection.set_schema_to_public()


def test_only_exporting_roles_see_the_pages(exported, page_as, world, email_of):
    url = f"/studies/{exported['study']}/exports/"
    job = _job(world, study_id=exported["study"], requested_by=world.users[email_of("data_manager", "alpha")],
               formats=["csv_long"], status="failed")
    for role in NOT_EXPORTING:
        client = page_as(role)
        assert client.get(url).status_code == 403, role
        assert client.post(url, {"formats": ["csv_long"]}).status_code == 403, role
        assert client.get(f"/exports/{job.pk}/").status_code == 403, role
        assert client.post(f"/exports/{job.pk}/retry/").status_code == 403, role
    for role in EXPORTING:
        response = page_as(role).get(url)
        assert response.status_code == 200, role
        assert _tree(response).xpath("//form[@id='export-form']"), role
    assert _jobs(world) == [job]  # nobody started anything


def test_anonymous_visitors_are_sent_to_log_in(exported, web, world):
    response = web(world.alpha).get(f"/studies/{exported['study']}/exports/")
    assert response.status_code == 302 and "/login/" in response["Location"]


def test_another_tenants_study_and_job_are_not_found(exported, page_as, world, email_of):
    job = _job(world, study_id=exported["study"], requested_by=world.users[email_of("data_manager", "alpha")],
               formats=["csv_long"], status="failed")
    beta = page_as("data_manager", world.beta)
    assert beta.get(f"/studies/{exported['study']}/exports/").status_code == 404
    assert beta.post(f"/studies/{exported['study']}/exports/", {"formats": ["csv_long"]}).status_code == 404
    assert beta.get(f"/exports/{job.pk}/").status_code == 404
    assert beta.post(f"/exports/{job.pk}/retry/").status_code == 404
    assert page_as("data_manager").get("/studies/999999/exports/").status_code == 404
    connection.set_tenant(world.beta)
    assert not ExportJob.objects.exists()
    connection.set_schema_to_public()


def test_formats_not_available_yet_are_shown_disabled(exported, page_as):
    tree = _tree(page_as("data_manager").get(f"/studies/{exported['study']}/exports/"))
    boxes = {box.get("value"): box for box in tree.xpath("//input[@name='formats']")}
    assert set(boxes) == set(ExportFormat.values)  # every format is listed
    available = {str(f) for f in services.AVAILABLE_FORMATS}
    disabled = {value for value, box in boxes.items() if box.get("disabled") is not None}
    assert disabled == set(ExportFormat.values) - available
    for value in disabled:
        assert "coming soon" in boxes[value].getparent().text_content()
    # The study's form and the visible site are offered.
    assert [b.get("value") for b in tree.xpath("//input[@name='forms']")] == ["VITALS"]
    assert [b.get("value") for b in tree.xpath("//input[@name='sites']")] == [str(exported["site"])]


def test_a_refused_form_keeps_the_choices_and_says_what_is_wrong_next_to_each_field(exported, page_as, world):
    client = page_as("data_manager")
    url = f"/studies/{exported['study']}/exports/"
    response = client.post(url, {"forms": ["VITALS"], "sites": [str(exported["site"])], "date_from": "2026-02-01",
                                 "date_to": "2026-01-01"})
    assert response.status_code == 400
    tree = _tree(response)
    assert "Choose at least one format." in tree.xpath("string(//fieldset[@id='formats-choices'])")
    assert "before the start date" in tree.xpath("string(//input[@name='date_to']/ancestor::div[1])")
    assert tree.xpath("//input[@name='forms' and @value='VITALS']/@checked")
    assert tree.xpath(f"//input[@name='sites' and @value='{exported['site']}']/@checked")
    assert tree.xpath("//input[@name='date_from']/@value") == ["2026-02-01"]
    assert tree.xpath("//input[@name='date_to']/@value") == ["2026-01-01"]
    # A format that is not available, a form of no study, a date that is not one.
    unavailable = [f for f in ExportFormat.values if f not in services.AVAILABLE_FORMATS]
    if unavailable:
        refused = client.post(url, {"formats": [unavailable[0]]})
        assert refused.status_code == 400
        assert "Not available yet" in _tree(refused).xpath("string(//fieldset[@id='formats-choices'])")
    refused = client.post(url, {"formats": ["csv_long"], "forms": ["NOPE"], "date_from": "yesterday"})
    assert refused.status_code == 400
    tree = _tree(refused)
    assert tree.xpath("//fieldset[@id='forms-choices']//p[@class='error']")
    assert tree.xpath("//input[@name='date_from']/ancestor::div[1]//p[@class='error']")
    assert tree.xpath("//input[@name='formats' and @value='csv_long']/@checked")
    assert tree.xpath("//input[@name='date_from']/@value") == ["yesterday"]
    assert _jobs(world) == []


def test_starting_an_export_queues_a_job_and_shows_its_page(exported, page_as, world, email_of):
    client = page_as("statistician")
    response = client.post(f"/studies/{exported['study']}/exports/", {
        "formats": ["csv_long"], "forms": ["VITALS"], "date_from": "2020-01-01"})
    assert response.status_code == 302
    [job] = _jobs(world)
    assert response["Location"] == f"/exports/{job.pk}/"
    assert job.formats == ["csv_long"] and job.status == "queued"
    assert job.requested_by_id == world.users[email_of("statistician", "alpha")].pk
    assert job.filters == {"forms": ["VITALS"], "sites": [], "date_from": "2020-01-01", "date_to": None,
                           "source": "web", "language": "en"}  # the page's language: data problems say it
    page = client.get(response["Location"])
    assert page.status_code == 200
    tree = _tree(page)
    assert tree.xpath("//*[@id='export-job']/@data-status") == ["queued"]
    assert tree.xpath("//*[@id='export-job']/@data-api") == [f"/api/v1/exports/{job.pk}/"]
    assert tree.xpath("//progress[@id='export-progress']/@value") == ["0"]
    assert tree.xpath("string(//*[@id='export-percent'])").strip() == "0 %"
    assert not tree.xpath("//*[@id='export-files']") and not tree.xpath("//*[@id='retry-button']")


def test_the_job_list_is_newest_first_paged_and_in_the_tenants_time_zone(exported, page_as, world, email_of):
    manager = world.users[email_of("data_manager", "alpha")]
    statistician = world.users[email_of("statistician", "alpha")]
    start = dt.datetime(2026, 1, 1, 20, 30, tzinfo=dt.UTC)
    made = [_job(world, study_id=exported["study"], requested_by=manager if i != 3 else statistician,
                 formats=["csv_long"], status="done", created=start + dt.timedelta(minutes=i)) for i in range(25)]
    newest_first = [j.pk for j in sorted(made, key=lambda j: j.created, reverse=True)]
    client = page_as("data_manager")
    url = f"/studies/{exported['study']}/exports/"
    first = _tree(client.get(url))
    rows = first.xpath("//tr[contains(@class,'export-row')]")
    assert [int(r.get("data-job")) for r in rows] == newest_first[:20]
    assert first.xpath("//nav[@class='pager']//a[@rel='next']/@href") == ["?page=2#export-jobs"]
    # Alpha keeps Asia/Shanghai time: 20:30 UTC on 1 January is 04:30 on the 2nd there.
    oldest = made[0]
    second = _tree(client.get(url + "?page=2"))
    rows = second.xpath("//tr[contains(@class,'export-row')]")
    assert [int(r.get("data-job")) for r in rows] == newest_first[20:]
    assert rows[-1].xpath("string(.//time)") == "2026-01-02 04:30" and int(rows[-1].get("data-job")) == oldest.pk
    assert rows[-1].xpath(".//a/@href") == [f"/exports/{oldest.pk}/"]
    assert second.xpath("//nav[@class='pager']//a[@rel='prev']/@href") == ["?page=1#export-jobs"]
    # A statistician sees the jobs they started only.
    mine = _tree(page_as("statistician").get(url)).xpath("//tr[contains(@class,'export-row')]/@data-job")
    assert mine == [str(made[3].pk)]
    assert page_as("statistician").get(f"/exports/{made[4].pk}/").status_code == 404


def test_a_finished_job_lists_its_files_and_manifest_like_the_downloaded_file(exported, page_as, world, email_of):
    client = page_as("data_manager")
    response = client.post(f"/studies/{exported['study']}/exports/", {"formats": ["csv_long"]})
    job_id = int(response["Location"].strip("/").split("/")[-1])
    connection.set_tenant(world.alpha)
    services.export_run(job_id=job_id)
    connection.set_schema_to_public()
    tree = _tree(client.get(f"/exports/{job_id}/"))
    assert tree.xpath("//*[@id='export-job']/@data-status") == ["done"]
    assert tree.xpath("//progress[@id='export-progress']/@value") == ["100"]
    [row] = tree.xpath("//tr[contains(@class,'export-file')]")
    full_sha = row.xpath(".//code[contains(@class,'file-sha')]/@title")[0]
    shown = row.xpath("string(.//code[contains(@class,'file-sha')])")
    assert shown.rstrip("…") == full_sha[:len(shown.rstrip("…"))] and len(shown.rstrip("…")) < 64
    # Download through the API with the page's session, as the page's button does.
    link = row.xpath(".//button[contains(@class,'download')]/@data-link")[0]
    token = client.cookies["csrftoken"].value if "csrftoken" in client.cookies else ""
    linked = client.post(link, HTTP_X_CSRFTOKEN=token)
    assert linked.status_code == 200, linked.content
    download = client.get(linked.json()["url"])
    body = b"".join(download.streaming_content)
    assert hashlib.sha256(body).hexdigest() == full_sha
    records = list(csv.DictReader(io.StringIO(body.decode("utf-8"))))
    assert row.xpath("string(.//td[@class='file-name'])") == "CRF_long.csv"
    assert int(row.xpath("string(.//td[@class='file-rows'])")) == len(records)
    # The manifest's table adds up to the rows of the file, per form and site.
    table = [tuple(td.text_content() for td in tr.xpath("td"))
             for tr in tree.xpath("//table[@id='manifest-rows']/tbody/tr")]
    assert Counter({(form, site): int(n) for form, site, n in table}) == Counter(
        (r["form"], r["site"]) for r in records)
    versions = [tuple(td.text_content() for td in tr.xpath("td"))
                for tr in tree.xpath("//table[@id='manifest-versions']/tbody/tr")]
    assert versions == sorted({(r["form"], r["form_version"]) for r in records})
    assert tree.xpath("//a[@href=$u]", u=f"/studies/{exported['study']}/exports/")  # the way back


def test_retry_requeues_a_failed_job_once_for_exporting_roles(exported, page_as, world, email_of, monkeypatch,
                                                              django_capture_on_commit_callbacks):
    from exports import tasks

    queued: list[int] = []
    monkeypatch.setattr(tasks.export_run_task, "delay", lambda job_id: queued.append(job_id))
    manager = world.users[email_of("data_manager", "alpha")]
    failed = _job(world, study_id=exported["study"], requested_by=manager, formats=["csv_long"], status="failed",
                  error="OperationalError")
    done = _job(world, study_id=exported["study"], requested_by=manager, formats=["csv_long"], status="done")
    page = _tree(page_as("data_manager").get(f"/exports/{failed.pk}/"))
    assert "failed" in page.xpath("string(//*[@id='export-failed'])")
    assert page.xpath("//form[@action=$u]//button[@id='retry-button']", u=f"/exports/{failed.pk}/retry/")
    assert page_as("coordinator").post(f"/exports/{failed.pk}/retry/").status_code == 403
    assert page_as("statistician").post(f"/exports/{failed.pk}/retry/").status_code == 404  # not theirs
    client = page_as("data_manager")
    # A GET (the sign-in page's way back after a session ended mid-click) shows the job, queues nothing.
    shown = client.get(f"/exports/{failed.pk}/retry/")
    assert shown.status_code == 302 and shown["Location"] == f"/exports/{failed.pk}/"
    assert queued == []
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/exports/{failed.pk}/retry/")
    assert response.status_code == 302 and response["Location"] == f"/exports/{failed.pk}/"
    assert queued == [failed.pk]
    with django_capture_on_commit_callbacks(execute=True):
        client.post(f"/exports/{failed.pk}/retry/")  # a second click: it is queued already
        again = client.post(f"/exports/{done.pk}/retry/", follow=True)
    assert queued == [failed.pk]
    assert "Only a failed export can be retried." in again.content.decode()
    states = {j.pk: (j.status, j.error) for j in _jobs(world)}
    assert states == {failed.pk: ("queued", ""), done.pk: ("done", "")}


def test_the_pages_speak_simplified_chinese(exported, page_as, world):
    client = page_as("data_manager")
    client.cookies["django_language"] = "zh-hans"
    tree = _tree(client.get(f"/studies/{exported['study']}/exports/"))
    assert tree.xpath("string(//h1)").startswith("导出数据")
    assert tree.xpath("string(//fieldset[@id='formats-choices']/legend)") == "格式"
    response = client.post(f"/studies/{exported['study']}/exports/", {"formats": ["csv_long"]})
    tree = _tree(client.get(response["Location"]))
    assert "导出 #" in tree.xpath("string(//h1)") and tree.xpath("string(//*[@id='export-status'])") == "排队中"


def test_the_navigation_leads_exporting_roles_to_the_export_pages(exported, page_as):
    client, study_id, other = page_as("data_manager"), exported["study"], page_as("coordinator")
    page = client.get("/worklist/", follow=True)
    assert b'href="/exports/"' in page.content
    landing = client.get("/exports/")
    assert landing.status_code == 302 and landing["Location"] == f"/studies/{study_id}/exports/"
    assert b'href="/exports/"' not in other.get("/worklist/", follow=True).content
    assert other.get("/exports/").status_code == 403


def test_a_failed_run_shows_a_data_problem_and_never_an_unexpected_errors_message(exported, page_as, world,
                                                                                   email_of, monkeypatch):
    from exports.tabular import ExportDataError
    from exports.tasks import export_run_task

    manager = world.users[email_of("data_manager", "alpha")]

    def refuse(scope: Any, out: Any) -> int:
        raise ExportDataError("long.csv, subject A-001, item notes: too long for this format.",
                              dataset="long.csv", variable="notes", row="A-001")

    def crash(scope: Any, out: Any) -> int:
        raise RuntimeError("Zhang San 13800138000")  # what an unexpected error's message could hold

    monkeypatch.setitem(services.WRITERS, ExportFormat.CSV_LONG, ("long.csv", refuse))
    data_job = _job(world, study_id=exported["study"], requested_by=manager, formats=["csv_long"])
    connection.set_tenant(world.alpha)
    # A data problem is not retried (the same data would fail again) and is told as it is.
    assert export_run_task.apply(args=[data_job.pk]).get() == {"job": data_job.pk, "status": "failed"}
    data_job.refresh_from_db()
    assert (data_job.status, data_job.error_is_data, data_job.attempts) == ("failed", True, 1)
    monkeypatch.setitem(services.WRITERS, ExportFormat.CSV_LONG, ("long.csv", crash))
    crash_job = ExportJob.objects.create(study_id=exported["study"], requested_by=manager, formats=["csv_long"])
    with pytest.raises(RuntimeError):
        services.export_run(job_id=crash_job.pk)
    crash_job.refresh_from_db()
    assert (crash_job.status, crash_job.error, crash_job.error_is_data) == ("failed", "RuntimeError", False)
    connection.set_schema_to_public()

    client = page_as("data_manager")
    shown = _tree(client.get(f"/exports/{data_job.pk}/")).xpath("string(//*[@id='export-failed'])")
    assert "cannot be written in this format" in shown and "subject A-001, item notes: too long" in shown
    shown = _tree(client.get(f"/exports/{crash_job.pk}/")).xpath("string(//*[@id='export-failed'])")
    assert "unexpected error" in shown and "RuntimeError" in shown and "Zhang San" not in shown
    state = client.get(f"/api/v1/exports/{crash_job.pk}/").json()
    assert state["error"] == "RuntimeError" and state["error_is_data"] is False and "Zhang" not in str(state)


@pytest.mark.parametrize(("language", "expected"), [
    ("en", "an Excel cell holds at most 32767"), ("zh-hans", "Excel 单元格最多容纳 32767 个")])
def test_a_data_problem_is_worded_in_the_language_of_whoever_asked(exported, page_as, world, email_of, language,
                                                                   expected):
    """The worker has no request: the job carries the language its page or API call was in."""
    manager = world.users[email_of("data_manager", "alpha")]
    job = _job(world, study_id=exported["study"], requested_by=manager, formats=["xlsx"],
               filters={"language": language})
    connection.set_tenant(world.alpha)
    with connection.cursor() as cursor:  # a value no Excel cell holds (validation bypassed on purpose)
        cursor.execute("UPDATE ecrf_entry SET values = values || %s::jsonb",
                       [json.dumps({"notes": "x" * 32768})])
    with pytest.raises(Exception):  # noqa: B017 - the task records it and re-raises
        services.export_run(job_id=job.pk)
    job.refresh_from_db()
    connection.set_schema_to_public()
    assert job.error_is_data and expected in job.error, job.error
    shown = _tree(page_as("data_manager").get(f"/exports/{job.pk}/")).xpath("string(//*[@id='export-failed'])")
    assert expected in shown


def test_a_job_whose_worker_died_is_shown_failed_with_retry(exported, page_as, world, email_of, in_tenant):
    """"Running" while no run holds the job's lock means its worker process ended: the
    page says so and offers Retry, instead of waiting for ever. A job that a live worker
    runs (it holds the lock, here from another real database session) stays running."""
    import psycopg2

    from exports import services

    manager = world.users[email_of("data_manager", "alpha")]
    from django.utils import timezone

    minute_ago = timezone.now() - dt.timedelta(minutes=1)
    lost = _job(world, study_id=exported["study"], requested_by=manager, formats=["csv_long"], status="running",
                attempts=1, started_at=minute_ago)
    live = _job(world, study_id=exported["study"], requested_by=manager, formats=["csv_long"], status="running",
                attempts=1, started_at=minute_ago)
    just_started = _job(world, study_id=exported["study"], requested_by=manager, formats=["csv_long"],
                        status="running", attempts=1, started_at=timezone.now())
    worker = psycopg2.connect(**connection.get_connection_params())
    try:
        with worker.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(('x' || substr(md5(%s), 1, 16))::bit(64)::bigint)",
                           [f"suifang:export:{world.alpha.schema_name}:{live.pk}"])
        client = page_as("data_manager")
        page = _tree(client.get(f"/exports/{lost.pk}/"))
        assert "worker process" in page.xpath("string(//*[@id='export-failed'])")
        assert page.xpath("//button[@id='retry-button']")
        assert not _tree(client.get(f"/exports/{live.pk}/")).xpath("//*[@id='export-failed']")
        assert not _tree(client.get(f"/exports/{just_started.pk}/")).xpath("//*[@id='export-failed']")
        in_tenant(world.alpha)
        assert ExportJob.objects.get(pk=lost.pk).status == "failed"
        assert ExportJob.objects.get(pk=live.pk).status == "running"
        connection.set_schema_to_public()
    finally:
        worker.close()
    # Redelivered after its worker died: run again (earlier attempts that failed otherwise do not count) ...
    redelivered = _job(world, study_id=exported["study"], requested_by=manager, formats=["csv_long"],
                       status="running", attempts=5, started_at=minute_ago)
    in_tenant(world.alpha)
    assert services.export_run(job_id=redelivered.pk).status == "done"
    assert ExportJob.objects.get(pk=redelivered.pk).lost_runs == 1
    # ... but a job whose runs keep ending with their worker stops instead of looping.
    connection.set_schema_to_public()
    again = _job(world, study_id=exported["study"], requested_by=manager, formats=["csv_long"], status="running",
                 attempts=7, lost_runs=services.MAX_LOST_RUNS - 1)
    in_tenant(world.alpha)
    ended = services.export_run(job_id=again.pk)
    assert (ended.status, ended.error, ended.attempts, ended.lost_runs) == (
        "failed", "WorkerLost", 7, services.MAX_LOST_RUNS)
    assert services.export_run(job_id=again.pk).attempts == 7  # a further redelivery does not run it either
    # The user's Retry starts afresh.
    connection.set_schema_to_public()
    client.post(f"/exports/{again.pk}/retry/")
    in_tenant(world.alpha)
    retried = ExportJob.objects.get(pk=again.pk)
    assert (retried.status, retried.lost_runs) == ("queued", 0)
    assert services.export_run(job_id=again.pk).status == "done"


def test_a_broker_that_is_down_fails_the_job_with_a_message_not_a_500(
        exported, world, email_of, in_tenant, api, page_as, broker_down, django_capture_on_commit_callbacks):
    """Start and Retry while the task queue cannot be reached (a real refused connection):
    a 503 error that says to try again, and the job failed, so its page offers Retry,
    never "queued" for ever. (Views run without a transaction of their own in production,
    so the publish runs inside the request; in a test it waits for the test's commit.)"""
    from django.utils import translation

    from config.errors import DomainError

    manager = api(world.alpha, email_of("data_manager", "alpha"))
    with django_capture_on_commit_callbacks() as publish:
        accepted = manager.post(f"/api/v1/studies/{exported['study']}/exports/", {"formats": ["csv_long"]},
                                format="json")
    assert accepted.status_code == 202 and len(publish) == 1
    with pytest.raises(DomainError) as refused, translation.override("en"):
        publish[0]()
    assert refused.value.status_code == 503 and refused.value.code == "queue_unavailable"
    assert "cannot be reached" in str(refused.value.message)
    in_tenant(world.alpha)
    job = ExportJob.objects.get()
    assert (job.status, job.error) == ("failed", "QueueUnavailable")
    connection.set_schema_to_public()
    assert "retry it in a minute" in page_as("data_manager").get(f"/exports/{job.pk}/").content.decode()
    # Retry while it is still down: failed again, not stuck; the page still offers Retry.
    with django_capture_on_commit_callbacks() as publish:
        assert page_as("data_manager").post(f"/exports/{job.pk}/retry/").status_code == 302
    with pytest.raises(DomainError):
        publish[0]()
    in_tenant(world.alpha)
    assert ExportJob.objects.get(pk=job.pk).status == "failed"
