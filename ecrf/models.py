"""eCRF (tenant schema): versioned form definitions, entries of data per subject, event
occurrence and form, queries, source data verification, locks and signatures.

The audit trail lives in ecrf/models_audit.py (partitioned, append-only, hash-chained)."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


class FormDefinition(models.Model):
    """A form of a study (its identity); its content lives in versions."""

    study = models.ForeignKey("studies.Study", on_delete=models.CASCADE, related_name="+")
    code = models.CharField(_("code"), max_length=30)
    created = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["study_id", "code"]
        constraints = [models.UniqueConstraint(fields=["study", "code"], name="form_study_code_uniq")]

    def __str__(self) -> str:
        return self.code


class FormVersionStatus(models.TextChoices):
    DRAFT = "draft", _("Draft")
    PUBLISHED = "published", _("Published")


class FormVersion(models.Model):
    """One version of a form. A draft can be edited; a published version never changes
    (entries record the version they were entered against)."""

    form = models.ForeignKey(FormDefinition, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    status = models.CharField(max_length=10, choices=FormVersionStatus.choices, default=FormVersionStatus.DRAFT)
    # The form definition document (ecrf/definition.py).
    definition = models.JSONField()
    note = models.CharField(_("note"), max_length=500, blank=True)
    created = models.DateTimeField(default=timezone.now, editable=False)
    published_at = models.DateTimeField(null=True, blank=True)
    published_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                     related_name="+")

    class Meta:
        ordering = ["form_id", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["form", "number"], name="form_version_number_uniq"),
            models.UniqueConstraint(fields=["form"], condition=Q(status="draft"), name="form_one_draft_uniq"),
        ]

    def __str__(self) -> str:
        return f"{self.form_id} v{self.number}"


class EntryStatus(models.TextChoices):
    IN_PROGRESS = "in_progress", _("In progress")
    COMPLETE = "complete", _("Complete")


class Entry(models.Model):
    """The data of one form at one event occurrence (a follow-up task) of one subject."""

    # No single-column indexes on subject and task: entry_subject_form_idx and
    # entry_task_form_uniq lead with them (every save wrote two index entries for nothing).
    subject = models.ForeignKey("studies.Subject", on_delete=models.PROTECT, related_name="+", db_index=False)
    task = models.ForeignKey("studies.FollowUpTask", on_delete=models.PROTECT, related_name="+", db_index=False)
    form = models.ForeignKey(FormDefinition, on_delete=models.PROTECT, related_name="entries")
    form_version = models.ForeignKey(FormVersion, on_delete=models.PROTECT, related_name="+")
    status = models.CharField(max_length=12, choices=EntryStatus.choices, default=EntryStatus.IN_PROGRESS)
    # Item code (or "group[row].item") -> value; hidden items are never stored.
    values = models.JSONField(default=dict)
    # Item path -> missing-data code (NA, UNK, ASKU, NASK) given instead of a value.
    missing = models.JSONField(default=dict)
    # Item path -> the entry version that last changed it: a save based on an older
    # version that touches such an item is a conflict (412), never an overwrite.
    item_versions = models.JSONField(default=dict)
    # Item path -> {"by": user id, "at": ISO instant} of source data verification.
    verified = models.JSONField(default=dict)
    version = models.PositiveIntegerField(default=1)
    locked = models.BooleanField(default=False)
    first_completed_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    created = models.DateTimeField(default=timezone.now, editable=False)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["task", "form"], name="entry_task_form_uniq")]
        indexes = [models.Index(fields=["subject", "form"], name="entry_subject_form_idx")]

    def __str__(self) -> str:
        return f"{self.subject_id}:{self.task_id}:{self.form_id}"


class QueryStatus(models.TextChoices):
    OPEN = "open", _("Open")
    ANSWERED = "answered", _("Answered")
    CLOSED = "closed", _("Closed")


class QueryOrigin(models.TextChoices):
    AUTO = "auto", _("Raised by an edit check")
    MANUAL = "manual", _("Raised by a person")


class Query(models.Model):
    """A question about one item of an entry: raised by a soft check or by a monitor or
    data manager; answered at the site; closed (or re-opened) by who raised it."""

    entry = models.ForeignKey(Entry, on_delete=models.PROTECT, related_name="queries")
    subject = models.ForeignKey("studies.Subject", on_delete=models.PROTECT, related_name="+")
    site = models.ForeignKey("sites.Site", on_delete=models.PROTECT, related_name="+")
    item = models.CharField(max_length=200)
    origin = models.CharField(max_length=10, choices=QueryOrigin.choices)
    check_code = models.CharField(max_length=40, blank=True)
    status = models.CharField(max_length=10, choices=QueryStatus.choices, default=QueryStatus.OPEN)
    raised_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                  related_name="+")
    created = models.DateTimeField(default=timezone.now)
    answered_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created", "pk"]
        indexes = [models.Index(fields=["site", "status", "created"], name="query_site_status_idx"),
                   models.Index(fields=["entry", "item", "status"], name="query_entry_item_idx")]

    def __str__(self) -> str:
        return f"{self.entry_id}:{self.item} {self.status}"


class QueryMessage(models.Model):
    query = models.ForeignKey(Query, on_delete=models.CASCADE, related_name="messages")
    author = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                               related_name="+")
    # raise / answer / close / reopen / comment
    kind = models.CharField(max_length=10)
    text = models.TextField(max_length=4000)
    at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["at", "pk"]

    def __str__(self) -> str:
        return f"{self.query_id} {self.kind}"


class CasebookLock(models.Model):
    """A subject's whole casebook frozen by a data manager: no entry of theirs changes."""

    subject = models.OneToOneField("studies.Subject", on_delete=models.PROTECT, related_name="+")
    locked_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    locked_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"lock {self.subject_id}"


class SignatureMeaning(models.TextChoices):
    REVIEW = "review", _("I have reviewed this casebook and the data are accurate and complete.")
    APPROVAL = "approval", _("I approve the data in this casebook.")
    AUTHORSHIP = "authorship", _("I am the author of these data.")


class Signature(models.Model):
    """An investigator's electronic signature of a subject's casebook (21 CFR 11.50,
    11.200): the signer's printed name, the instant, the meaning, and a hash of what was
    signed. Changing signed data invalidates it."""

    subject = models.ForeignKey("studies.Subject", on_delete=models.PROTECT, related_name="+")
    signer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    signer_name = models.CharField(max_length=200)
    meaning = models.CharField(max_length=20, choices=SignatureMeaning.choices)
    signed_at = models.DateTimeField(default=timezone.now)
    # SHA-256 over the casebook's entries (ids, versions, values) at signing time.
    content_hash = models.CharField(max_length=64)
    invalidated_at = models.DateTimeField(null=True, blank=True)
    invalidated_reason = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["-signed_at"]
        indexes = [models.Index(fields=["subject", "invalidated_at"], name="signature_subject_idx")]

    def __str__(self) -> str:
        return f"{self.subject_id} {self.meaning} {self.signed_at:%Y-%m-%d}"


class EproLink(models.Model):
    """A patient's link to one form of one follow-up task: signed, expiring, single use
    unless saved as a draft. Only the token's hash is stored."""

    subject = models.ForeignKey("studies.Subject", on_delete=models.PROTECT, related_name="+")
    task = models.ForeignKey("studies.FollowUpTask", on_delete=models.PROTECT, related_name="+")
    form = models.ForeignKey(FormDefinition, on_delete=models.PROTECT, related_name="+")
    token_hash = models.CharField(max_length=64, unique=True)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"epro {self.subject_id}:{self.task_id}:{self.form_id}"

class EntryFile(models.Model):
    """A file uploaded for a file item (a scan, a photo, an ECG). Stored through the
    storage layer (S3 in production); the entry's value refers to it by `id`."""

    id = models.CharField(primary_key=True, max_length=32, editable=False)
    subject = models.ForeignKey("studies.Subject", on_delete=models.PROTECT, related_name="+")
    form = models.ForeignKey(FormDefinition, on_delete=models.PROTECT, related_name="+")
    item = models.CharField(max_length=64)
    storage_path = models.CharField(max_length=300)
    name = models.CharField(max_length=255)
    content_type = models.CharField(max_length=100)
    size = models.PositiveBigIntegerField()
    sha256 = models.CharField(max_length=64)
    uploaded_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created = models.DateTimeField(default=timezone.now, editable=False)

    def __str__(self) -> str:
        return f"{self.id} {self.name}"


from ecrf.models_audit import AuditChainHead, AuditEvent  # noqa: E402, F401
