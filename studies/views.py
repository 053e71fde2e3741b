"""Web pages of the follow-up engine (thin: forms -> services/selectors -> templates)."""

from __future__ import annotations

from typing import Any

from django import forms
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
from studies import selectors, services
from studies.models import ContactOutcome, FollowUpTask, VisitMode

ENROLLING_ROLES = selectors.ENROLLING_ROLES


class WorklistFilterForm(forms.Form):
    bucket = forms.ChoiceField(label=gettext_lazy("Show"), required=False, choices=[
        ("", gettext_lazy("All")), ("overdue", gettext_lazy("Overdue")), ("open", gettext_lazy("Open")),
        ("upcoming", gettext_lazy("Upcoming"))])
    mode = forms.ChoiceField(label=gettext_lazy("Mode"), required=False,
                             choices=[("", gettext_lazy("All")), *VisitMode.choices])
    event = forms.CharField(label=gettext_lazy("Event"), required=False, max_length=20)


class ContactAttemptForm(forms.Form):
    outcome = forms.ChoiceField(label=gettext_lazy("Outcome"), choices=ContactOutcome.choices)
    note = forms.CharField(label=gettext_lazy("Note"), required=False, max_length=2000,
                           widget=forms.Textarea(attrs={"rows": 2}))


def _membership(request: HttpRequest) -> Any:
    membership = getattr(request, "membership", None)
    if membership is None:
        raise PermissionDenied
    return membership


@login_required
def worklist_view(request: HttpRequest) -> HttpResponse:
    membership = _membership(request)
    form = WorklistFilterForm(request.GET or None)
    filters = form.cleaned_data if form.is_valid() else {}
    tasks = selectors.worklist(membership=membership, user_id=int(request.user.pk or 0),
                               bucket=filters.get("bucket") or None, mode=filters.get("mode") or None,
                               event_code=(filters.get("event") or "").upper() or None)
    page = Paginator(tasks, 25).get_page(request.GET.get("page"))
    rows = [(task, selectors.subject_identifiers(membership=membership, subject=task.subject)) for task in page]
    query = request.GET.copy()
    query.pop("page", None)
    return render(request, "studies/worklist.html", {
        "form": form, "page": page, "rows": rows, "attempt_form": ContactAttemptForm(),
        "query": query.urlencode(), "can_record": membership.role in ENROLLING_ROLES,
    })


def _task_for(request: HttpRequest, task_id: int) -> FollowUpTask:
    membership = _membership(request)
    if membership.role not in ENROLLING_ROLES:
        raise PermissionDenied
    task = selectors.task_get(membership=membership, task_id=task_id)
    if task is None:
        raise Http404
    return task


@login_required
@require_POST
def contact_attempt_view(request: HttpRequest, task_id: int) -> HttpResponse:
    task = _task_for(request, task_id)
    form = ContactAttemptForm(request.POST)
    if not form.is_valid():
        messages.error(request, _("Choose an outcome for the call."))
        return redirect("worklist")
    try:
        services.contact_attempt_record(task=task, user_id=int(request.user.pk or 0), **form.cleaned_data)
    except DomainError as exc:
        messages.error(request, str(exc.message))
    else:
        messages.success(request, _("Call to %(subject)s recorded.") % {"subject": task.subject.subject_code})
    return redirect("worklist")


@login_required
def subject_view(request: HttpRequest, subject_id: int) -> HttpResponse:
    """A subject's schedule as a timeline, coloured by window status."""
    membership = _membership(request)
    subject = selectors.subject_get(membership=membership, subject_id=subject_id)
    if subject is None:
        raise Http404
    tasks = subject.tasks.order_by("target_date", "event_code", "sequence")
    return render(request, "studies/subject.html", {
        "subject": subject, "tasks": tasks,
        "identifiers": selectors.subject_identifiers(membership=membership, subject=subject),
    })
