"""Sites API: roles, site scoping on every endpoint, tenant isolation, bad input."""

from __future__ import annotations

import datetime as dt

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from sites.models import Site, SiteStaff
from tests.tenants.test_api import _assert_error_shape

pytestmark = pytest.mark.django_db

SITE = {"code": "SH01", "name": "Shanghai", "institution": "Ruijin", "country_region": "CN",
        "principal_investigator": "Dr Chen", "target_enrolment": 80, "time_zone": "Asia/Shanghai"}


@pytest.fixture
def admin(api, world, email_of):  # type: ignore[no-untyped-def]
    return api(world.alpha, email_of("tenant_admin", "alpha"))


def _create(client, **overrides) -> dict:  # type: ignore[no-untyped-def]
    response = client.post("/api/v1/sites/", {**SITE, **overrides}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def test_admin_onboards_a_site_through_the_api(admin):
    site = _create(admin)
    assert site["status"] == "invited"
    assert set(site["checklist_missing"]) == {"ethics_approval_date", "ethics_document", "contract_signed",
                                              "staff_trained"}
    refused = admin.post(f"/api/v1/sites/{site['id']}/activate/")
    assert set(_assert_error_shape(refused, 409, "checklist_incomplete")["fields"]) == set(site["checklist_missing"])
    document = SimpleUploadedFile("ethics.pdf", b"%PDF-1.4", content_type="application/pdf")
    updated = admin.post(f"/api/v1/sites/{site['id']}/checklist/", {
        "ethics_approval_date": "2026-01-05", "contract_signed": "2026-01-06", "staff_trained": "2026-01-07",
        "ethics_document": document}, format="multipart")
    assert updated.status_code == 200, updated.content
    assert updated.json()["checklist_missing"] == [] and updated.json()["status"] == "onboarding"
    active = admin.post(f"/api/v1/sites/{site['id']}/activate/")
    assert active.json()["status"] == "active"
    closed = admin.post(f"/api/v1/sites/{site['id']}/close/", {"reason": "done"}, format="json")
    assert closed.json()["status"] == "closed"


@pytest.mark.parametrize(("payload", "field"), [
    ({"code": "no spaces"}, "code"), ({"target_enrolment": 0}, "target_enrolment"),
    ({"target_enrolment": "many"}, "target_enrolment"), ({"time_zone": "Nowhere"}, "time_zone"),
    ({"name": "x" * 201}, "name"), ({"code": None}, "code"),
])
def test_bad_site_input_gets_field_errors_and_saves_nothing(admin, in_tenant, world, payload, field):
    response = admin.post("/api/v1/sites/", {**SITE, **payload}, format="json")
    assert field in _assert_error_shape(response, 400)["fields"]
    in_tenant(world.alpha)
    assert not Site.objects.exists()


def test_bad_checklist_input(admin):
    site = _create(admin)
    _assert_error_shape(admin.post(f"/api/v1/sites/{site['id']}/checklist/", {}, format="json"), 400)
    future = (dt.date.today() + dt.timedelta(days=10)).isoformat()
    error = _assert_error_shape(admin.post(f"/api/v1/sites/{site['id']}/checklist/",
                                           {"contract_signed": future}, format="json"), 400)
    assert "contract_signed" in error["fields"]
    error = _assert_error_shape(admin.post(f"/api/v1/sites/{site['id']}/checklist/",
                                           {"staff_trained": "31/02/2026"}, format="json"), 400)
    assert "staff_trained" in error["fields"]


@pytest.mark.parametrize("role", ["coordinator", "monitor", "investigator", "data_manager", "statistician",
                                  "viewer"])
def test_only_tenant_admins_change_sites(api, world, email_of, admin, role):
    site = _create(admin)
    client = api(world.alpha, email_of(role, "alpha"))
    _assert_error_shape(client.post("/api/v1/sites/", {**SITE, "code": "XX1"}, format="json"), 403)
    for path in ("checklist/", "activate/", "close/", "staff/"):
        response = client.post(f"/api/v1/sites/{site['id']}/{path}", {"reason": "x"}, format="json")
        assert response.status_code in (403, 404), (path, response.status_code)


def test_site_scoping_on_every_read_endpoint(api, world, email_of, admin):
    mine, other = _create(admin, code="MINE"), _create(admin, code="OTHER")
    coordinator_id = world.users[email_of("coordinator", "alpha")].pk
    response = admin.post(f"/api/v1/sites/{mine['id']}/staff/",
                          {"user": coordinator_id, "role": "coordinator", "is_primary": True}, format="json")
    assert response.status_code == 201, response.content
    coordinator = api(world.alpha, email_of("coordinator", "alpha"))
    assert [s["code"] for s in coordinator.get("/api/v1/sites/").json()["results"]] == ["MINE"]
    assert coordinator.get(f"/api/v1/sites/{mine['id']}/").status_code == 200
    assert coordinator.get(f"/api/v1/sites/{mine['id']}/staff/").status_code == 200
    _assert_error_shape(coordinator.get(f"/api/v1/sites/{other['id']}/"), 404)
    _assert_error_shape(coordinator.get(f"/api/v1/sites/{other['id']}/staff/"), 404)
    investigator = api(world.alpha, email_of("investigator", "alpha"))
    assert investigator.get("/api/v1/sites/").json()["results"] == []
    data_manager = api(world.alpha, email_of("data_manager", "alpha"))
    assert {s["code"] for s in data_manager.get("/api/v1/sites/").json()["results"]} == {"MINE", "OTHER"}


def test_sites_never_cross_tenants(api, world, email_of, admin):
    site = _create(admin)
    beta_admin = api(world.beta, email_of("tenant_admin", "beta"))
    assert beta_admin.get("/api/v1/sites/").json()["results"] == []
    _assert_error_shape(beta_admin.get(f"/api/v1/sites/{site['id']}/"), 404)
    _assert_error_shape(beta_admin.post(f"/api/v1/sites/{site['id']}/activate/"), 404)


def test_staff_assignment_errors(admin, world, email_of, in_tenant):
    site = _create(admin)
    foreign_user = world.users[email_of("coordinator", "beta")].pk
    error = _assert_error_shape(admin.post(f"/api/v1/sites/{site['id']}/staff/",
                                           {"user": foreign_user, "role": "coordinator"}, format="json"), 400)
    assert "user" in error["fields"]
    viewer = world.users[email_of("viewer", "alpha")].pk
    _assert_error_shape(admin.post(f"/api/v1/sites/{site['id']}/staff/",
                                   {"user": viewer, "role": "coordinator"}, format="json"), 409, "role_mismatch")
    _assert_error_shape(admin.post(f"/api/v1/sites/{site['id']}/staff/",
                                   {"user": "abc", "role": "boss"}, format="json"), 400)
    in_tenant(world.alpha)
    assert not SiteStaff.objects.exists()


def test_ethics_document_with_a_long_extension_is_accepted(admin):
    site = _create(admin)
    document = SimpleUploadedFile("a." + "x" * 150, b"%PDF-1.4", content_type="application/pdf")
    response = admin.post(f"/api/v1/sites/{site['id']}/checklist/", {"ethics_document": document},
                          format="multipart")
    assert response.status_code == 200, response.content
    assert "ethics_document" not in response.json()["checklist_missing"]


def test_site_staff_list_is_paged_like_every_list(admin, world, email_of):
    site = _create(admin)
    for role in ("coordinator", "monitor", "investigator"):
        response = admin.post(f"/api/v1/sites/{site['id']}/staff/",
                              {"user": world.users[email_of(role, "alpha")].pk, "role": role}, format="json")
        assert response.status_code == 201, response.content
    first = admin.get(f"/api/v1/sites/{site['id']}/staff/?page_size=2").json()
    assert first["count"] == 3 and len(first["results"]) == 2 and first["next"] and first["previous"] is None
    second = admin.get(first["next"]).json()
    assert len(second["results"]) == 1
    assert {s["email"] for s in first["results"] + second["results"]} == {
        email_of(role, "alpha") for role in ("coordinator", "monitor", "investigator")}
    _assert_error_shape(admin.get(f"/api/v1/sites/{site['id']}/staff/?page=9"), 404)
