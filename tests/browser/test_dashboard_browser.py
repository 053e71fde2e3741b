"""The metrics dashboard in a real browser: ECharts (from npm, served by us) draws the
charts, and the figures on the page are those of studies.metrics.followup_metrics."""

from __future__ import annotations

import os

import pytest
from django.db import connection

from studies.dashboard_views import percent
from studies.metrics import followup_metrics
from tenants.selectors import membership_for
from tests.browser.test_login_browser import browser, server  # noqa: F401  (fixtures)
from tests.conftest import PASSWORD
from tests.studies.test_dashboard_web import _today, seed_cleanup, seed_dashboard

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
pytestmark = [pytest.mark.browser, pytest.mark.django_db]

ADMIN = "tenant_admin@alpha.example.org"


@pytest.fixture(scope="module")
def seeded(world, django_db_blocker):  # type: ignore[no-untyped-def]
    """Committed data (the server under test is another process)."""
    with django_db_blocker.unblock():
        connection.set_tenant(world.alpha)
        data = seed_dashboard(prefix="PWD")
        connection.set_schema_to_public()
        try:
            yield data
        finally:
            connection.set_tenant(world.alpha)
            seed_cleanup(data)
            connection.set_schema_to_public()
            connection.close()


def _login(page, base: str, next_url: str) -> None:  # type: ignore[no-untyped-def]
    page.goto(f"{base}/login/?next={next_url}")
    page.fill("input[name=email]", ADMIN)
    page.fill("input[name=password]", PASSWORD)
    with page.expect_navigation():
        page.click("main form button[type=submit]")
    assert page.url == f"{base}{next_url}", (page.url, page.content()[:3000])


def test_dashboard_draws_echarts_and_shows_the_metrics(browser, server, seeded, world,  # noqa: F811
                                                       django_db_blocker):
    base = f"http://alpha.localhost:{server}"
    study = seeded["study"]
    context = browser.new_context(viewport={"width": 1200, "height": 900}, locale="en-US")
    context.add_cookies([{"name": "django_language", "value": "en", "url": base}])
    page = context.new_page()
    failed = []
    page.on("requestfailed", lambda request: failed.append(request.url))
    page.on("pageerror", lambda error: failed.append(str(error)))
    url = f"/dashboard/?study={study.pk}"
    _login(page, base, "/dashboard/")
    page.goto(f"{base}{url}")

    # ECharts came from our own static URL, and drew into every chart element.
    src = page.get_attribute("#echarts-js", "src")
    assert src == "/static/vendor/echarts.min.js"
    status, content_type = page.evaluate(f"fetch('{src}').then(r => [r.status, r.headers.get('content-type')])")
    assert status == 200 and "javascript" in content_type
    assert page.evaluate("typeof window.echarts === 'object' && typeof window.echarts.init === 'function'")
    loaded = page.evaluate("performance.getEntriesByType('resource').map(e => e.name)")
    assert f"{base}/static/vendor/echarts.min.js" in loaded
    assert all(name.startswith(base) for name in loaded), loaded  # nothing from a third party
    for chart in ("#chart-by-site", "#chart-by-event", "#chart-enrolment"):
        page.wait_for_selector(f"{chart} canvas, {chart} svg")
        assert page.is_visible(chart)
        assert page.evaluate(f"!!echarts.getInstanceByDom(document.querySelector('{chart}'))")
    assert failed == []

    # The figures are the metrics function's for the same day in the tenant's time zone.
    with django_db_blocker.unblock():
        connection.set_tenant(world.alpha)
        try:
            membership = membership_for(user=world.users[ADMIN], tenant=world.alpha)
            expected = followup_metrics(membership=membership, study_id=study.pk, today=_today())
        finally:
            connection.set_schema_to_public()
    overall = expected["overall"]
    card = lambda metric: page.inner_text(f"[data-metric={metric}] .value")  # noqa: E731
    assert card("follow_up_rate") == percent(overall["follow_up_rate"])
    assert card("on_time_rate") == percent(overall["on_time_rate"])
    assert card("missed_rate") == percent(overall["missed_rate"])
    assert card("overdue") == str(overall["overdue"])
    assert card("lost_to_follow_up_rate") == percent(overall["lost_to_follow_up_rate"])
    assert card("enrolment") == f"{expected['enrolment'][0]['enrolled']} / {study.target_enrolment}"
    for row in expected["by_site"]:
        cells = page.locator(f"#table-by-site tr[data-site='{row['site_code']}'] td").all_inner_texts()
        assert cells[:4] == [row["site_code"], str(row["due"]), str(row["completed"]),
                             percent(row["follow_up_rate"])]
    assert page.locator("#table-by-event tbody tr").count() == len(expected["by_event"]) == 3

    # Choosing the other study reloads the page with its figures.
    with page.expect_navigation():
        page.select_option("#id_study", str(seeded["other"].pk))
    assert card("enrolment") == f"1 / {seeded['other'].target_enrolment}"
    context.close()


def test_dashboard_on_a_phone_and_without_javascript(browser, server, seeded):  # noqa: F811
    base = f"http://alpha.localhost:{server}"
    url = f"/dashboard/?study={seeded['study'].pk}"
    phone = browser.new_context(viewport={"width": 375, "height": 740}, locale="en-US")
    page = phone.new_page()
    _login(page, base, "/dashboard/")
    page.goto(f"{base}{url}")
    page.wait_for_selector("#chart-by-site canvas")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    assert page.evaluate("document.querySelector('#chart-by-site').getBoundingClientRect().width <= window.innerWidth")
    phone.close()

    # JavaScript off: no charts, but every number and table is there.
    no_js = browser.new_context(java_script_enabled=False, locale="en-US")
    page = no_js.new_page()
    _login(page, base, "/dashboard/")
    page.goto(f"{base}{url}")
    assert page.locator("#chart-by-site canvas").count() == 0
    assert not page.is_visible("#chart-by-site")
    assert page.locator("[data-metric] .value").count() == 6
    assert page.locator("#table-by-site tbody tr[data-site]").count() == 2
    assert page.inner_text("[data-metric=enrolment] .value") == f"4 / {seeded['study'].target_enrolment}"
    no_js.close()
