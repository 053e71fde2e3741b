"""A data manager exports a study in a real browser (Chromium via Playwright) against a
real server: the export is started on the study's export page, its job page follows the
progress through the JSON API while the job runs (run here, as no Celery worker runs in
tests), then lists the file, and the downloaded bytes have the SHA-256 the page shows."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.core.cache import cache
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test import override_settings

from ecrf import services as ecrf_services
from ecrf.samples import VITALS
from exports.models import ExportFile, ExportJob, ExportStatus
from exports.services import export_run, progress_key
from sites import services as site_services
from studies import services as study_services
from tests.browser.server_env import committed, file_storages, isolated_media_and_queue
from tests.browser.test_ecrf_browser import _email, _login
from tests.browser.test_login_browser import browser, server  # noqa: F401  (fixtures)
from tests.ecrf.committed import committed_study_remove
from tests.ecrf.test_entries import GOOD
from tests.studies.test_enrolment import event

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
pytestmark = [pytest.mark.browser, pytest.mark.django_db]


@pytest.fixture(scope="module", autouse=True)
def server_env(tmp_path_factory) -> Iterator[Path]:  # type: ignore[no-untyped-def]
    """Before the server starts: its files and this process's go to a temporary folder,
    its tasks to a queue of their own (tests/browser/server_env.py)."""
    with isolated_media_and_queue(tmp_path_factory.mktemp("export-media"), "test-exports") as folder:
        yield folder


@pytest.fixture(scope="module")
def export_world(server_env, world, django_db_blocker):  # type: ignore[no-untyped-def]
    """Committed data the server sees: an active site, a study whose D3 visit (open
    today) collects VITALS, and one subject with the form saved."""
    day = dt.date.today() - dt.timedelta(days=3)
    with django_db_blocker.unblock(), override_settings(STORAGES=file_storages(server_env)):
        connection.set_tenant(world.alpha)
        site = site_services.site_create(code="EXP1", name="Export browser", institution="H", country_region="CN",
                                         principal_investigator="Dr X", target_enrolment=9, time_zone="Asia/Shanghai")
        site = site_services.site_update_checklist(
            site=site, ethics_approval_date=day, contract_signed=day, staff_trained=day,
            ethics_document=SimpleUploadedFile("e.pdf", b"%PDF", "application/pdf"))
        site = site_services.site_activate(site=site)
        coordinator = world.users[_email("coordinator")]
        site_services.site_staff_assign(site=site, tenant=world.alpha, user=coordinator, role="coordinator",
                                        is_primary=True)
        study = study_services.study_create(code="EXB", title="Export browser", study_type="registry",
                                            target_enrolment=9)
        study_services.schedule_publish(version=study_services.schedule_draft_save(
            study=study, events=[{**event("D3", 3, before=3, after=3), "forms": ["VITALS"]}]))
        study = study_services.study_activate(study=study)
        designer = ecrf_services.Actor(user_id=world.users[_email("data_manager")].pk, label=_email("data_manager"),
                                       role="data_manager")
        form = ecrf_services.form_publish(version=ecrf_services.form_draft_save(
            study=study, definition=VITALS, actor=designer), actor=designer).form
        subject = study_services.subject_enrol(study=study, site=site, consent_date=day, enrolment_date=day,
                                               language="en")
        ecrf_services.entry_save(
            subject=subject, task=subject.tasks.get(), form=form, base_version=0,
            values={**GOOD, "visit_date": dt.date.today().isoformat()},
            actor=ecrf_services.Actor(user_id=coordinator.pk, label=coordinator.email, role="coordinator"))
        connection.set_schema_to_public()
    try:
        yield {"study": study, "site": site, "subject": subject}
    finally:
        with django_db_blocker.unblock():
            connection.set_tenant(world.alpha)
            ExportFile.objects.filter(job__study=study).delete()
            ExportJob.objects.filter(study=study).delete()
            committed_study_remove(world, study=study, site=site)


def _percent(page) -> str:  # type: ignore[no-untyped-def]
    return str(page.inner_text("#export-percent")).replace("\xa0", " ").strip()


def test_export_started_on_the_page_is_followed_to_a_download_with_the_shown_checksum(
        browser, server, export_world, world, server_env):  # noqa: F811
    context, page, base = _login(browser, server, "data_manager", accept_downloads=True)
    study = export_world["study"]
    page.goto(f"{base}/studies/{study.pk}/exports/")
    assert page.locator("h1").inner_text().endswith("EXB")
    # Only CSV (long), only VITALS, and the visit-date range around today.
    for box in page.locator("input[name=formats]:not([disabled])").all():
        box.uncheck()
    page.check("input[name=formats][value=csv_long]")
    page.check("input[name=forms][value=VITALS]")
    page.fill("input[name=date_from]", (dt.date.today() - dt.timedelta(days=30)).isoformat())
    page.fill("input[name=date_to]", (dt.date.today() + dt.timedelta(days=1)).isoformat())
    with page.expect_navigation():
        page.click("#export-form button[type=submit]")
    assert "/exports/" in page.url and "/studies/" not in page.url
    job_id = int(page.url.rstrip("/").split("/")[-1])
    assert page.get_attribute("#export-job", "data-status") == "queued"
    assert page.get_attribute("#export-progress", "value") == "0" and _percent(page) == "0 %"
    job = committed(lambda: ExportJob.objects.get(pk=job_id), tenant=world.alpha)
    assert job.formats == ["csv_long"] and job.filters["forms"] == ["VITALS"] and job.filters["source"] == "web"

    # The worker picks it up and is halfway: the page follows through the API, no reload.
    def halfway() -> None:
        ExportJob.objects.filter(pk=job_id).update(status=ExportStatus.RUNNING)
        cache.set(progress_key(world.alpha.schema_name, job_id), {"done": 1, "total": 2}, 600)

    committed(halfway, tenant=world.alpha)
    page.wait_for_function("document.getElementById('export-progress').value === 50", timeout=15000)
    assert _percent(page) == "50 %" and page.inner_text("#export-status") == "Running"
    page.evaluate("window.__same_document = true")  # gone after a reload

    # The job runs to the end (what the Celery task does), into the server's storage.
    with override_settings(STORAGES=file_storages(server_env)):
        done = committed(lambda: export_run(job_id=job_id), tenant=world.alpha)
    assert done.status == ExportStatus.DONE
    page.wait_for_selector("#export-files tr.export-file", timeout=15000)
    assert page.evaluate("window.__same_document === undefined")  # reloaded to show the files
    assert page.get_attribute("#export-progress", "value") == "100" and _percent(page) == "100 %"
    assert page.inner_text("#export-status") == "Done"
    row = page.locator("#export-files tr.export-file")
    assert row.locator(".file-name").inner_text() == "EXB_long.csv"
    shown_sha = row.locator("code.file-sha").get_attribute("title")
    assert shown_sha and len(shown_sha) == 64
    assert shown_sha.startswith(row.locator("code.file-sha").inner_text().rstrip("…"))

    # Download: the link from the API, then the file itself.
    with page.expect_download() as info:
        row.locator("button.download").click()
    download = info.value
    assert download.suggested_filename == "EXB_long.csv"
    body = Path(download.path()).read_bytes()
    assert hashlib.sha256(body).hexdigest() == shown_sha
    records = list(csv.DictReader(io.StringIO(body.decode("utf-8"))))
    assert records and {(r["study"], r["site"], r["form"]) for r in records} == {("EXB", "EXP1", "VITALS")}
    assert int(row.locator(".file-rows").inner_text()) == len(records)
    manifest = [[cell.inner_text() for cell in tr.locator("td").all()]
                for tr in page.locator("#manifest-rows tbody tr").all()]
    assert manifest == [["VITALS", "EXP1", str(len(records))]]

    # Back on the study's page the job is listed as done.
    with page.expect_navigation():
        page.click(f"a[href='/studies/{study.pk}/exports/']")
    listed = page.locator(f"tr.export-row[data-job='{job_id}']")
    assert "Done" in listed.inner_text() and "100 %" in listed.inner_text().replace("\xa0", " ")
    context.close()
