"""Web pages: sign-in, members, invitations, languages and time zones."""

from __future__ import annotations

import pytest

from tenants.models import Tenant, TenantMembership
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db


def _login(client, email: str) -> None:  # type: ignore[no-untyped-def]
    response = client.post("/login/", {"email": email, "password": PASSWORD})
    assert response.status_code == 302, response.content


def test_coordinator_signs_in_and_sees_their_role(web, world, email_of):
    client = web(world.alpha)
    _login(client, email_of("coordinator", "alpha"))
    page = client.get("/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "Alpha Org" in html
    assert "Site coordinator" in html or "协调员" in html


def test_failed_sign_in_keeps_the_email_and_says_why(web, world):
    response = web(world.beta).post("/login/", {"email": "both@example.org", "password": "nope"})
    assert response.status_code == 400
    html = response.content.decode()
    assert 'value="both@example.org"' in html
    assert "incorrect" in html


def test_sign_in_form_validates_fields(web, world):
    response = web(world.beta).post("/login/", {"email": "not an email", "password": ""})
    assert response.status_code == 400
    html = response.content.decode()
    assert 'value="not an email"' in html
    assert html.count('class="error"') >= 2


def test_next_parameter_cannot_redirect_off_site(web, world, email_of):
    response = web(world.beta).post("/login/?next=https://evil.example/", {
        "email": email_of("viewer", "beta"), "password": PASSWORD})
    assert response.status_code == 302 and response["Location"] == "/"


def test_sign_out_requires_post_and_ends_the_session(web, world, email_of):
    client = web(world.beta)
    _login(client, email_of("viewer", "beta"))
    assert client.get("/logout/").status_code == 405
    assert client.post("/logout/").status_code == 302
    assert client.get("/").status_code == 302


def test_members_page_is_for_tenant_admins_only(web, world, email_of):
    client = web(world.beta)
    _login(client, email_of("monitor", "beta"))
    assert client.get("/members/").status_code == 403
    admin = web(world.beta)
    _login(admin, email_of("tenant_admin", "beta"))
    page = admin.get("/members/?role=monitor")
    assert page.status_code == 200
    html = page.content.decode()
    assert email_of("monitor", "beta") in html and email_of("viewer", "beta") not in html
    assert "@alpha.example.org" not in admin.get("/members/").content.decode()


def test_invite_form_keeps_input_on_error(web, world, email_of):
    admin = web(world.beta)
    _login(admin, email_of("tenant_admin", "beta"))
    response = admin.post("/members/", {"email": email_of("viewer", "beta"), "full_name": "Kept Name",
                                        "role": "monitor"})
    assert response.status_code == 400
    html = response.content.decode()
    assert "already a member" in html and 'value="Kept Name"' in html


def test_invite_form_sends_an_invitation(web, world, email_of, smtp_server, django_capture_on_commit_callbacks):
    admin = web(world.beta)
    _login(admin, email_of("tenant_admin", "beta"))
    with django_capture_on_commit_callbacks(execute=True):
        response = admin.post("/members/", {"email": "fresh@example.org", "role": "investigator"})
    assert response.status_code == 302
    assert TenantMembership.objects.get(user__email="fresh@example.org").role == "investigator"
    assert smtp_server.messages and smtp_server.messages[0]["To"] == "fresh@example.org"


def test_invitation_page_rejects_a_bad_token_and_mismatched_passwords(
        web, world, email_of, smtp_server, django_capture_on_commit_callbacks):
    client = web(world.beta)
    assert client.get("/invite/not-a-token/").status_code == 302
    response = client.post("/invite/accept/", {"password": "a-good-new-pass-1", "password_again": "a-good-new-pass-1"})
    assert response.status_code == 404 and "invalid or has expired" in response.content.decode()
    admin = web(world.beta)
    _login(admin, email_of("tenant_admin", "beta"))
    with django_capture_on_commit_callbacks(execute=True):
        admin.post("/members/", {"email": "typo@example.org", "role": "viewer"})
    link = next(w for w in smtp_server.messages[0].get_payload(decode=True).decode().split() if "/invite/" in w)
    client.get(link.replace("http://beta.localhost", ""))
    response = client.post("/invite/accept/", {"full_name": "Kept", "password": "a-good-new-pass-1",
                                               "password_again": "other"})
    html = response.content.decode()
    assert response.status_code == 400 and "differ" in html and 'value="Kept"' in html


def test_pages_follow_the_tenant_language_and_the_users_choice(web, world, email_of):
    # beta's default language is English, alpha's is Simplified Chinese.
    assert web(world.beta).get("/login/")["Content-Language"] == "en"
    zh = web(world.alpha).get("/login/")
    assert zh["Content-Language"] == "zh-hans"
    assert "登录" in zh.content.decode()
    client = web(world.alpha)
    client.post("/i18n/setlang/", {"language": "en", "next": "/login/"})
    assert client.get("/login/")["Content-Language"] == "en"


def test_dates_are_shown_in_the_tenants_time_zone(web, world, email_of):
    import datetime as dt

    Tenant.objects.filter(pk=world.beta.pk).update(created=dt.datetime(2026, 1, 1, 23, 30, tzinfo=dt.UTC))
    client = web(world.beta)  # Europe/Berlin: UTC+1 in January
    _login(client, email_of("viewer", "beta"))
    assert "2026-01-02 00:30 CET" in client.get("/").content.decode()


def test_suspended_tenant_is_closed(web, world):
    Tenant.objects.filter(pk=world.beta.pk).update(status="suspended")
    response = web(world.beta).get("/login/")
    assert response.status_code == 403
    assert "suspended" in response.content.decode()


def test_public_site_and_operator_console(web, world):
    client = web(None)
    assert client.get("/").status_code == 200
    found = client.get("/?slug=alpha")
    assert found.status_code == 302 and found["Location"].startswith("https://alpha.localhost")
    assert client.get("/?slug=../../etc").status_code == 400
    # A tenant member is not an operator.
    response = client.post("/admin/login/", {"username": "both@example.org", "password": PASSWORD})
    assert response.status_code == 200 and "/admin/login/" in response.request["PATH_INFO"]


def test_operator_can_use_the_console(web, world):
    from tenants.models import User

    User.objects.create_superuser(email="op@example.org", password=PASSWORD)
    client = web(None)
    response = client.post("/admin/login/?next=/admin/", {"username": "op@example.org", "password": PASSWORD})
    assert response.status_code == 302
    assert client.get("/admin/").status_code == 200
    # That session means nothing on a tenant host.
    tenant_client = web(world.alpha)
    tenant_client.cookies = client.cookies
    assert tenant_client.get("/").status_code == 302


def test_operator_creates_a_tenant_in_the_console_and_sees_field_errors(web, world):
    from tenants.models import User

    User.objects.create_superuser(email="op2@example.org", password=PASSWORD)
    client = web(None)
    client.cookies["django_language"] = "en"
    client.post("/admin/login/", {"username": "op2@example.org", "password": PASSWORD})
    assert client.get("/admin/tenants/tenant/").status_code == 200
    bad = client.post("/admin/tenants/tenant/add/", {
        "name": "Kept Name", "slug": "www", "kind": "hospital", "status": "trial", "time_zone": "Nowhere/City",
        "default_language": "en", "admin_email": "boss@epsilon.example.org"})
    assert bad.status_code == 400
    html = bad.content.decode()
    assert "reserved" in html and "not a known time zone" in html and 'value="Kept Name"' in html
    assert not Tenant.objects.filter(slug="www").exists()
    good = client.post("/admin/tenants/tenant/add/", {
        "name": "Epsilon", "slug": "epsilon", "kind": "hospital", "status": "trial",
        "time_zone": "Asia/Shanghai", "default_language": "en", "admin_email": "boss@epsilon.example.org"})
    assert good.status_code == 302
    tenant = Tenant.objects.get(slug="epsilon")
    assert TenantMembership.objects.get(tenant=tenant).role == "tenant_admin"


def test_members_page_resends_a_pending_invitation(web, world, email_of, smtp_server,
                                                  django_capture_on_commit_callbacks):
    admin = web(world.beta)
    _login(admin, email_of("tenant_admin", "beta"))
    with django_capture_on_commit_callbacks(execute=True):
        admin.post("/members/", {"email": "pending@example.org", "role": "viewer"})
    membership = TenantMembership.objects.get(user__email="pending@example.org")
    assert f"/members/{membership.pk}/resend-invitation/" in admin.get("/members/").content.decode()
    with django_capture_on_commit_callbacks(execute=True):
        response = admin.post(f"/members/{membership.pk}/resend-invitation/")
    assert response.status_code == 302
    assert len(smtp_server.messages) == 2
    foreign = TenantMembership.objects.get(user__email=email_of("viewer", "alpha"))
    assert admin.post(f"/members/{foreign.pk}/resend-invitation/").status_code == 404


def test_a_broken_tenant_time_zone_never_breaks_its_pages(web, world):
    Tenant.objects.filter(pk=world.beta.pk).update(time_zone="Europe/Berlin/")
    assert web(world.beta).get("/login/").status_code == 200


def test_console_refuses_an_unknown_time_zone(web, world):
    from tenants.models import User

    User.objects.create_superuser(email="op3@example.org", password=PASSWORD)
    client = web(None)
    client.cookies["django_language"] = "en"
    client.post("/admin/login/", {"username": "op3@example.org", "password": PASSWORD})
    response = client.post(f"/admin/tenants/tenant/{world.beta.pk}/change/", {
        "name": "Beta Org", "kind": "device_company", "status": "trial", "time_zone": "Europe/Berlin/",
        "default_language": "en", "domains-TOTAL_FORMS": "0", "domains-INITIAL_FORMS": "0",
        "memberships-TOTAL_FORMS": "0", "memberships-INITIAL_FORMS": "0"})
    assert response.status_code == 200 and "not a known time zone" in response.content.decode()
    world.beta.refresh_from_db()
    assert world.beta.time_zone == "Europe/Berlin"


def test_suspended_page_speaks_this_requests_language_and_leads_home(web, world, email_of):
    import html

    from django.utils import translation

    from tenants.services import public_home_url

    signed_in = web(world.beta)
    _login(signed_in, email_of("viewer", "beta"))
    Tenant.objects.filter(pk=world.beta.pk).update(status="suspended")
    # A Chinese-speaking request first (alpha's default): its language ends with it.
    assert web(world.alpha).get("/login/").status_code == 200
    assert translation.get_language() == "en"
    with translation.override("zh-hans"):
        english = web(world.beta)
        english.cookies["django_language"] = "en"
        page = english.get("/login/")
        assert page.status_code == 403 and page["Content-Type"].startswith("text/html")
        text = html.unescape(page.content.decode())
        assert "This organisation's account is suspended." in text and f'href="{public_home_url()}"' in text
        api = english.get("/api/v1/me/")
        assert api.status_code == 403
        assert api.json()["error"]["message"] == "This organisation's account is suspended."
    chinese = web(world.beta)
    chinese.cookies["django_language"] = "zh-hans"
    assert "本机构的账户已被暂停使用。" in chinese.get("/login/").content.decode()
    # Signing out still works there.
    assert signed_in.post("/logout/").status_code == 302


def test_landing_page_ignores_query_parameters_that_are_no_search(web, world):
    client = web(None)
    client.cookies["django_language"] = "en"
    for query in ("?utm_source=newsletter", "?lang=en&fbclid=x"):
        response = client.get(f"/{query}")
        assert response.status_code == 200 and "This field is required." not in response.content.decode()
    # The finder itself still says what is wrong.
    empty = client.get("/?slug=&utm_source=newsletter")
    assert empty.status_code == 400 and "This field is required." in empty.content.decode()


def test_unknown_organisation_address_is_translated_and_leads_home(web, world):
    from tenants.services import public_home_url

    client = web(None, HTTP_HOST="nosuch.localhost")
    client.cookies["django_language"] = "en"
    page = client.get("/login/")
    assert page.status_code == 404 and page["Content-Type"].startswith("text/html")
    text = page.content.decode()
    assert "No organisation at this address." in text and f'href="{public_home_url()}"' in text
    assert "nosuch" not in text
    # Without a cookie the browser's language counts.
    chinese = web(None, HTTP_HOST="nosuch.localhost", HTTP_ACCEPT_LANGUAGE="zh-CN,zh;q=0.9")
    assert '<html lang="zh-hans">' in chinese.get("/login/").content.decode()
    api = client.get("/api/v1/me/")
    assert api.status_code == 404 and api.json()["error"]["code"] == "not_found"


def test_home_links_to_the_users_other_organisations(web, world):
    from tenants.services import tenant_url

    client = web(world.alpha)
    client.cookies["django_language"] = "en"
    _login(client, "both@example.org")
    html = client.get("/").content.decode()
    assert f'<a href="{tenant_url("beta")}/">Beta Org</a>' in html
