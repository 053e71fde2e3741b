"""The consortium page (public host): for members with a consortium role, their consortia,
the participating organisations, the pooled runs with their files, and (coordinators) a
button that starts a run. Thin: the rules are in exports.pooling.services."""

from __future__ import annotations

from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth import logout
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from config.errors import DomainError
from exports.pooling import selectors, services
from exports.pooling.models import AgreementStatus, Consortium, ConsortiumRole


def consortia_page(request: HttpRequest) -> HttpResponse:
    if not request.user.is_authenticated:
        return HttpResponseRedirect("/consortia/login/?" + urlencode({"next": request.get_full_path()}))
    if request.method == "POST":
        consortium = Consortium.objects.filter(slug=request.POST.get("consortium", "")).first()
        try:
            if consortium is None:
                raise DomainError("not_found", _("No such consortium."))
            services.pooled_run_start(user=request.user, consortium=consortium)
            messages.success(request, _("Pooled run queued."))
        except DomainError as error:
            messages.error(request, str(error.message))
        return HttpResponseRedirect("/consortia/")
    rows = []
    for consortium in selectors.consortia_of(user=request.user):
        role = selectors.member_role(user=request.user, consortium=consortium)
        rows.append({
            "consortium": consortium, "role": role,
            "can_start": role == ConsortiumRole.COORDINATOR,
            "agreements": [a for a in selectors.agreements_of(consortium=consortium).order_by("tenant__name")
                           if a.status == AgreementStatus.ACTIVE],
            "runs": list(selectors.runs_of(consortium=consortium)[:20]),
        })
    return render(request, "pooling/consortia.html", {"rows": rows})


@require_POST
def consortia_logout(request: HttpRequest) -> HttpResponse:
    logout(request)
    return HttpResponseRedirect("/consortia/login/?next=/consortia/")
