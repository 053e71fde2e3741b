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

from config.api.permissions import IsTenantMember, request_membership
from config.errors import NotFound
from exports.pooling import selectors, services
from exports.pooling.models import Consortium, DataSharingAgreement, PooledRun


def _consortium(slug: str) -> Consortium:
    consortium = Consortium.objects.filter(slug=slug).first()
    if consortium is None:
        raise NotFound("not_found", _("No such consortium."))
    return consortium


def _run_state(run: PooledRun) -> dict[str, Any]:
    return {"id": run.pk, "status": run.status, "created": run.created, "finished_at": run.finished_at,
            "error": run.error, "manifest": run.manifest if run.status == "done" else None}


class MemberView(APIView):
    authentication_classes = [SessionAuthentication]
    permission_classes = [IsAuthenticated]


class ConsortiaView(MemberView):
    @extend_schema(responses={200: dict}, summary="The consortia I am a member of, with my role")
    def get(self, request: Request) -> Response:
        return Response([{"slug": c.slug, "name": c.name, "coordinating_organisation": c.coordinating_organisation,
                          "role": selectors.member_role(user=request.user, consortium=c)}
                         for c in selectors.consortia_of(user=request.user)])


class ConsortiumRunsView(MemberView):
    @extend_schema(responses={200: dict}, summary="Pooled runs of a consortium (members with a role)")
    def get(self, request: Request, slug: str) -> Response:
        runs = services.pooled_runs(user=request.user, consortium=_consortium(slug))
        return Response([_run_state(run) for run in runs[:100]])

    @extend_schema(request=None, responses={202: dict}, summary="Start a pooled run (consortium coordinator)")
    def post(self, request: Request, slug: str) -> Response:
        run = services.pooled_run_start(user=request.user, consortium=_consortium(slug))
        return Response(_run_state(run), status=status.HTTP_202_ACCEPTED)


class PooledRunView(MemberView):
    @extend_schema(responses={200: dict}, summary="A pooled run: status and manifest")
    def get(self, request: Request, slug: str, run_id: int) -> Response:
        run = services.pooled_runs(user=request.user, consortium=_consortium(slug)).filter(pk=run_id).first()
        if run is None:
            raise NotFound("not_found", _("No such pooled run."))
        return Response(_run_state(run))


class PooledFileView(MemberView):
    @extend_schema(responses={200: bytes}, summary="Download a pooled, de-identified file")
    def get(self, request: Request, slug: str, run_id: int, name: str) -> FileResponse:
        consortium = _consortium(slug)
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


class TenantConsortiaView(APIView):
    permission_classes = [IsTenantMember]

    @extend_schema(responses={200: dict}, summary="Consortia, their common data elements and our agreement")
    def get(self, request: Request) -> Response:
        tenant = request._request.tenant  # type: ignore[attr-defined]
        request_membership(request)
        out = []
        for consortium in Consortium.objects.all()[:200]:
            agreement = (DataSharingAgreement.objects.filter(consortium=consortium, tenant=tenant)
                         .order_by("-accepted_at").first())
            out.append({"slug": consortium.slug, "name": consortium.name,
                        "coordinating_organisation": consortium.coordinating_organisation,
                        "protocol": consortium.protocol, "common_data_elements": consortium.common_data_elements,
                        "agreement": _agreement_state(agreement)})
        return Response(out)


class TenantAgreementView(APIView):
    permission_classes = [IsTenantMember]

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
