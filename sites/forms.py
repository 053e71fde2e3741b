"""Forms of the site-onboarding pages. They only parse what was typed (text, whole
numbers, dates, files); every rule about sites lives in sites.services, whose
ValidationFailed/Conflict errors are shown next to the fields they name."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from django import forms
from django.utils.translation import gettext_lazy as _

from config.errors import DomainError
from sites.models import SiteRole, SiteStatus

# Suggestions only (a datalist): any IANA name is accepted, the service checks it.
COMMON_TIME_ZONES = ("Asia/Shanghai", "Asia/Hong_Kong", "Asia/Taipei", "Asia/Singapore", "Asia/Tokyo",
                     "Asia/Seoul", "Europe/Berlin", "Europe/London", "America/New_York", "UTC")


def add_domain_errors(form: forms.Form, error: DomainError, *, renamed: Mapping[str, str] | None = None) -> None:
    """Show a service's error next to the fields it names (renamed: service field -> form
    field), or above the form when it names none of them."""
    renamed = renamed or {}
    placed = False
    for field, messages in error.fields.items():
        name = renamed.get(field, field)
        for message in messages:
            if name in form.fields:
                form.add_error(name, message)
                placed = True
            else:
                form.add_error(None, message)
    if not placed and str(error.message) not in form.non_field_errors():
        form.add_error(None, str(error.message))


class DateInput(forms.DateInput):
    input_type = "date"

    def __init__(self, attrs: dict[str, Any] | None = None) -> None:
        super().__init__(attrs, format="%Y-%m-%d")


class SiteFilterForm(forms.Form):
    status = forms.ChoiceField(label=_("Status"), required=False,
                               choices=[("", _("All")), *SiteStatus.choices])


class SiteCreateForm(forms.Form):
    code = forms.CharField(label=_("Site code"), max_length=100,
                           help_text=_("1-20 capital letters, digits or hyphens, e.g. BJ01."),
                           widget=forms.TextInput(attrs={"autocapitalize": "characters", "autocomplete": "off"}))
    name = forms.CharField(label=_("Site name"), max_length=1000)
    institution = forms.CharField(label=_("Institution"), max_length=1000)
    country_region = forms.CharField(label=_("Country/region"), max_length=1000)
    principal_investigator = forms.CharField(label=_("Principal investigator"), max_length=1000)
    target_enrolment = forms.IntegerField(label=_("Target enrolment"),
                                          widget=forms.NumberInput(attrs={"inputmode": "numeric"}))
    time_zone = forms.CharField(label=_("Time zone"), max_length=100,
                                widget=forms.TextInput(attrs={"list": "time-zones", "autocomplete": "off"}))


class ChecklistForm(forms.Form):
    """All items optional: each item of the checklist posts its own fields."""

    ethics_approval_date = forms.DateField(label=_("Ethics approval date"), required=False, widget=DateInput())
    ethics_document = forms.FileField(label=_("Ethics approval document (PDF, JPEG or PNG)"), required=False,
                                      max_length=200)
    contract_signed = forms.DateField(label=_("Contract signed on"), required=False, widget=DateInput())
    staff_trained = forms.DateField(label=_("Staff trained on"), required=False, widget=DateInput())

    def items(self) -> dict[str, Any]:
        """The items given, by the service's argument names."""
        return {name: value for name, value in self.cleaned_data.items() if value not in (None, "")}


class SiteCloseForm(forms.Form):
    reason = forms.CharField(label=_("Reason for closing"), max_length=2000,
                             widget=forms.Textarea(attrs={"rows": 2}))


class StaffAssignForm(forms.Form):
    membership = forms.TypedChoiceField(label=_("Member"), coerce=int)
    role = forms.ChoiceField(label=_("Role at the site"), choices=SiteRole.choices)
    is_primary = forms.BooleanField(label=_("Primary coordinator (gets new follow-up tasks)"), required=False)

    def __init__(self, *args: Any, members: Iterable[Any] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        choices: list[tuple[Any, Any]] = [("", _("Choose a member"))]
        choices += [(m.pk, f"{m.user.email} · {m.get_role_display()}") for m in members]
        self.fields["membership"].choices = choices  # type: ignore[attr-defined]
