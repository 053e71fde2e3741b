"""Site-onboarding pages (thin: forms -> sites.services/selectors -> templates).

Every member sees the sites they may see (sites.selectors scoping); only a sponsor
(tenant admin) creates sites, completes the checklist, activates, closes and assigns
staff. Every write goes through sites.services, which holds all the rules."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_POST

from config.errors import DomainError
from config.web import request_member
from sites import selectors, services
from sites.forms import (
    COMMON_TIME_ZONES,
    ChecklistForm,
    SiteCloseForm,
    SiteCreateForm,
    SiteFilterForm,
    StaffAssignForm,
    add_domain_errors,
)
from sites.models import Site, SiteRole, SiteStatus
from tenants import selectors as tenant_selectors

ADMIN_ROLE = "tenant_admin"
PAGE_SIZE = 25

CHECKLIST_LABELS = {
    "ethics_approval_date": gettext_lazy("Ethics approval date"),
    "ethics_document": gettext_lazy("Ethics approval document"),
    "contract_signed": gettext_lazy("Contract signed"),
    "staff_trained": gettext_lazy("Staff trained"),
}


def _admin(request: HttpRequest) -> Any:
    membership = request_member(request)
    if membership.role != ADMIN_ROLE:
        raise PermissionDenied
    return membership


def _site_or_404(membership: Any, site_id: int) -> Site:
    site = selectors.site_get(membership=membership, site_id=site_id)
    if site is None:
        raise Http404
    return site


def _assignable_members(request: HttpRequest) -> list[Any]:
    members = tenant_selectors.members_of_tenant(tenant=request.tenant, include_inactive=False)  # type: ignore[attr-defined]
    return [m for m in members if m.role in SiteRole.values]


def missing_labels(site: Site) -> list[str]:
    return [str(CHECKLIST_LABELS[name]) for name in site.checklist_missing()]


@login_required
def site_list_view(request: HttpRequest) -> HttpResponse:
    membership = request_member(request)
    is_admin = membership.role == ADMIN_ROLE
    form = None
    status = 200
    if request.method == "POST":
        _admin(request)
        form = SiteCreateForm(request.POST)
        if form.is_valid():
            try:
                site = services.site_create(**form.cleaned_data)
            except DomainError as exc:
                add_domain_errors(form, exc)
            else:
                messages.success(request, _("Site %(code)s added. Complete its activation checklist next.")
                                 % {"code": site.code})
                return redirect("site", site_id=site.pk)
        status = 400
    elif is_admin:
        form = SiteCreateForm(initial={"time_zone": getattr(request.tenant, "time_zone", "")})  # type: ignore[attr-defined]
    filters = SiteFilterForm(request.GET or None)
    chosen = filters.cleaned_data.get("status") if filters.is_valid() else ""
    sites = selectors.sites_visible(membership=membership).order_by("code")
    if chosen:
        sites = sites.filter(status=chosen)
    page = Paginator(sites, PAGE_SIZE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    rows = [(site, len(CHECKLIST_LABELS) - len(site.checklist_missing())) for site in page]
    return render(request, "sites/site_list.html", {
        "page": page, "rows": rows, "total": len(CHECKLIST_LABELS), "filters": filters, "form": form,
        "is_admin": is_admin, "query": query.urlencode(), "time_zones": COMMON_TIME_ZONES,
    }, status=status)


def _detail(request: HttpRequest, site: Site, *, status: int = 200, checklist_form: ChecklistForm | None = None,
            close_form: SiteCloseForm | None = None, staff_form: StaffAssignForm | None = None) -> HttpResponse:
    membership = request_member(request)
    is_admin = membership.role == ADMIN_ROLE
    checklist_open = site.status in (SiteStatus.INVITED, SiteStatus.ONBOARDING)
    done = {"ethics_approval_date": site.ethics_approval_date, "ethics_document": bool(site.ethics_document),
            "contract_signed": site.contract_signed, "staff_trained": site.staff_trained}
    context: dict[str, Any] = {
        "site": site, "is_admin": is_admin,
        "staff_page": Paginator(selectors.site_staff(site=site), PAGE_SIZE).get_page(request.GET.get("staff_page")),
        "missing": missing_labels(site), "checklist_open": checklist_open,
    }
    if is_admin:
        checklist_form = checklist_form or ChecklistForm()
        context["checklist_form"] = checklist_form
        context["close_form"] = close_form or SiteCloseForm()
        context["staff_form"] = staff_form or StaffAssignForm(members=_assignable_members(request))
    # One small form per item; a sponsor may record or correct an item until activation.
    context["checklist"] = [
        {"name": name, "label": label, "done": done[name],
         "field": checklist_form[name] if is_admin and checklist_form and checklist_open else None}
        for name, label in CHECKLIST_LABELS.items()
    ]
    return render(request, "sites/site_detail.html", context, status=status)


@login_required
def site_detail_view(request: HttpRequest, site_id: int) -> HttpResponse:
    return _detail(request, _site_or_404(request_member(request), site_id))


@login_required
@require_POST
def site_checklist_view(request: HttpRequest, site_id: int) -> HttpResponse:
    site = _site_or_404(_admin(request), site_id)
    form = ChecklistForm(request.POST, request.FILES)
    if form.is_valid():
        items = form.items()
        if not items:
            form.add_error(None, _("Fill in at least one checklist item before saving."))
        else:
            try:
                services.site_update_checklist(site=site, **items)
            except DomainError as exc:
                if not exc.fields:
                    # E.g. the site was activated meanwhile: its page no longer shows the
                    # checklist forms, so say it above the page.
                    messages.error(request, str(exc.message))
                    return redirect("site", site_id=site.pk)
                add_domain_errors(form, exc)
            else:
                messages.success(request, _("Checklist updated."))
                return redirect("site", site_id=site.pk)
    return _detail(request, site, status=400, checklist_form=form)


@login_required
@require_POST
def site_activate_view(request: HttpRequest, site_id: int) -> HttpResponse:
    site = _site_or_404(_admin(request), site_id)
    try:
        site = services.site_activate(site=site)
    except DomainError as exc:
        if site.checklist_missing():
            messages.error(request, _("%(problem)s Still missing: %(items)s.")
                           % {"problem": exc.message, "items": ", ".join(missing_labels(site))})
        else:
            messages.error(request, str(exc.message))
    else:
        messages.success(request, _("Site %(code)s is active: subjects can now be enrolled there.")
                         % {"code": site.code})
    return redirect("site", site_id=site.pk)


@login_required
@require_POST
def site_close_view(request: HttpRequest, site_id: int) -> HttpResponse:
    site = _site_or_404(_admin(request), site_id)
    form = SiteCloseForm(request.POST)
    if form.is_valid():
        try:
            site = services.site_close(site=site, reason=form.cleaned_data["reason"])
        except DomainError as exc:
            if exc.fields:
                add_domain_errors(form, exc)
            else:
                messages.error(request, str(exc.message))
                return redirect("site", site_id=site.pk)
        else:
            messages.success(request, _("Site %(code)s is closed.") % {"code": site.code})
            return redirect("site", site_id=site.pk)
    return _detail(request, site, status=400, close_form=form)


@login_required
@require_POST
def site_staff_assign_view(request: HttpRequest, site_id: int) -> HttpResponse:
    site = _site_or_404(_admin(request), site_id)
    form = StaffAssignForm(request.POST, members=_assignable_members(request))
    if form.is_valid():
        tenant = request.tenant  # type: ignore[attr-defined]
        member = tenant_selectors.member_get(tenant=tenant, membership_id=form.cleaned_data["membership"])
        if member is None:
            form.add_error("membership", _("No such member in this organisation."))
        else:
            try:
                services.site_staff_assign(site=site, tenant=tenant, user=member.user, role=form.cleaned_data["role"],
                                           is_primary=form.cleaned_data["is_primary"])
            except DomainError as exc:
                add_domain_errors(form, exc, renamed={"user": "membership"})
            else:
                messages.success(request, _("%(email)s now works at %(code)s.")
                                 % {"email": member.user.email, "code": site.code})
                return redirect("site", site_id=site.pk)
    return _detail(request, site, status=400, staff_form=form)


@login_required
@require_POST
def site_staff_remove_view(request: HttpRequest, site_id: int, staff_id: int) -> HttpResponse:
    site = _site_or_404(_admin(request), site_id)
    staff = selectors.site_staff(site=site).filter(pk=staff_id).first()
    if staff is None:
        raise Http404
    email = staff.user.email
    services.site_staff_remove(staff=staff)
    messages.success(request, _("%(email)s no longer works at %(code)s.") % {"email": email, "code": site.code})
    return redirect("site", site_id=site.pk)
