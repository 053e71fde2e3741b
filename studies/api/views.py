"""Studies, subjects and worklist API: thin views over studies.services and the
site-scoped selectors."""

from __future__ import annotations

from typing import Any

from django.urls import reverse
from django.utils.translation import gettext as _
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, status
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.api.permissions import IsTenantMember, request_membership, role_required
from config.db import whole_number_param
from config.errors import NotFound, PermissionDenied, ValidationFailed
from notifications import rules as reminder_rules
from notifications.models import ReminderRule
from sites import selectors as site_selectors
from studies import import_tasks, selectors, services, subject_services
from studies.api.serializers import (
    ContactAttemptInputSerializer,
    ContactAttemptSerializer,
    EnrolSerializer,
    ImportJobSerializer,
    ImportUploadSerializer,
    ReminderRuleInputSerializer,
    ReminderRulePatchSerializer,
    ReminderRuleSerializer,
    ScheduleDraftSerializer,
    ScheduleVersionSerializer,
    StudyCreateSerializer,
    StudySerializer,
    SubjectSerializer,
    SubjectStatusInputSerializer,
    TaskCompleteSerializer,
    TaskReassignSerializer,
    TaskSerializer,
    UnscheduledVisitInputSerializer,
    WorklistQuerySerializer,
)
from studies.imports import MAX_FILE_BYTES
from studies.models import Arm, FollowUpTask, ScheduleStatus, ScheduleVersion, Study, SubjectStatus
from tenants.roles import Role

IsStudyDesigner = role_required(Role.TENANT_ADMIN)
# Who may enrol: the coordinators and investigators of the site, and the sponsor.
ENROLLING_ROLES = selectors.ENROLLING_ROLES


def _study_or_404(request: Request, study_id: int) -> Study:
    study = selectors.study_get(membership=request_membership(request), study_id=study_id)
    if study is None:
        raise NotFound("not_found", _("No such study."))
    return study


class StudyListView(generics.ListAPIView):
    permission_classes = [IsTenantMember]
    serializer_class = StudySerializer

    def get_queryset(self):
        return selectors.studies_visible(membership=request_membership(self.request))

    @extend_schema(request=StudyCreateSerializer, responses={201: StudySerializer},
                   summary="Create a study (tenant admin only)")
    def post(self, request: Request) -> Response:
        if not IsStudyDesigner().has_permission(request, self):
            raise PermissionDenied("permission_denied", _("Your role does not allow this."))
        serializer = StudyCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        arms = [(a["code"], a["name"]) for a in data.pop("arms")]
        study = services.study_create(arms=arms, **data)
        return Response(StudySerializer(study).data, status=status.HTTP_201_CREATED)


class StudyDetailView(APIView):
    permission_classes = [IsTenantMember]

    @extend_schema(responses=StudySerializer, summary="One study")
    def get(self, request: Request, study_id: int) -> Response:
        return Response(StudySerializer(_study_or_404(request, study_id)).data)


class StudyActivateView(APIView):
    permission_classes = [IsStudyDesigner]

    @extend_schema(request=None, responses=StudySerializer, summary="Activate a study with a published schedule")
    def post(self, request: Request, study_id: int) -> Response:
        return Response(StudySerializer(services.study_activate(study=_study_or_404(request, study_id))).data)


class ScheduleView(APIView):
    permission_classes = [IsTenantMember]

    @extend_schema(responses=ScheduleVersionSerializer(many=True), summary="Schedule versions of a study")
    def get(self, request: Request, study_id: int) -> Response:
        study = _study_or_404(request, study_id)
        versions = ScheduleVersion.objects.filter(study=study).order_by("arm_id", "-number")
        return Response(ScheduleVersionSerializer(versions, many=True).data)

    @extend_schema(request=ScheduleDraftSerializer, responses=ScheduleVersionSerializer,
                   summary="Save the draft schedule (tenant admin only)")
    def post(self, request: Request, study_id: int) -> Response:
        if not IsStudyDesigner().has_permission(request, self):
            raise PermissionDenied("permission_denied", _("Your role does not allow this."))
        study = _study_or_404(request, study_id)
        serializer = ScheduleDraftSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        arm = _arm(study, serializer.validated_data["arm"])
        draft = services.schedule_draft_save(study=study, arm=arm, events=serializer.validated_data["events"],
                                             note=serializer.validated_data["note"])
        return Response(ScheduleVersionSerializer(draft).data)


def _arm(study: Study, arm_id: int | None) -> Arm | None:
    if arm_id is None:
        return None
    arm = Arm.objects.filter(study=study, pk=arm_id).first()
    if arm is None:
        raise ValidationFailed({"arm": [_("No such arm in this study.")]})
    return arm


def _draft(study: Study, request: Request) -> ScheduleVersion:
    body_arm = request.data.get("arm") if isinstance(request.data, dict) else None
    arm_id = request.query_params.get("arm") or body_arm
    try:
        arm = _arm(study, int(arm_id) if arm_id not in (None, "") else None)
    except (TypeError, ValueError) as exc:
        raise ValidationFailed({"arm": [_("Give the arm's id as a number.")]}) from exc
    draft = ScheduleVersion.objects.filter(study=study, arm=arm, status=ScheduleStatus.DRAFT).first()
    if draft is None:
        raise NotFound("no_draft", _("There is no draft schedule to preview or publish."))
    return draft


class SchedulePreviewView(APIView):
    permission_classes = [IsStudyDesigner]

    @extend_schema(parameters=[OpenApiParameter("arm", int)], responses={200: dict},
                   summary="What publishing the draft would change for existing subjects")
    def get(self, request: Request, study_id: int) -> Response:
        plan = services.tasks_replan_preview(version=_draft(_study_or_404(request, study_id), request))
        sample = [{"subject": t.subject.subject_code, "event_code": t.event_code, "sequence": t.sequence,
                   "target_date": t.target_date, "change": kind}
                  for kind, tasks in (("create", plan.create), ("update", plan.update), ("cancel", plan.cancel))
                  for t in tasks[:50]]
        return Response({"summary": plan.summary(), "sample": sample})


class SchedulePublishView(APIView):
    permission_classes = [IsStudyDesigner]

    @extend_schema(request=None, responses={200: dict}, summary="Publish the draft and re-plan open tasks")
    def post(self, request: Request, study_id: int) -> Response:
        plan = services.schedule_publish(version=_draft(_study_or_404(request, study_id), request))
        return Response({"summary": plan.summary()})


class SubjectListView(generics.ListAPIView):
    permission_classes = [IsTenantMember]
    serializer_class = SubjectSerializer

    def get_serializer_context(self) -> dict[str, Any]:
        return {**super().get_serializer_context(), "membership": request_membership(self.request)}

    def get_queryset(self):
        subjects = selectors.subjects_visible(membership=request_membership(self.request))
        for param, field in (("study", "study_id"), ("site", "site_id")):
            value = self.request.query_params.get(param)
            if value:
                row_id = whole_number_param(value)
                if row_id is None:
                    raise ValidationFailed({param: [_("Give an id (a whole number).")]})
                subjects = subjects.filter(**{field: row_id})
        if status_value := self.request.query_params.get("status"):
            # Checked against the choices: an unknown value would silently list nothing, and
            # a NUL byte would reach PostgreSQL (a 500).
            if status_value not in SubjectStatus.values:
                raise ValidationFailed({"status": [_("Choose one of: %(choices)s.")
                                                   % {"choices": ", ".join(SubjectStatus.values)}]})
            subjects = subjects.filter(status=status_value)
        return subjects.order_by("study_id", "subject_code")

    @extend_schema(request=EnrolSerializer, responses={201: SubjectSerializer}, summary="Enrol a subject")
    def post(self, request: Request) -> Response:
        membership = request_membership(request)
        if membership.role not in ENROLLING_ROLES:
            raise PermissionDenied("permission_denied", _("Your role does not allow enrolling subjects."))
        serializer = EnrolSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        site = site_selectors.site_get(membership=membership, site_id=data.pop("site"))
        if site is None:
            raise ValidationFailed({"site": [_("No such site, or it is not one of yours.")]})
        study = selectors.study_get(membership=membership, study_id=data.pop("study"))
        if study is None:
            raise ValidationFailed({"study": [_("No such study.")]})
        arm = _arm(study, data.pop("arm"))
        subject = services.subject_enrol(study=study, site=site, arm=arm, **data)
        return Response(SubjectSerializer(subject, context={"membership": membership}).data,
                        status=status.HTTP_201_CREATED)


class SubjectDetailView(APIView):
    permission_classes = [IsTenantMember]

    @extend_schema(responses=SubjectSerializer, summary="One subject with the schedule timeline")
    def get(self, request: Request, subject_id: int) -> Response:
        membership = request_membership(request)
        subject = selectors.subject_get(membership=membership, subject_id=subject_id)
        if subject is None:
            raise NotFound("not_found", _("No such subject, or not at one of your sites."))
        data = SubjectSerializer(subject, context={"membership": membership}).data
        data["tasks"] = TaskSerializer(subject.tasks.order_by("target_date", "event_code", "sequence"), many=True,
                                       context={"membership": membership}).data
        return Response(data)


def _subject_for_work(request: Request, subject_id: int) -> tuple[Any, Any]:
    """The member (who must be one who works with subjects) and the subject, at their sites."""
    membership = request_membership(request)
    if membership.role not in ENROLLING_ROLES:
        raise PermissionDenied("permission_denied", _("Your role does not allow this."))
    subject = selectors.subject_get(membership=membership, subject_id=subject_id)
    if subject is None:
        raise NotFound("not_found", _("No such subject, or not at one of your sites."))
    return membership, subject


class SubjectStatusView(APIView):
    permission_classes = [IsTenantMember]

    @extend_schema(request=SubjectStatusInputSerializer, responses=SubjectSerializer,
                   summary="Change a subject's status (withdrawn, deceased, completed, lost, reinstated)")
    def post(self, request: Request, subject_id: int) -> Response:
        membership, subject = _subject_for_work(request, subject_id)
        serializer = SubjectStatusInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        changed = subject_services.subject_status_change(subject=subject, **serializer.validated_data)
        return Response(SubjectSerializer(changed, context={"membership": membership}).data)


class UnscheduledVisitView(APIView):
    permission_classes = [IsTenantMember]

    @extend_schema(request=UnscheduledVisitInputSerializer, responses={201: TaskSerializer},
                   summary="Add an unscheduled visit")
    def post(self, request: Request, subject_id: int) -> Response:
        membership, subject = _subject_for_work(request, subject_id)
        serializer = UnscheduledVisitInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        task = subject_services.unscheduled_visit_add(subject=subject, assignee_id=data.pop("assignee"), **data)
        return Response(TaskSerializer(task, context={"membership": membership}).data,
                        status=status.HTTP_201_CREATED)


class WorklistView(generics.ListAPIView):
    permission_classes = [IsTenantMember]
    serializer_class = TaskSerializer

    def get_serializer_context(self) -> dict[str, Any]:
        return {**super().get_serializer_context(), "membership": request_membership(self.request)}

    def get_queryset(self):
        query = WorklistQuerySerializer(data=self.request.query_params)
        query.is_valid(raise_exception=True)
        q = query.validated_data
        return selectors.worklist(membership=request_membership(self.request), user_id=int(self.request.user.pk or 0),
                                  site_id=q.get("site"), study_id=q.get("study"), event_code=q.get("event"),
                                  mode=q.get("mode"), bucket=q.get("bucket"),
                                  upcoming_days=q.get("horizon") or selectors.UPCOMING_DAYS)

    @extend_schema(parameters=[WorklistQuerySerializer], summary="My follow-up tasks, most urgent first")
    def get(self, request: Request, *args: object, **kwargs: object) -> Response:
        return self.list(request)


def _task_or_404(request: Request, task_id: int) -> FollowUpTask:
    task = selectors.task_get(membership=request_membership(request), task_id=task_id)
    if task is None:
        raise NotFound("not_found", _("No such task, or not at one of your sites."))
    return task


class TaskCompleteView(APIView):
    permission_classes = [IsTenantMember]

    @extend_schema(request=TaskCompleteSerializer, responses=TaskSerializer, summary="Mark a follow-up done")
    def post(self, request: Request, task_id: int) -> Response:
        if request_membership(request).role not in ENROLLING_ROLES:
            raise PermissionDenied("permission_denied", _("Your role does not allow this."))
        task = _task_or_404(request, task_id)
        serializer = TaskCompleteSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        done = services.task_complete(task=task, completed_on=serializer.validated_data["completed_on"])
        return Response(TaskSerializer(done, context={"membership": request_membership(request)}).data)


class TaskReassignView(APIView):
    permission_classes = [IsTenantMember]

    @extend_schema(request=TaskReassignSerializer, responses={200: dict},
                   summary="Give follow-up tasks to another coordinator or investigator of their site")
    def post(self, request: Request) -> Response:
        membership = request_membership(request)
        if membership.role not in ENROLLING_ROLES:
            raise PermissionDenied("permission_denied", _("Your role does not allow this."))
        serializer = TaskReassignSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        wanted = list(dict.fromkeys(serializer.validated_data["tasks"]))
        tasks = list(selectors.tasks_visible(membership=membership).filter(pk__in=wanted))
        missing = sorted(set(wanted) - {t.pk for t in tasks})
        if missing:
            raise ValidationFailed({"tasks": [_("No such task, or not at one of your sites: %(ids)s.")
                                              % {"ids": ", ".join(map(str, missing))}]})
        changed = subject_services.tasks_reassign(tasks=tasks, assignee_id=serializer.validated_data["assignee"])
        return Response({"reassigned": changed})


class SubjectImportView(APIView):
    permission_classes = [IsTenantMember]
    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(request={"multipart/form-data": ImportUploadSerializer}, responses={202: ImportJobSerializer},
                   summary="Upload a CSV or XLSX file of subjects to enrol (runs in the background)")
    def post(self, request: Request, study_id: int) -> Response:
        membership = request_membership(request)
        if membership.role not in ENROLLING_ROLES:
            raise PermissionDenied("permission_denied", _("Your role does not allow enrolling subjects."))
        study = _study_or_404(request, study_id)
        serializer = ImportUploadSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        upload = serializer.validated_data["file"]
        if upload.size > MAX_FILE_BYTES:
            raise ValidationFailed({"file": [_("A file may be at most %(max)d MB.")
                                             % {"max": MAX_FILE_BYTES // (1024 * 1024)}]})
        state = import_tasks.subjects_import_start(
            study=study, membership=membership, file_name=upload.name, content=upload.read(),
            valid_rows_only=serializer.validated_data["valid_rows_only"])
        job = ImportJobSerializer(state).data
        return Response(job, status=status.HTTP_202_ACCEPTED,
                        headers={"Location": reverse("api-import-job", kwargs={"job_id": state["job"]})})


class ImportJobView(APIView):
    permission_classes = [IsTenantMember]

    @extend_schema(responses=ImportJobSerializer, summary="Progress and report of a subject import")
    def get(self, request: Request, job_id: str) -> Response:
        state = import_tasks.import_job_state(membership=request_membership(request), job_id=job_id)
        if state is None:
            raise NotFound("not_found", _("No such import."))
        return Response(ImportJobSerializer(state).data)


class ContactAttemptView(APIView):
    permission_classes = [IsTenantMember]

    @extend_schema(responses=ContactAttemptSerializer(many=True), summary="Contact attempts of a task")
    def get(self, request: Request, task_id: int) -> Response:
        return Response(ContactAttemptSerializer(_task_or_404(request, task_id).attempts.all(), many=True).data)

    @extend_schema(request=ContactAttemptInputSerializer, responses={201: ContactAttemptSerializer},
                   summary="Record a phone contact attempt")
    def post(self, request: Request, task_id: int) -> Response:
        if request_membership(request).role not in ENROLLING_ROLES:
            raise PermissionDenied("permission_denied", _("Your role does not allow recording contacts."))
        task = _task_or_404(request, task_id)
        serializer = ContactAttemptInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        attempt = services.contact_attempt_record(task=task, user_id=int(request.user.pk or 0),
                                                  **serializer.validated_data)
        return Response(ContactAttemptSerializer(attempt).data, status=status.HTTP_201_CREATED)


class ReminderRuleListView(APIView):
    permission_classes = [IsTenantMember]

    @extend_schema(responses=ReminderRuleSerializer(many=True), summary="Reminder rules of a study")
    def get(self, request: Request, study_id: int) -> Response:
        study = _study_or_404(request, study_id)
        rules = ReminderRule.objects.filter(study=study).order_by("kind", "days", "pk")
        return Response(ReminderRuleSerializer(rules, many=True).data)

    @extend_schema(request=ReminderRuleInputSerializer, responses={201: ReminderRuleSerializer},
                   summary="Add a reminder rule (tenant admin only)")
    def post(self, request: Request, study_id: int) -> Response:
        if not IsStudyDesigner().has_permission(request, self):
            raise PermissionDenied("permission_denied", _("Your role does not allow this."))
        study = _study_or_404(request, study_id)
        serializer = ReminderRuleInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        rule = reminder_rules.reminder_rule_create(study=study, **serializer.validated_data)
        return Response(ReminderRuleSerializer(rule).data, status=status.HTTP_201_CREATED)


class ReminderRuleDetailView(APIView):
    permission_classes = [IsStudyDesigner]

    @extend_schema(request=ReminderRulePatchSerializer, responses=ReminderRuleSerializer,
                   summary="Change or switch off a reminder rule (rules are never deleted)")
    def patch(self, request: Request, rule_id: int) -> Response:
        rule = ReminderRule.objects.filter(pk=rule_id).first()
        if rule is None:
            raise NotFound("not_found", _("No such reminder rule."))
        serializer = ReminderRulePatchSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        updated = reminder_rules.reminder_rule_update(rule=rule, **serializer.validated_data)
        return Response(ReminderRuleSerializer(updated).data)
