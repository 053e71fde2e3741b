"""Authentication: email + password, valid only on hosts where the user is a member."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.hashers import Argon2PasswordHasher
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils.translation import gettext as _
from django_tenants.utils import get_public_schema_name

from tenants.models import TenantMembership, User

SESSION_TENANT_KEY = "suifang_tenant"


def session_tenant_key(request: HttpRequest) -> str:
    """What a session is bound to: the tenant's schema, or public for operators."""
    tenant = getattr(request, "tenant", None)
    return tenant.schema_name if tenant is not None else get_public_schema_name()


def public_member(user: Any) -> bool:
    """Whether a non-operator may be signed in on the public host: a hook named by
    settings.PUBLIC_MEMBER_CHECK (consortium members), so this app imports no other."""
    from django.conf import settings
    from django.utils.module_loading import import_string

    check = getattr(settings, "PUBLIC_MEMBER_CHECK", "")
    return bool(check) and bool(import_string(check)(user))


def is_public_request(request: HttpRequest | None) -> bool:
    tenant = getattr(request, "tenant", None)
    return tenant is None or tenant.schema_name == get_public_schema_name()


class EmailBackend(ModelBackend):
    """On a tenant host only active members may sign in; on the public host only
    platform operators (staff) may. A non-member gets the same answer as a wrong
    password, so membership cannot be probed."""

    def authenticate(
        self, request: HttpRequest | None, username: str | None = None,
        password: str | None = None, email: str | None = None, **kwargs: Any,
    ) -> User | None:
        login = (email or username or "").strip().lower()
        if not login or password is None:
            return None
        user = User.objects.filter(email=login).first()
        if user is None:
            User().set_password(password)  # same cost as a real check: no timing oracle
            return None
        if not user.check_password(password) or not self.user_can_authenticate(user):
            return None
        if request is None or is_public_request(request):
            return user if user.is_staff or public_member(user) else None
        tenant = request.tenant  # type: ignore[attr-defined]
        if not TenantMembership.objects.filter(user=user, tenant=tenant, is_active=True).exists():
            return None
        return user


def client_ip(request: HttpRequest) -> str:
    """The client's address: REMOTE_ADDR, or with NUM_PROXIES trusted proxies in front,
    the address that the outermost trusted proxy saw (same rule as DRF's throttling)."""
    from django.conf import settings

    configured: Any = settings.REST_FRAMEWORK.get("NUM_PROXIES") or 0
    trusted = int(configured)
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    if trusted and forwarded:
        hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
        if hops:
            return hops[-min(trusted, len(hops))]
    return str(request.META.get("REMOTE_ADDR", ""))


def axes_username(request: HttpRequest, credentials: dict[str, Any] | None) -> str:
    credentials = credentials or {}
    value = (credentials.get("email") or credentials.get("username")
             or request.POST.get("email") or request.POST.get("username") or "")
    return str(value).strip().lower()


def lockout_response(
    request: HttpRequest, original_response: HttpResponse | None = None,
    credentials: dict[str, Any] | None = None,
) -> HttpResponse:
    message = _("Too many failed sign-in attempts. Try again in 15 minutes.")
    if request.path.startswith("/api/"):
        return JsonResponse(
            {"error": {"code": "locked_out", "message": message, "fields": {}}}, status=429
        )
    return render(request, "tenants/login.html", {"lockout_message": message,
                                                   "email": axes_username(request, credentials)},
                  status=429)


class FastArgon2PasswordHasher(Argon2PasswordHasher):
    """Still argon2id; cheaper parameters so the test suite's many logins stay quick."""

    time_cost = 1
    memory_cost = 1024
    parallelism = 1
