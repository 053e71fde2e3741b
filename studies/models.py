"""Tenant-schema models of the follow-up engine: studies, arms, versioned visit
schedules, subjects (with encrypted identifying data) and their follow-up tasks."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from django.utils.translation import pgettext_lazy

from studies.pii import EncryptedTextField


class StudyType(models.TextChoices):
    REGISTRY = "registry", _("Registry")
    TRIAL = "interventional_trial", _("Interventional trial")
    DEVICE_PMS = "device_post_market", _("Device post-market")
    COHORT = "public_health_cohort", _("Public-health cohort")


class StudyStatus(models.TextChoices):
    DRAFT = "draft", _("Draft")
    ACTIVE = "active", pgettext_lazy("study status", "Active")
    CLOSED = "closed", _("Closed")


class Study(models.Model):
    code = models.CharField(_("code"), max_length=30, unique=True)
    title = models.CharField(_("title"), max_length=300)
    study_type = models.CharField(_("type"), max_length=30, choices=StudyType.choices)
    status = models.CharField(_("status"), max_length=10, choices=StudyStatus.choices, default=StudyStatus.DRAFT)
    target_enrolment = models.PositiveIntegerField(_("target enrolment"))
    # e.g. "{SITE}-{SEQ:04}" -> "BJ01-0007"; numbered per (study, site) without gaps.
    subject_id_pattern = models.CharField(_("subject ID pattern"), max_length=60, default="{SITE}-{SEQ:04}")
    # Lost-to-follow-up rule: this many consecutive missed visits (0 = off) ...
    lost_after_missed = models.PositiveSmallIntegerField(_("lost after consecutive missed visits"), default=3)
    # ... or this many failed contact attempts in a row (0 = off).
    lost_after_failed_attempts = models.PositiveSmallIntegerField(
        _("lost after consecutive failed contact attempts"), default=0
    )
    created = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["code"]
        verbose_name_plural = _("studies")

    def __str__(self) -> str:
        return self.code


class Arm(models.Model):
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="arms")
    code = models.CharField(_("code"), max_length=20)
    name = models.CharField(_("name"), max_length=200)

    class Meta:
        ordering = ["study", "code"]
        constraints = [models.UniqueConstraint(fields=["study", "code"], name="arm_study_code_uniq")]

    def __str__(self) -> str:
        return f"{self.study_id}:{self.code}"


class ScheduleStatus(models.TextChoices):
    DRAFT = "draft", _("Draft")
    PUBLISHED = "published", _("Published")


class ScheduleVersion(models.Model):
    """A visit schedule, for one arm or (arm empty) for every arm without its own.
    A published version never changes; an amendment is a new version."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="schedule_versions")
    arm = models.ForeignKey(Arm, null=True, blank=True, on_delete=models.CASCADE, related_name="schedule_versions")
    number = models.PositiveIntegerField()
    status = models.CharField(max_length=10, choices=ScheduleStatus.choices, default=ScheduleStatus.DRAFT)
    # A list of studies.schedule.event_spec_to_dict() documents.
    events = models.JSONField(default=list)
    note = models.CharField(_("amendment note"), max_length=500, blank=True)
    created = models.DateTimeField(default=timezone.now, editable=False)
    published_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["study_id", "arm_id", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["study", "arm", "number"], name="schedule_study_arm_number_uniq",
                                    nulls_distinct=False),
        ]

    def __str__(self) -> str:
        return f"{self.study_id} v{self.number}"


class SubjectStatus(models.TextChoices):
    SCREENING = "screening", _("Screening")
    ENROLLED = "enrolled", _("Enrolled")
    COMPLETED = "completed", _("Completed")
    WITHDRAWN = "withdrawn", _("Withdrawn")
    LOST = "lost_to_follow_up", _("Lost to follow-up")
    DECEASED = "deceased", _("Deceased")


class Subject(models.Model):
    study = models.ForeignKey(Study, on_delete=models.PROTECT, related_name="subjects")
    site = models.ForeignKey("sites.Site", on_delete=models.PROTECT, related_name="+")
    arm = models.ForeignKey(Arm, null=True, blank=True, on_delete=models.PROTECT, related_name="subjects")
    subject_code = models.CharField(_("subject ID"), max_length=60)
    status = models.CharField(_("status"), max_length=20, choices=SubjectStatus.choices,
                              default=SubjectStatus.ENROLLED)
    consent_date = models.DateField(_("consent date"))
    enrolment_date = models.DateField(_("enrolment date"))
    index_date = models.DateField(_("index date"), null=True, blank=True)
    language = models.CharField(_("language"), max_length=10, default="zh-hans")
    reminders_opt_out = models.BooleanField(_("opted out of reminders"), default=False)
    # Identifying data: AES-GCM encrypted at rest (studies/pii.py), shown masked by role.
    name = EncryptedTextField(_("full name"), pii_purpose="subject.name", blank=True, null=True)
    phone = EncryptedTextField(_("phone"), pii_purpose="subject.phone", blank=True, null=True)
    email = EncryptedTextField(_("email"), pii_purpose="subject.email", blank=True, null=True)
    national_id = EncryptedTextField(_("national ID"), pii_purpose="subject.national_id", blank=True, null=True)
    birth_date = EncryptedTextField(_("birth date"), pii_purpose="subject.birth_date", blank=True, null=True)
    address = EncryptedTextField(_("address"), pii_purpose="subject.address", blank=True, null=True)
    # Keyed hash of the normalised national ID: finds duplicates without decrypting.
    national_id_hash = models.CharField(max_length=64, null=True, blank=True, editable=False)
    # The last status change (withdrawn, deceased, completed, lost, reinstated): when it
    # took effect at the site and why. The reason can hold health information: encrypted.
    status_changed_on = models.DateField(_("status changed on"), null=True, blank=True)
    status_reason = EncryptedTextField(_("reason"), pii_purpose="subject.status_reason", blank=True, null=True)
    created = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["study", "subject_code"]
        constraints = [
            models.UniqueConstraint(fields=["study", "subject_code"], name="subject_study_code_uniq"),
            models.UniqueConstraint(fields=["national_id_hash"], condition=Q(national_id_hash__isnull=False),
                                    name="subject_national_id_uniq"),
        ]
        indexes = [models.Index(fields=["study", "site", "status"], name="subject_study_site_status_idx")]

    def __str__(self) -> str:
        return self.subject_code


class SubjectSequence(models.Model):
    """The last subject number given out per (study, site); locked while enrolling so
    numbers have no gaps and no duplicates under concurrency."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="+")
    site = models.ForeignKey("sites.Site", on_delete=models.CASCADE, related_name="+")
    last_value = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["study", "site"], name="subject_sequence_uniq")]

    def __str__(self) -> str:
        return f"{self.study_id}/{self.site_id}: {self.last_value}"


class TaskStatus(models.TextChoices):
    UPCOMING = "upcoming", _("Upcoming")
    OPEN = "open", _("Open")
    OVERDUE = "overdue", _("Overdue")
    COMPLETED = "completed", _("Completed")
    MISSED = "missed", _("Missed")
    CANCELLED = "cancelled", _("Cancelled")


DONE_TASK_STATUSES = frozenset({TaskStatus.COMPLETED, TaskStatus.MISSED, TaskStatus.CANCELLED})


class VisitMode(models.TextChoices):
    CLINIC = "clinic", _("Clinic")
    PHONE = "phone", _("Phone")
    HOME = "home", pgettext_lazy("visit mode", "Home")
    EPRO = "epro", _("ePRO")
    ANY = "any", _("Any")


# Worklist order: overdue first, then open, then upcoming. Shared by the worklist query
# (studies.selectors.worklist) and its index, which PostgreSQL only uses for the ORDER BY
# when both spell the expression identically.
TASK_URGENCY = models.Case(
    models.When(status=TaskStatus.OVERDUE, then=models.Value(0)),
    models.When(status=TaskStatus.OPEN, then=models.Value(1)),
    default=models.Value(2),
    output_field=models.IntegerField(),
)
WORKLIST_STATUSES = (TaskStatus.OVERDUE, TaskStatus.OPEN, TaskStatus.UPCOMING)


class FollowUpTask(models.Model):
    """One scheduled (or unscheduled) occurrence of an event for one subject.

    `study` and `site` are copies of the subject's (a subject never changes study or
    site): the metrics aggregate, the worklist and the reminder scan filter and group
    on the task row itself instead of joining a million tasks to their subjects. Every
    writer must set them from the subject (`FollowUpTask(subject=s, study_id=s.study_id,
    site_id=s.site_id, ...)`); the columns are NOT NULL."""

    # No index of its own: task_subject_event_seq_uniq leads with the subject.
    subject = models.ForeignKey(Subject, on_delete=models.CASCADE, related_name="tasks", db_index=False)
    # No single-column indexes: task_metrics_idx leads with (study, site).
    study = models.ForeignKey(Study, on_delete=models.PROTECT, related_name="+", db_index=False)
    site = models.ForeignKey("sites.Site", on_delete=models.PROTECT, related_name="+", db_index=False)
    schedule_version = models.ForeignKey(ScheduleVersion, null=True, blank=True, on_delete=models.PROTECT,
                                         related_name="+")
    event_code = models.CharField(max_length=20)
    sequence = models.PositiveIntegerField(default=1)
    unscheduled = models.BooleanField(default=False)
    mode = models.CharField(max_length=10, choices=VisitMode.choices, default=VisitMode.ANY)
    target_date = models.DateField()
    window_open = models.DateField()
    window_close = models.DateField()
    provisional = models.BooleanField(default=False)
    status = models.CharField(max_length=10, choices=TaskStatus.choices, default=TaskStatus.UPCOMING)
    # No index of its own: task_worklist_urgency_idx leads with the assignee for the tasks
    # a worklist shows. With a plain assignee index PostgreSQL counted a worklist by
    # reading every task the coordinator ever had (90 ms at 1M tasks; 18 ms without it).
    assignee = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                 related_name="+", db_index=False)
    completed_on = models.DateField(null=True, blank=True)
    # Why an unscheduled visit was added (e.g. "adverse event follow-up"); health
    # information, so encrypted like PII.
    reason = EncryptedTextField(pii_purpose="task.reason", blank=True, null=True)
    created = models.DateTimeField(default=timezone.now, editable=False)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["target_date", "pk"]
        constraints = [
            models.UniqueConstraint(fields=["subject", "event_code", "sequence"], name="task_subject_event_seq_uniq"),
            models.CheckConstraint(condition=Q(window_open__lte=models.F("target_date"))
                                   & Q(target_date__lte=models.F("window_close")), name="task_window_order"),
        ]
        indexes = [
            # The worklist: my open/overdue/upcoming tasks in the worklist's exact order, so a
            # page is the first rows of an index scan instead of a sort of all my tasks.
            models.Index(F("assignee"), TASK_URGENCY, F("window_close"), F("target_date"), F("id"),
                         # window_open: the upcoming horizon is checked in the index.
                         include=["site", "study", "window_open"], condition=Q(status__in=WORKLIST_STATUSES),
                         name="task_worklist_urgency_idx"),
            # The metrics aggregate (grouped by study, site, event) as an index-only scan;
            # also serves lookups by study, and by study and site.
            models.Index(fields=["study", "site", "event_code"],
                         include=["status", "window_open", "window_close", "completed_on"],
                         name="task_metrics_idx"),
            # The reminder scan and the status sweep: by status and window dates.
            models.Index(fields=["status", "window_open"], name="task_scan_open_idx"),
            models.Index(fields=["status", "window_close"], name="task_scan_close_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.subject_id}:{self.event_code}#{self.sequence}"


class ContactOutcome(models.TextChoices):
    REACHED = "reached", _("Reached")
    NO_ANSWER = "no_answer", _("No answer")
    WRONG_NUMBER = "wrong_number", _("Wrong number")
    REFUSED = "refused", _("Refused")
    CALL_BACK = "call_back_later", _("Call back later")


class ContactAttempt(models.Model):
    task = models.ForeignKey(FollowUpTask, on_delete=models.CASCADE, related_name="attempts")
    at = models.DateTimeField(default=timezone.now)
    outcome = models.CharField(max_length=20, choices=ContactOutcome.choices)
    # Notes of a phone call can hold health information: encrypted like PII.
    note = EncryptedTextField(pii_purpose="contact.note", blank=True, null=True)
    by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        ordering = ["-at"]

    def __str__(self) -> str:
        return f"{self.task_id} {self.outcome}"


class SubjectImportRow(models.Model):
    """One row of a bulk import that became a subject, by the row's stable key (external
    reference, keyed hash of the national ID, or hash of the row): re-uploading the same
    file, or one that repeats rows, imports them only once."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="+")
    row_key = models.CharField(max_length=64)
    subject = models.ForeignKey(Subject, on_delete=models.CASCADE, related_name="+")
    # SHA-256 of the file the row came from (the import fingerprint).
    file_sha256 = models.CharField(max_length=64)
    created = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["study", "row_key"], name="subject_import_row_uniq")]

    def __str__(self) -> str:
        return f"{self.study_id}:{self.row_key[:12]}"
