"""Reads of the sites app. Site scoping lives here: every clinical selector filters by
`site_ids_visible` so a coordinator, investigator or monitor only ever sees the sites
they are assigned to."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from sites.models import Site, SiteStaff

# Tenant roles that see every site; the others see their assigned sites only.
ALL_SITES_ROLES = frozenset({"tenant_admin", "data_manager", "statistician", "viewer"})


def site_ids_visible(*, membership: Any) -> frozenset[int] | None:
    """None means every site; otherwise the ids of the sites this member is assigned to."""
    if membership is None:
        return frozenset()
    if membership.role in ALL_SITES_ROLES:
        return None
    # Memoised on the membership, which lives for one request or task: pages and
    # serializers ask once per row, and that must not be one query per row.
    cached: frozenset[int] | None = getattr(membership, "_visible_site_ids", None)
    if cached is None:
        cached = frozenset(SiteStaff.objects.filter(user_id=membership.user_id).values_list("site_id", flat=True))
        membership._visible_site_ids = cached
    return cached


def site_scope_sql(*, membership: Any, column: str) -> tuple[str, dict[str, Any]]:
    """The same rule as site_ids_visible, as a condition for a hand-written query on
    `column` (a trusted column name, never input): "" for every site, else a condition
    with named parameters. Reads the staff table in the same statement unless this
    request already knows the member's sites."""
    if membership is None:
        return "false", {}
    if membership.role in ALL_SITES_ROLES:
        return "", {}
    known = getattr(membership, "_visible_site_ids", None)
    if known is not None:
        return f"{column} = ANY(%(scope_sites)s)", {"scope_sites": sorted(known)}
    return (f"{column} IN (SELECT ss.site_id FROM sites_sitestaff ss WHERE ss.user_id = %(scope_user)s)",  # noqa: S608
            {"scope_user": membership.user_id})


def sites_visible(*, membership: Any) -> QuerySet[Site]:
    ids = site_ids_visible(membership=membership)
    sites = Site.objects.all()
    return sites if ids is None else sites.filter(pk__in=ids)


def site_get(*, membership: Any, site_id: int) -> Site | None:
    return sites_visible(membership=membership).filter(pk=site_id).first()


def site_staff(*, site: Site) -> QuerySet[SiteStaff]:
    return site.staff.select_related("user").order_by("-is_primary", "role", "user__email")


def primary_coordinator_id(*, site_id: int) -> int | None:
    return SiteStaff.objects.filter(site_id=site_id, is_primary=True).values_list("user_id", flat=True).first()
