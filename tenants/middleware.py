"""Host routing, session binding, language and time zone for each request."""

from __future__ import annotations

import zoneinfo
from collections.abc import Callable

import structlog
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden, HttpResponseNotFound, JsonResponse
from django.utils import timezone, translation
from django_tenants.middleware.main import TenantMainMiddleware

from config.observability import tag_tenant
from tenants.auth import SESSION_TENANT_KEY, is_public_request, public_member, session_tenant_key
from tenants.models import TenantStatus
from tenants.selectors import membership_for


class TenantHostMiddleware(TenantMainMiddleware):
    """django-tenants' host routing. An unknown host gets a bare 404 that names
    nothing: not the host, not whether a tenant of a similar name exists."""

    def no_tenant_found(self, request: HttpRequest, hostname: str) -> HttpResponse:
        return HttpResponseNotFound("Not Found", content_type="text/plain")

    def process_request(self, request: HttpRequest) -> HttpResponse | None:
        response: HttpResponse | None = super().process_request(request)
        if response is not None:
            return response
        tenant = request.tenant  # type: ignore[attr-defined]
        if tenant.schema_name != settings.PUBLIC_SCHEMA_NAME:
            structlog.contextvars.bind_contextvars(tenant=tenant.slug)
            if settings.SENTRY_ENABLED:
                tag_tenant(tenant.slug)
            if tenant.status == TenantStatus.SUSPENDED:
                if request.path.startswith("/api/"):
                    message = translation.gettext("This organisation's account is suspended.")
                    return JsonResponse({"error": {"code": "tenant_suspended", "message": message, "fields": {}}},
                                        status=403)
                return HttpResponseForbidden(
                    translation.gettext("This organisation's account is suspended."),
                    content_type="text/plain; charset=utf-8",
                )
        return None


class TenantMembershipMiddleware:
    """A session is bound to the host it was created on. A session presented on another
    tenant's host, or by a user who is no longer a member, counts as anonymous.
    Sets `request.membership` (None when there is none)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request.membership = None  # type: ignore[attr-defined]
        user = request.user
        if user.is_authenticated:
            bound_to = request.session.get(SESSION_TENANT_KEY)
            if bound_to != session_tenant_key(request):
                request.user = AnonymousUser()
            elif is_public_request(request):
                # Operators anywhere on the public host; members of a public-host
                # community (consortia) only on their own pages.
                if not user.is_staff and not (
                        request.path.startswith(tuple(settings.PUBLIC_MEMBER_PATH_PREFIXES)) and public_member(user)):
                    request.user = AnonymousUser()
            else:
                membership = membership_for(user=user, tenant=request.tenant)  # type: ignore[attr-defined]
                if membership is None:
                    request.user = AnonymousUser()
                request.membership = membership  # type: ignore[attr-defined]
        if request.user.is_authenticated:
            structlog.contextvars.bind_contextvars(user_id=request.user.pk)
        return self.get_response(request)


class TenantLocaleMiddleware:
    """Language: the user's choice, else the language cookie, else the tenant's default.
    Time zone: the tenant's (data is stored in UTC)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        tenant = getattr(request, "tenant", None)
        supported = {code for code, _name in settings.LANGUAGES}
        user = request.user
        # An explicit switch (the cookie) wins over the saved preference.
        language = (
            request.COOKIES.get(settings.LANGUAGE_COOKIE_NAME, "")
            or (getattr(user, "preferred_language", "") if user.is_authenticated else "")
            or getattr(tenant, "default_language", "")
            or translation.get_language_from_request(request, check_path=False)
        )
        if language not in supported:
            language = settings.LANGUAGE_CODE
        translation.activate(language)
        request.LANGUAGE_CODE = language
        tz_name = getattr(tenant, "time_zone", "") or "UTC"
        try:
            timezone.activate(zoneinfo.ZoneInfo(tz_name))
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            timezone.activate(zoneinfo.ZoneInfo("UTC"))
        try:
            response = self.get_response(request)
        finally:
            timezone.deactivate()
        response.headers.setdefault("Content-Language", language)
        return response
