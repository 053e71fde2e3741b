"""Writes of the sites app: creating sites, onboarding them and assigning staff."""

from __future__ import annotations

import re
from datetime import date
from typing import Any

import structlog
from django.core.files.uploadedfile import UploadedFile
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from config.errors import Conflict, ValidationFailed
from config.validation import time_zone_problem
from sites import error_codes
from sites.models import Site, SiteRole, SiteStaff, SiteStatus
from tenants.selectors import membership_for

log = structlog.get_logger(__name__)

CODE_RE = re.compile(r"^[A-Z0-9][A-Z0-9-]{0,19}$")
# Accepted types, with the extension the stored file gets.
ETHICS_DOCUMENT_TYPES = {"application/pdf": ".pdf", "image/jpeg": ".jpg", "image/png": ".png"}
ETHICS_DOCUMENT_MAX_BYTES = 20 * 1024 * 1024


def _text(errors: dict[str, list[str]], field: str, value: str, *, max_length: int, required: bool = True) -> str:
    value = (value or "").strip()
    if required and not value:
        errors[field] = [_("This field is required.")]
    elif len(value) > max_length:
        errors[field] = [_("At most %(max)d characters.") % {"max": max_length}]
    return value


def site_create(
    *, code: str, name: str, institution: str, country_region: str, principal_investigator: str,
    target_enrolment: int, time_zone: str,
) -> Site:
    errors: dict[str, list[str]] = {}
    code = (code or "").strip().upper()
    if not CODE_RE.match(code):
        errors["code"] = [_("Use 1-20 capital letters, digits or hyphens, e.g. BJ01.")]
    elif Site.objects.filter(code=code).exists():
        errors["code"] = [_("A site with code %(code)s already exists.") % {"code": code}]
    fields = {
        "name": _text(errors, "name", name, max_length=200),
        "institution": _text(errors, "institution", institution, max_length=200),
        "country_region": _text(errors, "country_region", country_region, max_length=100),
        "principal_investigator": _text(errors, "principal_investigator", principal_investigator, max_length=150),
    }
    valid_number = isinstance(target_enrolment, int) and not isinstance(target_enrolment, bool)
    if not valid_number or not 0 < target_enrolment <= 1_000_000:
        errors["target_enrolment"] = [_("Enter a whole number between 1 and 1,000,000.")]
    if problem := time_zone_problem(time_zone):
        errors["time_zone"] = [problem]
    if errors:
        raise ValidationFailed(errors)
    try:
        with transaction.atomic():
            site = Site.objects.create(code=code, target_enrolment=target_enrolment, time_zone=time_zone, **fields)
    except IntegrityError as exc:
        raise ValidationFailed({"code": [_("A site with code %(code)s already exists.") % {"code": code}]}) from exc
    log.info("site.created", site_id=site.pk)
    return site


def site_update_checklist(
    *, site: Site, ethics_approval_date: date | None = None, ethics_document: UploadedFile | None = None,
    contract_signed: date | None = None, staff_trained: date | None = None,
) -> Site:
    """Record activation checklist items. Items already recorded are kept unless given anew."""
    if site.status in (SiteStatus.ACTIVE, SiteStatus.CLOSED):
        raise Conflict(error_codes.BAD_TRANSITION, _("The checklist of an active or closed site cannot change."))
    errors: dict[str, list[str]] = {}
    today = timezone.localdate()
    for field, value in (("ethics_approval_date", ethics_approval_date), ("contract_signed", contract_signed),
                         ("staff_trained", staff_trained)):
        if value is not None and value > today:
            errors[field] = [_("This date is in the future.")]
    if ethics_document is not None:
        if ethics_document.size is None or ethics_document.size > ETHICS_DOCUMENT_MAX_BYTES:
            errors["ethics_document"] = [_("The document may be at most 20 MB.")]
        elif (ethics_document.content_type or "") not in ETHICS_DOCUMENT_TYPES:
            errors["ethics_document"] = [_("Upload a PDF, JPEG or PNG file.")]
    if errors:
        raise ValidationFailed(errors)
    with transaction.atomic():
        locked = Site.objects.select_for_update().get(pk=site.pk)
        if ethics_approval_date is not None:
            locked.ethics_approval_date = ethics_approval_date
        if contract_signed is not None:
            locked.contract_signed = contract_signed
        if staff_trained is not None:
            locked.staff_trained = staff_trained
        if ethics_document is not None:
            # A generated name: the client's name (any length, any characters) never
            # reaches storage, where a long extension would not fit the column.
            name = f"ethics-{locked.pk}{ETHICS_DOCUMENT_TYPES[ethics_document.content_type or '']}"
            locked.ethics_document.save(name, ethics_document, save=False)
        if locked.status == SiteStatus.INVITED:
            locked.status = SiteStatus.ONBOARDING
        locked.save()
    return locked


def site_activate(*, site: Site) -> Site:
    with transaction.atomic():
        locked = Site.objects.select_for_update().get(pk=site.pk)
        if locked.status not in (SiteStatus.INVITED, SiteStatus.ONBOARDING):
            raise Conflict(error_codes.BAD_TRANSITION, _("Only a site being onboarded can be activated."))
        missing = locked.checklist_missing()
        if missing:
            raise Conflict(error_codes.CHECKLIST_INCOMPLETE,
                           _("Complete the activation checklist first."),
                           fields={name: [_("Required before activation.")] for name in missing})
        locked.status = SiteStatus.ACTIVE
        locked.activated_at = timezone.now()
        locked.save(update_fields=["status", "activated_at"])
    log.info("site.activated", site_id=locked.pk)
    return locked


def site_close(*, site: Site, reason: str) -> Site:
    reason = (reason or "").strip()
    if not reason or len(reason) > 500:
        raise ValidationFailed({"reason": [_("Give a reason of at most 500 characters.")]})
    with transaction.atomic():
        locked = Site.objects.select_for_update().get(pk=site.pk)
        if locked.status == SiteStatus.CLOSED:
            raise Conflict(error_codes.BAD_TRANSITION, _("This site is already closed."))
        locked.status = SiteStatus.CLOSED
        locked.closed_at = timezone.now()
        locked.closed_reason = reason
        locked.save(update_fields=["status", "closed_at", "closed_reason"])
    return locked


def site_staff_assign(*, site: Site, tenant: Any, user: Any, role: str, is_primary: bool = False) -> SiteStaff:
    """Assign a tenant member to a site. The site role must match their tenant role, so
    a viewer cannot be made a coordinator by the back door."""
    if role not in SiteRole.values:
        raise ValidationFailed({"role": [_("Choose one of: %(choices)s.") % {"choices": ", ".join(SiteRole.values)}]})
    membership = membership_for(user=user, tenant=tenant)
    if membership is None:
        raise Conflict(error_codes.NOT_A_MEMBER, _("This person is not an active member of the organisation."),
                       fields={"user": [_("Not an active member.")]})
    if membership.role != role:
        raise Conflict(error_codes.ROLE_MISMATCH,
                       _("Their role in the organisation is %(role)s.") % {"role": membership.get_role_display()},
                       fields={"role": [_("Must match the person's role in the organisation.")]})
    if is_primary and role != SiteRole.COORDINATOR:
        raise ValidationFailed({"is_primary": [_("Only a coordinator can be the primary coordinator.")]})
    try:
        with transaction.atomic():
            if is_primary:
                SiteStaff.objects.filter(site=site, is_primary=True).update(is_primary=False)
            staff = SiteStaff.objects.create(site=site, user=user, role=role, is_primary=is_primary)
    except IntegrityError as exc:
        raise Conflict(error_codes.ALREADY_ASSIGNED, _("This person is already assigned to the site."),
                       fields={"user": [_("Already assigned.")]}) from exc
    return staff


def site_staff_remove(*, staff: SiteStaff) -> None:
    staff.delete()
