"""ePRO: a patient answers a patient-reported form through a link, with no login.

The link carries a random 256-bit token; only its SHA-256 is stored, so the database
alone cannot recreate a working link, and a changed token matches nothing. A link is
scoped to one subject, one follow-up task and one form; it expires; it works once,
unless the patient saves a draft (then again until they submit); it stops working when
the subject leaves follow-up. It is sent through the reminder outbox (email or SMS, in
the patient's language), so it is never lost if Redis is down.
"""

from __future__ import annotations

import hashlib
import secrets
import zoneinfo
from datetime import timedelta
from typing import Any

import structlog
from django.db import transaction
from django.utils import timezone, translation
from django.utils.translation import gettext as _

from config.errors import Conflict, DomainError, NotFound, ValidationFailed
from ecrf import audit
from ecrf.models import EproLink, FormDefinition
from ecrf.selectors import entry_for
from ecrf.services import Actor, SaveResult, entry_save, form_current_version
from notifications.services import Outgoing, outbox_enqueue

log = structlog.get_logger(__name__)

DEFAULT_TTL = timedelta(days=7)
MAX_TTL = timedelta(days=60)
FOLLOW_UP_STATUSES = frozenset({"enrolled", "screening"})


class LinkGone(DomainError):
    """The link was real but no longer works (HTTP 410)."""

    status_code = 410


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def epro_link_issue(*, task: Any, form: FormDefinition, actor: Actor, base_url: str, channel: str = "email",
                    ttl: timedelta = DEFAULT_TTL) -> tuple[EproLink, str]:
    """Create a link and queue it to the patient. Returns the link and its URL (shown
    once to the coordinator, e.g. to read it out on the phone)."""
    subject = task.subject
    version = form_current_version(form=form)
    errors: dict[str, list[str]] = {}
    if version is None or not version.definition.get("patient_reported"):
        errors["form"] = [_("This form is not a patient-reported form.")]
    if channel not in ("email", "sms"):
        errors["channel"] = [_("Choose email or sms.")]
    elif not (subject.email if channel == "email" else subject.phone):
        errors["channel"] = [_("The patient has no %(channel)s on file.") % {"channel": channel}]
    if not timedelta(hours=1) <= ttl <= MAX_TTL:
        errors["ttl"] = [_("Between one hour and %(days)d days.") % {"days": MAX_TTL.days}]
    if errors:
        raise ValidationFailed(errors)
    assert version is not None  # refused above otherwise
    titles = version.definition.get("title") or {}
    if subject.status not in FOLLOW_UP_STATUSES:
        raise Conflict("subject_not_in_follow_up", _("The subject is no longer in follow-up."))
    if task.status in ("completed", "missed", "cancelled"):
        raise Conflict("task_closed", _("This follow-up is already closed."))
    token = secrets.token_urlsafe(32)
    url = f"{base_url.rstrip('/')}/epro/{token}/"
    with transaction.atomic():
        link = EproLink.objects.create(subject_id=subject.pk, task_id=task.pk, form=form,
                                       token_hash=token_hash(token), expires_at=timezone.now() + ttl,
                                       created_by_id=actor.user_id)
        with translation.override(subject.language or "zh-hans"):
            title = titles.get(translation.get_language() or "en") or titles.get("en") or form.code
            body = _("Please answer the questionnaire \"%(title)s\" for your follow-up: %(url)s "
                     "(valid until %(until)s).") % {"title": title, "url": url,
                                                   # The site's clock, as the page and the coordinator show it.
                                                   "until": timezone.localtime(link.expires_at, zoneinfo.ZoneInfo(
                                                       subject.site.time_zone)).strftime("%Y-%m-%d %H:%M")}
            subject_line = _("Your follow-up questionnaire")
        outbox_enqueue(messages=[Outgoing(
            key=f"epro:{link.pk}", channel=channel, recipient=subject.email if channel == "email" else subject.phone,
            subject=subject_line, body=body, language=subject.language, not_before=timezone.now())])
        audit.audit_record_many(rows=[audit.AuditRow(
            action="epro_link_issued", actor=actor.audit, source=actor.source,
            subject_id=subject.pk, event_code=task.event_code, form_code=form.code,
            detail={"link": link.pk, "channel": channel, "expires_at": link.expires_at.isoformat()})])
    log.info("epro.link_issued", link_id=link.pk, subject_id=subject.pk, channel=channel)
    return link, url


def epro_link_resolve(*, token: str) -> EproLink:
    """The link a token opens, or a 404 (no such link: wrong or changed token) / 410
    (expired, used, revoked, or the subject left follow-up)."""
    if not token or len(token) > 100:
        raise NotFound("not_found", _("This link is not valid."))
    link = (EproLink.objects.select_related("subject", "subject__site", "task", "form")
            .filter(token_hash=token_hash(token)).first())
    if link is None:
        raise NotFound("not_found", _("This link is not valid."))
    if link.revoked_at is not None:
        raise LinkGone("link_revoked", _("This link has been withdrawn."))
    if link.used_at is not None:
        raise LinkGone("link_used", _("This questionnaire has already been submitted. Thank you."))
    if link.expires_at <= timezone.now():
        raise LinkGone("link_expired", _("This link has expired. Please contact your study team."))
    if link.subject.status not in FOLLOW_UP_STATUSES:
        raise LinkGone("subject_withdrawn", _("This link no longer works."))
    return link


def epro_submit(*, token: str, values: Any, missing: Any = None, draft: bool,
                context: dict[str, Any] | None = None, language: str = "zh-hans") -> SaveResult:
    """Save the patient's answers (source "epro"); without `draft` the form is completed
    and the link is used up."""
    with transaction.atomic():
        link = epro_link_resolve(token=token)
        link = EproLink.objects.select_for_update().select_related("subject", "task", "form").get(pk=link.pk)
        if link.used_at is not None:
            raise LinkGone("link_used", _("This questionnaire has already been submitted. Thank you."))
        existing = entry_for(task_id=link.task_id, form_id=link.form_id)
        actor = Actor(user_id=None, label=_("patient"), role="patient", source="epro")
        result = entry_save(subject=link.subject, task=link.task, form=link.form, values=values, missing=missing,
                            base_version=existing.version if existing else 0, actor=actor, complete=not draft,
                            reason=_("Answered by the patient"), context=context, language=language)
        if not draft:
            link.used_at = timezone.now()
            link.save(update_fields=["used_at"])
            audit.audit_record_many(rows=[audit.AuditRow(
                action="epro_submit", actor=actor.audit, source="epro",
                subject_id=link.subject_id, entry_id=result.entry.pk, event_code=link.task.event_code,
                form_code=link.form.code, detail={"link": link.pk})])
    return result
