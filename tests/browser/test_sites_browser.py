"""A sponsor onboards a site in a real browser on a phone: a typing mistake first (what was
typed stays), then the activation checklist item by item, then activation."""

from __future__ import annotations

import os

import pytest
from django.db import connection

from sites.models import Site
from tests.browser.test_login_browser import browser, server  # noqa: F401  (fixtures)
from tests.conftest import PASSWORD

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
pytestmark = [pytest.mark.browser, pytest.mark.django_db]

CODE = "PWS1"


@pytest.fixture(scope="module")
def media_root(tmp_path_factory):  # type: ignore[no-untyped-def]
    """The server process stores the uploaded ethics document here, not in the checkout."""
    before = os.environ.get("MEDIA_ROOT")
    os.environ["MEDIA_ROOT"] = str(tmp_path_factory.mktemp("media"))
    yield os.environ["MEDIA_ROOT"]
    if before is None:
        os.environ.pop("MEDIA_ROOT", None)
    else:
        os.environ["MEDIA_ROOT"] = before


@pytest.fixture(scope="module")
def cleanup(world, django_db_blocker):  # type: ignore[no-untyped-def]
    yield
    with django_db_blocker.unblock():
        connection.set_tenant(world.alpha)
        try:
            Site.objects.filter(code=CODE).delete()
        finally:
            connection.set_schema_to_public()


def _no_sideways_scrolling(page) -> bool:  # type: ignore[no-untyped-def]
    return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"))


def test_sponsor_onboards_and_activates_a_site_on_a_phone(media_root, browser, server, cleanup,  # noqa: F811
                                                          world, email_of, django_db_blocker):
    base = f"http://alpha.localhost:{server}"
    context = browser.new_context(viewport={"width": 390, "height": 800}, locale="en-US")
    context.add_cookies([{"name": "django_language", "value": "en", "url": base}])
    page = context.new_page()
    page.goto(f"{base}/login/?next=/sites/")
    page.fill("input[name=email]", email_of("tenant_admin", "alpha"))
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/sites/")
    assert page.locator("header nav a[href='/sites/']").count() == 1
    assert page.locator("header nav a[href='/dashboard/']").count() == 1
    assert _no_sideways_scrolling(page)

    # A mistake: a code with a space and an unknown time zone. Errors by the fields, typing kept.
    form = page.locator("#new-site form")
    form.locator("input[name=code]").fill("pw s1")
    form.locator("input[name=name]").fill("Playwright site")
    form.locator("input[name=institution]").fill("Huashan Hospital")
    form.locator("input[name=country_region]").fill("CN")
    form.locator("input[name=principal_investigator]").fill("Dr Zhou")
    form.locator("input[name=target_enrolment]").fill("40")
    form.locator("input[name=time_zone]").fill("Asia/Shangai")
    with page.expect_navigation():
        form.locator("button[type=submit]").click()
    assert page.locator("#id_code-error").inner_text().startswith("Use 1-20 capital letters")
    assert "is not a known time zone" in page.locator("#id_time_zone-error").inner_text()
    assert page.input_value("#new-site input[name=code]") == "pw s1"
    assert page.input_value("#new-site input[name=institution]") == "Huashan Hospital"
    assert page.input_value("#new-site input[name=target_enrolment]") == "40"
    assert page.input_value("#new-site input[name=time_zone]") == "Asia/Shangai"
    assert _no_sideways_scrolling(page)

    # Fixed: the site is created and the browser lands on its page.
    page.fill("#new-site input[name=code]", CODE)
    page.fill("#new-site input[name=time_zone]", "Asia/Shanghai")
    with page.expect_navigation():
        page.click("#new-site button[type=submit]")
    assert page.locator("h1").inner_text().startswith(f"{CODE} · Playwright site")
    assert page.locator("#site-status").inner_text() == "Invited"
    assert page.locator(".breadcrumb a[href='/sites/']").count() == 1

    # Activating too early: a clear message naming what is missing.
    with page.expect_navigation():
        page.click("#activate")
    message = page.locator(".messages li.error").inner_text()
    assert "Complete the activation checklist first." in message and "Ethics approval document" in message

    # The checklist, item by item.
    for item in ("ethics_approval_date", "contract_signed", "staff_trained"):
        page.fill(f"#item-{item} input[name={item}]", "2026-01-15")
        with page.expect_navigation():
            page.click(f"#item-{item} button[type=submit]")
        assert page.locator(f"#item-{item} .done").count() == 1
    assert page.locator("#site-status").inner_text() == "Onboarding"
    page.set_input_files("#item-ethics_document input[type=file]",
                         files=[{"name": "ethics.pdf", "mimeType": "application/pdf", "buffer": b"%PDF-1.4 test"}])
    with page.expect_navigation():
        page.click("#item-ethics_document button[type=submit]")
    assert page.locator(".checklist .done").count() == 4
    assert page.locator("#activate-hint").count() == 0
    assert _no_sideways_scrolling(page)

    with page.expect_navigation():
        page.click("#activate")
    assert page.locator("#site-status").inner_text() == "Active"
    assert "is active" in page.locator(".messages").inner_text()
    # Back to the list: the badge says active.
    with page.expect_navigation():
        page.click(".breadcrumb a[href='/sites/']")
    row = page.locator("tr.site-row", has_text=CODE)
    assert row.locator(".badge.site-status-active").count() == 1
    context.close()

    with django_db_blocker.unblock():
        connection.set_tenant(world.alpha)
        try:
            site = Site.objects.get(code=CODE)
            assert (site.status, site.institution, site.target_enrolment) == ("active", "Huashan Hospital", 40)
            assert site.ethics_document.name.startswith("sites/ethics/")
            assert os.path.isfile(os.path.join(media_root, site.ethics_document.name))
        finally:
            connection.set_schema_to_public()
