"""Reads of the tenants app."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import QuerySet
from django_tenants.utils import get_public_schema_name

from tenants.models import ApiToken, Tenant, TenantMembership, TenantStatus, User
from tenants.roles import ALL_SITES_ROLES


def tenants_live() -> QuerySet[Tenant]:
    """Tenants whose periodic jobs run: every tenant that is not suspended."""
    return Tenant.objects.exclude(schema_name=get_public_schema_name()).exclude(
        status=TenantStatus.SUSPENDED
    )


def membership_for(*, user: User, tenant: Tenant) -> TenantMembership | None:
    if not user.is_authenticated:
        return None
    return (
        TenantMembership.objects.select_related("tenant")
        .filter(user=user, tenant=tenant, is_active=True)
        .first()
    )


def memberships_of_user(*, user: User) -> QuerySet[TenantMembership]:
    return (
        TenantMembership.objects.select_related("tenant")
        .filter(user=user, is_active=True)
        .exclude(tenant__status=TenantStatus.SUSPENDED)
        .order_by("tenant__name")
    )


def members_of_tenant(
    *, tenant: Tenant, role: str | None = None, search: str | None = None,
    include_inactive: bool = True,
) -> QuerySet[TenantMembership]:
    """Always filtered by `tenant`: a member list never mixes tenants."""
    qs = TenantMembership.objects.select_related("user", "invitation").filter(tenant=tenant)
    if role:
        qs = qs.filter(role=role)
    search = (search or "").replace("\x00", "").strip()
    if search:
        qs = qs.filter(user__email__icontains=search) | qs.filter(display_name__icontains=search)
    if not include_inactive:
        qs = qs.filter(is_active=True)
    return qs.order_by("user__email", "pk")


def member_get(*, tenant: Tenant, membership_id: int) -> TenantMembership | None:
    return members_of_tenant(tenant=tenant).filter(pk=membership_id).first()


def membership_by_id(*, membership_id: int) -> TenantMembership | None:
    return TenantMembership.objects.select_related("user", "tenant").filter(pk=membership_id, is_active=True).first()


def member_user(*, tenant: Tenant, user_id: int) -> User | None:
    """An active member's account, looked up only among this tenant's members."""
    membership = TenantMembership.objects.select_related("user").filter(
        tenant=tenant, user_id=user_id, is_active=True).first()
    return membership.user if membership else None


def token_for_key(*, raw_key: str) -> ApiToken | None:
    return (
        ApiToken.objects.select_related("user", "tenant")
        .filter(digest=ApiToken.digest_of(raw_key))
        .first()
    )


@dataclass(frozen=True)
class SiteScope:
    """Which sites a membership may see. `site_ids is None` means every site.

    This is the hook for site-level scoping: the follow-up engine will fill
    `site_ids` from site staff assignments, and its selectors filter by it."""

    all_sites: bool
    site_ids: frozenset[int] | None = None


def membership_site_scope(*, membership: TenantMembership) -> SiteScope:
    if membership.role in ALL_SITES_ROLES:
        return SiteScope(all_sites=True)
    # No site assignments exist yet: a scoped role sees no site until assigned.
    return SiteScope(all_sites=False, site_ids=frozenset())


# The tenants `manage.py seed_demo` creates (development only).
DEMO_SLUGS = ("demo-hospital", "demo-device")


def demo_tenants_and_members() -> list[tuple[Tenant, dict[str, User]]]:
    """Each demo tenant with its demo user per role (emails <role>@<slug>.test), for the
    clinical demo seeds of other apps."""
    result = []
    for tenant in Tenant.objects.filter(slug__in=DEMO_SLUGS).order_by("slug"):
        members = {m.role: m.user for m in TenantMembership.objects.filter(tenant=tenant).select_related("user")
                   if m.user.email.endswith(f"@{tenant.slug}.test")}
        result.append((tenant, members))
    return result
