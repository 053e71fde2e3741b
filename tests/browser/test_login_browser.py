"""A real browser (Debian's Chromium via Playwright) against a real server process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.db import connection

from tests.conftest import PASSWORD
from tests.test_celery_worker import database_url, wait_for_other_sessions_to_end

ROOT = Path(__file__).resolve().parent.parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]

# The server under test is another process. This process only needs the test database
# to exist (django_db); Playwright's sync API runs an event loop in this thread, and
# Django would otherwise refuse the fixture's own database calls next to it.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
pytestmark = [pytest.mark.browser, pytest.mark.django_db]


@pytest.fixture(scope="module")
def server(world, django_db_blocker):  # type: ignore[no-untyped-def]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "DATABASE_URL": database_url(connection.settings_dict),
           "DJANGO_SETTINGS_MODULE": "config.settings.test"}
    proc = subprocess.Popen([sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            time.sleep(0.1)
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        wait_for_other_sessions_to_end(django_db_blocker)


@pytest.fixture(scope="module")
def browser():  # type: ignore[no-untyped-def]
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: run `apt-get install -y chromium` (make test tries to).")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        instance = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


def test_coordinator_signs_in_on_the_tenant_host_on_a_phone(browser, server, email_of):
    context = browser.new_context(viewport={"width": 375, "height": 740}, locale="en-US")
    page = context.new_page()
    page.goto(f"http://alpha.localhost:{server}/")
    assert page.url.endswith("/login/?next=/")
    # Wrong password: an error next to the field, the typed email kept.
    page.fill("input[name=email]", email_of("coordinator", "alpha"))
    page.fill("input[name=password]", "not-the-password")
    page.click("button[type=submit]")
    assert page.locator("p.error").count() >= 1
    assert page.input_value("input[name=email]") == email_of("coordinator", "alpha")
    # Right password.
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"http://alpha.localhost:{server}/")
    assert page.locator("h1").inner_text() == "Alpha Org"
    # No horizontal scrolling on a phone.
    too_wide = page.evaluate(
        "Array.from(document.querySelectorAll('body *'))"
        ".filter(e => e.getBoundingClientRect().right > window.innerWidth + 1)"
        ".map(e => e.tagName + '.' + e.className)")
    assert too_wide == []
    # The session does not follow the user to another tenant's host.
    page.goto(f"http://beta.localhost:{server}/")
    assert "/login/" in page.url
    context.close()


def test_language_switch_keeps_the_user_on_the_page(browser, server):
    context = browser.new_context(locale="en-US")
    page = context.new_page()
    page.goto(f"http://alpha.localhost:{server}/login/")
    assert page.locator("h1").inner_text() == "登录"  # alpha's default language
    with page.expect_navigation():  # the select submits its form on change
        page.select_option("#lang", "en")
    assert page.locator("h1").inner_text() == "Sign in"
    assert page.url.endswith("/login/")
    context.close()


def test_unknown_tenant_host_shows_nothing(browser, server):
    page = browser.new_page()
    response = page.goto(f"http://no-such-org.localhost:{server}/login/")
    assert response is not None and response.status == 404
    content = page.content()  # says there is none, names nothing, and leads home
    assert "No organisation at this address." in content and "no-such-org" not in content
    assert page.locator("a", has_text="Go to the Suifang home page").count() == 1
    page.close()
