"""Auth plumbing only (no business logic): bind every new session to its host."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.signals import user_logged_in
from django.dispatch import receiver
from django.http import HttpRequest

from tenants.auth import SESSION_TENANT_KEY, session_tenant_key


@receiver(user_logged_in, dispatch_uid="suifang_bind_session_to_tenant")
def bind_session_to_tenant(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    if request is not None and hasattr(request, "session"):
        request.session[SESSION_TENANT_KEY] = session_tenant_key(request)
