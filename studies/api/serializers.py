from __future__ import annotations

from typing import Any

from django.utils.translation import gettext as _
from rest_framework import serializers

from notifications.models import Channel, ReminderKind, ReminderRule
from studies.models import (
    Arm,
    ContactAttempt,
    ContactOutcome,
    FollowUpTask,
    ScheduleVersion,
    Study,
    StudyType,
    Subject,
    SubjectStatus,
    VisitMode,
)
from studies.selectors import NO_PII_ROLES


class ArmSerializer(serializers.ModelSerializer):
    class Meta:
        model = Arm
        fields = ["id", "code", "name"]


class StudySerializer(serializers.ModelSerializer):
    arms = ArmSerializer(many=True, read_only=True)

    class Meta:
        model = Study
        fields = ["id", "code", "title", "study_type", "status", "target_enrolment", "subject_id_pattern",
                  "lost_after_missed", "lost_after_failed_attempts", "arms", "created"]


class ArmInputSerializer(serializers.Serializer):
    code = serializers.CharField(max_length=20)
    name = serializers.CharField(max_length=200)


class StudyCreateSerializer(serializers.Serializer):
    code = serializers.CharField(max_length=30)
    title = serializers.CharField(max_length=300)
    study_type = serializers.ChoiceField(choices=StudyType.choices)
    target_enrolment = serializers.IntegerField(min_value=1, max_value=10_000_000)
    subject_id_pattern = serializers.CharField(max_length=60, default="{SITE}-{SEQ:04}")
    arms = ArmInputSerializer(many=True, required=False, default=list)


class ScheduleVersionSerializer(serializers.ModelSerializer):
    class Meta:
        model = ScheduleVersion
        fields = ["id", "number", "arm", "status", "events", "note", "created", "published_at"]


class ScheduleDraftSerializer(serializers.Serializer):
    arm = serializers.IntegerField(required=False, allow_null=True, default=None)
    events = serializers.ListField(child=serializers.DictField(), max_length=200)
    note = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")


class TaskSerializer(serializers.ModelSerializer):
    subject_code = serializers.CharField(source="subject.subject_code", read_only=True)
    site_code = serializers.CharField(source="subject.site.code", read_only=True)
    reason = serializers.SerializerMethodField()

    class Meta:
        model = FollowUpTask
        fields = ["id", "subject", "subject_code", "site_code", "event_code", "sequence", "unscheduled", "mode",
                  "target_date", "window_open", "window_close", "provisional", "status", "assignee",
                  "completed_on", "reason"]

    def get_reason(self, obj: FollowUpTask) -> str | None:
        """Why an unscheduled visit was added: health information, so not for the roles
        that never see identifying data (and not when the caller did not say who asks)."""
        membership = self.context.get("membership")
        if membership is None or membership.role in NO_PII_ROLES:
            return None
        return obj.reason


class SubjectSerializer(serializers.ModelSerializer):
    identifiers = serializers.SerializerMethodField()
    site_code = serializers.CharField(source="site.code", read_only=True)
    status_reason = serializers.SerializerMethodField()

    class Meta:
        model = Subject
        fields = ["id", "subject_code", "study", "site", "site_code", "arm", "status", "status_changed_on",
                  "status_reason", "consent_date", "enrolment_date", "index_date", "language", "reminders_opt_out",
                  "identifiers", "created"]

    def get_status_reason(self, obj: Subject) -> str | None:
        membership = self.context.get("membership")
        if membership is None or membership.role in NO_PII_ROLES:
            return None
        return obj.status_reason

    def get_identifiers(self, obj: Subject) -> dict[str, Any]:
        from studies.selectors import subject_identifiers

        return subject_identifiers(membership=self.context["membership"], subject=obj)


class EnrolSerializer(serializers.Serializer):
    study = serializers.IntegerField(min_value=1)
    site = serializers.IntegerField(min_value=1)
    arm = serializers.IntegerField(min_value=1, required=False, allow_null=True, default=None)
    consent_date = serializers.DateField()
    enrolment_date = serializers.DateField(required=False, allow_null=True, default=None)
    index_date = serializers.DateField(required=False, allow_null=True, default=None)
    language = serializers.ChoiceField(choices=[("zh-hans", "zh-hans"), ("en", "en")], default="zh-hans")
    name = serializers.CharField(max_length=150, required=False, allow_blank=True, default="")
    phone = serializers.CharField(max_length=30, required=False, allow_blank=True, default="")
    email = serializers.EmailField(max_length=254, required=False, allow_blank=True, default="")
    national_id = serializers.CharField(max_length=40, required=False, allow_blank=True, default="")
    birth_date = serializers.CharField(max_length=10, required=False, allow_blank=True, default="")
    address = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")


class ContactAttemptSerializer(serializers.ModelSerializer):
    class Meta:
        model = ContactAttempt
        fields = ["id", "at", "outcome", "note", "by"]


class _InRangeDateTimeField(serializers.DateTimeField):
    """DRF makes a naive time aware in the current zone; near year 1 or 9999 that overflows
    (an uncaught OverflowError, a 500) instead of failing validation."""

    def to_internal_value(self, value: Any) -> Any:
        try:
            return super().to_internal_value(value)
        except OverflowError as exc:
            raise serializers.ValidationError(_("Out of range.")) from exc


class ContactAttemptInputSerializer(serializers.Serializer):
    outcome = serializers.ChoiceField(choices=ContactOutcome.choices)
    note = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")
    at = _InRangeDateTimeField(required=False, allow_null=True, default=None)


class TaskCompleteSerializer(serializers.Serializer):
    completed_on = serializers.DateField()


class WorklistQuerySerializer(serializers.Serializer):
    site = serializers.IntegerField(min_value=1, required=False)
    study = serializers.IntegerField(min_value=1, required=False)
    event = serializers.CharField(max_length=20, required=False)
    mode = serializers.ChoiceField(choices=VisitMode.choices, required=False)
    bucket = serializers.ChoiceField(choices=[("overdue", "overdue"), ("open", "open"), ("upcoming", "upcoming")],
                                     required=False)
    # Upcoming visits whose window opens within this many days (default 90).
    horizon = serializers.IntegerField(min_value=1, max_value=3660, required=False)


class SubjectStatusInputSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=SubjectStatus.choices)
    effective_on = serializers.DateField()
    reason = serializers.CharField(max_length=1000, required=False, allow_blank=True, default="")


class UnscheduledVisitInputSerializer(serializers.Serializer):
    visit_date = serializers.DateField()
    reason = serializers.CharField(max_length=1000)
    mode = serializers.ChoiceField(choices=VisitMode.choices, default=VisitMode.CLINIC)
    event_code = serializers.CharField(max_length=20, required=False, allow_blank=True, default="")
    window_after = serializers.IntegerField(min_value=0, max_value=90, default=7)
    assignee = serializers.IntegerField(min_value=1, required=False, allow_null=True, default=None)


class TaskReassignSerializer(serializers.Serializer):
    tasks = serializers.ListField(child=serializers.IntegerField(min_value=1), min_length=1, max_length=500)
    assignee = serializers.IntegerField(min_value=1)


class ImportUploadSerializer(serializers.Serializer):
    file = serializers.FileField(max_length=255)
    valid_rows_only = serializers.BooleanField(default=False)


class ImportJobSerializer(serializers.Serializer):
    job = serializers.CharField()
    state = serializers.ChoiceField(choices=["queued", "running", "done", "refused", "failed"])
    done = serializers.IntegerField(required=False, allow_null=True)
    total = serializers.IntegerField(required=False, allow_null=True)
    study = serializers.IntegerField()
    valid_rows_only = serializers.BooleanField()
    report = serializers.DictField(required=False)
    error = serializers.DictField(required=False)


class ReminderRuleSerializer(serializers.ModelSerializer):
    class Meta:
        model = ReminderRule
        fields = ["id", "study", "kind", "days", "channel", "quiet_from", "quiet_until", "active"]


class ReminderRuleInputSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=ReminderKind.choices)
    days = serializers.IntegerField(min_value=0, max_value=365, default=0)
    channel = serializers.ChoiceField(choices=Channel.choices, default=Channel.EMAIL)
    quiet_from = serializers.TimeField(required=False)
    quiet_until = serializers.TimeField(required=False)


class ReminderRulePatchSerializer(serializers.Serializer):
    days = serializers.IntegerField(min_value=0, max_value=365, required=False)
    channel = serializers.ChoiceField(choices=Channel.choices, required=False)
    quiet_from = serializers.TimeField(required=False)
    quiet_until = serializers.TimeField(required=False)
    active = serializers.BooleanField(required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(self.initial_data) - set(self.fields)) if isinstance(self.initial_data, dict) else []
        if unknown:
            raise serializers.ValidationError({name: [_("This cannot be changed; create another rule.")]
                                               for name in unknown})
        if not attrs:
            raise serializers.ValidationError({"non_field_errors": [_("Nothing to change.")]})
        return attrs
