"""Study exports of a tenant (this schema): a job, run by Celery, and the files it wrote.

A job pins its data snapshot: `snapshot_seq` is the audit chain's last sequence number
when the job first ran (every change of clinical data appends to that chain). A retry of
an interrupted job reads the same snapshot when the chain has not moved, and then writes
byte-identical files; when it has moved, the retry says so in the manifest instead of
pretending.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


class ExportFormat(models.TextChoices):
    CSV_LONG = "csv_long", _("CSV, one row per item value")
    CSV_WIDE = "csv_wide", _("CSV, one row per form")
    XLSX = "xlsx", _("Excel workbook")
    PARQUET = "parquet", _("Parquet")
    ODM = "odm", _("CDISC ODM 1.3.2 XML")
    SDTM = "sdtm", _("CDISC SDTM (SAS XPORT v5) with Define-XML 2.1")


class ExportStatus(models.TextChoices):
    QUEUED = "queued", _("Queued")
    RUNNING = "running", _("Running")
    DONE = "done", _("Done")
    FAILED = "failed", _("Failed")


class ExportJob(models.Model):
    study = models.ForeignKey("studies.Study", on_delete=models.PROTECT, related_name="+")
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    formats = models.JSONField(default=list)  # ExportFormat values, in the order asked
    # {"forms": [codes] | [], "sites": [ids] | [], "date_from": "YYYY-MM-DD" | null, "date_to": ..., "audit": bool}
    filters = models.JSONField(default=dict)
    status = models.CharField(max_length=10, choices=ExportStatus.choices, default=ExportStatus.QUEUED)
    rows_done = models.BigIntegerField(default=0)
    rows_total = models.BigIntegerField(default=0)
    attempts = models.PositiveSmallIntegerField(default=0)
    # Runs that ended with their worker process (out of memory, a restart): see
    # exports.services.MAX_LOST_RUNS. A user's Retry starts the count again.
    lost_runs = models.PositiveSmallIntegerField(default=0)
    snapshot_seq = models.BigIntegerField(null=True, blank=True)
    snapshot_at = models.DateTimeField(null=True, blank=True)
    manifest = models.JSONField(default=dict)
    # Why the last attempt failed, for the people who run exports (never a data value):
    # a data problem's message names the dataset, variable and row (error_is_data), an
    # unexpected error only its kind (the details are in the logs).
    error = models.TextField(blank=True)
    error_is_data = models.BooleanField(default=False)
    created = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created", "-id"]
        indexes = [models.Index(fields=["study", "-created"], name="export_job_study_idx")]

    def __str__(self) -> str:
        return f"export {self.pk} ({self.status})"


class ExportFile(models.Model):
    job = models.ForeignKey(ExportJob, on_delete=models.CASCADE, related_name="files")
    name = models.CharField(max_length=200)  # as downloaded, e.g. "CRF_long.csv"
    format = models.CharField(max_length=10, choices=ExportFormat.choices)
    storage_name = models.CharField(max_length=500)  # the key in the storage backend
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    rows = models.BigIntegerField(default=0)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["job", "name"]
        constraints = [models.UniqueConstraint(fields=["job", "name"], name="export_file_name_uniq")]

    def __str__(self) -> str:
        return self.name
