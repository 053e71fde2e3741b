"""Error pages: JSON in the API's error shape under /api/, HTML elsewhere."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from config.api.errors import api_not_found, api_server_error, error_body


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
    from django.http import HttpResponseBadRequest, JsonResponse
    from django.utils.translation import gettext as _

    if isinstance(exception, RequestDataTooBig | TooManyFieldsSent | TooManyFilesSent):
        # Too large, like the entry and form endpoints' own limit: 413, the same code.
        message = _("The request is too large.")
        if request.path.startswith("/api/"):
            return JsonResponse(error_body("payload_too_large", message), status=413)
        return HttpResponse(message, status=413, content_type="text/plain; charset=utf-8")
    if request.path.startswith("/api/"):
        return JsonResponse(error_body("bad_request", _("The request could not be read (too large or malformed).")),
                            status=400)
    return HttpResponseBadRequest(_("The request could not be read (too large or malformed)."))


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if request.path.startswith("/api/"):
        return api_not_found(request, exception)
    return render(request, "404.html", status=404)


def forbidden(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if request.path.startswith("/api/"):
        from django.http import JsonResponse
        from django.utils.translation import gettext as _

        return JsonResponse(error_body("permission_denied", _("You may not do this.")), status=403)
    return render(request, "403.html", status=403)


def server_error(request: HttpRequest) -> HttpResponse:
    if request.path.startswith("/api/"):
        return api_server_error(request)
    return render(request, "500.html", status=500)
