"""Tenant-schema models of study sites: the site, its onboarding checklist and its staff."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from django.utils.translation import pgettext_lazy


class SiteStatus(models.TextChoices):
    INVITED = "invited", _("Invited")
    ONBOARDING = "onboarding", _("Onboarding")
    ACTIVE = "active", pgettext_lazy("site status", "Active")
    CLOSED = "closed", _("Closed")


class SiteRole(models.TextChoices):
    COORDINATOR = "coordinator", _("Site coordinator")
    INVESTIGATOR = "investigator", _("Investigator")
    MONITOR = "monitor", _("Monitor")


class Site(models.Model):
    code = models.CharField(_("code"), max_length=20, unique=True)
    name = models.CharField(_("name"), max_length=200)
    institution = models.CharField(_("institution"), max_length=200)
    country_region = models.CharField(_("country/region"), max_length=100)
    principal_investigator = models.CharField(_("principal investigator"), max_length=150)
    target_enrolment = models.PositiveIntegerField(_("target enrolment"))
    time_zone = models.CharField(_("time zone"), max_length=64)
    status = models.CharField(_("status"), max_length=20, choices=SiteStatus.choices, default=SiteStatus.INVITED)
    # Activation checklist.
    ethics_approval_date = models.DateField(_("ethics approval date"), null=True, blank=True)
    ethics_document = models.FileField(_("ethics approval document"), upload_to="sites/ethics/", blank=True)
    contract_signed = models.DateField(_("contract signed on"), null=True, blank=True)
    staff_trained = models.DateField(_("staff trained on"), null=True, blank=True)
    activated_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    closed_reason = models.CharField(max_length=500, blank=True)
    created = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["code"]
        indexes = [models.Index(fields=["status"], name="site_status_idx")]

    def __str__(self) -> str:
        return f"{self.code} {self.name}"

    def checklist_missing(self) -> list[str]:
        """Names of the activation checklist items still missing."""
        missing = []
        if not self.ethics_approval_date:
            missing.append("ethics_approval_date")
        if not self.ethics_document:
            missing.append("ethics_document")
        if not self.contract_signed:
            missing.append("contract_signed")
        if not self.staff_trained:
            missing.append("staff_trained")
        return missing


class SiteStaff(models.Model):
    """A tenant member working at a site. The same person may work at several sites."""

    site = models.ForeignKey(Site, on_delete=models.CASCADE, related_name="staff")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    role = models.CharField(_("role"), max_length=20, choices=SiteRole.choices)
    # The primary coordinator gets new follow-up tasks by default.
    is_primary = models.BooleanField(_("primary coordinator"), default=False)
    created = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["site", "user"], name="site_staff_site_user_uniq"),
            models.UniqueConstraint(fields=["site"], condition=Q(is_primary=True), name="site_one_primary_uniq"),
        ]
        indexes = [models.Index(fields=["user"], name="site_staff_user_idx")]

    def __str__(self) -> str:
        return f"{self.user_id} @ {self.site_id}: {self.role}"
