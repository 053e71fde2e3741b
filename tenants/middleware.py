"""Host routing, session binding, language and time zone for each request."""

from __future__ import annotations

import zoneinfo
from collections.abc import Callable

import structlog
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.http import HttpRequest, HttpResponse, HttpResponseNotFound, JsonResponse
from django.shortcuts import render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone, translation
from django_tenants.middleware.main import TenantMainMiddleware

from config.api.errors import error_body
from config.observability import tag_tenant
from tenants.auth import SESSION_TENANT_KEY, is_public_request, public_member, session_tenant_key
from tenants.models import TenantStatus
from tenants.selectors import membership_for
from tenants.services import public_home_url


class TenantHostMiddleware(TenantMainMiddleware):
    """django-tenants' host routing. An unknown host gets a 404 that names nothing: not
    the host, not whether a tenant of a similar name exists; only a way back home."""

    def no_tenant_found(self, request: HttpRequest, hostname: str) -> HttpResponse:
        # The locale middleware never runs for this request: choose the language here
        # (cookie, then Accept-Language), and give it back afterwards.
        with translation.override(translation.get_language_from_request(request, check_path=False)):
            message = translation.gettext("No organisation at this address.")
            if request.path.startswith("/api/"):
                return JsonResponse(error_body("not_found", message), status=404)
            # No request context: the session, user and tenant this page would show are unknown.
            return HttpResponseNotFound(render_to_string("tenants/unknown_host.html", {
                "message": message, "home_url": public_home_url()}))

    def process_request(self, request: HttpRequest) -> HttpResponse | None:
        response: HttpResponse | None = super().process_request(request)
        if response is not None:
            return response
        tenant = request.tenant  # type: ignore[attr-defined]
        if tenant.schema_name != settings.PUBLIC_SCHEMA_NAME:
            structlog.contextvars.bind_contextvars(tenant=tenant.slug)
            if settings.SENTRY_ENABLED:
                tag_tenant(tenant.slug)
        # A suspended tenant is closed by TenantLocaleMiddleware, once the language is known.
        return None


def _suspended_response(request: HttpRequest) -> HttpResponse:
    message = translation.gettext("This organisation's account is suspended.")
    if request.path.startswith("/api/"):
        return JsonResponse(error_body("tenant_suspended", message), status=403)
    return render(request, "tenants/suspended.html", {"message": message, "home_url": public_home_url()},
                  status=403)


def _open_while_suspended(request: HttpRequest) -> bool:
    """Signing out and switching language still work on a suspended tenant's host."""
    return request.method == "POST" and request.path in (reverse("logout"), reverse("set_language"))


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
    Time zone: the tenant's (data is stored in UTC). Both hold for this request only.
    Also closes a suspended tenant's host, in the language just chosen."""

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
        request.LANGUAGE_CODE = language
        tz_name = getattr(tenant, "time_zone", "") or "UTC"
        try:
            timezone.activate(zoneinfo.ZoneInfo(tz_name))
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            timezone.activate(zoneinfo.ZoneInfo("UTC"))
        # override, not activate: the thread's next request, which may answer before any
        # language is chosen, must not inherit this one's.
        try:
            with translation.override(language):
                if getattr(tenant, "status", None) == TenantStatus.SUSPENDED and not _open_while_suspended(request):
                    response = _suspended_response(request)
                else:
                    response = self.get_response(request)
        finally:
            timezone.deactivate()
        response.headers.setdefault("Content-Language", language)
        return response
