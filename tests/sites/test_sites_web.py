"""The sponsor's site-onboarding pages: list and create, checklist, activation, closing,
staff; read-only for other roles; site scoping and tenant isolation (403/404, never 500)."""

from __future__ import annotations

import datetime as dt
import html

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection

from sites import services as site_services
from sites.models import Site, SiteStaff
from tenants.selectors import membership_for
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db

FORM = {"code": "SH01", "name": "Shanghai", "institution": "Ruijin Hospital", "country_region": "CN",
        "principal_investigator": "Dr Chen", "target_enrolment": "80", "time_zone": "Asia/Shanghai"}


def _login(client, email):  # type: ignore[no-untyped-def]
    assert client.post("/login/", {"email": email, "password": PASSWORD}).status_code == 302


@pytest.fixture
def page_as(web, world, email_of):  # type: ignore[no-untyped-def]
    """page_as(role, tenant=alpha) -> a logged-in English-speaking test client."""

    def make(role: str, tenant=None):  # type: ignore[no-untyped-def]
        tenant = tenant or world.alpha
        client = web(tenant)
        client.cookies["django_language"] = "en"
        _login(client, email_of(role, tenant.slug))
        return client

    return make


@pytest.fixture
def admin(page_as):  # type: ignore[no-untyped-def]
    return page_as("tenant_admin")


def _in(world, tenant=None):  # type: ignore[no-untyped-def]
    connection.set_tenant(tenant or world.alpha)


def _site(code: str = "BJ01") -> Site:
    return site_services.site_create(code=code, name=code, institution="PUMCH", country_region="CN",
                                     principal_investigator="Dr Wang", target_enrolment=10, time_zone="Asia/Shanghai")


def _assign(site: Site, world, email_of, *roles: str) -> None:  # type: ignore[no-untyped-def]
    """Alpha's member of each role works at the site, in that role."""
    for role in roles:
        site_services.site_staff_assign(site=site, tenant=world.alpha, user=world.users[email_of(role, "alpha")],
                                        role=role)


def _text(response) -> str:  # type: ignore[no-untyped-def]
    return html.unescape(response.content.decode())


def test_sponsor_creates_a_site_after_fixing_what_was_typed(admin, world):
    page = _text(admin.get("/sites/"))
    assert "Add a site" in page and "No sites yet." in page and 'href="/sites/"' in page  # nav link
    assert 'value="Asia/Shanghai"' in page  # the tenant's zone is suggested
    bad = admin.post("/sites/", {**FORM, "code": "sh 01!", "time_zone": "Mars/Olympus", "target_enrolment": "0"})
    assert bad.status_code == 400
    body = _text(bad)
    assert "Use 1-20 capital letters, digits or hyphens" in body
    assert "“Mars/Olympus” is not a known time zone" in body
    assert "Enter a whole number between 1 and 1,000,000." in body
    # What was typed is kept, including the fields that were fine.
    for value in ("sh 01!", "Mars/Olympus", "Ruijin Hospital", "Dr Chen"):
        assert f'value="{value}"' in body
    assert admin.post("/sites/", {**FORM, "target_enrolment": "many"}).status_code == 400
    assert admin.post("/sites/", {**FORM, "name": ""}).status_code == 400
    _in(world)
    assert not Site.objects.exists()
    connection.set_schema_to_public()
    created = admin.post("/sites/", FORM)
    assert created.status_code == 302
    _in(world)
    site = Site.objects.get(code="SH01")
    connection.set_schema_to_public()
    assert created["Location"] == f"/sites/{site.pk}/"
    detail = _text(admin.get(created["Location"]))
    assert "Site SH01 added." in detail and "Invited" in detail and 'href="/sites/"' in detail
    duplicate = admin.post("/sites/", FORM)
    assert duplicate.status_code == 400 and "A site with code SH01 already exists." in _text(duplicate)


def test_list_is_paged_and_filtered_by_status(admin, world):
    _in(world)
    for n in range(27):
        _site(f"P{n:02d}")
    site_services.site_close(site=Site.objects.get(code="P00"), reason="never started")
    connection.set_schema_to_public()
    first = _text(admin.get("/sites/"))
    assert first.count('class="site-row"') == 25 and "Page 1 of 2" in first
    assert "site-status-invited" in first and "site-status-closed" in first
    assert _text(admin.get("/sites/?page=2")).count('class="site-row"') == 2
    closed = _text(admin.get("/sites/?status=closed"))
    assert closed.count('class="site-row"') == 1 and "P00" in closed
    assert admin.get("/sites/?status=%00&page=abc").status_code == 200


def test_checklist_activation_and_closing(admin, world):
    _in(world)
    site = _site()
    connection.set_schema_to_public()
    url = f"/sites/{site.pk}/"
    # Activating too early says what is missing.
    response = admin.post(f"{url}activate/", follow=True)
    text = _text(response)
    assert "Complete the activation checklist first." in text and "Still missing: Ethics approval date" in text
    # Bad input: nothing, a future date, a wrong file type.
    assert "Fill in at least one checklist item" in _text(admin.post(f"{url}checklist/", {}))
    future = (dt.date.today() + dt.timedelta(days=30)).isoformat()
    response = admin.post(f"{url}checklist/", {"contract_signed": future})
    assert response.status_code == 400 and "This date is in the future." in _text(response)
    assert f'value="{future}"' in _text(response)
    response = admin.post(f"{url}checklist/", {"staff_trained": "31/02/2026"})
    assert response.status_code == 400 and "Enter a valid date." in _text(response)
    text_file = SimpleUploadedFile("notes.txt", b"hello", content_type="text/plain")
    response = admin.post(f"{url}checklist/", {"ethics_document": text_file})
    assert response.status_code == 400 and "Upload a PDF, JPEG or PNG file." in _text(response)
    _in(world)
    assert Site.objects.get(pk=site.pk).checklist_missing() == ["ethics_approval_date", "ethics_document",
                                                                "contract_signed", "staff_trained"]
    connection.set_schema_to_public()
    # Item by item.
    day = (dt.date.today() - dt.timedelta(days=3)).isoformat()
    for item in ("ethics_approval_date", "contract_signed", "staff_trained"):
        assert admin.post(f"{url}checklist/", {item: day}).status_code == 302
    pdf = SimpleUploadedFile("ethics.pdf", b"%PDF-1.4", content_type="application/pdf")
    assert admin.post(f"{url}checklist/", {"ethics_document": pdf}).status_code == 302
    detail = _text(admin.get(url))
    assert "Onboarding" in detail and "Still missing" not in detail and detail.count("✓") == 4
    activated = _text(admin.post(f"{url}activate/", follow=True))
    assert "Site BJ01 is active" in activated and "site-status-active" in activated
    assert f'action="/sites/{site.pk}/checklist/"' not in activated  # the checklist is frozen now
    # Activating twice is refused clearly.
    assert "Only a site being onboarded can be activated." in _text(admin.post(f"{url}activate/", follow=True))
    # Closing needs a reason.
    response = admin.post(f"{url}close/", {"reason": "  "})
    assert response.status_code == 400 and "This field is required." in _text(response)
    closed = _text(admin.post(f"{url}close/", {"reason": "Recruitment over"}, follow=True))
    assert "Site BJ01 is closed." in closed and "Recruitment over" in closed and "site-status-closed" in closed
    _in(world)
    site.refresh_from_db()
    assert site.status == "closed" and site.activated_at is not None


def test_staff_assignment_and_removal(admin, world, email_of):
    _in(world)
    site = _site()
    members = {role: membership_for(user=world.users[email_of(role, "alpha")], tenant=world.alpha)
               for role in ("coordinator", "monitor", "viewer")}
    connection.set_schema_to_public()
    url = f"/sites/{site.pk}/"
    page = _text(admin.get(url))
    assert email_of("coordinator", "alpha") in page and email_of("viewer", "alpha") not in page  # not assignable
    mismatch = admin.post(f"{url}staff/", {"membership": members["coordinator"].pk, "role": "monitor"})
    assert mismatch.status_code == 400 and "Must match the person's role in the organisation." in _text(mismatch)
    assert f'<option value="{members["coordinator"].pk}" selected' in _text(mismatch)
    assert admin.post(f"{url}staff/", {"membership": members["viewer"].pk, "role": "coordinator"}).status_code == 400
    assert admin.post(f"{url}staff/", {"membership": "abc", "role": "coordinator"}).status_code == 400
    done = admin.post(f"{url}staff/", {"membership": members["coordinator"].pk, "role": "coordinator",
                                       "is_primary": "on"}, follow=True)
    assert f"{email_of('coordinator', 'alpha')} now works at BJ01." in _text(done)
    again = admin.post(f"{url}staff/", {"membership": members["coordinator"].pk, "role": "coordinator"})
    assert again.status_code == 400 and "Already assigned." in _text(again)
    primary_monitor = admin.post(f"{url}staff/", {"membership": members["monitor"].pk, "role": "monitor",
                                                  "is_primary": "on"})
    assert "Only a coordinator can be the primary coordinator." in _text(primary_monitor)
    _in(world)
    staff = SiteStaff.objects.get(site=site)
    assert staff.is_primary and staff.role == "coordinator"
    connection.set_schema_to_public()
    assert admin.post(f"{url}staff/999999/remove/").status_code == 404
    removed = admin.post(f"{url}staff/{staff.pk}/remove/", follow=True)
    assert "no longer works at BJ01" in _text(removed) and "Nobody is assigned" in _text(removed)
    _in(world)
    assert not SiteStaff.objects.filter(site=site).exists()


@pytest.mark.parametrize("role", ["coordinator", "monitor", "investigator", "data_manager", "statistician",
                                  "viewer"])
def test_other_roles_read_only(page_as, world, email_of, role):
    _in(world)
    site = _site()
    if role in ("coordinator", "monitor", "investigator"):
        _assign(site, world, email_of, role)
    connection.set_schema_to_public()
    client = page_as(role)
    listing = _text(client.get("/sites/"))
    assert "BJ01" in listing and "Add a site" not in listing and "Read only" in listing
    detail = client.get(f"/sites/{site.pk}/")
    assert detail.status_code == 200
    assert "Activate site" not in _text(detail) and "Assign a member" not in _text(detail)
    assert client.post("/sites/", FORM).status_code == 403
    for path in ("checklist/", "activate/", "close/", "staff/", "staff/1/remove/"):
        assert client.post(f"/sites/{site.pk}/{path}", {"reason": "x"}).status_code == 403, path
    _in(world)
    assert Site.objects.count() == 1 and Site.objects.get().status == "invited"


def test_scoped_roles_see_only_their_sites(page_as, world, email_of):
    _in(world)
    mine, other = _site("MINE"), _site("OTHER")
    site_services.site_staff_assign(site=mine, tenant=world.alpha, user=world.users[email_of("coordinator", "alpha")],
                                    role="coordinator")
    connection.set_schema_to_public()
    client = page_as("coordinator")
    listing = _text(client.get("/sites/"))
    assert "MINE" in listing and "OTHER" not in listing
    assert client.get(f"/sites/{other.pk}/").status_code == 404
    assert client.post(f"/sites/{other.pk}/activate/").status_code == 403


def test_another_tenants_site_and_session_are_not_found(page_as, admin, web, world, email_of):
    _in(world, world.beta)
    beta_site = _site("BETA1")
    connection.set_schema_to_public()
    # Alpha has no site with that id: the beta site is simply not there.
    assert admin.get(f"/sites/{beta_site.pk}/").status_code == 404
    for path in ("checklist/", "activate/", "close/", "staff/"):
        assert admin.post(f"/sites/{beta_site.pk}/{path}", {"reason": "x"}).status_code == 404
    assert admin.get("/sites/999999/").status_code == 404
    # Beta's sponsor, signed in on beta, is anonymous on alpha's host.
    beta_admin = page_as("tenant_admin", world.beta)
    assert "BETA1" in _text(beta_admin.get("/sites/"))
    beta_admin.defaults["HTTP_HOST"] = f"{world.alpha.slug}.localhost"
    response = beta_admin.get("/sites/")
    assert response.status_code == 302 and "/login/" in response["Location"]
    assert beta_admin.post("/sites/", FORM).status_code == 302
    anonymous = web(world.alpha)
    assert anonymous.get(f"/sites/{beta_site.pk}/").status_code == 302
    _in(world)
    assert not Site.objects.exists()


def test_pages_speak_chinese(web, world, email_of):
    client = web(world.alpha)  # alpha's default language is zh-hans
    _login(client, email_of("tenant_admin", "alpha"))
    page = _text(client.get("/sites/"))
    assert "添加研究中心" in page and "启动核查清单" not in page and "<h1>研究中心</h1>" in page


def test_ethics_document_with_a_long_extension_is_stored_under_a_generated_name(admin, world):
    _in(world)
    site = _site()
    connection.set_schema_to_public()
    long_extension = SimpleUploadedFile("a." + "x" * 150, b"%PDF-1.4 approval", content_type="application/pdf")
    response = admin.post(f"/sites/{site.pk}/checklist/", {"ethics_document": long_extension})
    assert response.status_code == 302
    _in(world)
    name = Site.objects.get(pk=site.pk).ethics_document.name
    assert name.startswith(f"sites/ethics/ethics-{site.pk}") and name.endswith(".pdf")
    connection.set_schema_to_public()
    # Whatever the client called it, a JPEG is stored as .jpg.
    photo = SimpleUploadedFile("scan.pdf.exe", b"\xff\xd8\xff", content_type="image/jpeg")
    assert admin.post(f"/sites/{site.pk}/checklist/", {"ethics_document": photo}).status_code == 302
    _in(world)
    assert Site.objects.get(pk=site.pk).ethics_document.name.endswith(".jpg")


def test_checklist_save_on_a_site_activated_meanwhile_says_why(admin, world):
    _in(world)
    site = _site()
    Site.objects.filter(pk=site.pk).update(status="active")  # a colleague activated it in another tab
    connection.set_schema_to_public()
    response = admin.post(f"/sites/{site.pk}/checklist/", {"staff_trained": "2024-01-01"})
    assert response.status_code == 302 and response["Location"] == f"/sites/{site.pk}/"
    assert "The checklist of an active or closed site cannot change." in _text(admin.get(response["Location"]))
    _in(world)
    assert Site.objects.get(pk=site.pk).staff_trained is None


def test_site_staff_are_paged(admin, world, email_of, monkeypatch):
    monkeypatch.setattr("sites.views.PAGE_SIZE", 2)
    _in(world)
    site = _site()
    _assign(site, world, email_of, "coordinator", "monitor", "investigator")
    connection.set_schema_to_public()
    first = _text(admin.get(f"/sites/{site.pk}/"))
    assert first.count('class="staff-row"') == 2 and 'href="?staff_page=2#staff"' in first
    second = _text(admin.get(f"/sites/{site.pk}/?staff_page=2"))
    assert second.count('class="staff-row"') == 1 and "Page 2 of 2" in second
    assert admin.get(f"/sites/{site.pk}/?staff_page=abc").status_code == 200
