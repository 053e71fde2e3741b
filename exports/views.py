"""Study export pages (thin: form -> exports.services -> templates).

The export page starts a job with a normal form POST and lists the study's jobs; the job
page shows progress (static/js/exports.js polls the JSON API while the job runs), then
the files, each downloaded through a short-lived link from the API, and the manifest.
Who sees which job follows the API (exports.api.views): tenant admins and data managers
see every job of the study, other exporting roles the jobs they started."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import translation
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_http_methods

from config.errors import DomainError, add_domain_error
from config.web import request_member
from ecrf import selectors as ecrf_selectors
from exports import services
from exports.models import ExportFormat, ExportJob, ExportStatus
from exports.selectors import job_get, jobs_visible
from sites import selectors as site_selectors
from studies import selectors as study_selectors

PAGE_SIZE = 20
# Roles that see every job of a study; the other exporting roles see their own jobs.
RUNNING_STATES = (ExportStatus.QUEUED, ExportStatus.RUNNING)
SHA_SHOWN = 12  # hex digits of a SHA-256 shown in the table; the full value is in the title


class ExportStartForm(forms.Form):
    """The choices of the export page. Formats and forms are offered from the study and
    the model; every business rule (formats available, own sites, date order) is the
    service's, so the API and this page refuse the same things with the same messages."""

    formats = forms.MultipleChoiceField(label=gettext_lazy("Formats"), required=False,
                                        choices=ExportFormat.choices)
    sites = forms.TypedMultipleChoiceField(label=gettext_lazy("Sites"), required=False, choices=(), coerce=int)
    date_from = forms.DateField(label=gettext_lazy("Visit date from"), required=False,
                                widget=forms.DateInput(attrs={"type": "date"}))
    date_to = forms.DateField(label=gettext_lazy("Visit date to"), required=False,
                              widget=forms.DateInput(attrs={"type": "date"}))
    # Last: from here on the class body's `forms` is this field, not django.forms.
    forms = forms.MultipleChoiceField(label=gettext_lazy("Forms"), required=False, choices=())

    def __init__(self, *args: Any, form_choices: list[tuple[str, str]], site_choices: list[tuple[int, str]],
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        forms_field = self.fields["forms"]
        sites_field = self.fields["sites"]
        assert isinstance(forms_field, forms.MultipleChoiceField)
        assert isinstance(sites_field, forms.TypedMultipleChoiceField)
        forms_field.choices = form_choices
        sites_field.choices = site_choices


@dataclass(frozen=True)
class Option:
    """One checkbox of a choice list, as the template draws it."""

    value: str
    label: str
    checked: bool
    available: bool = True


def _exporter(request: HttpRequest) -> Any:
    membership = request_member(request)
    if membership.role not in services.EXPORT_ROLES:
        raise PermissionDenied
    return membership


def _study_or_404(membership: Any, study_id: int) -> Any:
    study = study_selectors.study_get(membership=membership, study_id=study_id)
    if study is None:
        raise Http404
    return study


def _job_or_404(membership: Any, job_id: int) -> ExportJob:
    job = job_get(membership=membership, job_id=job_id)
    if job is None:
        raise Http404
    return job


def _language() -> str:
    return "zh-hans" if (translation.get_language() or "").lower().startswith("zh") else "en"


def _form_choices(study_id: int) -> list[tuple[str, str]]:
    """(code, "CODE · title") of the study's forms, the title from the newest version."""
    language = _language()
    choices = []
    for form in ecrf_selectors.forms_of_study(study_id=study_id):
        versions = sorted(form.versions.all(), key=lambda v: v.number, reverse=True)
        titles = (versions[0].definition or {}).get("title") if versions else None
        title = str(titles.get(language) or titles.get("en") or "") if isinstance(titles, dict) else ""
        choices.append((form.code, f"{form.code} · {title}" if title else form.code))
    return choices


def _site_choices(membership: Any) -> list[tuple[int, str]]:
    return [(site.pk, f"{site.code} · {site.name}")
            for site in site_selectors.sites_visible(membership=membership).order_by("code")]


def _options(form: ExportStartForm, name: str, choices: list[tuple[Any, Any]],
             available: frozenset[str] | None = None) -> list[Option]:
    """The checkboxes of one field, checked as the user left them (a refused form keeps
    what was chosen)."""
    if form.is_bound:
        chosen = {str(v) for v in form.data.getlist(name)} if hasattr(form.data, "getlist") else set()
    else:
        chosen = {str(v) for v in (form.initial.get(name) or ())}
    return [Option(value=str(value), label=str(label), checked=str(value) in chosen,
                   available=available is None or str(value) in available) for value, label in choices]


def _percent(state: dict[str, Any]) -> int:
    return round(100 * float(state.get("progress") or 0))


@login_required
def exports_index_view(request: HttpRequest) -> HttpResponse:
    """The navigation's way in: the studies, each with its export page (straight there
    when there is only one)."""
    membership = _exporter(request)
    studies = list(study_selectors.studies_visible(membership=membership))
    if len(studies) == 1:
        return redirect("study-exports", study_id=studies[0].pk)
    return render(request, "exports/index.html", {"studies": studies})


@login_required
def study_exports_view(request: HttpRequest, study_id: int) -> HttpResponse:
    """The export form and, below it, the study's jobs (newest first)."""
    membership = _exporter(request)
    study = _study_or_404(membership, study_id)
    form_choices = _form_choices(study.pk)
    site_choices = _site_choices(membership)
    form = ExportStartForm(request.POST if request.method == "POST" else None,
                           initial={"formats": [ExportFormat.CSV_LONG]},
                           form_choices=form_choices, site_choices=site_choices)
    refused_status: int | None = None
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            job = services.export_start(membership=membership, study=study, formats=data["formats"],
                                        forms=data["forms"], sites=data["sites"], date_from=data["date_from"],
                                        date_to=data["date_to"], source="web")
        except DomainError as exc:
            add_domain_error(form, exc)
            refused_status = exc.status_code  # 503 when the queue is down: not the user's mistake
        else:
            messages.success(request, _("Export queued."))
            return redirect("export-job", job_id=job.pk)
    page = Paginator(jobs_visible(membership=membership).filter(study=study), PAGE_SIZE).get_page(
        request.GET.get("page"))
    rows = []
    for job in page:
        state = services.job_state(job)
        rows.append({"job": job, "state": state, "percent": _percent(state), "format_labels": _format_labels(job)})
    available = frozenset(str(f) for f in services.AVAILABLE_FORMATS)
    return render(request, "exports/study_exports.html", {
        "study": study, "form": form, "page": page, "rows": rows,
        "format_options": _options(form, "formats", list(ExportFormat.choices), available),
        "form_options": _options(form, "forms", list(form_choices)),
        "site_options": _options(form, "sites", list(site_choices)),
        "own_sites_only": site_selectors.site_ids_visible(membership=membership) is not None,
    }, status=(refused_status or 400) if form.errors else 200)


def _format_labels(job: ExportJob) -> list[str]:
    return [str(ExportFormat(f).label) if f in ExportFormat.values else str(f) for f in job.formats]


@login_required
def export_job_view(request: HttpRequest, job_id: int) -> HttpResponse:
    """A job's progress, then its files and manifest, or its failure with a retry."""
    membership = _exporter(request)
    job = _job_or_404(membership, job_id)
    state = services.job_state(job)
    manifest = state.get("manifest") or {}
    files = [{**f, "short_sha": f["sha256"][:SHA_SHOWN]} for f in state["files"]]
    versions = sorted((manifest.get("form_versions") or {}).items())
    return render(request, "exports/export_job.html", {
        "job": job, "study": job.study, "state": state, "percent": _percent(state), "files": files,
        "running": job.status in RUNNING_STATES, "failed": job.status == ExportStatus.FAILED,
        "done": job.status == ExportStatus.DONE, "manifest": manifest,
        "manifest_rows": manifest.get("rows_by_form_and_site") or [],
        "form_versions": [(code, ", ".join(str(n) for n in numbers)) for code, numbers in versions],
        "snapshot": manifest.get("snapshot") or {},
        "format_labels": _format_labels(job),
        "js_messages": {
            "download_failed": _("The download link could not be created. Reload the page and try again."),
            "poll_failed": _("Lost contact with the server; still trying…"),
            "poll_gone": _("This export is no longer available to you: you may have been signed out. Reload the "
                           "page."),
            "rows": _("%(done)s of %(total)s values written"),
            "writing": _("Writing %(file)s: %(size)s so far"),
            "copied": _("Copied"),
            "statuses": {value: str(label) for value, label in ExportStatus.choices},
        },
    })


@login_required
@require_http_methods(["GET", "POST"])
def export_retry_view(request: HttpRequest, job_id: int) -> HttpResponse:
    """Requeue a failed job. Only a failed job moves back to queued, once (the update is
    conditional), so a double click queues one run. A GET (the sign-in page sends a user
    whose session ended back here) shows the job's page, where the button is."""
    membership = _exporter(request)
    job = _job_or_404(membership, job_id)
    if request.method == "GET":
        return redirect("export-job", job_id=job.pk)
    try:
        requeued = services.export_retry(membership=membership, job=job)
    except DomainError as exc:  # the queue cannot be reached: the job is failed again, Retry stays
        messages.error(request, str(exc.message))
    else:
        if requeued:
            messages.success(request, _("Export queued again."))
        else:
            messages.error(request, _("Only a failed export can be retried."))
    return redirect("export-job", job_id=job.pk)
