"""Data entry and ePRO in a real browser (Debian's Chromium via Playwright) against a
real server: live branching and calculation, the soft-check query raised on save and
answered, the casebook signed, the local draft restored after a reload, the 412 when
another session saved in between, and a patient answering on a phone."""

from __future__ import annotations

import datetime as dt
import os
import re
from typing import Any

import pytest
from django.db import connection

from ecrf import services as ecrf_services
from ecrf.models import Entry, EntryStatus, EproLink, Signature
from tests.browser.test_login_browser import browser, server  # noqa: F401  (fixtures)
from tests.conftest import PASSWORD
from tests.ecrf.committed import committed_ecrf_study
from tests.ecrf.test_entries import VITALS
from tests.ecrf.test_entry_web import PRO

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
pytestmark = [pytest.mark.browser, pytest.mark.django_db]


def _email(role: str) -> str:
    return f"{role}@alpha.example.org"


@pytest.fixture(scope="module")
def ecrf_world(world, django_db_blocker):  # type: ignore[no-untyped-def]
    """Committed data the server process sees: an active site with the alpha coordinator,
    investigator and monitor, a study whose D3 visit (open today) collects VITALS, a
    patient-reported form, and one subject per test."""
    with django_db_blocker.unblock(), committed_ecrf_study(
            world, site_code="EB1", study_code="EBS", roles=("coordinator", "investigator", "monitor"),
            definitions=(VITALS, PRO), subjects=("flow", "draft", "conflict", "epro", "monitored"),
            contact=True) as data:
        yield data


def _login(browser, server: int, role: str, **options: Any):  # type: ignore[no-untyped-def]  # noqa: F811
    context = browser.new_context(locale="en-US", **options)
    context.add_cookies([{"name": "django_language", "value": "en", "domain": "alpha.localhost", "path": "/"}])
    page = context.new_page()
    base = f"http://alpha.localhost:{server}"
    page.goto(f"{base}/login/")
    page.fill("input[name=email]", _email(role))
    page.fill("input[name=password]", PASSWORD)
    with page.expect_navigation():
        page.click("button[type=submit]")
    return context, page, base


def _entry_url(base: str, data: dict[str, Any], subject: str, form: str = "VITALS") -> str:
    return f"{base}/visits/{data['tasks'][subject].pk}/forms/{data['forms'][form].pk}/"


def _ready(page) -> None:  # type: ignore[no-untyped-def]
    page.wait_for_selector("#entry-form[data-ready=true]")


def _in_tenant(world, django_db_blocker, read):  # type: ignore[no-untyped-def]
    with django_db_blocker.unblock():
        connection.set_tenant(world.alpha)
        try:
            return read()
        finally:
            connection.set_schema_to_public()


def test_visit_entry_with_branching_bmi_query_answer_and_signature(browser, server, ecrf_world,  # noqa: F811
                                                                  world, django_db_blocker):
    context, page, base = _login(browser, server, "coordinator")
    # From the subject's timeline to the form.
    page.goto(f"{base}/subjects/{ecrf_world['subjects']['flow'].pk}/")
    with page.expect_navigation():
        page.click("a.form-link:has-text('Vital signs')")
    _ready(page)
    pregnant = page.locator('.item[data-path="pregnant"]')
    assert pregnant.is_hidden()
    page.fill("#f-visit_date", dt.date.today().isoformat())
    page.check("#f-sex-2")  # Female
    assert pregnant.is_visible()  # branching, live
    page.check("#f-sex-1")
    assert pregnant.is_hidden()
    page.check("#f-sex-2")
    page.fill("#f-weight", "30")
    assert page.inner_text("#f-bmi") == "—"
    page.fill("#f-height", "170")
    assert page.inner_text("#f-bmi") == "10.4"  # calculated, live
    page.fill("#f-weight", "31")
    assert page.inner_text("#f-bmi") == "10.7"
    page.press("#f-weight", "Enter")  # Enter does not save
    assert page.locator(".notice").count() == 0
    page.click('[data-path="meds"] .add-row')
    page.fill('.item[data-path="meds[0].med_name"] input', "Aspirin")
    page.fill('.item[data-path="meds[0].med_dose"] input', "100")
    assert page.get_attribute('[data-path="meds"] tr[data-row="0"] .remove-row', "aria-label") == "Remove row 1"
    # Save (partial): Pregnant is required (hard), the weight is below the soft range.
    page.click("#save-button")
    page.wait_for_selector(".notice-warning")
    assert "This item is required." in page.inner_text('.item[data-path="pregnant"] .errors')
    weight_query = page.locator('[data-queries-for="weight"] .query')
    weight_query.wait_for()
    assert "Expected between 35 and 200." in weight_query.inner_text()
    assert "Queries raised: 2" in page.inner_text("#entry-notices")  # weight range, empty systolic
    assert page.inner_text("#entry-version") == "1"
    # Answer the query from the page.
    weight_query.locator("textarea").fill("Child, weight confirmed on the scale.")
    weight_query.locator("button[type=submit]").click()
    page.wait_for_selector('[data-queries-for="weight"] .query-answered')
    assert "Child, weight confirmed" in page.inner_text('[data-queries-for="weight"]')
    # Complete it.
    page.check("#f-pregnant-0")
    page.fill("#f-sbp", "120")
    page.fill("#f-dbp", "80")
    page.click("#complete-button")
    page.wait_for_selector(".notice-success")
    assert page.inner_text("#entry-status") == "Complete"
    assert page.locator("#reason-box").is_visible()  # later changes need a reason
    context.close()
    entry = _in_tenant(world, django_db_blocker, lambda: Entry.objects.get(
        subject=ecrf_world["subjects"]["flow"]))
    assert entry.status == EntryStatus.COMPLETE and entry.values["bmi"] == 10.7 and "pregnant" in entry.values
    assert entry.values["meds"] == [{"med_name": "Aspirin", "med_dose": 100.0}]
    # The investigator signs the casebook.
    context, page, base = _login(browser, server, "investigator")
    page.goto(f"{base}/subjects/{ecrf_world['subjects']['flow'].pk}/sign/")
    page.check("input[name=meaning][value=review]")
    assert "accurate and complete" in page.inner_text("#manifest-meaning")
    assert _email("investigator") in page.inner_text(".manifestation")
    page.fill("input[name=password]", "wrong-password")
    with page.expect_navigation():
        page.click("#sign-form button[type=submit]")
    assert "The password is not correct." in page.inner_text("#sign-form")
    page.check("input[name=meaning][value=review]")
    page.fill("input[name=password]", PASSWORD)
    with page.expect_navigation():
        page.click("#sign-form button[type=submit]")
    assert "signed by" in page.inner_text(".messages")
    assert "Valid" in page.inner_text("#signatures")
    context.close()
    assert _in_tenant(world, django_db_blocker, lambda: Signature.objects.filter(
        subject=ecrf_world["subjects"]["flow"], invalidated_at__isnull=True).count()) == 1


def test_typed_data_survives_a_reload_as_a_local_draft(browser, server, ecrf_world):  # noqa: F811
    context, page, base = _login(browser, server, "coordinator")
    url = _entry_url(base, ecrf_world, "draft")
    page.goto(url)
    _ready(page)
    page.check("#f-sex-2")
    page.check("#f-pregnant-1")
    page.fill("#f-weight", "81.5")
    page.fill("#f-notes", "typed, not saved")
    page.fill('.item[data-path="diag_date"] .part-year', "2023")
    page.select_option('.item[data-path="diag_date"] .part-month', "04")
    page.reload()
    _ready(page)
    assert "Restored unsaved changes from this device" in page.inner_text("#entry-notices")
    assert page.input_value("#f-weight") == "81.5" and page.input_value("#f-notes") == "typed, not saved"
    assert page.is_checked("#f-sex-2") and page.is_checked("#f-pregnant-1")
    assert page.locator('.item[data-path="pregnant"]').is_visible()
    assert page.input_value('.item[data-path="diag_date"] .part-month') == "04"
    # Discarding brings back the server's (empty) form.
    page.click("#draft-notice .discard-draft")
    page.wait_for_load_state()
    _ready(page)
    assert page.input_value("#f-weight") == "" and "Restored" not in page.inner_text("#entry-notices")
    context.close()


def test_a_save_after_another_session_saved_gets_a_clear_conflict(browser, server, ecrf_world):  # noqa: F811
    mine, page, base = _login(browser, server, "coordinator")
    url = _entry_url(base, ecrf_world, "conflict")
    page.goto(url)
    _ready(page)
    # Someone else saves the form in between.
    theirs, other, _base = _login(browser, server, "investigator")
    other.goto(url)
    _ready(other)
    other.check("#f-sex-1")
    other.fill("#f-weight", "70")
    other.click("#save-button")
    other.wait_for_selector(".notice-success, .notice-warning")
    theirs.close()
    # My typing is kept; my save is refused with the items they changed.
    page.check("#f-sex-1")
    page.fill("#f-weight", "75")
    page.click("#save-button")
    page.wait_for_selector(".notice-error")
    notice = page.inner_text("#entry-notices")
    assert "Someone else saved this form" in notice and "Weight" in notice and "Sex" in notice
    assert page.input_value("#f-weight") == "75"
    assert "conflict" in (page.get_attribute('.item[data-path="weight"]', "class") or "")
    # Reloading shows their version, with my typing restored from the draft to compare.
    page.click("#entry-notices button.reload")
    page.wait_for_load_state()
    _ready(page)
    assert page.inner_text("#entry-version") == "1"
    assert "older version" in page.inner_text("#entry-notices")
    assert page.input_value("#f-weight") == "75"
    mine.close()


def test_patient_answers_on_a_phone(browser, server, ecrf_world, world, django_db_blocker):  # noqa: F811
    # The coordinator sends the questionnaire from the staff page.
    context, page, base = _login(browser, server, "coordinator")
    page.goto(_entry_url(base, ecrf_world, "epro", form="PROQ"))
    _ready(page)
    page.select_option("#epro-channel", "sms")
    page.click("#epro-send")
    page.wait_for_selector("#epro-result:not([hidden])")
    link = page.input_value("#epro-result .epro-url")
    context.close()
    path = re.sub(r"^https?://[^/]+", "", link)
    assert path.startswith("/epro/")
    phone = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=3, is_mobile=True,
                                has_touch=True, locale="zh-CN")
    patient = phone.new_page()
    response = patient.goto(f"{base}{path}")
    assert response is not None and response.status == 200
    _ready(patient)
    assert patient.locator("h1").inner_text() == "How are you?"  # the subject's language (en)
    assert patient.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    target = patient.locator('label[for="f-sex-2"]').bounding_box()
    assert target is not None and target["height"] >= 44  # a thumb-sized target
    assert patient.locator('.item[data-path="pregnant"]').is_hidden()
    patient.tap('label[for="f-sex-2"]')
    assert patient.locator('.item[data-path="pregnant"]').is_visible()
    patient.tap('label[for="f-pregnant-0"]')
    patient.click("#save-button")  # save for later
    patient.wait_for_selector(".notice-success")
    assert "come back to this link later" in patient.inner_text("#entry-notices")
    # Submitting without the required pain score shows the error next to it.
    patient.click("#complete-button")
    patient.wait_for_selector('.item[data-path="pain"] .errors li')
    patient.focus("#f-pain")
    for _ in range(4):
        patient.keyboard.press("ArrowRight")
    assert patient.inner_text('.item[data-path="pain"] output') == "4"
    patient.fill("#f-comment", "Feeling better 谢谢")
    with patient.expect_navigation():
        patient.click("#complete-button")
    assert "Thank you" in patient.locator("h1").inner_text()
    gone = patient.goto(f"{base}{path}")
    assert gone is not None and gone.status == 410
    phone.close()

    def read() -> tuple[Any, Any]:
        entry = Entry.objects.get(subject=ecrf_world["subjects"]["epro"])
        link_row = EproLink.objects.get(subject=ecrf_world["subjects"]["epro"])
        return entry, link_row

    entry, link_row = _in_tenant(world, django_db_blocker, read)
    assert entry.status == EntryStatus.COMPLETE and link_row.used_at is not None
    assert entry.values == {"sex": "2", "pregnant": "0", "pain": 4, "comment": "Feeling better 谢谢"}


def test_a_monitor_raises_a_query_verifies_an_item_and_closes_the_query_on_the_page(
        browser, server, ecrf_world, world, django_db_blocker):  # noqa: F811
    from tests.ecrf.test_entries import GOOD

    def site_saves() -> None:
        coordinator = world.users[_email("coordinator")]
        ecrf_services.entry_save(
            subject=ecrf_world["subjects"]["monitored"], task=ecrf_world["tasks"]["monitored"],
            form=ecrf_world["forms"]["VITALS"], values=GOOD, base_version=0,
            actor=ecrf_services.Actor(user_id=coordinator.pk, label=coordinator.email, role="coordinator"))

    from tests.browser.server_env import committed

    committed(site_saves, tenant=world.alpha)  # the server process must see it
    context, page, base = _login(browser, server, "monitor")
    page.goto(_entry_url(base, ecrf_world, "monitored"))
    _ready(page)
    height = page.locator('.item[data-path="height"]')
    height.locator("details.raise-query summary").click()
    height.locator("details.raise-query textarea").fill("The source notes 171 cm.")
    with page.expect_navigation():
        height.locator("details.raise-query button[type=submit]").click()
    assert "Query raised." in page.inner_text(".messages")
    assert "The source notes 171 cm." in page.inner_text('[data-queries-for="height"] .query')
    with page.expect_navigation():
        page.locator('.item[data-path="weight"] .monitoring button:has-text("Mark verified")').click()
    assert "verified" in page.inner_text('.item[data-path="weight"] .item-label')
    # The query is closed without leaving the page (the page's script), and says so.
    query = page.locator('[data-queries-for="height"] .query')
    query.locator('form[data-action="close"] textarea').fill("Corrected at the site.")
    query.locator('form[data-action="close"] button[type=submit]').click()
    page.wait_for_function("document.getElementById('entry-notices').innerText.includes('Query closed.')")
    # Folded, with its closing note and the way to re-open it; nothing open is left on the item.
    closed = page.wait_for_selector('[data-queries-for="height"] details.query-closed')
    assert page.locator('[data-queries-for="height"] .query-open').count() == 0
    closed.click()  # the summary: unfolds
    assert "Corrected at the site." in closed.inner_text()
    assert closed.query_selector('form[data-action="reopen"]') is not None
    context.close()
    entry = _in_tenant(world, django_db_blocker, lambda: Entry.objects.get(
        subject=ecrf_world["subjects"]["monitored"]))
    assert "weight" in entry.verified
