"""Tenant isolation: hosts, tokens and sessions never cross tenants."""

from __future__ import annotations

import pytest

from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db


def _member_emails(response) -> set[str]:  # type: ignore[no-untyped-def]
    return {row["email"] for row in response.json()["results"]}


def test_member_list_on_each_host_holds_only_that_tenants_members(api, world, email_of):
    alpha = api(world.alpha, email_of("tenant_admin", "alpha"))
    beta = api(world.beta, email_of("tenant_admin", "beta"))
    alpha_emails = _member_emails(alpha.get("/api/v1/members/?page_size=200"))
    beta_emails = _member_emails(beta.get("/api/v1/members/?page_size=200"))
    assert email_of("coordinator", "alpha") in alpha_emails
    assert not any(e.endswith("@beta.example.org") for e in alpha_emails)
    assert not any(e.endswith("@alpha.example.org") for e in beta_emails)
    # The person who belongs to both appears in both lists, each time as that tenant's member.
    assert "both@example.org" in alpha_emails and "both@example.org" in beta_emails


def test_token_from_tenant_a_is_rejected_on_tenant_b(api, world, email_of):
    alpha = api(world.alpha, "both@example.org")
    token_header = alpha._credentials["HTTP_AUTHORIZATION"]
    assert alpha.get("/api/v1/me/").status_code == 200

    on_beta = api(world.beta)
    on_beta.credentials(HTTP_AUTHORIZATION=token_header)
    response = on_beta.get("/api/v1/me/")
    # Rejected even though this user is also a member of beta: tokens are per tenant.
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "This token is not valid for this organisation."


def test_token_is_rejected_on_the_public_host(api, world, email_of):
    alpha = api(world.alpha, email_of("coordinator", "alpha"))
    public = api(None)
    public.credentials(HTTP_AUTHORIZATION=alpha._credentials["HTTP_AUTHORIZATION"])
    assert public.get("/api/v1/me/").status_code == 404  # no API on the public host


def test_session_from_tenant_a_is_anonymous_on_tenant_b(web, world):
    alpha = web(world.alpha)
    response = alpha.post("/login/", {"email": "both@example.org", "password": PASSWORD})
    assert response.status_code == 302
    assert alpha.get("/api/v1/me/").status_code == 200

    beta = web(world.beta)
    beta.cookies = alpha.cookies  # replay alpha's session cookie on beta's host
    assert beta.get("/api/v1/me/").status_code in (401, 403)
    page = beta.get("/")
    assert page.status_code == 302 and page["Location"].startswith("/login/")


def test_non_member_cannot_log_in_or_get_a_token(web, api, world, email_of):
    coordinator_of_beta = email_of("coordinator", "beta")
    client = web(world.alpha)
    client.cookies["django_language"] = "en"
    response = client.post("/login/", {"email": coordinator_of_beta, "password": PASSWORD})
    assert response.status_code == 400
    assert "incorrect" in response.content.decode()
    token = api(world.alpha).post("/api/v1/auth/token/",
                                  {"email": coordinator_of_beta, "password": PASSWORD}, format="json")
    assert token.status_code == 400
    assert token.json()["error"]["code"] == "invalid_credentials"


def test_deactivated_member_loses_session_and_token(api, web, world, email_of):
    from tenants.models import TenantMembership

    email = email_of("viewer", "alpha")
    client = api(world.alpha, email)
    assert client.get("/api/v1/tenant/").status_code == 200
    TenantMembership.objects.filter(user__email=email, tenant=world.alpha).update(is_active=False)
    assert client.get("/api/v1/tenant/").status_code == 401


@pytest.mark.parametrize("host", ["nobody.localhost", "alpha.localhost.evil.com", "evil.com",
                                  "spare-x.localhost", "t_alpha.localhost"])
def test_unknown_host_gets_a_404_that_names_nothing(web, host):
    response = web(None, HTTP_HOST=host).get("/login/")
    assert response.status_code == 404
    body = response.content.decode()
    assert "alpha" not in body and "nobody" not in body and "tenant" not in body.lower()
    assert host not in body and host.split(".")[0] not in body


def test_tenant_info_is_the_hosts_tenant(api, world):
    client = api(world.beta, "both@example.org")
    assert client.get("/api/v1/tenant/").json()["slug"] == "beta"


def test_requests_run_in_the_hosts_schema(api, world, email_of):
    """What every request sees as its search path: the tenant's own schema, then public."""
    from django.db import connection

    seen: list[str] = []

    def spy(execute, sql, params, many, context):  # type: ignore[no-untyped-def]
        if sql.startswith("SET search_path"):
            seen.append(sql)
        return execute(sql, params, many, context)

    alpha = api(world.alpha, email_of("coordinator", "alpha"))
    beta = api(world.beta, email_of("coordinator", "beta"))
    with connection.execute_wrapper(spy):
        alpha.get("/api/v1/tenant/")
        alpha_paths = list(seen)
        seen.clear()
        beta.get("/api/v1/tenant/")
        beta_paths = list(seen)
    assert alpha_paths and all("t_beta" not in s for s in alpha_paths)
    assert any("t_alpha" in s for s in alpha_paths)
    assert beta_paths and all("t_alpha" not in s for s in beta_paths)


def test_a_token_request_reads_token_user_and_membership_in_one_statement(api, world, email_of):
    """Every API request authenticates: one prepared statement, not three ORM reads."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client = api(world.alpha, email_of("viewer", "alpha"))
    client.get("/api/v1/tenant/")  # prepares it on this connection
    with CaptureQueriesContext(connection) as sent:
        assert client.get("/api/v1/tenant/").status_code == 200
    auth = [q["sql"] for q in sent.captured_queries
            if "apitoken" in q["sql"] or "tenantmembership" in q["sql"] or q["sql"].startswith("EXECUTE")]
    assert len(auth) == 1, auth


def test_an_expired_token_and_a_disabled_account_are_refused(api, world, email_of):
    from datetime import timedelta

    from django.utils import timezone

    from tenants.models import ApiToken, User

    email = email_of("viewer", "beta")  # beta speaks English
    client = api(world.beta, email)
    assert client.get("/api/v1/tenant/").status_code == 200
    ApiToken.objects.filter(user__email=email).update(expires=timezone.now() - timedelta(seconds=1))
    expired = client.get("/api/v1/tenant/")
    assert expired.status_code == 401 and expired.json()["error"]["message"] == "This token has expired."
    ApiToken.objects.filter(user__email=email).update(expires=None)
    assert client.get("/api/v1/tenant/").status_code == 200
    User.objects.filter(email=email).update(is_active=False)
    disabled = client.get("/api/v1/tenant/")
    assert disabled.status_code == 401 and disabled.json()["error"]["message"] == "This account is disabled."
