"""Project-wide middleware that runs before tenant routing."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable

import structlog
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.middleware.common import CommonMiddleware as DjangoCommonMiddleware

from config.db import tenant_connection as connection
from config.health import readiness

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class HealthCheckMiddleware:
    """Answers /healthz and /readyz on any Host: probes address pods by IP."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path == "/healthz":
            return JsonResponse({"status": "ok"})
        if request.path == "/readyz":
            connection.set_schema_to_public()
            ok, checks = readiness()
            return JsonResponse({"status": "ok" if ok else "fail", "checks": checks},
                                status=200 if ok else 503)
        return self.get_response(request)


class RequestIdMiddleware:
    """Gives every request an id (kept from X-Request-ID when sane) and binds it to logs."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        incoming = request.headers.get("X-Request-ID", "")
        request_id = incoming if _REQUEST_ID_RE.match(incoming) else uuid.uuid4().hex
        request.request_id = request_id  # type: ignore[attr-defined]
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        response = self.get_response(request)
        response["X-Request-ID"] = request_id
        return response


class CommonMiddleware(DjangoCommonMiddleware):
    """Django's, except that an API URL without its trailing slash is not redirected: a
    client follows a 301 with a GET and drops the body of its POST or PUT (and in DEBUG
    Django refuses with an error page). The API's JSON 404 answers instead."""

    def should_redirect_with_slash(self, request: HttpRequest) -> bool:
        if request.path_info.startswith("/api/"):
            return False
        return bool(super().should_redirect_with_slash(request))
