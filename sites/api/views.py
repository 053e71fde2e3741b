"""Sites API: thin views over sites.services; every read goes through the scoped
selectors, so a coordinator only ever sees the sites they work at."""

from __future__ import annotations

from typing import Any

from django.utils.translation import gettext as _
from drf_spectacular.utils import extend_schema
from rest_framework import generics, status
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.api.parsers import SafeJSONParser
from config.api.permissions import IsTenantAdmin, IsTenantMember, request_membership
from config.errors import NotFound, ValidationFailed
from sites import selectors, services
from sites.api.serializers import (
    ChecklistSerializer,
    CloseSerializer,
    SiteCreateSerializer,
    SiteSerializer,
    StaffAssignSerializer,
    StaffSerializer,
)
from sites.models import Site
from tenants.selectors import member_user


def _site_or_404(request: Request, site_id: int) -> Site:
    site = selectors.site_get(membership=request_membership(request), site_id=site_id)
    if site is None:
        raise NotFound("not_found", _("No such site, or it is not one of yours."))
    return site


class SiteListView(generics.ListAPIView):
    permission_classes = [IsTenantMember]
    serializer_class = SiteSerializer

    def get_queryset(self):
        return selectors.sites_visible(membership=request_membership(self.request)).order_by("code")

    @extend_schema(request=SiteCreateSerializer, responses={201: SiteSerializer},
                   summary="Add a site (tenant admin only)")
    def post(self, request: Request) -> Response:
        if not IsTenantAdmin().has_permission(request, self):
            self.permission_denied(request, message=_("Your role does not allow this."))
        serializer = SiteCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        site = services.site_create(**serializer.validated_data)
        return Response(SiteSerializer(site).data, status=status.HTTP_201_CREATED)


class SiteDetailView(APIView):
    permission_classes = [IsTenantMember]

    @extend_schema(responses=SiteSerializer, summary="One site")
    def get(self, request: Request, site_id: int) -> Response:
        return Response(SiteSerializer(_site_or_404(request, site_id)).data)


class SiteChecklistView(APIView):
    permission_classes = [IsTenantAdmin]
    parser_classes = [MultiPartParser, FormParser, SafeJSONParser]

    @extend_schema(request=ChecklistSerializer, responses=SiteSerializer,
                   summary="Record activation checklist items (multipart for the ethics document)")
    def post(self, request: Request, site_id: int) -> Response:
        site = _site_or_404(request, site_id)
        serializer = ChecklistSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        if not serializer.validated_data:
            raise ValidationFailed({"__all__": [_("Send at least one checklist item.")]})
        site = services.site_update_checklist(site=site, **serializer.validated_data)
        return Response(SiteSerializer(site).data)


class SiteActivateView(APIView):
    permission_classes = [IsTenantAdmin]

    @extend_schema(request=None, responses=SiteSerializer, summary="Activate a site whose checklist is complete")
    def post(self, request: Request, site_id: int) -> Response:
        return Response(SiteSerializer(services.site_activate(site=_site_or_404(request, site_id))).data)


class SiteCloseView(APIView):
    permission_classes = [IsTenantAdmin]

    @extend_schema(request=CloseSerializer, responses=SiteSerializer, summary="Close a site")
    def post(self, request: Request, site_id: int) -> Response:
        site = _site_or_404(request, site_id)
        serializer = CloseSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        return Response(SiteSerializer(services.site_close(site=site, **serializer.validated_data)).data)


class SiteStaffView(generics.ListAPIView):
    """GET: the staff of a site, paged like every other list."""

    permission_classes = [IsTenantMember]
    serializer_class = StaffSerializer

    def get_queryset(self):
        return selectors.site_staff(site=_site_or_404(self.request, self.kwargs["site_id"]))

    @extend_schema(summary="Staff of a site")
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)

    @extend_schema(request=StaffAssignSerializer, responses={201: StaffSerializer},
                   summary="Assign a member to a site (tenant admin only)")
    def post(self, request: Request, site_id: int) -> Response:
        if not IsTenantAdmin().has_permission(request, self):
            self.permission_denied(request, message=_("Your role does not allow this."))
        site = _site_or_404(request, site_id)
        serializer = StaffAssignSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        tenant = request._request.tenant  # type: ignore[attr-defined]
        user = member_user(tenant=tenant, user_id=serializer.validated_data["user"])
        if user is None:
            raise ValidationFailed({"user": [_("No such member in this organisation.")]})
        staff = services.site_staff_assign(site=site, tenant=tenant, user=user,
                                           role=serializer.validated_data["role"],
                                           is_primary=serializer.validated_data["is_primary"])
        return Response(StaffSerializer(staff).data, status=status.HTTP_201_CREATED)
