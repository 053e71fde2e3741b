"""Consortium API. On the public host, for consortium members (session): their consortia,
pooled runs (start: coordinator; read and download: coordinator or statistician). On a
tenant host, for the tenant admin: the consortia and this organisation's agreement
(accept, withdraw). Thin views: rules in exports.pooling.services."""

from __future__ import annotations

from typing import Any

from django.http import FileResponse
from django.utils.translation import gettext as _
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.authentication import SessionAuthentication
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.api.pagination import Pagination
from config.api.permissions import request_membership, role_required
from config.errors import NotFound, PermissionDenied
from exports.pooling import selectors, services
from exports.pooling.messages import run_error_text
from exports.pooling.models import Consortium, DataSharingAgreement, PooledRun
from tenants.roles import Role


def _consortium(slug: str) -> Consortium:
    consortium = Consortium.objects.filter(slug=slug).first()
    if consortium is None:
        raise NotFound("not_found", _("No such consortium."))
    return consortium


def _member_consortium(request: Request, slug: str) -> Consortium:
    """A consortium the user has a role in. An unknown slug gets the same 403 as a
    consortium without a role, as on the pages: slugs cannot be probed."""
    found = selectors.consortium_with_role(user=request.user, slug=slug)
    if found is None:
        raise PermissionDenied("permission_denied", _("You do not have a role in this consortium that allows this."))
    return found[0]


def _run_state(run: PooledRun) -> dict[str, Any]:
    # `error`: the stable English sentence (for scripts); `error_message`: the same in the
    # reader's language, as the consortium page shows it.
    return {"id": run.pk, "status": run.status, "created": run.created, "finished_at": run.finished_at,
            "error": run.error, "error_message": run_error_text(run.error) if run.status == "failed" else "",
            "manifest": run.manifest if run.status == "done" else None}


class MemberSessionAuthentication(SessionAuthentication):
    """A member's session (the consortium sign-in). Named in WWW-Authenticate, so that
    DRF answers a request without one 401, as the tenants' API does, not 403."""

    def authenticate_header(self, request: Request) -> str:
        return 'Session realm="consortia"'


class MemberView(APIView):
    authentication_classes = [MemberSessionAuthentication]
    permission_classes = [IsAuthenticated]


class ConsortiaView(MemberView):
    @extend_schema(responses={200: dict}, summary="The consortia I am a member of, with my role (paged)")
    def get(self, request: Request) -> Response:
        paginator = Pagination()
        page = paginator.paginate_queryset(selectors.consortia_of(user=request.user).order_by("name", "pk"), request,
                                           view=self)
        return paginator.get_paginated_response([
            {"slug": c.slug, "name": c.name, "coordinating_organisation": c.coordinating_organisation,
             "role": c.member_role} for c in page or []])  # type: ignore[attr-defined]  # annotated


class ConsortiumRunsView(MemberView):
    @extend_schema(responses={200: dict}, summary="Pooled runs of a consortium (members with a role)")
    def get(self, request: Request, slug: str) -> Response:
        runs = services.pooled_runs(user=request.user, consortium=_member_consortium(request, slug))
        paginator = Pagination()
        page = paginator.paginate_queryset(runs, request, view=self)
        return paginator.get_paginated_response([_run_state(run) for run in page or []])

    @extend_schema(request=None, responses={202: dict}, summary="Start a pooled run (consortium coordinator)")
    def post(self, request: Request, slug: str) -> Response:
        run = services.pooled_run_start(user=request.user, consortium=_member_consortium(request, slug))
        return Response(_run_state(run), status=status.HTTP_202_ACCEPTED)


class PooledRunView(MemberView):
    @extend_schema(responses={200: dict}, summary="A pooled run: status and manifest")
    def get(self, request: Request, slug: str, run_id: int) -> Response:
        run = services.pooled_runs(user=request.user, consortium=_member_consortium(request, slug)).filter(
            pk=run_id).first()
        if run is None:
            raise NotFound("not_found", _("No such pooled run."))
        return Response(_run_state(run))


class PooledFileView(MemberView):
    @extend_schema(responses={200: bytes}, summary="Download a pooled, de-identified file")
    def get(self, request: Request, slug: str, run_id: int, name: str) -> FileResponse:
        consortium = _member_consortium(request, slug)
        run = PooledRun.objects.filter(consortium=consortium, pk=run_id).select_related("consortium").first()
        if run is None:
            raise NotFound("not_found", _("No such pooled run."))
        handle = services.pooled_file_open(user=request.user, run=run, name=name)
        response = FileResponse(handle, as_attachment=True, filename=name)
        response["X-Content-Type-Options"] = "nosniff"
        return response


# --- tenant host: this organisation's agreement ------------------------------------------------

class AgreementSerializer(serializers.Serializer):
    study = serializers.CharField(max_length=30)
    # "FORM.item" of the consortium's common data elements ("fields" would shadow Serializer.fields).
    items = serializers.ListField(child=serializers.CharField(max_length=100), max_length=services.MAX_FIELDS)


def _agreement_state(agreement: DataSharingAgreement | None) -> dict[str, Any] | None:
    if agreement is None:
        return None
    return {"study": agreement.study_code, "items": agreement.fields, "status": agreement.status,
            "accepted_at": agreement.accepted_at, "withdrawn_at": agreement.withdrawn_at}


# What an organisation shares is the tenant admin's to see and decide (as on the page).
_TENANT_ADMIN = role_required(Role.TENANT_ADMIN)


class TenantConsortiaView(APIView):
    permission_classes = [_TENANT_ADMIN]

    @extend_schema(responses={200: dict}, summary="Consortia, their common data elements and our agreement")
    def get(self, request: Request) -> Response:
        tenant = request._request.tenant  # type: ignore[attr-defined]
        paginator = Pagination()
        page = paginator.paginate_queryset(Consortium.objects.order_by("name", "pk"), request, view=self) or []
        latest: dict[int, DataSharingAgreement] = {}
        for agreement in (DataSharingAgreement.objects.filter(consortium__in=page, tenant=tenant)
                          .order_by("consortium_id", "-accepted_at")):
            latest.setdefault(agreement.consortium_id, agreement)
        return paginator.get_paginated_response([
            {"slug": consortium.slug, "name": consortium.name,
             "coordinating_organisation": consortium.coordinating_organisation,
             "protocol": consortium.protocol, "common_data_elements": consortium.common_data_elements,
             "agreement": _agreement_state(latest.get(consortium.pk))} for consortium in page])


class TenantAgreementView(APIView):
    permission_classes = [_TENANT_ADMIN]

    @extend_schema(request=AgreementSerializer, responses={201: dict},
                   summary="Accept the consortium's data-sharing agreement (tenant admin)")
    def post(self, request: Request, slug: str) -> Response:
        serializer = AgreementSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        agreement = services.agreement_accept(
            membership=request_membership(request), tenant=request._request.tenant,  # type: ignore[attr-defined]
            consortium=_consortium(slug), study_code=serializer.validated_data["study"],
            fields=serializer.validated_data["items"])
        return Response(_agreement_state(agreement), status=status.HTTP_201_CREATED)

    @extend_schema(responses={200: dict}, summary="Withdraw from the consortium (tenant admin)")
    def delete(self, request: Request, slug: str) -> Response:
        agreement = services.agreement_withdraw(
            membership=request_membership(request), tenant=request._request.tenant,  # type: ignore[attr-defined]
            consortium=_consortium(slug))
        return Response(_agreement_state(agreement))
