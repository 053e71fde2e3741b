"""The consortium pages in a real browser (Chromium via Playwright) against a real server.

Public host: a coordinator signs in (a wrong password first), reads the consortium, starts
a pooled run that is listed as queued, the run is carried out (what the Celery task does)
and the page then lists its files, downloaded with the bytes in storage; a statistician on
a phone has no start button and downloads; a member of another consortium gets a 403 page
that leads back. Tenant host: the administrator accepts the agreement (a refused form
first) and withdraws it after a confirmation."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.files.storage import default_storage
from django.db import connection
from django.test import override_settings

from ecrf import services as ecrf_services
from ecrf.models import Entry, FormDefinition, Query
from ecrf.samples import VITALS
from exports.pooling.aggregate import pooled_run_execute
from exports.pooling.models import Consortium, ConsortiumMember, DataSharingAgreement, PooledRun
from sites import services as site_services
from sites.models import Site
from studies import services as study_services
from studies.models import Study, Subject
from tenants.models import User
from tests.browser.server_env import committed, file_storages, isolated_media_and_queue
from tests.browser.test_login_browser import browser, server  # noqa: F401  (fixtures)
from tests.conftest import PASSWORD
from tests.ecrf.test_entries import GOOD
from tests.studies.test_enrolment import event

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
pytestmark = [pytest.mark.browser, pytest.mark.django_db]

SLUG = "cbr-heart"
LEAD, STATS, OUTSIDER = "lead@cbr.example.org", "stats@cbr.example.org", "stats@cbr-other.example.org"
OLD_RUNS = 20  # with the fixture's real run, more than one page of runs
PHONE = {"width": 375, "height": 740}
# Elements of <main> that stick out to the right of the window (a phone must not scroll sideways).
TOO_WIDE = ("Array.from(document.querySelectorAll('main *'))"
            ".filter(e => e.getBoundingClientRect().right > window.innerWidth + 1)"
            ".map(e => e.tagName + '.' + e.className)")


@pytest.fixture(scope="module", autouse=True)
def server_env(tmp_path_factory) -> Iterator[Path]:  # type: ignore[no-untyped-def]
    """Before the server starts: its files and this process's go to a temporary folder,
    its tasks to a queue of their own (tests/browser/server_env.py)."""
    with isolated_media_and_queue(tmp_path_factory.mktemp("pooling-media"), "test-pooling") as folder:
        yield folder


def _alpha_study(world: Any) -> dict[str, Any]:
    """In alpha: an active site, study CBR whose D3 visit collects VITALS, and four
    subjects in their forties with the form saved (enough to pool with k = 2)."""
    day = dt.date.today() - dt.timedelta(days=3)
    site = site_services.site_create(code="CBR1", name="Pooling browser", institution="H", country_region="CN",
                                     principal_investigator="Dr P", target_enrolment=9, time_zone="Asia/Shanghai")
    site = site_services.site_update_checklist(site=site, ethics_approval_date=day, contract_signed=day,
                                               staff_trained=day, ethics_document=_pdf())
    site = site_services.site_activate(site=site)
    coordinator = world.users["coordinator@alpha.example.org"]
    site_services.site_staff_assign(site=site, tenant=world.alpha, user=coordinator, role="coordinator",
                                    is_primary=True)
    study = study_services.study_create(code="CBR", title="Pooling browser", study_type="registry",
                                        target_enrolment=9)
    study_services.schedule_publish(version=study_services.schedule_draft_save(
        study=study, events=[{**event("D3", 3, before=3, after=3), "forms": ["VITALS"]}]))
    study = study_services.study_activate(study=study)
    manager = world.users["data_manager@alpha.example.org"]
    designer = ecrf_services.Actor(user_id=manager.pk, label=manager.email, role="data_manager")
    form = ecrf_services.form_publish(version=ecrf_services.form_draft_save(
        study=study, definition=VITALS, actor=designer), actor=designer).form
    actor = ecrf_services.Actor(user_id=coordinator.pk, label=coordinator.email, role="coordinator")
    for n in range(4):
        subject = study_services.subject_enrol(study=study, site=site, consent_date=day, enrolment_date=day,
                                               language="en", birth_date=f"198{n}-05-0{n + 1}")
        ecrf_services.entry_save(subject=subject, task=subject.tasks.get(), form=form, base_version=0,
                                 values={**GOOD, "visit_date": dt.date.today().isoformat(), "weight": f"7{n}.5"},
                                 actor=actor)
    return {"site": site, "study": study}


def _pdf() -> Any:
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile("e.pdf", b"%PDF", "application/pdf")


@pytest.fixture(scope="module")
def pool_world(server_env, world, django_db_blocker):  # type: ignore[no-untyped-def]
    """Committed data the server sees: study CBR in alpha (with data) and in beta
    (without); consortium cbr-heart where alpha takes part and beta has withdrawn; a
    coordinator, a statistician, a statistician of another consortium; old failed runs
    and one real finished run, its files in the server's storage."""
    with django_db_blocker.unblock(), override_settings(STORAGES=file_storages(server_env)):
        connection.set_tenant(world.alpha)
        alpha = _alpha_study(world)
        connection.set_tenant(world.beta)
        beta_study = study_services.study_create(code="CBR", title="Pooling browser (beta)", study_type="registry",
                                                 target_enrolment=9)
        connection.set_schema_to_public()
        consortium = Consortium.objects.create(
            slug=SLUG, name="Heart failure registry", coordinating_organisation="Beijing CDC",
            protocol="Adults with heart failure, followed for a year.",
            common_data_elements=[{"form": "VITALS", "items": ["visit_date", "weight", "height", "sex"]}],
            quasi_identifiers=["age"], k=2)
        other = Consortium.objects.create(slug="cbr-other", name="Other registry", coordinating_organisation="X")
        admin_alpha, admin_beta = (world.users[f"tenant_admin@{t}.example.org"] for t in ("alpha", "beta"))
        DataSharingAgreement.objects.create(consortium=consortium, tenant=world.alpha, study_code="CBR",
                                            fields=["VITALS.height", "VITALS.sex", "VITALS.visit_date",
                                                    "VITALS.weight"], accepted_by=admin_alpha)
        long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=40)
        DataSharingAgreement.objects.create(consortium=consortium, tenant=world.beta, study_code="CBR",
                                            fields=["VITALS.weight"], accepted_by=admin_beta, accepted_at=long_ago,
                                            status="withdrawn", withdrawn_at=long_ago + dt.timedelta(days=2),
                                            withdrawn_by=admin_beta)
        users = {}
        for email, target, role in ((LEAD, consortium, "coordinator"), (STATS, consortium, "statistician"),
                                    (OUTSIDER, other, "statistician")):
            users[email] = User.objects.create_user(email=email, password=PASSWORD)
            ConsortiumMember.objects.create(consortium=target, user=users[email], role=role)
        for n in range(OLD_RUNS):
            PooledRun.objects.create(consortium=consortium, requested_by=users[LEAD], status="failed",
                                     error="POOLING_SECRET is not set",
                                     created=long_ago + dt.timedelta(hours=n))
        finished = pooled_run_execute(run_id=PooledRun.objects.create(consortium=consortium,
                                                                      requested_by=users[LEAD]).pk)
        assert finished.status == "done", finished.error
    try:
        yield {"consortium": consortium, "finished": finished, "users": users, "alpha": alpha}
    finally:
        with django_db_blocker.unblock():
            connection.set_schema_to_public()
            PooledRun.objects.filter(consortium__in=[consortium, other]).delete()
            DataSharingAgreement.objects.filter(consortium__in=[consortium, other]).delete()
            ConsortiumMember.objects.filter(consortium__in=[consortium, other]).delete()
            Consortium.objects.filter(pk__in=[consortium.pk, other.pk]).delete()
            connection.set_tenant(world.beta)
            Study.objects.filter(pk=beta_study.pk).delete()
            connection.set_tenant(world.alpha)
            study = alpha["study"]
            Query.objects.filter(subject__study=study).delete()
            Entry.objects.filter(subject__study=study).delete()
            FormDefinition.objects.filter(study=study).delete()
            Subject.objects.filter(study=study).delete()
            Study.objects.filter(pk=study.pk).delete()
            Site.objects.filter(pk=alpha["site"].pk).delete()
            # From a tenant schema: the delete collector also looks at tenant tables that
            # point to users (none of these three has a row there), absent from public.
            User.objects.filter(email__in=[LEAD, STATS, OUTSIDER]).delete()
            connection.set_schema_to_public()
            connection.close()


def _context(browser, host: str, **options: Any):  # type: ignore[no-untyped-def]  # noqa: F811
    context = browser.new_context(locale="en-US", **options)
    context.add_cookies([{"name": "django_language", "value": "en", "domain": host, "path": "/"}])
    return context


def _sign_in(browser, server: int, email: str, **options: Any):  # type: ignore[no-untyped-def]  # noqa: F811
    context = _context(browser, "localhost", **options)
    page = context.new_page()
    base = f"http://localhost:{server}"
    page.goto(f"{base}/consortia/")
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", PASSWORD)
    with page.expect_navigation():
        page.click("button[type=submit]")
    assert page.url == f"{base}/consortia/"
    return context, page, base


def _run_row(page, run_id: int):  # type: ignore[no-untyped-def]
    return page.locator(f"tr.run-row[data-run='{run_id}']")


def test_a_coordinator_signs_in_starts_a_run_and_downloads_its_files(
        browser, server, pool_world, server_env):  # noqa: F811
    context = _context(browser, "localhost", accept_downloads=True)
    page = context.new_page()
    base = f"http://localhost:{server}"
    page.goto(f"{base}/consortia/")
    assert page.url == f"{base}/consortia/login/?next=%2Fconsortia%2F"
    # A wrong password: a clear message, and the e-mail as typed.
    page.fill("input[name=email]", LEAD)
    page.fill("input[name=password]", "not-the-password")
    with page.expect_navigation():
        page.click("button[type=submit]")
    assert "incorrect" in page.locator("p.error").inner_text()
    assert page.input_value("input[name=email]") == LEAD
    page.fill("input[name=password]", PASSWORD)
    with page.expect_navigation():
        page.click("button[type=submit]")
    assert page.url == f"{base}/consortia/"

    # The list, then the consortium.
    with page.expect_navigation():
        page.click("#consortia a:has-text('Heart failure registry')")
    assert page.url == f"{base}/consortia/{SLUG}/"
    assert page.locator("h1").inner_text() == "Heart failure registry"
    assert page.inner_text("#coordinating-organisation") == "Beijing CDC"
    assert page.inner_text("#your-role") == "Consortium coordinator"
    assert "followed for a year" in page.inner_text("#protocol")
    assert page.locator("#common-data-elements code").all_inner_texts() == ["visit_date", "weight", "height", "sex"]
    participants = {row.get_attribute("data-tenant"): row.inner_text()
                    for row in page.locator("tr.participant").all()}
    assert list(participants) == ["alpha", "beta"]
    assert "Alpha Org" in participants["alpha"] and "Active" in participants["alpha"]
    assert "Beta Org" in participants["beta"] and "Withdrawn" in participants["beta"]

    # The finished run of the fixture: k reached and its files, as its manifest says.
    finished = pool_world["finished"]
    row = _run_row(page, finished.pk)
    assert row.locator(".run-status").inner_text() == "Done"
    assert row.locator(".run-k").inner_text() == str(finished.manifest["deidentification"]["achieved_k"])
    assert int(row.locator(".run-k").inner_text()) >= pool_world["consortium"].k
    names = [f["name"] for f in finished.manifest["files"]]
    assert row.locator("a.file-link").all_inner_texts() == names

    # Start a run: listed at the top as queued, with a message naming it.
    with page.expect_navigation():
        page.click("#start-run button[type=submit]")
    new_run = committed(lambda: PooledRun.objects.filter(consortium=pool_world["consortium"]).latest("created"))
    assert new_run.pk != finished.pk and new_run.status == "queued"
    assert f"Pooled run #{new_run.pk} queued." in page.inner_text("ul.messages")
    assert page.locator("tr.run-row").first.get_attribute("data-run") == str(new_run.pk)
    assert _run_row(page, new_run.pk).locator(".run-status").inner_text() == "Queued"
    assert _run_row(page, new_run.pk).locator("a.file-link").count() == 0

    # The worker carries it out (what pooled_run_task does); the page then shows its files.
    with override_settings(STORAGES=file_storages(server_env)):
        done = committed(lambda: pooled_run_execute(run_id=new_run.pk))
    assert done.status == "done", done.error
    # The page follows the run by itself (it asks the API while a run is queued or running).
    page.wait_for_selector(f'tr.run-row[data-run="{new_run.pk}"][data-status="done"]', timeout=20000)
    row = _run_row(page, new_run.pk)
    assert row.locator(".run-status").inner_text() == "Done"
    link = row.locator("a.file-link", has_text="pooled_long.csv")
    with page.expect_download() as info:
        link.click()
    download = info.value
    assert download.suggested_filename == "pooled_long.csv"
    body = Path(download.path()).read_bytes()
    stored = next(f for f in done.manifest["files"] if f["name"] == "pooled_long.csv")
    assert hashlib.sha256(body).hexdigest() == stored["sha256"]
    with override_settings(STORAGES=file_storages(server_env)), default_storage.open(stored["storage"], "rb") as handle:
        assert body == handle.read()

    # Paging: the old runs are on the next page, which leads back.
    assert page.locator("tr.run-row").count() == 20
    with page.expect_navigation():
        page.click(".pager a[rel=next]")
    assert page.locator("tr.run-row").count() == OLD_RUNS + 2 - 20
    assert page.locator("tr.run-row .run-status").all_inner_texts() == ["Failed"] * (OLD_RUNS + 2 - 20)
    with page.expect_navigation():
        page.click(".pager a[rel=prev]")
    assert page.locator("tr.run-row").first.get_attribute("data-run") == str(new_run.pk)

    # Back to the list, then sign out: the pages ask for a sign-in again.
    with page.expect_navigation():
        page.click("#back-to-list")
    assert page.url == f"{base}/consortia/"
    with page.expect_navigation():
        page.click("#sign-out button")
    assert "/consortia/login/" in page.url and "You have signed out." in page.inner_text("ul.messages")
    page.goto(f"{base}/consortia/{SLUG}/")
    assert page.url.startswith(f"{base}/consortia/login/")
    context.close()


def test_a_statistician_on_a_phone_reads_and_downloads_but_starts_nothing(
        browser, server, pool_world):  # noqa: F811
    context, page, _base = _sign_in(browser, server, STATS, viewport=PHONE, accept_downloads=True)
    assert page.evaluate(TOO_WIDE) == []
    with page.expect_navigation():
        page.click(f"#consortia a[href='/consortia/{SLUG}/']")
    assert page.inner_text("#your-role") == "Consortium statistician"
    assert page.locator("#start-run").count() == 0
    assert page.evaluate(TOO_WIDE) == []
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    finished = pool_world["finished"]
    with page.expect_download() as info:
        _run_row(page, finished.pk).locator("a.file-link", has_text="pooled_subjects.csv").click()
    body = Path(info.value.path()).read_bytes()
    shown = next(f for f in finished.manifest["files"] if f["name"] == "pooled_subjects.csv")
    assert hashlib.sha256(body).hexdigest() == shown["sha256"]
    context.close()


def test_a_member_of_another_consortium_gets_a_403_page_with_a_way_back(browser, server, pool_world):  # noqa: F811
    context, page, base = _sign_in(browser, server, OUTSIDER)
    assert page.locator("#consortia a").all_inner_texts() == ["Other registry"]
    response = page.goto(f"{base}/consortia/{SLUG}/")
    assert response is not None and response.status == 403
    assert page.locator("h1").inner_text() == "Not allowed"
    assert "Heart failure registry" not in page.content()
    with page.expect_navigation():
        page.click("#back-to-list")
    assert page.url == f"{base}/consortia/"
    # Nor do its files download.
    file_url = f"{base}/api/v1/consortia/{SLUG}/runs/{pool_world['finished'].pk}/files/pooled_long.csv/"
    assert context.request.get(file_url).status == 403
    context.close()


def test_a_tenant_admin_accepts_and_withdraws_the_agreement(browser, server, pool_world):  # noqa: F811
    context = _context(browser, "beta.localhost", viewport=PHONE)
    page = context.new_page()
    base = f"http://beta.localhost:{server}"
    page.goto(f"{base}/login/")
    page.fill("input[name=email]", "tenant_admin@beta.example.org")
    page.fill("input[name=password]", PASSWORD)
    with page.expect_navigation():
        page.click("button[type=submit]")
    # From the navigation, where the export page is.
    with page.expect_navigation():
        page.click("header nav a[href='/consortia/']")
    listed = page.locator(f"tr.consortium-row[data-slug='{SLUG}']")
    assert listed.locator(".agreement-status").inner_text() == "Withdrawn"
    assert page.evaluate(TOO_WIDE) == []
    with page.expect_navigation():
        listed.locator("a").click()
    assert page.inner_text("#agreement-status") == "Withdrawn"
    assert page.locator("#agreement-history tbody tr").count() == 1  # beta's own, not alpha's

    # No field chosen: the message next to the fields, the study still chosen.
    page.select_option("#id_study", "CBR")
    with page.expect_navigation():
        page.click("#accept-form button[type=submit]")
    assert page.inner_text("#items-error") == "Choose at least one field to share."
    assert page.input_value("#id_study") == "CBR"
    assert page.evaluate(TOO_WIDE) == []
    # Two fields: accepted, listed as active.
    page.check("#items-choices input[value='VITALS.weight']")
    page.check("#items-choices input[value='VITALS.sex']")
    with page.expect_navigation():
        page.click("#accept-form button[type=submit]")
    assert page.inner_text("#agreement-status") == "Active"
    assert page.locator("#agreement-fields code").all_inner_texts() == ["VITALS.sex", "VITALS.weight"]
    assert page.locator("#accept-form").count() == 0
    saved = committed(lambda: list(DataSharingAgreement.objects.filter(
        consortium__slug=SLUG, tenant__slug="beta", status="active").values_list("study_code", "fields")))
    assert saved == [("CBR", ["VITALS.sex", "VITALS.weight"])]

    # Withdraw: a confirmation first; cancelling changes nothing.
    with page.expect_navigation():
        page.click("#withdraw")
    assert "/withdraw/" in page.url and "study CBR" in page.inner_text("main")
    with page.expect_navigation():
        page.click("#cancel")
    assert page.inner_text("#agreement-status") == "Active"
    with page.expect_navigation():
        page.click("#withdraw")
    with page.expect_navigation():
        page.click("#withdraw-form button[type=submit]")
    assert page.inner_text("#agreement-status") == "Withdrawn"
    assert "Your organisation has withdrawn from Heart failure registry." in page.inner_text("ul.messages")
    assert page.locator("#accept-form").count() == 1
    assert committed(lambda: DataSharingAgreement.objects.filter(
        consortium__slug=SLUG, tenant__slug="beta", status="active").count()) == 0
    assert committed(lambda: DataSharingAgreement.objects.filter(
        consortium__slug=SLUG, tenant__slug="alpha", status="active").count()) == 1
    with page.expect_navigation():
        page.click("#back-to-list")
    assert page.locator(f"tr.consortium-row[data-slug='{SLUG}'] .agreement-status").inner_text() == "Withdrawn"
    context.close()
