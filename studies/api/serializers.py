from __future__ import annotations

from typing import Any

from rest_framework import serializers

from studies.models import (
    Arm,
    ContactAttempt,
    ContactOutcome,
    FollowUpTask,
    ScheduleVersion,
    Study,
    StudyType,
    Subject,
    VisitMode,
)


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

    class Meta:
        model = FollowUpTask
        fields = ["id", "subject", "subject_code", "site_code", "event_code", "sequence", "unscheduled", "mode",
                  "target_date", "window_open", "window_close", "provisional", "status", "assignee",
                  "completed_on"]


class SubjectSerializer(serializers.ModelSerializer):
    identifiers = serializers.SerializerMethodField()
    site_code = serializers.CharField(source="site.code", read_only=True)

    class Meta:
        model = Subject
        fields = ["id", "subject_code", "study", "site", "site_code", "arm", "status", "consent_date",
                  "enrolment_date", "index_date", "language", "reminders_opt_out", "identifiers", "created"]

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


class ContactAttemptInputSerializer(serializers.Serializer):
    outcome = serializers.ChoiceField(choices=ContactOutcome.choices)
    note = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")
    at = serializers.DateTimeField(required=False, allow_null=True, default=None)


class TaskCompleteSerializer(serializers.Serializer):
    completed_on = serializers.DateField()


class WorklistQuerySerializer(serializers.Serializer):
    site = serializers.IntegerField(min_value=1, required=False)
    study = serializers.IntegerField(min_value=1, required=False)
    event = serializers.CharField(max_length=20, required=False)
    mode = serializers.ChoiceField(choices=VisitMode.choices, required=False)
    bucket = serializers.ChoiceField(choices=[("overdue", "overdue"), ("open", "open"), ("upcoming", "upcoming")],
                                     required=False)
