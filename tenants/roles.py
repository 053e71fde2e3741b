"""Roles a user can hold in a tenant."""

from django.db import models
from django.utils.translation import gettext_lazy as _


class Role(models.TextChoices):
    TENANT_ADMIN = "tenant_admin", _("Sponsor (tenant admin)")
    COORDINATOR = "coordinator", _("Site coordinator")
    MONITOR = "monitor", _("Monitor")
    INVESTIGATOR = "investigator", _("Investigator")
    DATA_MANAGER = "data_manager", _("Data manager")
    STATISTICIAN = "statistician", _("Statistician")
    VIEWER = "viewer", _("Viewer")


# Roles that see every site of the tenant; the others are scoped to their assigned
# sites once site assignment exists (see tenants.selectors.membership_site_scope).
ALL_SITES_ROLES = frozenset({Role.TENANT_ADMIN, Role.DATA_MANAGER, Role.STATISTICIAN})
