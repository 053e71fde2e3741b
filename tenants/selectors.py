"""Reads of the tenants app."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db import connection
from django.db.models import QuerySet
from django_tenants.utils import get_public_schema_name

from config.db import execute_prepared, instance_from_row
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


def _columns(model: Any) -> tuple[str, ...]:
    return tuple(f.attname for f in model._meta.concrete_fields)


_TOKEN_COLUMNS, _USER_COLUMNS, _MEMBERSHIP_COLUMNS = _columns(ApiToken), _columns(User), _columns(TenantMembership)
_TOKEN_SQL = (  # column names come from the models, never from input
    "SELECT " + ", ".join([f"k.{c}" for c in _TOKEN_COLUMNS] + [f"u.{c}" for c in _USER_COLUMNS]  # noqa: S608
                          + [f"m.{c}" for c in _MEMBERSHIP_COLUMNS])
    + f" FROM {ApiToken._meta.db_table} k JOIN {User._meta.db_table} u ON u.id = k.user_id"
    f" LEFT JOIN {TenantMembership._meta.db_table} m ON m.user_id = k.user_id AND m.tenant_id = %(tenant)s"
    " AND m.is_active WHERE k.digest = %(digest)s")


def token_with_membership(*, raw_key: str, tenant: Tenant) -> tuple[ApiToken, TenantMembership | None] | None:
    """The token of `raw_key` with its user, and that user's active membership of `tenant`
    (None when there is none), in one prepared statement: every API request runs it. The
    token's own tenant is left to the caller to compare (token.tenant_id); `token.tenant`
    is set only when it is `tenant`."""
    with connection.cursor() as cursor:
        execute_prepared(cursor, _TOKEN_SQL, {"digest": ApiToken.digest_of(raw_key), "tenant": tenant.pk})
        row = cursor.fetchone()
    if row is None:
        return None
    first, second = len(_TOKEN_COLUMNS), len(_TOKEN_COLUMNS) + len(_USER_COLUMNS)
    token = instance_from_row(ApiToken, _TOKEN_COLUMNS, row[:first])
    token.user = instance_from_row(User, _USER_COLUMNS, row[first:second])
    if token.tenant_id == tenant.pk:
        token.tenant = tenant
    membership = None
    if row[second] is not None:
        membership = instance_from_row(TenantMembership, _MEMBERSHIP_COLUMNS, row[second:])
        membership.user, membership.tenant = token.user, tenant
    return token, membership


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
