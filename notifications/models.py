"""The reminder outbox (tenant schema). A message is a row first, written in the same
transaction as its cause; a worker sends it later. Redis can be down and workers can
die: the row waits in PostgreSQL until it is sent."""

from __future__ import annotations

from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from studies.pii import EncryptedTextField


class Channel(models.TextChoices):
    EMAIL = "email", _("Email")
    SMS = "sms", _("SMS")
    WECHAT = "wechat", _("WeChat")


class OutboxStatus(models.TextChoices):
    PENDING = "pending", _("Pending")
    SENT = "sent", _("Sent")
    FAILED = "failed", _("Failed")


class OutboxMessage(models.Model):
    # (rule, task, occurrence): the same reminder can only ever be written once.
    key = models.CharField(max_length=120, unique=True)
    channel = models.CharField(max_length=10, choices=Channel.choices)
    recipient = EncryptedTextField(pii_purpose="outbox.recipient")
    language = models.CharField(max_length=10, default="zh-hans")
    subject = models.CharField(max_length=200, blank=True)
    body = EncryptedTextField(pii_purpose="outbox.body")
    # Not before this instant: quiet hours in the recipient's time zone.
    not_before = models.DateTimeField(default=timezone.now)
    status = models.CharField(max_length=10, choices=OutboxStatus.choices, default=OutboxStatus.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    last_error = models.CharField(max_length=300, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    created = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        indexes = [models.Index(fields=["status", "next_attempt_at"], name="outbox_due_idx")]

    def __str__(self) -> str:
        return self.key


class DeliveryLog(models.Model):
    message = models.ForeignKey(OutboxMessage, on_delete=models.CASCADE, related_name="log")
    at = models.DateTimeField(default=timezone.now)
    ok = models.BooleanField()
    detail = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["at"]

    def __str__(self) -> str:
        return f"{self.message_id} {'ok' if self.ok else 'error'}"


class RecordedMessage(models.Model):
    """What the database-recording SMS/WeChat adapter 'sent' (the default adapter until
    a provider is configured)."""

    channel = models.CharField(max_length=10, choices=Channel.choices)
    recipient = EncryptedTextField(pii_purpose="recorded.recipient")
    body = EncryptedTextField(pii_purpose="recorded.body")
    created = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.channel} {self.pk}"


class ReminderKind(models.TextChoices):
    PATIENT_BEFORE_WINDOW = "patient_before_window", _("To the patient, N days before the window opens")
    COORDINATOR_OVERDUE = "coordinator_overdue", _("To the coordinator, when a task becomes overdue")
    INVESTIGATOR_OVERDUE = "investigator_overdue", _("To the site's investigators, M days after it became overdue")


class ReminderRule(models.Model):
    study = models.ForeignKey("studies.Study", on_delete=models.CASCADE, related_name="reminder_rules")
    kind = models.CharField(_("kind"), max_length=30, choices=ReminderKind.choices)
    days = models.PositiveSmallIntegerField(_("days"), default=0)
    channel = models.CharField(_("channel"), max_length=10, default="email")
    # Quiet hours in the site's time zone: nothing is sent from quiet_from to quiet_until.
    quiet_from = models.TimeField(_("quiet from"), default="21:00")
    quiet_until = models.TimeField(_("quiet until"), default="08:00")
    active = models.BooleanField(_("active"), default=True)

    class Meta:
        ordering = ["study", "kind"]

    def __str__(self) -> str:
        return f"{self.study_id}:{self.kind}"
