from __future__ import annotations

from django.utils.translation import gettext_lazy as _
from rest_framework import serializers

from tenants.models import Tenant, TenantMembership, User
from tenants.roles import Role


class UserSerializer(serializers.ModelSerializer):
    class Meta:
        model = User
        fields = ["id", "email", "full_name", "preferred_language", "is_staff"]


class MembershipOfUserSerializer(serializers.ModelSerializer):
    tenant_slug = serializers.CharField(source="tenant.slug")
    tenant_name = serializers.CharField(source="tenant.name")
    url = serializers.SerializerMethodField()

    class Meta:
        model = TenantMembership
        fields = ["id", "tenant_slug", "tenant_name", "role", "url"]

    def get_url(self, obj: TenantMembership) -> str:
        from tenants.services import tenant_url

        return tenant_url(obj.tenant.slug)


class MeSerializer(serializers.Serializer):
    user = UserSerializer()
    current_role = serializers.CharField(allow_null=True)
    memberships = MembershipOfUserSerializer(many=True)


class TenantSerializer(serializers.ModelSerializer):
    class Meta:
        model = Tenant
        fields = ["slug", "name", "kind", "status", "time_zone", "default_language", "created"]


class MemberSerializer(serializers.ModelSerializer):
    email = serializers.EmailField(source="user.email")
    # The name this tenant gave the member, never the global account name.
    full_name = serializers.CharField(source="display_name")
    invitation_pending = serializers.SerializerMethodField()

    class Meta:
        model = TenantMembership
        fields = ["id", "email", "full_name", "role", "is_active", "created", "invitation_pending"]

    def get_invitation_pending(self, obj: TenantMembership) -> bool:
        invitation = getattr(obj, "invitation", None)
        return invitation is not None and invitation.accepted is None


class MemberInviteSerializer(serializers.Serializer):
    email = serializers.EmailField(max_length=254)
    role = serializers.ChoiceField(choices=Role.choices)
    full_name = serializers.CharField(max_length=150, required=False, allow_blank=True, default="")


class MemberUpdateSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=Role.choices, required=False)
    is_active = serializers.BooleanField(required=False)

    def validate(self, attrs: dict) -> dict:
        if not attrs:
            raise serializers.ValidationError(_("Send `role` and/or `is_active`."))
        return attrs


class TokenRequestSerializer(serializers.Serializer):
    email = serializers.EmailField(max_length=254)
    password = serializers.CharField(max_length=1024, trim_whitespace=False, style={"input_type": "password"})
    name = serializers.CharField(max_length=80, required=False, allow_blank=True, default="",
                                 help_text=_("a name to recognise the token by"))


class TokenResponseSerializer(serializers.Serializer):
    token = serializers.CharField()
    tenant = serializers.CharField()
    expires = serializers.DateTimeField(allow_null=True)
