from __future__ import annotations

from rest_framework import serializers

from sites.models import Site, SiteRole, SiteStaff


class SiteSerializer(serializers.ModelSerializer):
    checklist_missing = serializers.SerializerMethodField()

    class Meta:
        model = Site
        fields = ["id", "code", "name", "institution", "country_region", "principal_investigator",
                  "target_enrolment", "time_zone", "status", "ethics_approval_date", "contract_signed",
                  "staff_trained", "checklist_missing", "activated_at", "closed_at", "created"]

    def get_checklist_missing(self, obj: Site) -> list[str]:
        return obj.checklist_missing()


class SiteCreateSerializer(serializers.Serializer):
    code = serializers.CharField(max_length=20)
    name = serializers.CharField(max_length=200)
    institution = serializers.CharField(max_length=200)
    country_region = serializers.CharField(max_length=100)
    principal_investigator = serializers.CharField(max_length=150)
    target_enrolment = serializers.IntegerField(min_value=1, max_value=1_000_000)
    time_zone = serializers.CharField(max_length=64)


class ChecklistSerializer(serializers.Serializer):
    ethics_approval_date = serializers.DateField(required=False)
    ethics_document = serializers.FileField(required=False, max_length=200)
    contract_signed = serializers.DateField(required=False)
    staff_trained = serializers.DateField(required=False)


class CloseSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=500)


class StaffSerializer(serializers.ModelSerializer):
    email = serializers.EmailField(source="user.email", read_only=True)

    class Meta:
        model = SiteStaff
        fields = ["id", "user", "email", "role", "is_primary", "created"]
        read_only_fields = ["id", "email", "created"]


class StaffAssignSerializer(serializers.Serializer):
    user = serializers.IntegerField(min_value=1)
    role = serializers.ChoiceField(choices=SiteRole.choices)
    is_primary = serializers.BooleanField(default=False)
