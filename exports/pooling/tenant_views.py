"""The tenant's side of consortia (tenant host), for the organisation's administrator:
the consortia, this organisation's agreement with each, accepting one (which study
contributes, which of the common data elements) and withdrawing (after a confirmation).
Thin: exports.pooling.services.agreement_accept / agreement_withdraw decide, with the
same rules and messages as the tenant API (exports.pooling.api). Only this tenant's
agreements are ever read here: every query is filtered by the host's tenant."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_http_methods

from config.errors import DomainError, add_domain_error
from config.web import request_member
from exports.pooling import services
from exports.pooling.models import (
    AgreementStatus,
    Consortium,
    DataSharingAgreement,
    common_data_element_fields,
    common_data_elements_problems,
)
from studies import selectors as study_selectors

ADMIN_ROLE = "tenant_admin"  # tenants.roles.Role.TENANT_ADMIN, as exports.pooling.services checks it
PAGE_SIZE = 25


class AgreementForm(forms.Form):
    """The shape of the input; the service decides the rest (the study exists, the
    fields are the consortium's common data elements) with the API's messages."""

    study = forms.ChoiceField(label=gettext_lazy("Contributing study"), choices=(),
                              error_messages={"required": gettext_lazy("Choose the study that contributes.")})
    # "items" as in the API ("fields" would shadow Form.fields).
    items = forms.MultipleChoiceField(label=gettext_lazy("Shared fields"), choices=(),
                                      error_messages={"required": gettext_lazy("Choose at least one field to share.")})

    def __init__(self, *args: Any, study_choices: list[tuple[str, str]], item_choices: list[tuple[str, str]],
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        study_field, items_field = self.fields["study"], self.fields["items"]
        assert isinstance(study_field, forms.ChoiceField) and isinstance(items_field, forms.MultipleChoiceField)
        study_field.choices = [("", _("Choose a study")), *study_choices]
        items_field.choices = item_choices


def _admin(request: HttpRequest) -> Any:
    membership = request_member(request)
    if membership.role != ADMIN_ROLE:
        raise PermissionDenied
    return membership


def _consortium_or_404(slug: str) -> Consortium:
    consortium = Consortium.objects.filter(slug=slug).first()
    if consortium is None:
        raise Http404
    return consortium


def _agreements(request: HttpRequest, consortium: Consortium) -> QuerySet[DataSharingAgreement]:
    """This organisation's agreements with the consortium, newest first (the first is
    the current one, as in the tenant API)."""
    return (DataSharingAgreement.objects.filter(consortium=consortium, tenant=request.tenant)  # type: ignore[attr-defined]
            .order_by("-accepted_at", "-id"))


def _item_choices(consortium: Consortium) -> list[tuple[str, str]]:
    fields = common_data_element_fields(consortium.common_data_elements)
    return [(field, field.replace(".", " · ", 1)) for field in fields]


def _study_choices(membership: Any) -> list[tuple[str, str]]:
    return [(study.code, f"{study.code} · {study.title}")
            for study in study_selectors.studies_visible(membership=membership)]


@login_required
@require_http_methods(["GET"])
def tenant_consortia_view(request: HttpRequest) -> HttpResponse:
    _admin(request)
    page = Paginator(Consortium.objects.order_by("name", "pk"), PAGE_SIZE).get_page(request.GET.get("page"))
    current: dict[int, DataSharingAgreement] = {}
    for agreement in (DataSharingAgreement.objects
                      .filter(tenant=request.tenant, consortium__in=list(page))  # type: ignore[attr-defined]
                      .order_by("consortium_id", "-accepted_at", "-id")):
        current.setdefault(agreement.consortium_id, agreement)
    rows = [{"consortium": consortium, "agreement": current.get(consortium.pk)} for consortium in page]
    return render(request, "pooling/tenant_consortia.html", {"page": page, "rows": rows})


@login_required
@require_http_methods(["GET", "POST"])
def tenant_consortium_view(request: HttpRequest, slug: str) -> HttpResponse:
    """The consortium, this organisation's agreement (history below), and the accept form
    while there is no active one."""
    membership = _admin(request)
    consortium = _consortium_or_404(slug)
    form = AgreementForm(request.POST if request.method == "POST" else None,
                         study_choices=_study_choices(membership), item_choices=_item_choices(consortium))
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                services.agreement_accept(membership=membership, tenant=request.tenant,  # type: ignore[attr-defined]
                                          consortium=consortium, study_code=form.cleaned_data["study"],
                                          fields=form.cleaned_data["items"])
            except DomainError as error:
                add_domain_error(form, error)
                status = error.status_code
            else:
                messages.success(request, _("Your organisation now takes part in %(consortium)s.")
                                 % {"consortium": consortium.name})
                return redirect("tenant-consortium", slug=consortium.slug)
        else:
            status = 400
    agreements = _agreements(request, consortium)
    active = agreements.filter(status=AgreementStatus.ACTIVE).first()
    chosen = set(request.POST.getlist("items")) if request.method == "POST" else set()
    return render(request, "pooling/tenant_consortium.html", {
        "consortium": consortium, "form": form, "active": active, "latest": agreements.first(),
        "history": Paginator(agreements, PAGE_SIZE).get_page(request.GET.get("history_page")),
        # Malformed common data elements (only an operator can fix them): no accept form.
        "elements_invalid": bool(common_data_elements_problems(consortium.common_data_elements)),
        # Not form.errors.items in the template: that resolves to dict.items() when "items" has no error.
        "items_errors": form.errors.get("items") or [],
        "item_options": [{"value": value, "label": label, "checked": value in chosen}
                         for value, label in _item_choices(consortium)],
    }, status=status)


@login_required
@require_http_methods(["GET", "POST"])
def tenant_withdraw_view(request: HttpRequest, slug: str) -> HttpResponse:
    """GET asks for confirmation; POST withdraws this organisation's active agreement."""
    membership = _admin(request)
    consortium = _consortium_or_404(slug)
    active = next((a for a in _agreements(request, consortium) if a.status == AgreementStatus.ACTIVE), None)
    if request.method == "POST":
        try:
            services.agreement_withdraw(membership=membership, tenant=request.tenant,  # type: ignore[attr-defined]
                                        consortium=consortium)
        except DomainError as error:
            messages.error(request, str(error.message))
        else:
            messages.success(request, _("Your organisation has withdrawn from %(consortium)s. Pooled runs started "
                                        "from now on leave its data out.") % {"consortium": consortium.name})
        return redirect("tenant-consortium", slug=consortium.slug)
    if active is None:
        messages.error(request, _("This organisation does not take part in this consortium."))
        return redirect("tenant-consortium", slug=consortium.slug)
    return render(request, "pooling/tenant_withdraw.html", {"consortium": consortium, "active": active})
