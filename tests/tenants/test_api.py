"""REST API: endpoints, role checks, the error shape and bad input."""

from __future__ import annotations

import pytest

from tenants.models import TenantMembership, User
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db


def _assert_error_shape(response, status: int, code: str | None = None) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "fields"}
    assert body["error"]["message"]
    if code:
        assert body["error"]["code"] == code
    return body["error"]


def test_me_lists_the_users_memberships(api, world):
    body = api(world.alpha, "both@example.org").get("/api/v1/me/").json()
    assert body["user"]["email"] == "both@example.org"
    assert body["current_role"] == "monitor"
    assert {m["tenant_slug"] for m in body["memberships"]} == {"alpha", "beta"}
    assert "password" not in str(body)


def test_tenant_info(api, world, email_of):
    body = api(world.alpha, email_of("viewer", "alpha")).get("/api/v1/tenant/").json()
    assert body == {
        "slug": "alpha", "name": "Alpha Org", "kind": "hospital", "status": "trial",
        "time_zone": "Asia/Shanghai", "default_language": "zh-hans", "created": body["created"],
    }


def test_anonymous_gets_401_in_the_error_shape(api, world):
    error = _assert_error_shape(api(world.alpha).get("/api/v1/me/"), 401, "not_authenticated")
    assert error["fields"] == {}


@pytest.mark.parametrize("role", ["coordinator", "monitor", "investigator", "data_manager",
                                  "statistician", "viewer"])
def test_only_tenant_admins_see_or_invite_members(api, world, email_of, role):
    client = api(world.alpha, email_of(role, "alpha"))
    _assert_error_shape(client.get("/api/v1/members/"), 403, "permission_denied")
    response = client.post("/api/v1/members/", {"email": "x@example.org", "role": "viewer"}, format="json")
    _assert_error_shape(response, 403)
    assert not User.objects.filter(email="x@example.org").exists()


def test_member_list_pages_and_filters(api, world, email_of):
    client = api(world.alpha, email_of("tenant_admin", "alpha"))
    first = client.get("/api/v1/members/?page_size=3").json()
    assert first["count"] == 8 and len(first["results"]) == 3 and first["next"]
    second = client.get(first["next"].replace("http://alpha.localhost", "")).json()
    assert {r["id"] for r in first["results"]}.isdisjoint({r["id"] for r in second["results"]})
    only = client.get("/api/v1/members/?role=coordinator").json()
    assert [r["email"] for r in only["results"]] == [email_of("coordinator", "alpha")]
    found = client.get("/api/v1/members/?search=STATISTICIAN").json()
    assert [r["role"] for r in found["results"]] == ["statistician"]


@pytest.mark.parametrize("query", ["role=pharmacist", "page=999", "page=abc", "page_size=-1"])
def test_member_list_bad_query_gets_4xx_not_500(api, world, email_of, query):
    response = api(world.alpha, email_of("tenant_admin", "alpha")).get(f"/api/v1/members/?{query}")
    if query == "page_size=-1":
        assert response.status_code == 200  # DRF falls back to the default page size
    else:
        _assert_error_shape(response, 400 if query.startswith("role") else 404)


def test_invite_creates_a_pending_member_and_emails_a_working_link(
        api, web, world, email_of, smtp_server, django_capture_on_commit_callbacks):
    client = api(world.alpha, email_of("tenant_admin", "alpha"))
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/api/v1/members/", {"email": "New.Nurse@Example.org", "role": "coordinator",
                                                    "full_name": "李护士"}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["email"] == "new.nurse@example.org" and body["invitation_pending"] is True
    assert len(smtp_server.messages) == 1
    message = smtp_server.messages[0]
    assert message["To"] == "new.nurse@example.org"
    text = message.get_payload(decode=True).decode()
    link = next(word for word in text.split() if "/invite/" in word)
    assert link.startswith("http://alpha.localhost/invite/")

    path = link.replace("http://alpha.localhost", "")
    # Pending until accepted: no sign-in yet.
    assert not TenantMembership.objects.get(user__email="new.nurse@example.org").is_active
    page = web(world.alpha)
    opened = page.get(path)
    # The token leaves the URL at once (logs, Referer, history never see it again).
    assert opened.status_code == 302 and opened["Location"] == "/invite/accept/"
    accept = page.post("/invite/accept/", {"full_name": "李护士", "password": "a-good-new-pass-1",
                                           "password_again": "a-good-new-pass-1"})
    assert accept.status_code == 302
    login = web(world.alpha).post("/login/", {"email": "new.nurse@example.org", "password": "a-good-new-pass-1"})
    assert login.status_code == 302
    # The link works once.
    english = web(world.alpha)
    english.cookies["django_language"] = "en"
    english.get(path)
    again = english.post("/invite/accept/", {"password": "another-pass-123", "password_again": "another-pass-123"})
    assert again.status_code == 404 and "invalid or has expired" in again.content.decode()


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"email": "not-an-email", "role": "viewer"}, "email"),
        ({"email": "a@example.org", "role": "overlord"}, "role"),
        ({"role": "viewer"}, "email"),
        ({"email": "a@example.org"}, "role"),
        ({"email": "a" * 250 + "@example.org", "role": "viewer"}, "email"),
        ({"email": "a@example.org", "role": "viewer", "full_name": "n" * 151}, "full_name"),
        ({"email": ["a@example.org"], "role": "viewer"}, "email"),
    ],
)
def test_invite_bad_input_gets_field_errors_and_saves_nothing(api, world, email_of, payload, field):
    before = TenantMembership.objects.count()
    response = api(world.alpha, email_of("tenant_admin", "alpha")).post("/api/v1/members/", payload, format="json")
    error = _assert_error_shape(response, 400, "invalid")
    assert field in error["fields"]
    assert TenantMembership.objects.count() == before


def test_invite_malformed_json_is_a_400(api, world, email_of):
    client = api(world.alpha, email_of("tenant_admin", "alpha"))
    response = client.generic("POST", "/api/v1/members/", "{not json", content_type="application/json")
    _assert_error_shape(response, 400, "parse_error")


def test_inviting_an_existing_member_is_a_409(api, world, email_of):
    client = api(world.alpha, email_of("tenant_admin", "alpha"))
    response = client.post("/api/v1/members/", {"email": email_of("viewer", "alpha"), "role": "monitor"}, format="json")
    error = _assert_error_shape(response, 409, "already_member")
    assert "email" in error["fields"]
    assert TenantMembership.objects.get(user__email=email_of("viewer", "alpha"), tenant=world.alpha).role == "viewer"


def test_inviting_an_existing_account_reveals_nothing_and_needs_their_own_sign_in(
        api, web, world, email_of, smtp_server, django_capture_on_commit_callbacks):
    from tenants.models import User

    email = email_of("statistician", "beta")
    User.objects.filter(email=email).update(full_name="Name set by beta")
    client = api(world.alpha, email_of("tenant_admin", "alpha"))
    with django_capture_on_commit_callbacks(execute=True):
        known = client.post("/api/v1/members/", {"email": email, "role": "statistician", "full_name": "Stats"},
                            format="json").json()
        unknown = client.post("/api/v1/members/", {"email": "nobody-yet@example.org", "role": "statistician",
                                                   "full_name": "Stats"}, format="json").json()
    # The inviter cannot tell an existing account from a new one, nor read its global name.
    assert {k: v for k, v in known.items() if k not in ("id", "email", "created")} == {
        k: v for k, v in unknown.items() if k not in ("id", "email", "created")}
    assert known["full_name"] == "Stats" and known["invitation_pending"] is True
    membership = TenantMembership.objects.get(user__email=email, tenant=world.alpha)
    assert not membership.is_active
    # The invited person accepts by signing in with their existing password, which stays.
    link = next(w for w in smtp_server.messages[0].get_payload(decode=True).decode().split() if "/invite/" in w)
    page = web(world.alpha)
    page.get(link.replace("http://alpha.localhost", ""))
    wrong = page.post("/invite/accept/", {"password": "not-their-password"})
    assert wrong.status_code == 400
    assert page.post("/invite/accept/", {"password": PASSWORD}).status_code == 302
    membership.refresh_from_db()
    assert membership.is_active and User.objects.get(email=email).check_password(PASSWORD)


def test_an_invitation_link_only_works_on_its_own_tenants_host(
        api, web, world, email_of, smtp_server, django_capture_on_commit_callbacks):
    client = api(world.alpha, email_of("tenant_admin", "alpha"))
    with django_capture_on_commit_callbacks(execute=True):
        client.post("/api/v1/members/", {"email": "hopper@example.org", "role": "viewer"}, format="json")
    link = next(w for w in smtp_server.messages[0].get_payload(decode=True).decode().split() if "/invite/" in w)
    on_beta = web(world.beta)
    on_beta.get(link.replace("http://alpha.localhost", ""))
    response = on_beta.post("/invite/accept/", {"password": "a-good-new-pass-1", "password_again": "a-good-new-pass-1"})
    assert response.status_code == 404
    assert not TenantMembership.objects.get(user__email="hopper@example.org").is_active


def test_a_pending_membership_cannot_be_activated_by_the_admin(api, world, email_of):
    client = api(world.alpha, email_of("tenant_admin", "alpha"))
    created = client.post("/api/v1/members/", {"email": "wait@example.org", "role": "viewer"}, format="json").json()
    response = client.patch(f"/api/v1/members/{created['id']}/", {"is_active": True}, format="json")
    _assert_error_shape(response, 409, "invitation_pending")


def test_change_role_and_deactivate(api, world, email_of):
    client = api(world.alpha, email_of("tenant_admin", "alpha"))
    membership = TenantMembership.objects.get(user__email=email_of("viewer", "alpha"), tenant=world.alpha)
    response = client.patch(f"/api/v1/members/{membership.pk}/", {"role": "monitor"}, format="json")
    assert response.status_code == 200 and response.json()["role"] == "monitor"
    response = client.patch(f"/api/v1/members/{membership.pk}/", {"is_active": False}, format="json")
    assert response.json()["is_active"] is False
    _assert_error_shape(client.patch(f"/api/v1/members/{membership.pk}/", {}, format="json"), 400)
    _assert_error_shape(client.patch(f"/api/v1/members/{membership.pk}/", {"role": "boss"}, format="json"), 400)


def test_the_last_admin_cannot_be_demoted(api, world, email_of):
    client = api(world.alpha, email_of("tenant_admin", "alpha"))
    admin = TenantMembership.objects.get(user__email=email_of("tenant_admin", "alpha"), tenant=world.alpha)
    error = _assert_error_shape(
        client.patch(f"/api/v1/members/{admin.pk}/", {"role": "viewer"}, format="json"), 409, "last_admin")
    assert "role" in error["fields"]
    admin.refresh_from_db()
    assert admin.role == "tenant_admin"


def test_a_member_of_another_tenant_is_not_found(api, world, email_of):
    client = api(world.alpha, email_of("tenant_admin", "alpha"))
    foreign = TenantMembership.objects.get(user__email=email_of("viewer", "beta"))
    _assert_error_shape(client.get(f"/api/v1/members/{foreign.pk}/"), 404)
    _assert_error_shape(client.patch(f"/api/v1/members/{foreign.pk}/", {"role": "monitor"}, format="json"), 404)
    foreign.refresh_from_db()
    assert foreign.role == "viewer"


def test_token_bad_input(api, world):
    client = api(world.alpha)
    _assert_error_shape(client.post("/api/v1/auth/token/", {}, format="json"), 400, "invalid")
    error = _assert_error_shape(client.post("/api/v1/auth/token/", {"email": "x", "password": "y"}, format="json"), 400)
    assert "email" in error["fields"]
    _assert_error_shape(client.post("/api/v1/auth/token/", {"email": "both@example.org", "password": "wrong"},
                                    format="json"), 400, "invalid_credentials")


def test_garbage_token_header_is_a_401(api, world):
    client = api(world.alpha)
    for header in ("Token", "Token a b", "Token nonsense", "Bearer \u00ff"):
        client.credentials(HTTP_AUTHORIZATION=header)
        _assert_error_shape(client.get("/api/v1/me/"), 401)


def test_revoked_token_stops_working(api, world, email_of):
    client = api(world.alpha, email_of("coordinator", "alpha"))
    assert client.delete("/api/v1/auth/token/current/").status_code == 204
    _assert_error_shape(client.get("/api/v1/me/"), 401)


def test_repeated_failed_logins_are_locked_out(api, world, settings):
    client = api(world.alpha)
    payload = {"email": "both@example.org", "password": "wrong-password"}
    codes = [client.post("/api/v1/auth/token/", payload, format="json").status_code
             for _ in range(settings.AXES_FAILURE_LIMIT + 1)]
    assert codes[:settings.AXES_FAILURE_LIMIT - 1] == [400] * (settings.AXES_FAILURE_LIMIT - 1)
    assert codes[-1] == 429
    # Locked out even with the right password now.
    right = client.post("/api/v1/auth/token/", {"email": "both@example.org", "password": PASSWORD}, format="json")
    _assert_error_shape(right, 429, "locked_out")


def test_openapi_schema_and_docs_are_served(web, world):
    schema = web(world.alpha).get("/api/schema/")
    assert schema.status_code == 200
    text = schema.content.decode()
    for path in ("/api/v1/me/", "/api/v1/tenant/", "/api/v1/members/", "/api/v1/auth/token/"):
        assert path in text
    docs = web(world.alpha).get("/api/docs/")
    assert docs.status_code == 200
    assert "cdn" not in docs.content.decode().lower()


def test_unknown_api_path_is_a_json_404(api, world, email_of):
    _assert_error_shape(api(world.alpha, email_of("viewer", "alpha")).get("/api/v1/nothing-here/"), 404)


def test_resending_an_invitation_replaces_the_link(api, web, world, email_of, smtp_server,
                                                   django_capture_on_commit_callbacks):
    client = api(world.beta, email_of("tenant_admin", "beta"))
    with django_capture_on_commit_callbacks(execute=True):
        created = client.post("/api/v1/members/", {"email": "late@example.org", "role": "viewer"}, format="json")
    first_link = next(w for w in smtp_server.messages[0].get_payload(decode=True).decode().split() if "/invite/" in w)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/api/v1/members/{created.json()['id']}/resend-invitation/")
    assert response.status_code == 202
    second_link = next(w for w in smtp_server.messages[1].get_payload(decode=True).decode().split() if "/invite/" in w)
    assert first_link != second_link
    page = web(world.beta)
    page.get(first_link.replace("http://beta.localhost", ""))
    old = page.post("/invite/accept/", {"password": "a-good-new-pass-1", "password_again": "a-good-new-pass-1"})
    assert old.status_code == 404
    page.get(second_link.replace("http://beta.localhost", ""))
    new = page.post("/invite/accept/", {"password": "a-good-new-pass-1", "password_again": "a-good-new-pass-1"})
    assert new.status_code == 302


def test_resend_is_refused_for_members_without_a_pending_invitation_and_across_tenants(api, world, email_of):
    client = api(world.beta, email_of("tenant_admin", "beta"))
    own = TenantMembership.objects.get(user__email=email_of("viewer", "beta"), tenant=world.beta)
    _assert_error_shape(client.post(f"/api/v1/members/{own.pk}/resend-invitation/"), 409, "invitation_invalid")
    foreign = TenantMembership.objects.get(user__email=email_of("viewer", "alpha"), tenant=world.alpha)
    _assert_error_shape(client.post(f"/api/v1/members/{foreign.pk}/resend-invitation/"), 404)
    viewer = api(world.beta, email_of("viewer", "beta"))
    _assert_error_shape(viewer.post(f"/api/v1/members/{own.pk}/resend-invitation/"), 403)


def test_deeply_nested_json_is_a_400_not_a_500(api, world):
    response = api(world.alpha).generic("POST", "/api/v1/auth/token/", "[" * 50000, content_type="application/json")
    _assert_error_shape(response, 400, "parse_error")


def test_nul_characters_in_search_are_harmless(api, world, email_of, web):
    client = api(world.alpha, email_of("tenant_admin", "alpha"))
    assert client.get("/api/v1/members/?search=%00").status_code == 200
    page = web(world.alpha)
    page.post("/login/", {"email": email_of("tenant_admin", "alpha"), "password": PASSWORD})
    assert page.get("/members/?q=%00").status_code == 200


def test_forged_forwarded_for_does_not_escape_the_token_rate_limit(api, world):
    client = api(world.alpha)
    codes = [client.post("/api/v1/auth/token/", {"email": f"spray{i}@example.org", "password": "x"}, format="json",
                         HTTP_X_FORWARDED_FOR=f"10.0.0.{i}").status_code for i in range(22)]
    assert codes[-1] == 429


def test_oversized_api_body_gets_the_json_error_shape(api, world, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    response = api(world.alpha).generic("POST", "/api/v1/auth/token/", '{"email": "' + "a" * 5000 + '"}',
                                        content_type="application/json")
    assert _assert_error_shape(response, 413)["code"] == "payload_too_large"  # as the entry endpoints say it


def test_suspended_tenant_answers_the_api_in_the_error_shape(api, world):
    from tenants.models import Tenant

    Tenant.objects.filter(pk=world.beta.pk).update(status="suspended")
    _assert_error_shape(api(world.beta).get("/api/v1/me/"), 403, "tenant_suspended")


def test_an_api_url_without_its_slash_is_a_json_404_not_a_redirect(api, world, web):
    """A 301 makes clients repeat a POST as a GET without its body; pages still redirect."""
    client = api(world.alpha, "tenant_admin@alpha.example.org")
    response = client.post("/api/v1/studies", {"code": "X"}, format="json")
    assert _assert_error_shape(response, 404)["code"] == "not_found"
    page = web(world.alpha).get("/worklist")
    assert page.status_code == 301 and page["Location"].endswith("/worklist/")
