"""Sites: creation, onboarding checklist, activation, staff and site scoping."""

from __future__ import annotations

import datetime as dt

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from config.errors import Conflict, ValidationFailed
from sites import selectors, services
from sites.models import Site, SiteStatus
from tenants.models import TenantMembership

pytestmark = pytest.mark.django_db



def _site(code: str = "BJ01", **overrides):  # type: ignore[no-untyped-def]
    args = {"code": code, "name": "Beijing Site", "institution": "PUMCH", "country_region": "CN",
            "principal_investigator": "Dr Wang", "target_enrolment": 120, "time_zone": "Asia/Shanghai"}
    args.update(overrides)
    return services.site_create(**args)


def _active_site(code: str = "BJ01"):  # type: ignore[no-untyped-def]
    site = _site(code)
    day = dt.date(2026, 1, 5)
    site = services.site_update_checklist(site=site, ethics_approval_date=day, contract_signed=day,
                                          staff_trained=day,
                                          ethics_document=SimpleUploadedFile("e.pdf", b"%PDF", "application/pdf"))
    return services.site_activate(site=site)


def test_site_goes_through_onboarding_to_active(world, in_tenant):
    in_tenant(world.alpha)
    site = _site()
    assert site.status == SiteStatus.INVITED and site.code == "BJ01"
    site = services.site_update_checklist(site=site, ethics_approval_date=dt.date(2026, 1, 5))
    assert site.status == SiteStatus.ONBOARDING
    with pytest.raises(Conflict) as refused:
        services.site_activate(site=site)
    assert set(refused.value.fields) == {"ethics_document", "contract_signed", "staff_trained"}
    pdf = SimpleUploadedFile("ethics.pdf", b"%PDF-1.4 approval", content_type="application/pdf")
    site = services.site_update_checklist(site=site, ethics_document=pdf, contract_signed=dt.date(2026, 1, 6),
                                          staff_trained=dt.date(2026, 1, 7))
    site = services.site_activate(site=site)
    assert site.status == SiteStatus.ACTIVE and site.activated_at is not None
    with pytest.raises(Conflict):
        services.site_update_checklist(site=site, staff_trained=dt.date(2026, 1, 8))
    closed = services.site_close(site=site, reason="Enrolment target reached")
    assert closed.status == SiteStatus.CLOSED


@pytest.mark.parametrize(("overrides", "field"), [
    ({"code": "bad code"}, "code"), ({"code": ""}, "code"), ({"name": ""}, "name"), ({"name": "x" * 201}, "name"),
    ({"target_enrolment": 0}, "target_enrolment"), ({"target_enrolment": "12"}, "target_enrolment"),
    ({"target_enrolment": True}, "target_enrolment"), ({"time_zone": "Mars/Base"}, "time_zone"),
    ({"principal_investigator": " "}, "principal_investigator"),
])
def test_bad_site_input_is_refused_per_field(world, in_tenant, overrides, field):
    in_tenant(world.alpha)
    with pytest.raises(ValidationFailed) as refused:
        _site(**overrides)
    assert field in refused.value.fields
    assert not Site.objects.exists()


def test_duplicate_code_and_bad_checklist_input(world, in_tenant):
    in_tenant(world.alpha)
    site = _site()
    with pytest.raises(ValidationFailed) as dup:
        _site(code="bj01")
    assert "already exists" in dup.value.fields["code"][0]
    with pytest.raises(ValidationFailed) as future:
        services.site_update_checklist(site=site, contract_signed=dt.date.today() + dt.timedelta(days=3))
    assert "contract_signed" in future.value.fields
    exe = SimpleUploadedFile("x.exe", b"MZ", content_type="application/x-msdownload")
    with pytest.raises(ValidationFailed) as bad_type:
        services.site_update_checklist(site=site, ethics_document=exe)
    assert "ethics_document" in bad_type.value.fields
    site.refresh_from_db()
    assert site.status == SiteStatus.INVITED and site.contract_signed is None


def test_sites_are_per_tenant(world, in_tenant):
    in_tenant(world.alpha)
    _site("ALPHA1")
    in_tenant(world.beta)
    assert not Site.objects.filter(code="ALPHA1").exists()
    _site("ALPHA1")  # the same code is free in another tenant


def test_staff_assignment_checks_membership_and_role(world, in_tenant, email_of):
    in_tenant(world.alpha)
    site = _active_site()
    coordinator = world.users[email_of("coordinator", "alpha")]
    viewer = world.users[email_of("viewer", "alpha")]
    outsider = world.users[email_of("coordinator", "beta")]
    staff = services.site_staff_assign(site=site, tenant=world.alpha, user=coordinator, role="coordinator",
                                       is_primary=True)
    assert staff.is_primary and selectors.primary_coordinator_id(site_id=site.pk) == coordinator.pk
    with pytest.raises(Conflict) as mismatch:
        services.site_staff_assign(site=site, tenant=world.alpha, user=viewer, role="coordinator")
    assert mismatch.value.code == "role_mismatch"
    with pytest.raises(Conflict) as foreign:
        services.site_staff_assign(site=site, tenant=world.alpha, user=outsider, role="coordinator")
    assert foreign.value.code == "not_a_member"
    with pytest.raises(Conflict) as again:
        services.site_staff_assign(site=site, tenant=world.alpha, user=coordinator, role="coordinator")
    assert again.value.code == "already_assigned"


def test_site_scoping_by_role(world, in_tenant, email_of):
    in_tenant(world.alpha)
    first, second = _active_site("S1"), _active_site("S2")
    coordinator = world.users[email_of("coordinator", "alpha")]
    monitor = world.users[email_of("monitor", "alpha")]
    services.site_staff_assign(site=first, tenant=world.alpha, user=coordinator, role="coordinator")
    services.site_staff_assign(site=first, tenant=world.alpha, user=monitor, role="monitor")
    services.site_staff_assign(site=second, tenant=world.alpha, user=monitor, role="monitor")

    def membership(email: str) -> TenantMembership:
        return TenantMembership.objects.get(user__email=email, tenant=world.alpha)

    assert set(selectors.sites_visible(membership=membership(email_of("coordinator", "alpha")))) == {first}
    assert set(selectors.sites_visible(membership=membership(email_of("monitor", "alpha")))) == {first, second}
    assert set(selectors.sites_visible(membership=membership(email_of("investigator", "alpha")))) == set()
    for role in ("tenant_admin", "data_manager"):
        assert set(selectors.sites_visible(membership=membership(email_of(role, "alpha")))) == {first, second}
    assert selectors.site_get(membership=membership(email_of("coordinator", "alpha")), site_id=second.pk) is None
