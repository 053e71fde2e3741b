"""Web pages of the follow-up engine (thin: forms -> services/selectors -> templates)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, QueryDict
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_POST

from config.errors import DomainError, add_domain_error
from config.web import request_member
from studies import import_tasks, selectors, services, subject_services
from studies.imports import MAX_FILE_BYTES
from studies.models import ContactOutcome, FollowUpTask, Study, StudyStatus, Subject, SubjectStatus, VisitMode

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


# The worklist's own query parameters: a recorded call returns to the same filtered page.
WORKLIST_PARAMS = ("bucket", "mode", "event", "page")


def _worklist_params(raw: QueryDict) -> QueryDict:
    params = QueryDict(mutable=True)
    for name in WORKLIST_PARAMS:
        if value := raw.get(name):
            params[name] = value
    return params


def _worklist_url(params: QueryDict) -> str:
    return reverse("worklist") + (f"?{params.urlencode()}" if params else "")


def _render_worklist(request: HttpRequest, params: QueryDict, *,
                     failed_attempt: tuple[int, ContactAttemptForm] | None = None) -> HttpResponse:
    """The worklist for `params`; `failed_attempt` (task id, bound form) is a call that was
    not recorded, shown open in its row with what was typed and its errors."""
    membership = request_member(request)
    form = WorklistFilterForm(params or None)
    filters: dict[str, Any] = {}
    if form.is_bound:
        # A bad filter is shown at its field; the valid ones still apply.
        form.is_valid()
        filters = form.cleaned_data
    tasks = selectors.worklist(membership=membership, user_id=int(request.user.pk or 0),
                               bucket=filters.get("bucket") or None, mode=filters.get("mode") or None,
                               event_code=(filters.get("event") or "").upper() or None)
    page = Paginator(tasks, 25).get_page(params.get("page"))
    failed_id, failed_form = failed_attempt or (None, None)
    rows = [(task, selectors.subject_identifiers(membership=membership, subject=task.subject),
             failed_form if task.pk == failed_id else ContactAttemptForm(auto_id=f"id_{task.pk}_%s"))
            for task in page]
    if failed_form is not None and all(task.pk != failed_id for task, _ids, _form in rows):
        # Its row has left this page (done meanwhile, or the list moved): say it above.
        for name, errors in failed_form.errors.items():
            label = failed_form.fields[name].label if name in failed_form.fields else None
            for error in errors:
                messages.error(request, f"{label}: {error}" if label else str(error))
    query = params.copy()
    query.pop("page", None)
    here = query.copy()
    if page.number > 1:
        here["page"] = str(page.number)
    return render(request, "studies/worklist.html", {
        "form": form, "page": page, "rows": rows, "query": query.urlencode(), "here": here.urlencode(),
        "can_record": membership.role in ENROLLING_ROLES,
    }, status=400 if form.errors or failed_form is not None else 200)


@login_required
def worklist_view(request: HttpRequest) -> HttpResponse:
    return _render_worklist(request, request.GET)


def _task_for(request: HttpRequest, task_id: int) -> FollowUpTask:
    membership = request_member(request)
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
    # `next` is the worklist query the form was on (filters and page); only its own
    # parameters are kept, so it cannot point anywhere else.
    params = _worklist_params(QueryDict(request.POST.get("next", "")))
    form = ContactAttemptForm(request.POST, auto_id=f"id_{task.pk}_%s")
    if not form.is_valid():
        return _render_worklist(request, params, failed_attempt=(task.pk, form))
    try:
        services.contact_attempt_record(task=task, user_id=int(request.user.pk or 0), **form.cleaned_data)
    except DomainError as exc:
        if exc.fields:
            add_domain_error(form, exc)
            return _render_worklist(request, params, failed_attempt=(task.pk, form))
        messages.error(request, str(exc.message))
    else:
        messages.success(request, _("Call to %(subject)s recorded.") % {"subject": task.subject.subject_code})
    return redirect(_worklist_url(params))


class UnscheduledVisitForm(forms.Form):
    visit_date = forms.DateField(label=gettext_lazy("Visit date"), widget=forms.DateInput(attrs={"type": "date"}))
    mode = forms.ChoiceField(label=gettext_lazy("Mode"), choices=VisitMode.choices, initial=VisitMode.CLINIC)
    window_after = forms.IntegerField(label=gettext_lazy("Days to enter the data"), min_value=0,
                                      max_value=subject_services.MAX_UNSCHEDULED_WINDOW, initial=7)
    reason = forms.CharField(label=gettext_lazy("Reason"), max_length=subject_services.MAX_REASON,
                             widget=forms.Textarea(attrs={"rows": 2}))


class SubjectStatusForm(forms.Form):
    status = forms.ChoiceField(label=gettext_lazy("New status"), choices=())
    effective_on = forms.DateField(label=gettext_lazy("Effective on"),
                                   widget=forms.DateInput(attrs={"type": "date"}))
    reason = forms.CharField(label=gettext_lazy("Reason"), required=False, max_length=subject_services.MAX_REASON,
                             widget=forms.Textarea(attrs={"rows": 2}))

    def __init__(self, *args: Any, current: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        allowed = subject_services.STATUS_TRANSITIONS.get(current, frozenset())
        status_field = self.fields["status"]
        assert isinstance(status_field, forms.ChoiceField)
        status_field.choices = [(value, label) for value, label in SubjectStatus.choices if value in allowed]


def _subject_for(request: HttpRequest, subject_id: int) -> tuple[Any, Subject]:
    membership = request_member(request)
    subject = selectors.subject_get(membership=membership, subject_id=subject_id)
    if subject is None:
        raise Http404
    return membership, subject


def _render_subject(request: HttpRequest, membership: Any, subject: Subject, *, visit_form: forms.Form | None = None,
                    status_form: forms.Form | None = None, status: int = 200) -> HttpResponse:
    can_work = membership.role in ENROLLING_ROLES
    in_follow_up = subject.status in (SubjectStatus.ENROLLED, SubjectStatus.SCREENING)
    tasks = subject.tasks.select_related("assignee").order_by("target_date", "event_code", "sequence")
    from ecrf.selectors import NO_ENTRY_READ_ROLES, forms_for_task

    forms_cache: dict[Any, Any] = {}
    # The eCRF forms of each visit (links to their data-entry pages).
    task_forms = {} if membership.role in NO_ENTRY_READ_ROLES else {
        task.pk: forms_for_task(task, cache=forms_cache) for task in tasks}
    return render(request, "studies/subject.html", {
        "subject": subject, "tasks": tasks, "task_forms": task_forms,
        "can_see_casebook": membership.role not in NO_ENTRY_READ_ROLES,
        "identifiers": selectors.subject_identifiers(membership=membership, subject=subject),
        "show_reasons": membership.role not in selectors.NO_PII_ROLES,
        "visit_form": (visit_form or UnscheduledVisitForm()) if can_work and in_follow_up else None,
        "status_form": (status_form or SubjectStatusForm(current=subject.status))
        if can_work and subject.status in subject_services.STATUS_TRANSITIONS else None,
    }, status=status)


@login_required
def subject_view(request: HttpRequest, subject_id: int) -> HttpResponse:
    """A subject's schedule as a timeline, coloured by window status, with the actions of
    the people who follow them up: add an unscheduled visit, change the status."""
    membership, subject = _subject_for(request, subject_id)
    return _render_subject(request, membership, subject)


def _subject_action(request: HttpRequest, subject_id: int, *, form_for: Callable[[Subject], forms.Form],
                    act: Callable[[Subject, dict[str, Any]], str], form_slot: str) -> HttpResponse:
    """POST of a form on the subject page: the service's success message and back to the
    page, or the page again (400) with what was typed and the errors by field."""
    membership, subject = _subject_for(request, subject_id)
    if membership.role not in ENROLLING_ROLES:
        raise PermissionDenied
    form = form_for(subject)
    if form.is_valid():
        try:
            message = act(subject, form.cleaned_data)
        except DomainError as exc:
            add_domain_error(form, exc)
        else:
            messages.success(request, message)
            return redirect("subject", subject_id=subject.pk)
    return _render_subject(request, membership, subject, status=400, **{form_slot: form})


@login_required
@require_POST
def subject_unscheduled_visit_view(request: HttpRequest, subject_id: int) -> HttpResponse:
    def act(subject: Subject, data: dict[str, Any]) -> str:
        task = subject_services.unscheduled_visit_add(subject=subject, **data)
        return _("Unscheduled visit %(code)s #%(n)d added.") % {"code": task.event_code, "n": task.sequence}

    return _subject_action(request, subject_id, form_for=lambda subject: UnscheduledVisitForm(request.POST),
                           act=act, form_slot="visit_form")


@login_required
@require_POST
def subject_status_view(request: HttpRequest, subject_id: int) -> HttpResponse:
    def act(subject: Subject, data: dict[str, Any]) -> str:
        changed = subject_services.subject_status_change(subject=subject, **data)
        return _("%(subject)s is now %(status)s.") % {"subject": changed.subject_code,
                                                      "status": changed.get_status_display()}

    return _subject_action(request, subject_id, act=act, form_slot="status_form",
                           form_for=lambda subject: SubjectStatusForm(request.POST, current=subject.status))


# --- bulk import --------------------------------------------------------------------------------

class SubjectImportForm(forms.Form):
    study = forms.ModelChoiceField(label=gettext_lazy("Study"), queryset=Study.objects.none(),
                                   empty_label=None)
    file = forms.FileField(label=gettext_lazy("CSV or XLSX file"), max_length=255)
    valid_rows_only = forms.BooleanField(label=gettext_lazy("Import the valid rows even if others have errors"),
                                         required=False)

    def __init__(self, *args: Any, membership: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        study_field = self.fields["study"]
        assert isinstance(study_field, forms.ModelChoiceField)
        study_field.queryset = selectors.studies_visible(membership=membership).filter(status=StudyStatus.ACTIVE)

    def clean_file(self) -> Any:
        upload = self.cleaned_data["file"]
        if upload.size > MAX_FILE_BYTES:
            raise forms.ValidationError(_("A file may be at most %(max)d MB.")
                                        % {"max": MAX_FILE_BYTES // (1024 * 1024)})
        return upload


def _importer(request: HttpRequest) -> Any:
    membership = request_member(request)
    if membership.role not in ENROLLING_ROLES:
        raise PermissionDenied
    return membership


@login_required
def subject_import_view(request: HttpRequest) -> HttpResponse:
    """Upload a file of subjects; the import runs in the background (its page follows it)."""
    membership = _importer(request)
    form = SubjectImportForm(request.POST or None, request.FILES or None, membership=membership)
    if request.method == "POST" and form.is_valid():
        upload = form.cleaned_data["file"]
        try:
            state = import_tasks.subjects_import_start(
                study=form.cleaned_data["study"], membership=membership, file_name=upload.name,
                content=upload.read(), valid_rows_only=form.cleaned_data["valid_rows_only"])
        except DomainError as exc:
            add_domain_error(form, exc)
        else:
            return redirect("subject-import-job", job_id=state["job"])
    return render(request, "studies/import.html", {"form": form, "columns": IMPORT_COLUMNS},
                  status=400 if form.errors else 200)


IMPORT_COLUMNS = [
    ("site", gettext_lazy("site code (required)")), ("consent_date", gettext_lazy("YYYY-MM-DD (required)")),
    ("enrolment_date", gettext_lazy("YYYY-MM-DD, default today")), ("index_date", gettext_lazy("YYYY-MM-DD")),
    ("arm", gettext_lazy("arm code")), ("language", "zh-hans / en"), ("name", ""), ("phone", ""), ("email", ""),
    ("national_id", ""), ("birth_date", gettext_lazy("YYYY-MM-DD")), ("address", ""),
    ("external_ref", gettext_lazy("your own reference: makes re-uploads safe")),
]


@login_required
def subject_import_job_view(request: HttpRequest, job_id: str) -> HttpResponse:
    """Progress of an import (the page refreshes itself while it runs), then its report."""
    membership = _importer(request)
    state = import_tasks.import_job_state(membership=membership, job_id=job_id)
    if state is None:
        raise Http404
    report = state.get("report") or {}
    study = selectors.study_get(membership=membership, study_id=int(state.get("study") or 0))
    return render(request, "studies/import_job.html", {
        "state": state, "report": report, "errors": (report.get("errors") or [])[:500], "study": study,
        "running": state.get("state") in ("queued", "running"),
        "percent": int(100 * (state.get("done") or 0) / state["total"]) if state.get("total") else 0,
    })
