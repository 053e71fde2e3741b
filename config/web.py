"""Helpers of the tenant web pages (the API's own are in config/api/permissions.py)."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest


def request_member(request: HttpRequest) -> Any:
    """The signed-in user's membership of this request's tenant (set by the tenant
    middleware); anyone else gets the 403 page."""
    membership = getattr(request, "membership", None)
    if membership is None:
        raise PermissionDenied
    return membership
