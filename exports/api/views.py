"""Study export API: start a job, follow its progress, list a study's jobs, get a
short-lived download link for a file and download through it. Thin views: the rules
live in exports.services."""

from __future__ import annotations

from typing import Any

from django.core import signing
from django.http import FileResponse, HttpResponseRedirect
from django.utils.translation import gettext as _
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.api.pagination import Pagination
from config.api.permissions import IsTenantMember, request_membership
from config.db import tenant_connection
from config.errors import NotFound, PermissionDenied
from exports import services
from exports.models import ExportFile, ExportFormat, ExportJob
from exports.selectors import job_get, jobs_visible
from studies import selectors as study_selectors

LINK_MAX_AGE = 300  # seconds a download link works
_LINK_SALT = "exports.download"


class ExportStartSerializer(serializers.Serializer):
    formats = serializers.ListField(child=serializers.ChoiceField(choices=ExportFormat.choices), min_length=1,
                                    max_length=len(ExportFormat.values))
    forms = serializers.ListField(child=serializers.CharField(max_length=30), required=False, default=list,
                                  max_length=services.MAX_FILTER_ITEMS)
    sites = serializers.ListField(child=serializers.IntegerField(min_value=1, max_value=2**63 - 1), required=False,
                                  default=list, max_length=services.MAX_FILTER_ITEMS)
    date_from = serializers.DateField(required=False, allow_null=True, default=None)
    date_to = serializers.DateField(required=False, allow_null=True, default=None)


def _study(request: Request, study_id: int) -> Any:
    study = study_selectors.study_get(membership=request_membership(request), study_id=study_id)
    if study is None:
        raise NotFound("not_found", _("No such study."))
    return study


def _exporter(request: Request) -> Any:
    membership = request_membership(request)
    if membership is None or membership.role not in services.EXPORT_ROLES:
        raise PermissionDenied("permission_denied", _("Your role does not allow exporting study data."))
    return membership


def _job(request: Request, job_id: int) -> ExportJob:
    job = job_get(membership=_exporter(request), job_id=job_id)
    if job is None:
        raise NotFound("not_found", _("No such export."))
    return job


class StudyExportsView(APIView):
    permission_classes = [IsTenantMember]

    @extend_schema(responses={200: dict}, summary="The study's export jobs, newest first (paged)")
    def get(self, request: Request, study_id: int) -> Response:
        membership = _exporter(request)
        study = _study(request, study_id)
        jobs = jobs_visible(membership=membership).filter(study=study)
        paginator = Pagination()
        page = paginator.paginate_queryset(jobs, request, view=self)
        return paginator.get_paginated_response([services.job_state(job) for job in page or []])

    @extend_schema(request=ExportStartSerializer, responses={202: dict},
                   summary="Start an export job (formats, forms, sites, visit-date range)")
    def post(self, request: Request, study_id: int) -> Response:
        membership = _exporter(request)
        study = _study(request, study_id)
        serializer = ExportStartSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        job = services.export_start(membership=membership, study=study, formats=data["formats"],
                                    forms=data["forms"], sites=data["sites"], date_from=data["date_from"],
                                    date_to=data["date_to"], source="api")
        return Response(services.job_state(job), status=status.HTTP_202_ACCEPTED)


class ExportJobView(APIView):
    permission_classes = [IsTenantMember]

    @extend_schema(responses={200: dict}, summary="An export job: status, progress, manifest and files")
    def get(self, request: Request, job_id: int) -> Response:
        return Response(services.job_state(_job(request, job_id)))


class ExportFileLinkView(APIView):
    permission_classes = [IsTenantMember]

    @extend_schema(request=None, responses={200: dict},
                   summary="A download link for one file of a finished export, valid for 5 minutes")
    def post(self, request: Request, job_id: int, file_id: int) -> Response:
        job = _job(request, job_id)
        file = next((f for f in job.files.all() if f.pk == file_id), None)
        if file is None:
            raise NotFound("not_found", _("No such file in this export."))
        services.export_file_check_stored(file=file)
        token = signing.dumps({"s": tenant_connection.schema_name, "f": file.pk, "u": request.user.pk},
                              salt=_LINK_SALT)
        return Response({"url": f"/api/v1/exports/download/{token}/", "expires_in": LINK_MAX_AGE,
                         "name": file.name, "sha256": file.sha256})


class ExportDownloadView(APIView):
    """The link is signed, short-lived, bound to the tenant, the file and the user who
    asked for it, and the user's role is checked again on every download."""

    permission_classes = [IsTenantMember]

    @extend_schema(responses={200: bytes}, summary="Download an export file through its signed link")
    def get(self, request: Request, token: str) -> FileResponse:
        try:
            claims = signing.loads(token, salt=_LINK_SALT, max_age=LINK_MAX_AGE)
        except signing.SignatureExpired as error:
            raise NotFound("link_expired", _("This download link has expired; ask for a new one.")) from error
        except signing.BadSignature as error:
            raise NotFound("not_found", _("No such download link.")) from error
        if claims.get("s") != tenant_connection.schema_name or claims.get("u") != request.user.pk:
            raise NotFound("not_found", _("No such download link."))
        membership = _exporter(request)
        file = ExportFile.objects.select_related("job").filter(pk=claims.get("f")).first()
        # The job must still be one the member may see now (a role changed since the link
        # was made narrows it), not only when the link was made.
        if file is None or job_get(membership=membership, job_id=file.job_id) is None:
            raise NotFound("not_found", _("No such download link."))
        url = services.export_file_download_url(membership=membership, file=file)
        if url is not None:  # object storage: the client fetches the bytes from there
            redirect = HttpResponseRedirect(url)
            redirect["Cache-Control"] = "no-store"
            redirect["Referrer-Policy"] = "no-referrer"
            return redirect  # type: ignore[return-value]
        handle = services.export_file_open(membership=membership, file=file)
        response = FileResponse(handle, as_attachment=True, filename=file.name)
        response["X-Content-Type-Options"] = "nosniff"
        response["X-Checksum-SHA256"] = file.sha256
        return response
