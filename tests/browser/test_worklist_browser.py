"""The coordinator works the worklist in a real browser: opens the call dialog on a phone
and records an attempt."""

from __future__ import annotations

import datetime as dt
import os

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection

from sites import services as site_services
from sites.models import Site
from studies import services
from studies.models import ContactAttempt, Study, Subject
from tests.browser.test_login_browser import browser, server  # noqa: F401  (fixtures)
from tests.conftest import PASSWORD
from tests.studies.test_enrolment import event

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
pytestmark = [pytest.mark.browser, pytest.mark.django_db]


@pytest.fixture(scope="module")
def committed_subject(world, django_db_blocker, email_of_module):  # type: ignore[no-untyped-def]
    day = dt.date.today() - dt.timedelta(days=2)
    with django_db_blocker.unblock():
        connection.set_tenant(world.alpha)
        site = site_services.site_create(code="WB1", name="Browser", institution="H", country_region="CN",
                                         principal_investigator="Dr B", target_enrolment=5, time_zone="Asia/Shanghai")
        site = site_services.site_update_checklist(
            site=site, ethics_approval_date=day, contract_signed=day, staff_trained=day,
            ethics_document=SimpleUploadedFile("e.pdf", b"%PDF", "application/pdf"))
        site = site_services.site_activate(site=site)
        coordinator = world.users[email_of_module("coordinator", "alpha")]
        site_services.site_staff_assign(site=site, tenant=world.alpha, user=coordinator, role="coordinator",
                                        is_primary=True)
        study = services.study_create(code="WBS", title="Browser study", study_type="registry", target_enrolment=5)
        services.schedule_publish(version=services.schedule_draft_save(study=study, events=[event("D3", 3)]))
        study = services.study_activate(study=study)
        subject = services.subject_enrol(study=study, site=site, consent_date=day, enrolment_date=day,
                                         phone="13855556666")
        connection.set_schema_to_public()
        try:
            yield subject
        finally:
            connection.set_tenant(world.alpha)
            Subject.objects.filter(study=study).delete()
            Study.objects.filter(pk=study.pk).delete()
            Site.objects.filter(pk=site.pk).delete()
            connection.set_schema_to_public()
            connection.close()


@pytest.fixture(scope="module")
def email_of_module():  # type: ignore[no-untyped-def]
    return lambda role, slug: f"{role}@{slug}.example.org"


def test_coordinator_records_a_call_from_the_worklist_on_a_phone(browser, server, committed_subject,  # noqa: F811
                                                                 email_of_module, world, django_db_blocker):
    context = browser.new_context(viewport={"width": 390, "height": 800}, locale="en-US")
    page = context.new_page()
    base = f"http://alpha.localhost:{server}"
    page.goto(f"{base}/login/?next=/worklist/")
    page.fill("input[name=email]", email_of_module("coordinator", "alpha"))
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/worklist/")
    row = page.locator("tr", has_text=committed_subject.subject_code)
    assert row.count() == 1
    assert row.locator("a[href='tel:13855556666']").count() == 1
    row.locator("summary").click()
    row.locator("select[name=outcome]").select_option("no_answer")
    row.locator("textarea[name=note]").fill("busy tone")
    with page.expect_navigation():
        row.locator("button[type=submit]").click()
    # alpha speaks Simplified Chinese by default: check the message names the subject.
    assert committed_subject.subject_code in page.locator(".messages").inner_text()
    # On to the subject's timeline, and back.
    with page.expect_navigation():
        page.click(f"table a:has-text('{committed_subject.subject_code}')")
    assert page.locator("ol.timeline li.status-open, ol.timeline li.status-upcoming").count() == 1
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    with page.expect_navigation():
        page.click("section.card a[href='/worklist/']")
    context.close()
    with django_db_blocker.unblock():
        connection.set_tenant(world.alpha)
        try:
            attempt = ContactAttempt.objects.get(task__subject_id=committed_subject.pk)
            assert (attempt.outcome, attempt.note) == ("no_answer", "busy tone")
        finally:
            connection.set_schema_to_public()
