"""Role checks for the API. Site-level scoping is applied by selectors through
tenants.selectors.membership_site_scope."""

from __future__ import annotations

from typing import Any

from django.utils.translation import gettext_lazy as _
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from tenants.roles import Role


def request_membership(request: Request) -> Any:
    return getattr(request._request, "membership", None)


class IsTenantMember(BasePermission):
    message = _("You are not a member of this organisation.")

    def has_permission(self, request: Request, view: Any) -> bool:
        return bool(request.user and request.user.is_authenticated and request_membership(request))


def role_required(*roles: Role) -> type[BasePermission]:
    allowed = frozenset(roles)

    class HasRole(IsTenantMember):
        message = _("Your role does not allow this.")

        def has_permission(self, request: Request, view: Any) -> bool:
            membership = request_membership(request)
            return super().has_permission(request, view) and membership.role in allowed

    HasRole.__name__ = "HasRole_" + "_".join(sorted(allowed))
    return HasRole


IsTenantAdmin = role_required(Role.TENANT_ADMIN)
