"""Writes of consortia: a tenant admin accepts or withdraws a data-sharing agreement; a
consortium coordinator starts a pooled run (Celery); members read runs and download
their files. Field errors name the field; nothing partial is saved."""

from __future__ import annotations

from typing import IO, Any

import structlog
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from config.errors import Conflict, NotFound, PermissionDenied, ValidationFailed
from exports.pooling import selectors
from exports.pooling.models import (
    AgreementStatus,
    Consortium,
    ConsortiumRole,
    DataSharingAgreement,
    PooledRun,
    common_data_element_fields,
    common_data_elements_problems,
)

log = structlog.get_logger(__name__)

MAX_FIELDS = 500


def agreement_accept(*, membership: Any, tenant: Any, consortium: Consortium, study_code: str,
                     fields: list[str]) -> DataSharingAgreement:
    """The tenant admin accepts: this study contributes these common data elements."""
    from studies.models import Study

    if membership is None or membership.role != "tenant_admin":
        raise PermissionDenied("permission_denied", _("Only the organisation's administrator accepts agreements."))
    if common_data_elements_problems(consortium.common_data_elements):
        raise Conflict("consortium_invalid", _("The consortium's common data elements are not valid; ask the "
                                               "platform operator to correct them before accepting."))
    elements = set(common_data_element_fields(consortium.common_data_elements))
    problems: dict[str, list[str]] = {}
    if not Study.objects.filter(code=study_code).exists():
        problems["study"] = [_("No such study.")]
    if not fields:
        problems["items"] = [_("Choose at least one field to share.")]
    elif len(fields) > MAX_FIELDS:
        problems["items"] = [_("At most %(max)d.") % {"max": MAX_FIELDS}]
    elif set(fields) - elements:
        problems["items"] = [_("Not a common data element of this consortium: %(value)s.")
                              % {"value": ", ".join(sorted(set(fields) - elements))[:300]}]
    if problems:
        raise ValidationFailed(problems)
    with transaction.atomic():
        if DataSharingAgreement.objects.select_for_update().filter(
                consortium=consortium, tenant=tenant, status=AgreementStatus.ACTIVE).exists():
            raise Conflict("agreement_active", _("This organisation already takes part; withdraw first to change it."))
        agreement = DataSharingAgreement.objects.create(consortium=consortium, tenant=tenant, study_code=study_code,
                                                        fields=sorted(set(fields)), accepted_by_id=membership.user_id)
    log.info("pooling.agreement_accepted", consortium=consortium.slug, tenant=tenant.slug)
    return agreement


def agreement_withdraw(*, membership: Any, tenant: Any, consortium: Consortium) -> DataSharingAgreement:
    if membership is None or membership.role != "tenant_admin":
        raise PermissionDenied("permission_denied", _("Only the organisation's administrator withdraws."))
    with transaction.atomic():
        agreement = (DataSharingAgreement.objects.select_for_update()
                     .filter(consortium=consortium, tenant=tenant, status=AgreementStatus.ACTIVE).first())
        if agreement is None:
            raise NotFound("not_found", _("This organisation does not take part in this consortium."))
        agreement.status, agreement.withdrawn_at = AgreementStatus.WITHDRAWN, timezone.now()
        agreement.withdrawn_by_id = membership.user_id
        agreement.save(update_fields=["status", "withdrawn_at", "withdrawn_by"])
    log.info("pooling.agreement_withdrawn", consortium=consortium.slug, tenant=tenant.slug)
    return agreement


def _require(user: Any, consortium: Consortium, roles: set[str]) -> str:
    role = selectors.member_role(user=user, consortium=consortium)
    if role not in roles:
        raise PermissionDenied("permission_denied", _("You do not have a role in this consortium that allows this."))
    return str(role)


def pooled_run_start(*, user: Any, consortium: Consortium, queue: bool = True) -> PooledRun:
    from django.conf import settings

    _require(user, consortium, {ConsortiumRole.COORDINATOR})
    if len(getattr(settings, "POOLING_SECRET", "") or "") < 32:  # the run could only fail
        raise Conflict("pooling_not_configured",
                       _("Pooling is not configured on this platform yet; ask the platform operator."))
    problems = common_data_elements_problems(consortium.common_data_elements)
    if problems:  # the run would fail at once; the operator must fix the declaration
        raise Conflict("common_data_elements_invalid",
                       _("The consortium's common data elements are not valid; ask the platform operator."),
                       fields=problems)
    run = PooledRun.objects.create(consortium=consortium, requested_by_id=user.pk)
    if queue:
        transaction.on_commit(lambda: _publish_run(run))
    return run


def _publish_run(run: PooledRun) -> None:
    """The run's task, once the run is committed; when the broker cannot take it, the run
    is failed (never "queued" for ever) and QueueUnavailable (a 503) goes up to the caller."""
    from config.celery import QueueUnavailable, enqueue
    from exports.pooling.tasks import pooled_run_task

    try:
        enqueue(pooled_run_task, run.pk)
    except QueueUnavailable:
        PooledRun.objects.filter(pk=run.pk, status="queued").update(
            status="failed", error=f"could not queue the run ({QueueUnavailable.__name__})", finished_at=timezone.now())
        raise


def pooled_runs(*, user: Any, consortium: Consortium) -> Any:
    _require(user, consortium, {ConsortiumRole.COORDINATOR, ConsortiumRole.STATISTICIAN})
    return selectors.runs_of(consortium=consortium)


def pooled_file_open(*, user: Any, run: PooledRun, name: str) -> IO[bytes]:
    """Members with a consortium role only: pooled, de-identified outputs."""
    _require(user, run.consortium, {ConsortiumRole.COORDINATOR, ConsortiumRole.STATISTICIAN})
    if run.status != "done":
        raise Conflict("run_not_ready", _("This pooled run is not finished."))
    found = next((f for f in run.manifest.get("files") or [] if f.get("name") == name), None)
    if found is None:
        raise NotFound("not_found", _("No such file in this run."))
    try:
        handle = default_storage.open(found["storage"], "rb")
    except FileNotFoundError as error:
        raise Conflict("run_file_missing", _("This file is no longer stored. Start a new pooled run.")) from error
    log.info("pooling.download", run=run.pk, file=name, user=user.pk)
    return handle
