"""The operator console: who may provision tenants, and membership changes that go
through tenants.services like everywhere else."""

from __future__ import annotations

import html

import pytest
from django.contrib.auth.models import Permission

from tenants.models import Invitation, Tenant, TenantMembership, User
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db

NEW_TENANT = {"name": "Rogue", "slug": "rogue", "kind": "hospital", "status": "active", "time_zone": "Asia/Shanghai",
              "default_language": "en", "admin_email": "boss@rogue.example.org"}


def _console(web, email: str, *, superuser: bool = False, permissions: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
    if superuser:
        User.objects.create_superuser(email=email, password=PASSWORD)
    else:
        user = User.objects.create_user(email=email, password=PASSWORD, is_staff=True)
        user.user_permissions.set(Permission.objects.filter(codename__in=permissions))
    client = web(None)
    client.cookies["django_language"] = "en"
    assert client.post("/admin/login/?next=/admin/", {"username": email, "password": PASSWORD}).status_code == 302
    return client


def _text(response) -> str:  # type: ignore[no-untyped-def]
    return html.unescape(response.content.decode())


def _active_admins(tenant: Tenant) -> int:
    return TenantMembership.objects.filter(tenant=tenant, role="tenant_admin", is_active=True).count()


def test_staff_without_the_add_permission_cannot_provision_a_tenant(web, world):
    support = _console(web, "support@example.org", permissions=("view_tenant",))
    assert support.get("/admin/tenants/tenant/").status_code == 200
    assert support.get("/admin/tenants/tenant/add/").status_code == 403
    assert support.post("/admin/tenants/tenant/add/", NEW_TENANT).status_code == 403
    assert not Tenant.objects.filter(slug="rogue").exists()
    # The add permission is what opens the page.
    provisioner = _console(web, "provisioner@example.org", permissions=("view_tenant", "add_tenant"))
    assert provisioner.get("/admin/tenants/tenant/add/").status_code == 200


def test_the_console_cannot_edit_memberships_past_the_service(web, world, email_of):
    operator = _console(web, "op-members@example.org", superuser=True)
    admin = TenantMembership.objects.get(tenant=world.beta, user__email=email_of("tenant_admin", "beta"))
    base = "/admin/tenants/tenantmembership/"
    # The change page only shows; posting to it changes nothing.
    page = operator.get(f"{base}{admin.pk}/change/")
    assert page.status_code == 200 and 'name="role"' not in page.content.decode()
    operator.post(f"{base}{admin.pk}/change/", {"user": admin.user_id, "tenant": world.alpha.pk, "role": "viewer",
                                               "is_active": ""})
    admin.refresh_from_db()
    assert (admin.role, admin.is_active, admin.tenant_id) == ("tenant_admin", True, world.beta.pk)
    # No bare adding or deleting either: adding skips the invitation, deleting could drop the last admin.
    assert operator.get(f"{base}add/").status_code == 403
    assert operator.post(f"{base}{admin.pk}/delete/", {"post": "yes"}).status_code == 403
    assert TenantMembership.objects.filter(pk=admin.pk).exists()


def test_console_actions_apply_the_services_rules_and_say_why_they_refuse(web, world, email_of):
    operator = _console(web, "op-actions@example.org", superuser=True)
    base = "/admin/tenants/tenantmembership/"
    admin = TenantMembership.objects.get(tenant=world.beta, user__email=email_of("tenant_admin", "beta"))
    viewer = TenantMembership.objects.get(tenant=world.beta, user__email=email_of("viewer", "beta"))

    def act(action: str, *memberships: TenantMembership) -> str:
        response = operator.post(base, {"action": action, "_selected_action": [m.pk for m in memberships]},
                                 follow=True)
        assert response.status_code == 200
        return _text(response)

    # The last active admin can be neither demoted nor deactivated; the others still change.
    page = act("role_viewer", admin, viewer)
    # (the console capitalises messages)
    assert (f"{admin.user.email} at beta was not changed: an organisation needs at least one active sponsor "
            "(tenant admin).") in page.lower()
    assert "Memberships changed: 1." in page
    assert "at least one active sponsor" in act("deactivate", admin)
    assert _active_admins(world.beta) == 1
    assert act("role_monitor", viewer) and TenantMembership.objects.get(pk=viewer.pk).role == "monitor"
    # Only the invited person activates a pending membership.
    pending = TenantMembership.objects.create(user=User.objects.create_user(email="pending-op@example.org"),
                                              tenant=world.beta, role="viewer", is_active=False)
    Invitation.objects.create(membership=pending, digest="x" * 64, expires="2999-01-01T00:00Z")
    assert "has not accepted the invitation yet" in act("activate", pending)
    assert not TenantMembership.objects.get(pk=pending.pk).is_active


def test_staff_without_the_change_permission_get_no_membership_actions(web, world, email_of):
    reader = _console(web, "reader@example.org", permissions=("view_tenantmembership",))
    admin = TenantMembership.objects.get(tenant=world.beta, user__email=email_of("tenant_admin", "beta"))
    listing = reader.get("/admin/tenants/tenantmembership/")
    assert listing.status_code == 200 and 'value="role_viewer"' not in listing.content.decode()
    reader.post("/admin/tenants/tenantmembership/", {"action": "role_viewer", "_selected_action": [admin.pk]})
    assert TenantMembership.objects.get(pk=admin.pk).role == "tenant_admin"


def test_tenant_page_links_to_its_paged_memberships_instead_of_an_inline(web, world, email_of):
    operator = _console(web, "op-page@example.org", superuser=True)
    page = _text(operator.get(f"/admin/tenants/tenant/{world.beta.pk}/change/"))
    assert "memberships-TOTAL_FORMS" not in page  # no inline rows, however many members
    link = f"/admin/tenants/tenantmembership/?tenant__id__exact={world.beta.pk}"
    assert f'href="{link}"' in page
    listing = _text(operator.get(link))
    assert email_of("viewer", "beta") in listing and email_of("viewer", "alpha") not in listing
