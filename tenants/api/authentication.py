"""REST authentication bound to the tenant of the request's host."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils import timezone
from django.utils.translation import gettext as _
from rest_framework import exceptions
from rest_framework.authentication import (
    BaseAuthentication,
    SessionAuthentication,
    get_authorization_header,
)
from rest_framework.request import Request

from tenants.auth import is_public_request
from tenants.models import ApiToken
from tenants.selectors import token_with_membership

_LAST_USED_RESOLUTION = timedelta(minutes=1)


class TenantTokenAuthentication(BaseAuthentication):
    """`Authorization: Token sf_...`. A token works only on the host of the tenant it
    was issued in, and only while its user is an active member there."""

    keyword = "Token"

    def authenticate(self, request: Request) -> tuple[Any, ApiToken] | None:
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() not in (b"token", b"bearer"):
            return None
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed(_("Invalid token header."))
        try:
            raw = parts[1].decode()
        except UnicodeError as exc:
            raise exceptions.AuthenticationFailed(_("Invalid token header.")) from exc
        django_request = request._request
        if is_public_request(django_request):
            raise exceptions.AuthenticationFailed(_("Invalid or revoked token."))
        tenant = django_request.tenant  # type: ignore[attr-defined]
        found = token_with_membership(raw_key=raw, tenant=tenant)
        if found is None:
            raise exceptions.AuthenticationFailed(_("Invalid or revoked token."))
        token, membership = found
        if token.tenant_id != tenant.pk:
            raise exceptions.AuthenticationFailed(_("This token is not valid for this organisation."))
        if token.expires and token.expires < timezone.now():
            raise exceptions.AuthenticationFailed(_("This token has expired."))
        if not token.user.is_active:
            raise exceptions.AuthenticationFailed(_("This account is disabled."))
        if membership is None:
            raise exceptions.AuthenticationFailed(_("You are not a member of this organisation."))
        django_request.membership = membership  # type: ignore[attr-defined]
        now = timezone.now()
        if token.last_used is None or now - token.last_used > _LAST_USED_RESOLUTION:
            ApiToken.objects.filter(pk=token.pk).update(last_used=now)
        return token.user, token

    def authenticate_header(self, request: Request) -> str:
        return self.keyword


class TenantSessionAuthentication(SessionAuthentication):
    """Session auth. TenantMembershipMiddleware has already turned a session from another
    host, or of a non-member, into an anonymous user."""
