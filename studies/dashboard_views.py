"""The follow-up metrics dashboard (thin: studies.metrics.followup_metrics -> template).

Numbers and tables are server-rendered, so the page works without JavaScript; the ECharts
charts are drawn from the same figures, embedded with json_script (no second request).
Scoped by the member's sites exactly like the metrics API."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from studies import selectors
from studies.metrics import followup_metrics

# Who sees the dashboard (templates/base.html shows its link to the same roles).
DASHBOARD_ROLES = frozenset({"tenant_admin", "data_manager", "monitor"})
RATES = ("follow_up_rate", "on_time_rate", "missed_rate", "lost_to_follow_up_rate")


class StudyChoiceForm(forms.Form):
    study = forms.TypedChoiceField(label=gettext_lazy("Study"), coerce=int)

    def __init__(self, *args: Any, studies: list[Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["study"].choices = [(s.pk, f"{s.code} · {s.title}") for s in studies]  # type: ignore[attr-defined]


def percent(rate: float | None) -> str:
    """0.6667 -> "66.7%"; None (nothing to divide by) -> "—"."""
    return "—" if rate is None else f"{rate * 100:.1f}%"


def _shown(row: dict[str, Any]) -> dict[str, Any]:
    """A metrics row with its rates formatted for people (the raw figures stay as they are)."""
    return {**row, **{f"{key}_pct": percent(row.get(key)) for key in RATES}}


@login_required
def dashboard_view(request: HttpRequest) -> HttpResponse:
    membership = getattr(request, "membership", None)
    if membership is None or membership.role not in DASHBOARD_ROLES:
        raise PermissionDenied
    studies = list(selectors.studies_visible(membership=membership))
    data = request.GET if "study" in request.GET else {"study": studies[0].pk if studies else ""}
    form = StudyChoiceForm(data, studies=studies)
    context: dict[str, Any] = {"form": form, "studies": studies, "metrics": None}
    if not studies:
        return render(request, "studies/dashboard.html", context)
    if not form.is_valid():
        return render(request, "studies/dashboard.html", context, status=400)
    study = next(s for s in studies if s.pk == form.cleaned_data["study"])
    today = timezone.localdate()  # in the tenant's time zone (TenantLocaleMiddleware)
    metrics = followup_metrics(membership=membership, study_id=study.pk, today=today)
    enrolment: dict[str, Any] = next(
        (row for row in metrics["enrolment"] if row["study_id"] == study.pk),
        {"enrolled": 0, "target_enrolment": study.target_enrolment, "progress": None, "series": []})
    series: list[dict[str, Any]] = enrolment["series"]
    chart_rates = ("follow_up_rate", "on_time_rate", "missed_rate")
    context.update({
        "study": study, "today": today, "generated": timezone.localtime(),
        "overall": _shown(metrics["overall"]),
        "by_site": [_shown(row) for row in metrics["by_site"]],
        "by_event": [_shown(row) for row in metrics["by_event"]],
        "enrolment": {**enrolment, "progress_pct": percent(enrolment["progress"])},
        "chart_data": {
            "labels": {"follow_up_rate": _("Follow-up rate"), "on_time_rate": _("On-time rate"),
                       "missed_rate": _("Missed rate"), "enrolled": _("Enrolled (cumulative)"),
                       "target": _("Target"), "per_month": _("Enrolled in the month")},
            "by_site": {"categories": [row["site_code"] for row in metrics["by_site"]],
                        "series": {key: [row[key] for row in metrics["by_site"]] for key in chart_rates}},
            "by_event": {"categories": [row["event_code"] for row in metrics["by_event"]],
                         "series": {key: [row[key] for row in metrics["by_event"]] for key in chart_rates}},
            "enrolment": {"months": [p["month"] for p in series], "per_month": [p["enrolled"] for p in series],
                          "cumulative": [p["cumulative"] for p in series],
                          "target": enrolment["target_enrolment"]},
        },
    })
    return render(request, "studies/dashboard.html", context)
