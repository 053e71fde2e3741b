"""Consortia (public schema). A consortium pools de-identified data of the tenants that
accepted its data-sharing agreement; only exports.pooling.aggregate reads across tenant
schemas, and only the consented fields of the consented study."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


class Consortium(models.Model):
    slug = models.SlugField(max_length=40, unique=True)
    name = models.CharField(max_length=200)
    coordinating_organisation = models.CharField(max_length=200)
    protocol = models.TextField(blank=True)
    # The common data elements: [{"form": "VITALS", "items": ["weight", ...], "safe_text": ["notes"]}]
    # (form definitions with CDISC annotations that participating tenants adopt).
    common_data_elements = models.JSONField(default=list)
    # De-identification: quasi-identifiers generalised until k-anonymity, the date shift.
    quasi_identifiers = models.JSONField(default=list)  # of "age", "region", "site_country"
    k = models.PositiveSmallIntegerField(default=5)
    max_shift_days = models.PositiveSmallIntegerField(default=180)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


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
