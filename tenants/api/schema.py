"""OpenAPI descriptions of our authentication classes (drf-spectacular extensions)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class TenantTokenScheme(OpenApiAuthenticationExtension):
    target_class = "tenants.api.authentication.TenantTokenAuthentication"
    name = "tenantToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "`Token sf_...` from POST /api/v1/auth/token/. Valid only on the host "
                           "of the organisation that issued it.",
        }


class TenantSessionScheme(OpenApiAuthenticationExtension):
    target_class = "tenants.api.authentication.TenantSessionAuthentication"
    name = "tenantSession"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {"type": "apiKey", "in": "cookie", "name": "sessionid",
                "description": "Browser session of this organisation's host (CSRF applies)."}
