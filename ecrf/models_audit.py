"""The eCRF audit trail (tenant schema): one row per item-level change of clinical data.

The table is created by SQL in ecrf/migrations/0001_audit_trail.py, not by Django
(`managed = False`): it is range-partitioned by month on `at`, append-only (a trigger
refuses UPDATE, DELETE and TRUNCATE) and hash-chained (`seq`, `prev_hash`, `hash`).
Rows are only ever written by ecrf.audit (the SQL function ecrf_audit_append); read them
through ecrf.audit_selectors. See docs/adr/0007-audit-trail.md."""

from __future__ import annotations

from django.db import models
from django.utils.translation import gettext_lazy as _

__all__ = ["AuditAction", "AuditChainHead", "AuditEvent", "AuditSource"]


class AuditAction(models.TextChoices):
    """What happened. The column is plain text (no CHECK): adding a member needs no
    database migration, and old rows keep whatever value they were written with."""

    ITEM_CREATE = "item_create", _("Item entered")
    ITEM_UPDATE = "item_update", _("Item changed")
    ITEM_DELETE = "item_delete", _("Item removed")
    ENTRY_CREATE = "entry_create", _("Form saved empty")
    ENTRY_COMPLETE = "entry_complete", _("Form completed")
    QUERY_OPEN = "query_open", _("Query opened")
    QUERY_ANSWER = "query_answer", _("Query answered")
    QUERY_CLOSE = "query_close", _("Query closed")
    QUERY_REOPEN = "query_reopen", _("Query re-opened")
    SDV_SET = "sdv_set", _("Source data verified")
    SDV_CLEAR = "sdv_clear", _("Source data verification cleared")
    LOCK = "lock", _("Locked")
    UNLOCK = "unlock", _("Unlocked")
    SIGN = "sign", _("Signed")
    SIGNATURE_INVALIDATED = "signature_invalidated", _("Signature invalidated")
    FORM_PUBLISH = "form_publish", _("Form version published")
    EPRO_LINK_ISSUED = "epro_link_issued", _("Patient link issued")
    EPRO_SUBMIT = "epro_submit", _("Patient questionnaire submitted")
    EXPORT_RUN = "export_run", _("Data exported")
    EXPORT_DOWNLOAD = "export_download", _("Export downloaded")


class AuditSource(models.TextChoices):
    WEB = "web", _("Web")
    API = "api", _("API")
    IMPORT = "import", _("Import")
    EPRO = "epro", _("Patient (ePRO)")


class AuditEvent(models.Model):
    """One audit row. The real primary key is (id, at) (a partitioned table's keys must
    contain the partition key); `id` alone comes from a sequence and is unique, which is
    what Django needs. Never save or delete instances: the database refuses."""

    id = models.BigIntegerField(primary_key=True, serialize=False)
    # Position in this schema's chain: 1, 2, 3 ... without gaps.
    seq = models.BigIntegerField()
    # UTC instant of the append (taken under the chain lock, never before the previous row).
    at = models.DateTimeField()
    action = models.CharField(max_length=40, choices=AuditAction.choices)
    source = models.CharField(max_length=10, choices=AuditSource.choices)
    # The global user (public schema) and a snapshot of who they were at that instant;
    # no foreign key: the record must outlive the account. Null for a patient (ePRO).
    user_id = models.BigIntegerField(null=True)
    user_email = models.TextField(default="")
    user_name = models.TextField(default="")
    subject_id = models.BigIntegerField(null=True)
    entry_id = models.BigIntegerField(null=True)
    event_code = models.TextField(default="")
    form_code = models.TextField(default="")
    form_version = models.IntegerField(null=True)
    # Item path, e.g. "weight" or "meds[2].dose"; empty for entry- or form-level actions.
    item = models.TextField(default="")
    # Null means "no value" (before a creation, after a removal).
    old_value = models.JSONField(null=True)
    new_value = models.JSONField(null=True)
    reason = models.TextField(default="")
    detail = models.JSONField(default=dict)
    prev_hash = models.BinaryField()
    hash = models.BinaryField()

    class Meta:
        managed = False
        db_table = "ecrf_auditevent"

    def __str__(self) -> str:
        return f"#{self.seq} {self.action} {self.item}".rstrip()


class AuditChainHead(models.Model):
    """The one row holding the chain's last seq and hash: a removed tail shows as rows
    missing below the head. Moved only by ecrf_audit_append(), in the same transaction."""

    id = models.SmallIntegerField(primary_key=True, serialize=False)
    last_seq = models.BigIntegerField()
    last_hash = models.BinaryField()
    last_at = models.DateTimeField(null=True)
    updated_at = models.DateTimeField()

    class Meta:
        managed = False
        db_table = "ecrf_auditchainhead"

    def __str__(self) -> str:
        return f"head #{self.last_seq}"
