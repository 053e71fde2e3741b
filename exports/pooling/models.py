"""Consortia (public schema). A consortium pools de-identified data of the tenants that
accepted its data-sharing agreement; only exports.pooling.aggregate reads across tenant
schemas, and only the consented fields of the consented study."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

ITEM_CODE_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")  # as ecrf.definition.ITEM_CODE_RE
MAX_PRECISION = 10
DEFAULT_PRECISION = 2  # digits a converted value is rounded to when "precision" is not given
RESERVED_SLUGS = ("login", "logout")  # paths of config/urls_public.py under /consortia/


class Consortium(models.Model):
    slug = models.SlugField(max_length=40, unique=True)
    name = models.CharField(max_length=200)
    coordinating_organisation = models.CharField(max_length=200)
    protocol = models.TextField(blank=True)
    # The common data elements (form definitions with CDISC annotations that participating
    # tenants adopt), one object per form (see common_data_elements_problems):
    #   [{"form": "VITALS", "items": ["sex", "weight", "meds", ...], "safe_text": ["notes"],
    #     "harmonise": {
    #       "sex": {"codes": {"1": "M", "2": "F", "M": "M", "F": "F"},
    #               "codes_by_tenant": {"gamma": {"1": "F", "2": "M"}}},
    #       "weight": {"unit": "kg", "factors": {"lb": 0.45359237, "g": 0.001}, "precision": 2},
    #       "med_dose": {"unit": "mg", "factors": {"g": 1000}}}}]
    # "harmonise" is optional, keyed by item code (a repeating group's child by its own
    # code). "codes" maps a tenant's stored code to the consortium's; "codes_by_tenant"
    # replaces that map for one tenant (by slug) whose codes mean something else. "unit" is
    # the consortium's unit: values of a tenant whose form definition gives the item that
    # unit pass unchanged, those in a unit listed in "factors" are multiplied by its factor
    # and rounded to "precision" digits (default 2). Any other value (a code without a
    # mapping, an item without a unit or in a unit without a factor) is left out of the
    # pool and counted per tenant and item in the run's manifest ("values_unmapped").
    common_data_elements = models.JSONField(default=list)
    # De-identification: quasi-identifiers generalised until k-anonymity, the date shift.
    quasi_identifiers = models.JSONField(default=list)  # of "age", "region", "site_country"
    k = models.PositiveSmallIntegerField(default=5)
    max_shift_days = models.PositiveSmallIntegerField(default=180)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        constraints = [
            # /consortia/login/ and /consortia/logout/ are the members' sign-in and sign-out.
            models.CheckConstraint(condition=~models.Q(slug__in=RESERVED_SLUGS), name="consortium_slug_not_reserved",
                                   violation_error_message=_("This name is reserved; choose another.")),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        problems = common_data_elements_problems(self.common_data_elements)
        if problems:
            raise ValidationError({"common_data_elements": [f"{path}: {'; '.join(messages)}"
                                                            for path, messages in problems.items()]})


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _code_map_problems(value: Any, path: str, problems: dict[str, list[str]]) -> None:
    if not isinstance(value, dict) or not value or not all(
            isinstance(key, str) and key and isinstance(code, str) and code and len(key) <= 100 and len(code) <= 100
            for key, code in value.items()):
        problems.setdefault(path, []).append(gettext("Give an object from tenant codes to consortium codes (text)."))


def _harmonise_problems(rules: Any, path: str, problems: dict[str, list[str]]) -> None:
    def add(where: str, message: str) -> None:
        problems.setdefault(where, []).append(message)

    if not isinstance(rules, dict):
        add(path, gettext("Give an object keyed by item code."))
        return
    for code, rule in rules.items():
        where = f"{path}.{code}"
        if not isinstance(code, str) or not ITEM_CODE_RE.fullmatch(code):
            add(where, gettext("Not an item code."))
            continue
        if not isinstance(rule, dict) or not rule or set(rule) - {"codes", "codes_by_tenant", "unit", "factors",
                                                                 "precision"}:
            add(where, gettext("Give codes (and codes_by_tenant), or unit (and factors, precision)."))
            continue
        has_codes = "codes" in rule or "codes_by_tenant" in rule
        has_unit = bool({"unit", "factors", "precision"} & set(rule))
        if has_codes and has_unit:
            add(where, gettext("An item harmonises either its codes or its unit, not both."))
            continue
        if has_codes:
            if "codes" in rule:
                _code_map_problems(rule["codes"], f"{where}.codes", problems)
            by_tenant = rule.get("codes_by_tenant", {})
            if not isinstance(by_tenant, dict):
                add(f"{where}.codes_by_tenant", gettext("Give an object keyed by organisation (slug)."))
            else:
                for slug, mapping in by_tenant.items():
                    _code_map_problems(mapping, f"{where}.codes_by_tenant.{slug}", problems)
            continue
        unit = rule.get("unit")
        if not isinstance(unit, str) or not unit or len(unit) > 40:
            add(f"{where}.unit", gettext("Give the consortium's unit (at most 40 characters)."))
        factors = rule.get("factors", {})
        if not isinstance(factors, dict) or not all(
                isinstance(source, str) and source and _is_number(factor) and _positive(factor)
                for source, factor in factors.items()):
            add(f"{where}.factors", gettext("Give an object from units to positive numbers."))
        precision = rule.get("precision", DEFAULT_PRECISION)
        if not isinstance(precision, int) or isinstance(precision, bool) or not 0 <= precision <= MAX_PRECISION:
            add(f"{where}.precision", gettext("Give 0 to %(max)d digits.") % {"max": MAX_PRECISION})


def _positive(number: int | float) -> bool:
    try:
        return Decimal(str(number)).is_finite() and Decimal(str(number)) > 0
    except InvalidOperation:
        return False


def common_data_elements_problems(value: Any) -> dict[str, list[str]]:
    """Path -> messages for a common data elements document (empty when it is valid)."""
    problems: dict[str, list[str]] = {}
    if not isinstance(value, list):
        return {"common_data_elements": [gettext("Give a list of forms.")]}
    forms: set[str] = set()
    for index, element in enumerate(value):
        path = f"common_data_elements[{index}]"
        if not isinstance(element, dict) or not isinstance(element.get("form"), str) or not element["form"]:
            problems.setdefault(path, []).append(gettext("Give the form code and its items."))
            continue
        if element["form"] in forms:
            problems.setdefault(f"{path}.form", []).append(gettext("This form is listed twice."))
        forms.add(element["form"])
        for key in ("items", "safe_text"):
            listed = element.get(key, [])
            if not isinstance(listed, list) or not all(isinstance(code, str) and ITEM_CODE_RE.fullmatch(code)
                                                       for code in listed):
                problems.setdefault(f"{path}.{key}", []).append(gettext("Give a list of item codes."))
        if "harmonise" in element:
            _harmonise_problems(element["harmonise"], f"{path}.harmonise", problems)
    return problems


def common_data_element_fields(value: Any) -> list[str]:
    """"FORM.item" for every item of the well-formed elements of a common data elements
    document, in its order; malformed elements are left out (common_data_elements_problems
    names them)."""
    if not isinstance(value, list):
        return []
    fields: list[str] = []
    for element in value:
        if not isinstance(element, dict) or not isinstance(element.get("form"), str) or not element["form"]:
            continue
        items = element.get("items")
        fields += [f"{element['form']}.{item}" for item in (items if isinstance(items, list) else [])
                   if isinstance(item, str)]
    return fields


class ConsortiumRole(models.TextChoices):
    STATISTICIAN = "statistician", _("Consortium statistician")
    COORDINATOR = "coordinator", _("Consortium coordinator")


class ConsortiumMember(models.Model):
    consortium = models.ForeignKey(Consortium, on_delete=models.CASCADE, related_name="members")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    role = models.CharField(max_length=20, choices=ConsortiumRole.choices)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["consortium", "user"], name="consortium_member_uniq")]

    def __str__(self) -> str:
        return f"{self.user_id} in {self.consortium_id}: {self.role}"


class AgreementStatus(models.TextChoices):
    ACTIVE = "active", _("Active")
    WITHDRAWN = "withdrawn", _("Withdrawn")


class DataSharingAgreement(models.Model):
    """A tenant's acceptance: which study contributes and which fields ("FORM.item")."""

    consortium = models.ForeignKey(Consortium, on_delete=models.PROTECT, related_name="agreements")
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.PROTECT, related_name="+")
    study_code = models.CharField(max_length=30)
    fields = models.JSONField(default=list)
    status = models.CharField(max_length=10, choices=AgreementStatus.choices, default=AgreementStatus.ACTIVE)
    accepted_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    accepted_at = models.DateTimeField(default=timezone.now)
    withdrawn_at = models.DateTimeField(null=True, blank=True)
    withdrawn_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True,
                                     related_name="+")

    class Meta:
        ordering = ["consortium", "tenant"]
        constraints = [models.UniqueConstraint(fields=["consortium", "tenant"], condition=models.Q(status="active"),
                                               name="agreement_one_active_per_tenant")]

    def __str__(self) -> str:
        return f"agreement {self.pk} ({self.status})"


class PooledRun(models.Model):
    consortium = models.ForeignKey(Consortium, on_delete=models.PROTECT, related_name="runs")
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    status = models.CharField(max_length=10, default="queued")
    manifest = models.JSONField(default=dict)
    error = models.TextField(blank=True)
    created = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created", "-id"]

    def __str__(self) -> str:
        return f"pooled run {self.pk} ({self.status})"
