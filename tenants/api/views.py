"""Thin API views: parse -> service/selector -> serialize."""

from __future__ import annotations

from django.contrib.auth import authenticate
from django.utils.translation import gettext as _
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle
from rest_framework.views import APIView

from config.api.permissions import IsTenantAdmin, IsTenantMember, request_membership
from config.errors import DomainError, NotFound
from tenants import selectors, services
from tenants.api.serializers import (
    MemberInviteSerializer,
    MemberSerializer,
    MemberUpdateSerializer,
    MeSerializer,
    TenantSerializer,
    TokenRequestSerializer,
    TokenResponseSerializer,
)
from tenants.auth import is_public_request
from tenants.models import ApiToken, TenantMembership
from tenants.roles import Role


class MeView(APIView):
    permission_classes = [IsTenantMember]

    @extend_schema(responses=MeSerializer, summary="Current user and memberships")
    def get(self, request: Request) -> Response:
        membership = request_membership(request)
        data = {
            "user": request.user,
            "current_role": membership.role if membership else None,
            "memberships": selectors.memberships_of_user(user=request.user),  # type: ignore[arg-type]
        }
        return Response(MeSerializer(data, context={"request": request}).data)


class TenantView(APIView):
    permission_classes = [IsTenantMember]

    @extend_schema(responses=TenantSerializer, summary="This organisation")
    def get(self, request: Request) -> Response:
        return Response(TenantSerializer(request._request.tenant).data)  # type: ignore[attr-defined]


class MemberListView(generics.ListCreateAPIView):
    permission_classes = [IsTenantAdmin]
    serializer_class = MemberSerializer

    def get_queryset(self):
        role = self.request.query_params.get("role") or None
        if role and role not in Role.values:
            raise DomainError("invalid", _("Some fields are not valid."),
                              fields={"role": [_("Unknown role “%(role)s”.") % {"role": role[:40]}]})
        return selectors.members_of_tenant(
            tenant=self.request._request.tenant,  # type: ignore[attr-defined]
            role=role, search=(self.request.query_params.get("search") or "")[:100] or None,
        )

    @extend_schema(
        operation_id="members_list",
        summary="Members of this organisation (tenant admin only)",
        parameters=[OpenApiParameter("role", str, enum=Role.values),
                    OpenApiParameter("search", str, description="email or name contains")],
    )
    def get(self, request: Request, *args: object, **kwargs: object) -> Response:
        return self.list(request)

    @extend_schema(request=MemberInviteSerializer, responses={201: MemberSerializer},
                   summary="Invite a member (tenant admin only)")
    def post(self, request: Request, *args: object, **kwargs: object) -> Response:
        serializer = MemberInviteSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        membership = services.member_invite(
            tenant=request._request.tenant,  # type: ignore[attr-defined]
            invited_by=request.user,  # type: ignore[arg-type]
            accept_url_base=request.build_absolute_uri("/"),
            **serializer.validated_data,
        )
        membership = selectors.member_get(tenant=membership.tenant, membership_id=membership.pk) or membership
        return Response(MemberSerializer(membership).data, status=status.HTTP_201_CREATED)


class MemberDetailView(APIView):
    permission_classes = [IsTenantAdmin]

    def _get(self, request: Request, membership_id: int) -> TenantMembership:
        membership = selectors.member_get(tenant=request._request.tenant, membership_id=membership_id)  # type: ignore[attr-defined]
        if membership is None:
            raise NotFound("not_found", _("No such member in this organisation."))
        return membership

    @extend_schema(responses=MemberSerializer, summary="One member (tenant admin only)")
    def get(self, request: Request, membership_id: int) -> Response:
        return Response(MemberSerializer(self._get(request, membership_id)).data)

    @extend_schema(request=MemberUpdateSerializer, responses=MemberSerializer,
                   summary="Change a member's role or deactivate them (tenant admin only)")
    def patch(self, request: Request, membership_id: int) -> Response:
        membership = self._get(request, membership_id)
        serializer = MemberUpdateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        updated = services.member_update(membership=membership, by=request.user, **serializer.validated_data)  # type: ignore[arg-type]
        return Response(MemberSerializer(self._get(request, updated.pk)).data)


class MemberInvitationResendView(APIView):
    permission_classes = [IsTenantAdmin]

    @extend_schema(request=None, responses={202: None}, summary="Email a pending member a fresh invitation link")
    def post(self, request: Request, membership_id: int) -> Response:
        membership = selectors.member_get(tenant=request._request.tenant, membership_id=membership_id)  # type: ignore[attr-defined]
        if membership is None:
            raise NotFound("not_found", _("No such member in this organisation."))
        services.invitation_resend(membership=membership, accept_url_base=request.build_absolute_uri("/"))
        return Response(status=status.HTTP_202_ACCEPTED)


class TokenView(APIView):
    """Exchange email + password for a token bound to this host's tenant."""

    authentication_classes = []
    permission_classes = [AllowAny]
    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "token"

    @extend_schema(request=TokenRequestSerializer, responses={201: TokenResponseSerializer},
                   summary="Obtain an API token for this organisation", auth=[])
    def post(self, request: Request) -> Response:
        serializer = TokenRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        django_request = request._request
        if is_public_request(django_request):
            raise NotFound("not_found", _("API tokens are issued on your organisation's address."))
        user = authenticate(django_request, email=serializer.validated_data["email"],
                            password=serializer.validated_data["password"])
        if user is None:
            # axes may already have answered with 429 through its middleware.
            raise DomainError("invalid_credentials", _("Email or password is incorrect."),
                              fields={"password": [_("Email or password is incorrect.")]},
                              status_code=400)
        token, raw = services.token_issue(user=user, tenant=django_request.tenant,  # type: ignore[attr-defined]
                                          label=serializer.validated_data["name"])
        return Response({"token": raw, "tenant": token.tenant.slug, "expires": token.expires},
                        status=status.HTTP_201_CREATED)


class TokenRevokeView(APIView):
    permission_classes = [IsTenantMember]

    @extend_schema(request=None, responses={204: None}, summary="Revoke the token used for this request")
    def delete(self, request: Request) -> Response:
        if not isinstance(request.auth, ApiToken):
            raise DomainError("not_token_auth", _("This request was not made with a token."))
        services.token_revoke(token=request.auth)
        return Response(status=status.HTTP_204_NO_CONTENT)
