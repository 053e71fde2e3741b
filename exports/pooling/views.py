"""The consortium pages (public host), for users with a consortium role: the list of
their consortia, and one consortium's page: its protocol and common data elements, the
participating organisations, the pooled runs (paged) with k reached and their files, and
for coordinators the button that starts a run. Thin: the rules are in
exports.pooling.services; a user without a role in the consortium gets a 403 page that
leads back to their list (an unknown consortium gets the same answer, so slugs cannot be
probed). The tenant side (accept, withdraw) is exports.pooling.tenant_views."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth import logout
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from config.errors import DomainError
from exports.pooling import selectors, services
from exports.pooling.messages import run_error_text
from exports.pooling.models import AgreementStatus, Consortium, ConsortiumRole, DataSharingAgreement, PooledRun

RUNS_PAGE_SIZE = 20
PARTICIPANTS_PAGE_SIZE = 25
CONSORTIA_PAGE_SIZE = 25
LIST_URL = "/consortia/"
# PooledRun.status is a plain string (no choices on the model): the page's words for it.
RUN_STATUS_LABELS = {"queued": gettext_lazy("Queued"), "running": gettext_lazy("Running"),
                     "done": gettext_lazy("Done"), "failed": gettext_lazy("Failed")}


def _login_redirect(request: HttpRequest, next_path: str | None = None) -> HttpResponse:
    return HttpResponseRedirect("/consortia/login/?" + urlencode({"next": next_path or request.get_full_path()}))


def _forbidden(request: HttpRequest) -> HttpResponse:
    return render(request, "pooling/forbidden.html", status=403)


def _member_consortium(request: HttpRequest, slug: str) -> tuple[Consortium, str] | None:
    """The consortium and the user's role in it, or None (unknown, or no role)."""
    return selectors.consortium_with_role(user=request.user, slug=slug)


def participants(*, consortium: Consortium) -> list[DataSharingAgreement]:
    """Each organisation's latest agreement, active ones first, then by name. A withdrawn
    organisation stays listed as withdrawn (as the tenant API shows its latest agreement),
    so members can tell why it is missing from later runs; one that withdrew and accepted
    again is listed once, as active."""
    latest: dict[int, DataSharingAgreement] = {}
    for agreement in selectors.agreements_of(consortium=consortium).order_by("tenant_id", "-accepted_at", "-id"):
        latest.setdefault(agreement.tenant_id, agreement)
    return sorted(latest.values(), key=lambda a: (a.status != AgreementStatus.ACTIVE, a.tenant.name.lower()))


def _run_row(run: PooledRun) -> dict[str, Any]:
    manifest = run.manifest if run.status == "done" else {}
    report = (manifest or {}).get("deidentification") or {}
    return {"run": run, "status_label": RUN_STATUS_LABELS.get(run.status, run.status),
            "error_text": run_error_text(run.error) if run.status == "failed" else "",
            "achieved_k": report.get("achieved_k"), "suppressed": report.get("records_suppressed"),
            "files": [f for f in (manifest or {}).get("files") or [] if f.get("name")]}


@require_GET
def consortia_page(request: HttpRequest) -> HttpResponse:
    if not request.user.is_authenticated:
        return _login_redirect(request)
    page = Paginator(selectors.consortia_of(user=request.user).order_by("name", "pk"), CONSORTIA_PAGE_SIZE).get_page(
        request.GET.get("page"))
    rows = [{"consortium": consortium, "role": ConsortiumRole(role).label if role in ConsortiumRole.values else role}
            for consortium in page if (role := consortium.member_role)]  # type: ignore[attr-defined]
    return render(request, "pooling/consortia.html", {"rows": rows, "page": page})


@require_GET
def consortium_page(request: HttpRequest, slug: str) -> HttpResponse:
    if not request.user.is_authenticated:
        return _login_redirect(request)
    found = _member_consortium(request, slug)
    if found is None:
        return _forbidden(request)
    consortium, role = found
    try:
        runs = services.pooled_runs(user=request.user, consortium=consortium)
    except DomainError:  # a role that may not read runs
        return _forbidden(request)
    page = Paginator(runs, RUNS_PAGE_SIZE).get_page(request.GET.get("page"))
    return render(request, "pooling/consortium.html", {
        "consortium": consortium, "role": role,
        "role_label": ConsortiumRole(role).label if role in ConsortiumRole.values else role,
        "can_start": role == ConsortiumRole.COORDINATOR,
        "participants": Paginator(participants(consortium=consortium), PARTICIPANTS_PAGE_SIZE).get_page(
            request.GET.get("participants_page")),
        "page": page, "rows": [_run_row(run) for run in page],
    })


@require_http_methods(["GET", "POST"])
def consortium_run_start(request: HttpRequest, slug: str) -> HttpResponse:
    """The coordinator's button. Any other role gets the 403 page (it has no button). A
    GET (the sign-in page sends a user whose session ended back here) goes to the
    consortium's page, where the button is, instead of an empty 405: nothing is started
    without a click."""
    page = f"{LIST_URL}{slug}/"
    if not request.user.is_authenticated:
        return _login_redirect(request, page)
    if request.method == "GET":
        return HttpResponseRedirect(page + "#runs")
    found = _member_consortium(request, slug)
    if found is None or found[1] != ConsortiumRole.COORDINATOR:
        return _forbidden(request)
    try:
        run = services.pooled_run_start(user=request.user, consortium=found[0])
    except DomainError as error:
        messages.error(request, str(error.message))
    else:
        messages.success(request, _("Pooled run #%(run)d queued.") % {"run": run.pk})
    return HttpResponseRedirect(f"{LIST_URL}{found[0].slug}/#runs")


@require_POST
def consortia_logout(request: HttpRequest) -> HttpResponse:
    logout(request)
    messages.info(request, _("You have signed out."))
    return HttpResponseRedirect("/consortia/login/?next=/consortia/")
