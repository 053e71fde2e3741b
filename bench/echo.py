"""The baseline endpoint of bench/form_save.py: DRF with the project's middleware, tenant
routing, token authentication and JSON parsing, doing nothing else. Mounted only by
config.settings.bench when BENCH_ECHO_ENDPOINT=1 (bench/urls_tenant.py), never in
production URLs."""

from __future__ import annotations

from django.urls import include, path
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.api.permissions import IsTenantMember


class EchoView(APIView):
    permission_classes = [IsTenantMember]

    def put(self, request: Request) -> Response:
        values = request.data.get("values") if isinstance(request.data, dict) else None
        return Response({"ok": True, "items": len(values or {})})


urlpatterns = [
    path("api/v1/bench/echo/", EchoView.as_view()),
    path("", include("config.urls_tenant")),
]
