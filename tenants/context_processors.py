from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest


def tenant(request: HttpRequest) -> dict[str, Any]:
    current = getattr(request, "tenant", None)
    is_public = current is None or current.schema_name == settings.PUBLIC_SCHEMA_NAME
    return {
        "current_tenant": None if is_public else current,
        "membership": getattr(request, "membership", None),
        "is_public_site": is_public,
    }
