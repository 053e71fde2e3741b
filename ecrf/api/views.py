"""eCRF API: thin views over ecrf.services and the site-scoped ecrf.selectors."""

from __future__ import annotations

import re
import zoneinfo
from typing import Any

from django.http import FileResponse, HttpResponse
from django.utils import timezone
from django.utils.translation import gettext as _
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, status
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.api.permissions import IsTenantMember, request_membership
from config.db import whole_number_param
from config.errors import Conflict, DomainError, NotFound, PermissionDenied, ValidationFailed
from ecrf import selectors, services
from ecrf.api.serializers import (
    EntrySaveSerializer,
    FileUploadSerializer,
    FormDraftSerializer,
    FormSerializer,
    FormVersionSerializer,
    QueryActSerializer,
    QueryRaiseSerializer,
    QuerySerializer,
    ReasonSerializer,
    RedcapUploadSerializer,
    SignatureSerializer,
    SignSerializer,
    VerifySerializer,
    entry_payload,
    entry_save_input,
)
from ecrf.audit_selectors import audit_for_subject
from ecrf.models import FormDefinition, FormVersion, FormVersionStatus, Signature
from ecrf.redcap import MAX_DICTIONARY_BYTES
from studies import selectors as study_selectors
from studies.services import site_today

# A whole form's data is small; a body above this is refused before it is parsed.
MAX_ENTRY_BODY = 1024 * 1024


def actor_for(request: Request) -> services.Actor:
    """Who acts, for the audit: source "web" when the request comes from our pages (a
    browser session), "api" when it comes with a token."""
    membership = request_membership(request)
    user = request.user
    by_token = request.auth is not None
    return services.Actor(user_id=int(user.pk or 0), label=str(getattr(user, "email", "")), role=membership.role,
                          source="api" if by_token else "web",
                          display_name=str(getattr(membership, "display_name", "") or ""))


def _check_body_size(request: Request, limit: int = MAX_ENTRY_BODY) -> None:
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > limit:
        raise DomainError("payload_too_large", _("The request is larger than %(max)d KB.") % {"max": limit // 1024},
                          status_code=413)


def _study(request: Request, study_id: int) -> Any:
    study = study_selectors.study_get(membership=request_membership(request), study_id=study_id)
    if study is None:
        raise NotFound("not_found", _("No such study."))
    return study


def _form(request: Request, form_id: int) -> Any:
    form = selectors.form_get(membership=request_membership(request), form_id=form_id)
    if form is None:
        raise NotFound("not_found", _("No such form."))
    return form


def _designer(request: Request) -> None:
    if request_membership(request).role not in selectors.FORM_DESIGN_ROLES:
        raise PermissionDenied("permission_denied", _("Your role does not allow designing forms."))


class StudyFormsView(APIView):
    permission_classes = [IsTenantMember]

    @extend_schema(responses=FormSerializer(many=True), summary="Forms of a study with their versions")
    def get(self, request: Request, study_id: int) -> Response:
        return Response(FormSerializer(selectors.forms_of_study(study_id=_study(request, study_id).pk),
                                       many=True).data)

    @extend_schema(request=FormDraftSerializer, responses=FormVersionSerializer,
                   summary="Save a form's draft (the definition's code names the form)")
    def post(self, request: Request, study_id: int) -> Response:
        _designer(request)
        _check_body_size(request, 4 * MAX_ENTRY_BODY)
        study = _study(request, study_id)
        serializer = FormDraftSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        draft = services.form_draft_save(study=study, actor=actor_for(request), **serializer.validated_data)
        return Response(FormVersionSerializer(draft).data)


class RedcapDictionaryView(APIView):
    """POST a REDCap data dictionary (CSV) to create draft forms; GET the study's forms
    as a REDCap dictionary."""

    permission_classes = [IsTenantMember]
    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(request={"multipart/form-data": RedcapUploadSerializer}, responses={201: dict},
                   summary="Import a REDCap data dictionary as draft forms, with a line-by-line report")
    def post(self, request: Request, study_id: int) -> Response:
        _designer(request)
        study = _study(request, study_id)
        serializer = RedcapUploadSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        upload = serializer.validated_data["file"]
        if upload.size > MAX_DICTIONARY_BYTES:
            raise ValidationFailed({"file": [_("A dictionary may be at most %(max)d MB.")
                                             % {"max": MAX_DICTIONARY_BYTES // (1024 * 1024)}]})
        result = services.forms_import_redcap(study=study, content=upload.read(), file_name=upload.name,
                                              actor=actor_for(request))
        return Response(result, status=status.HTTP_201_CREATED)

    @extend_schema(parameters=[OpenApiParameter("report", str, description="1: instead of the CSV, what the "
                                                "dictionary cannot carry, item by item (JSON)")],
                   responses={(200, "text/csv"): bytes, (200, "application/json"): dict},
                   summary="The study's forms as a REDCap data dictionary (or, with report=1, what it leaves out)")
    def get(self, request: Request, study_id: int) -> HttpResponse:
        study = _study(request, study_id)
        content, report = services.forms_export_redcap(study=study)
        if request.query_params.get("report") == "1":
            # The CSV alone looks complete: this is what re-importing it into REDCap would lose.
            return Response({"count": len(report), "report": report})
        response = HttpResponse(content, content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{study.code}_DataDictionary.csv"'
        response["X-Export-Report-Count"] = str(len(report))
        return response


class FormVersionsView(APIView):
    permission_classes = [IsTenantMember]

    @extend_schema(responses=FormVersionSerializer(many=True), summary="Every version of a form")
    def get(self, request: Request, form_id: int) -> Response:
        return Response(FormVersionSerializer(_form(request, form_id).versions.order_by("-number"), many=True).data)


class FormPublishView(APIView):
    permission_classes = [IsTenantMember]

    @extend_schema(request=None, responses=FormVersionSerializer, summary="Publish the form's draft")
    def post(self, request: Request, form_id: int) -> Response:
        _designer(request)
        draft = _form(request, form_id).versions.filter(status=FormVersionStatus.DRAFT).first()
        if draft is None:
            raise NotFound("no_draft", _("There is no draft of this form to publish."))
        return Response(FormVersionSerializer(services.form_publish(version=draft, actor=actor_for(request))).data)


def _visit_target(request: Request, task_id: int, form_id: int, *, for_save: bool = False,
                  ) -> tuple[Any, FormDefinition, FormVersion, selectors.EntryTarget]:
    """(task, form, the version the entry uses or would use, the whole target); 403/404 otherwise."""
    membership = request_membership(request)
    if membership.role in selectors.NO_ENTRY_READ_ROLES:
        raise PermissionDenied("permission_denied", _("Your role does not allow reading clinical data."))
    target = selectors.entry_target_get(membership=membership, task_id=task_id, form_id=form_id, for_save=for_save)
    if target is None:
        raise NotFound("not_found", _("No such visit, or not at one of your sites."))
    if target.form is None:
        raise NotFound("not_found", _("No such form in this study."))
    if target.version is None:
        raise NotFound("form_not_published", _("This form has no published version yet."))
    return target.task, target.form, target.version, target


class EntryView(APIView):
    """One form of one visit: GET it (empty, version 0, until first saved), PUT it whole.
    The ETag is the entry's version; PUT needs it (If-Match or "version")."""

    permission_classes = [IsTenantMember]

    @extend_schema(responses={200: dict}, summary="A form of a visit, with its definition and data")
    def get(self, request: Request, task_id: int, form_id: int) -> Response:
        task, _form, version, target = _visit_target(request, task_id, form_id)
        entry = selectors.entry_for(task_id=task.pk, form_id=form_id) if target.entry_id else None
        body = entry_payload(entry=entry, version=version, task=task)
        return Response(body, headers={"ETag": f'"{body["version"]}"'})

    @extend_schema(request=EntrySaveSerializer, responses={200: dict, 412: dict},
                   summary="Save a form of a visit (whole values); complete=true to mark it complete")
    def put(self, request: Request, task_id: int, form_id: int) -> Response:
        _check_body_size(request)
        membership = request_membership(request)
        if membership.role not in selectors.ENTRY_ROLES:
            raise PermissionDenied("permission_denied", _("Your role does not allow entering data."))
        task, form, version, target = _visit_target(request, task_id, form_id, for_save=True)
        data = entry_save_input(request.data)
        base = data["version"]
        if_match = (request.META.get("HTTP_IF_MATCH") or "").strip().strip('"').removeprefix("W/").strip('"')
        if if_match:
            matched = whole_number_param(if_match)
            if matched is None:
                raise ValidationFailed({"If-Match": [_("Give the entry version you edited.")]})
            base = matched
        subject = task.subject
        result = services.entry_save(
            subject=subject, task=task, form=form,
            values=data["values"], missing=data["missing"], base_version=base, actor=actor_for(request),
            complete=data["complete"], reason=data["reason"], reasons=data["reasons"],
            context=selectors.entry_context(subject=subject, task=task, form_code=form.code,
                                            today=site_today(subject.site), version=version),
            language=getattr(request, "LANGUAGE_CODE", "en"), current_version=version, new_entry=target.new_entry)
        # The definition is left out: the client has it (GET), and it is most of the bytes.
        body = entry_payload(entry=result.entry, version=result.version, task=task, definition=False)
        body.update({"hard_errors": result.hard, "queries_raised": result.queries_raised,
                     "queries_closed": result.queries_closed, "changed": result.changed})
        return Response(body, headers={"ETag": f'"{result.entry.version}"'})


class EntryFileUploadView(APIView):
    """Upload a file for a file item of a visit's form; the entry then refers to it by
    the returned value ({"id", "name", "size", "type"})."""

    permission_classes = [IsTenantMember]
    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(request={"multipart/form-data": FileUploadSerializer}, responses={201: dict},
                   summary="Upload a file for a file item")
    def post(self, request: Request, task_id: int, form_id: int) -> Response:
        from ecrf.definition import MAX_FILE_BYTES
        from ecrf.files import entry_file_upload, file_value

        membership = request_membership(request)
        if membership.role not in selectors.ENTRY_ROLES:
            raise PermissionDenied("permission_denied", _("Your role does not allow entering data."))
        task, form, version, _target = _visit_target(request, task_id, form_id)
        # A file for a locked record could never be saved into it: refuse before storing.
        if selectors.record_locked(subject_id=task.subject_id, task_id=task.pk, form_id=form.pk):
            raise Conflict("locked", _("This record is locked; a data manager must unlock it first."))
        serializer = FileUploadSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        upload = serializer.validated_data["file"]
        if upload.size > MAX_FILE_BYTES:
            raise ValidationFailed({"file": [_("A file may be at most %(max)d MB.")
                                             % {"max": MAX_FILE_BYTES // (1024 * 1024)}]})
        stored = entry_file_upload(subject=task.subject, form=form, definition=version.definition,
                                   item=serializer.validated_data["item"], name=upload.name, content=upload.read(),
                                   user_id=int(request.user.pk or 0))
        return Response(file_value(stored), status=status.HTTP_201_CREATED)


class EntryFileView(APIView):
    """Download an uploaded file (only for members who may see the subject)."""

    permission_classes = [IsTenantMember]

    @extend_schema(responses={(200, "application/octet-stream"): bytes}, summary="Download an uploaded file")
    def get(self, request: Request, file_id: str) -> FileResponse:
        from django.core.files.storage import default_storage

        from ecrf.models import EntryFile

        membership = request_membership(request)
        if membership.role in selectors.NO_ENTRY_READ_ROLES:
            raise PermissionDenied("permission_denied", _("Your role does not allow reading clinical data."))
        # Ids are 32 hex digits; anything else (a NUL would be a database error) names no file.
        stored = EntryFile.objects.filter(pk=file_id).first() if re.fullmatch(r"[0-9a-f]{32}", file_id) else None
        if stored is None or study_selectors.subject_get(membership=membership, subject_id=stored.subject_id) is None:
            raise NotFound("not_found", _("No such file, or not at one of your sites."))
        response = FileResponse(default_storage.open(stored.storage_path, "rb"), as_attachment=True,
                                filename=stored.name, content_type=stored.content_type)
        response["X-Content-Type-Options"] = "nosniff"
        return response


def _entry(request: Request, entry_id: int) -> Any:
    entry = selectors.entry_get(membership=request_membership(request), entry_id=entry_id)
    if entry is None:
        raise NotFound("not_found", _("No such entry, or not at one of your sites."))
    return entry


class EntryQueriesView(APIView):
    permission_classes = [IsTenantMember]

    @extend_schema(responses=QuerySerializer(many=True), summary="Queries of an entry")
    def get(self, request: Request, entry_id: int) -> Response:
        return Response(QuerySerializer(_entry(request, entry_id).queries.prefetch_related("messages"),
                                        many=True).data)

    @extend_schema(request=QueryRaiseSerializer, responses={201: QuerySerializer}, summary="Raise a query on an item")
    def post(self, request: Request, entry_id: int) -> Response:
        entry = _entry(request, entry_id)
        serializer = QueryRaiseSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        query = services.query_raise(entry=entry, actor=actor_for(request), **serializer.validated_data)
        return Response(QuerySerializer(query).data, status=status.HTTP_201_CREATED)


class QueryListView(generics.ListAPIView):
    permission_classes = [IsTenantMember]
    serializer_class = QuerySerializer

    def get_queryset(self):
        queries = selectors.queries_visible(membership=request_membership(self.request)).prefetch_related("messages")
        wanted = self.request.query_params.get("status")
        if wanted:
            if wanted not in ("open", "answered", "closed"):
                raise ValidationFailed({"status": [_("Choose open, answered or closed.")]})
            queries = queries.filter(status=wanted)
        site = self.request.query_params.get("site")
        if site:
            site_id = whole_number_param(site)
            if site_id is None:
                raise ValidationFailed({"site": [_("Give an id (a whole number).")]})
            queries = queries.filter(site_id=site_id)
        return queries.order_by("created", "pk")

    @extend_schema(parameters=[OpenApiParameter("status", str), OpenApiParameter("site", int)],
                   summary="Queries at my sites, oldest first")
    def get(self, request: Request, *args: object, **kwargs: object) -> Response:
        return self.list(request)


class QueryReportView(APIView):
    permission_classes = [IsTenantMember]

    @extend_schema(responses={200: dict}, summary="Queries per site with their ageing")
    def get(self, request: Request) -> Response:
        return Response({"sites": selectors.query_report(membership=request_membership(request))})


class QueryActView(APIView):
    permission_classes = [IsTenantMember]

    @extend_schema(request=QueryActSerializer, responses=QuerySerializer,
                   summary="Answer, close or re-open a query")
    def post(self, request: Request, query_id: int, action: str) -> Response:
        query = selectors.queries_visible(membership=request_membership(request)).filter(pk=query_id).first()
        if query is None:
            raise NotFound("not_found", _("No such query, or not at one of your sites."))
        serializer = QueryActSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        done = services.query_act(query=query, action=action, actor=actor_for(request), **serializer.validated_data)
        return Response(QuerySerializer(done).data)


class EntryVerifyView(APIView):
    permission_classes = [IsTenantMember]

    @extend_schema(request=VerifySerializer, responses={200: dict},
                   summary="Mark items (or, without items, the whole entry) source-verified")
    def post(self, request: Request, entry_id: int) -> Response:
        entry = _entry(request, entry_id)
        serializer = VerifySerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        verified = services.entry_verify(entry=entry, items=serializer.validated_data["items"],
                                         actor=actor_for(request))
        return Response({"entry": verified.pk, "verified": verified.verified})


class EntryLockView(APIView):
    permission_classes = [IsTenantMember]

    @extend_schema(request=ReasonSerializer, responses={200: dict}, summary="Lock or unlock (with a reason) an entry")
    def post(self, request: Request, entry_id: int, action: str) -> Response:
        entry = _entry(request, entry_id)
        serializer = ReasonSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        done = services.entry_lock_set(entry=entry, locked_state=action == "lock", actor=actor_for(request),
                                       reason=serializer.validated_data["reason"])
        return Response({"entry": done.pk, "locked": done.locked})


def _subject(request: Request, subject_id: int) -> Any:
    subject = study_selectors.subject_get(membership=request_membership(request), subject_id=subject_id)
    if subject is None:
        raise NotFound("not_found", _("No such subject, or not at one of your sites."))
    return subject


class CasebookLockView(APIView):
    permission_classes = [IsTenantMember]

    @extend_schema(request=ReasonSerializer, responses={200: dict},
                   summary="Lock or unlock (with a reason) a subject's casebook")
    def post(self, request: Request, subject_id: int, action: str) -> Response:
        subject = _subject(request, subject_id)
        serializer = ReasonSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        state = services.casebook_lock_set(subject=subject, locked_state=action == "lock", actor=actor_for(request),
                                           reason=serializer.validated_data["reason"])
        return Response({"subject": subject.pk, "locked": state})


class SignaturesView(APIView):
    permission_classes = [IsTenantMember]

    @extend_schema(responses=SignatureSerializer(many=True), summary="Signatures of a casebook")
    def get(self, request: Request, subject_id: int) -> Response:
        subject = _subject(request, subject_id)
        return Response(SignatureSerializer(Signature.objects.filter(subject_id=subject.pk), many=True).data)

    @extend_schema(request=SignSerializer, responses={201: SignatureSerializer},
                   summary="Sign the casebook (investigator; re-enter your password)")
    def post(self, request: Request, subject_id: int) -> Response:
        subject = _subject(request, subject_id)
        serializer = SignSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        membership = request_membership(request)
        signature = services.casebook_sign(
            subject=subject, user=request.user, actor=actor_for(request),
            signer_name=getattr(membership, "display_name", "") or str(getattr(request.user, "email", "")),
            **serializer.validated_data)
        return Response(SignatureSerializer(signature).data, status=status.HTTP_201_CREATED)


class SubjectAuditView(APIView):
    """A subject's audit trail, newest first, by form and item; keyset-paged with
    ?before_seq=<the last seq of the previous page>."""

    permission_classes = [IsTenantMember]

    @extend_schema(parameters=[OpenApiParameter("form", str), OpenApiParameter("item", str),
                               OpenApiParameter("entry", int), OpenApiParameter("limit", int),
                               OpenApiParameter("before_seq", int)],
                   responses={200: dict}, summary="Audit trail of a subject (per form, per item)")
    def get(self, request: Request, subject_id: int) -> Response:
        if request_membership(request).role in selectors.NO_ENTRY_READ_ROLES:
            raise PermissionDenied("permission_denied", _("Your role does not allow reading clinical data."))
        subject = _subject(request, subject_id)
        params = request.query_params
        numbers: dict[str, int | None] = {}
        for name, default in (("entry", None), ("limit", 100), ("before_seq", None)):
            raw = params.get(name)
            if raw in (None, ""):
                numbers[name] = default
            elif (number := whole_number_param(raw)) is None:
                raise ValidationFailed({name: [_("Give a whole number.")]})
            else:
                numbers[name] = number
        rows = audit_for_subject(subject_id=subject.pk, form_code=(params.get("form") or None),
                                 item=(params.get("item") or None), entry_id=numbers["entry"],
                                 limit=numbers["limit"] or 100, before_seq=numbers["before_seq"])
        results = [{"seq": r.seq, "at": r.at, "action": r.action, "source": r.source, "user": r.user_id,
                    "user_email": r.user_email, "user_name": r.user_name, "event_code": r.event_code,
                    "form_code": r.form_code, "form_version": r.form_version, "item": r.item,
                    "old": r.old_value, "new": r.new_value, "reason": r.reason, "detail": r.detail}
                   for r in rows]
        next_before = results[-1]["seq"] if len(results) == (numbers["limit"] or 100) else None
        return Response({"results": results, "next_before_seq": next_before})


# --- ePRO links (appended) ---------------------------------------------------------------------

from rest_framework import serializers as serializers_module  # noqa: E402


class EproLinkIssueSerializer(serializers_module.Serializer):
    # Text, not a choice field: the schema's "channel" enum is the reminders' (with WeChat).
    channel = serializers_module.CharField(max_length=10, default="email", help_text="email or sms")
    ttl_hours = serializers_module.IntegerField(min_value=1, max_value=60 * 24, default=7 * 24)

    def validate_channel(self, value: str) -> str:
        if value not in ("email", "sms"):
            raise serializers_module.ValidationError(_("Choose email or sms."))
        return value


class EproLinkView(APIView):
    """Send a patient-reported form of a visit to the patient as a link (coordinator or
    investigator of the subject's site). The URL is returned once, e.g. to read it out."""

    permission_classes = [IsTenantMember]

    @extend_schema(request=EproLinkIssueSerializer, responses={201: dict},
                   summary="Issue an ePRO link for a patient-reported form of a visit")
    def post(self, request: Request, task_id: int, form_id: int) -> Response:
        from datetime import timedelta

        from ecrf.epro import epro_link_issue
        from tenants.services import tenant_url

        membership = request_membership(request)
        if membership.role not in selectors.ENTRY_ROLES:
            raise PermissionDenied("permission_denied", _("Your role does not allow sending questionnaires."))
        task = selectors.entry_task_get(membership=membership, task_id=task_id)
        if task is None:
            raise NotFound("not_found", _("No such visit, or not at one of your sites."))
        form = selectors.form_get(membership=membership, form_id=form_id)
        if form is None or form.study_id != task.subject.study_id:
            raise NotFound("not_found", _("No such form in this study."))
        serializer = EproLinkIssueSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        link, url = epro_link_issue(task=task, form=form, actor=actor_for(request),
                                    base_url=tenant_url(request._request.tenant.slug),  # type: ignore[attr-defined]
                                    channel=data["channel"], ttl=timedelta(hours=data["ttl_hours"]))
        # For the coordinator's page: the expiry in the site's time zone, as the patient sees it.
        site_zone = task.subject.site.time_zone  # validated when the site was created
        expires_local = timezone.localtime(link.expires_at, zoneinfo.ZoneInfo(site_zone))
        return Response({"url": url, "expires_at": link.expires_at, "channel": data["channel"],
                         "expires_display": f"{expires_local:%Y-%m-%d %H:%M} ({site_zone})"},
                        status=status.HTTP_201_CREATED)
