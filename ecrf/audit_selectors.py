"""Reads of the eCRF audit trail. Callers check who may see a subject's casebook first
(these selectors filter by subject, not by the member's sites)."""

from __future__ import annotations

from datetime import datetime

from django.db.models import QuerySet
from django.utils.translation import gettext as _

from config.errors import ValidationFailed
from ecrf.models_audit import AuditAction, AuditChainHead, AuditEvent

MAX_LIMIT = 500


def audit_for_subject(
    *,
    subject_id: int,
    form_code: str | None = None,
    item: str | None = None,
    entry_id: int | None = None,
    limit: int = 100,
    before_seq: int | None = None,
) -> list[AuditEvent]:
    """One page of a subject's audit trail, newest first. The next page is
    `before_seq=<seq of the last row of this page>` (keyset pagination: every page costs
    the same however deep). Within one schema `at` never decreases as `seq` grows, so
    "newest first" is `at DESC, seq DESC`, which the (subject_id, at, seq) index of every
    partition returns in order."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise ValidationFailed({"limit": [_("Between 1 and %(max)d.") % {"max": MAX_LIMIT}]})
    if before_seq is not None and (isinstance(before_seq, bool) or not isinstance(before_seq, int)):
        raise ValidationFailed({"before_seq": [_("Give a whole number.")]})
    for name, text in (("form", form_code), ("item", item)):
        if text is not None and "\x00" in text:  # PostgreSQL refuses NUL in text: a 500, not "no rows"
            raise ValidationFailed({name: [_("Text may not contain NUL characters.")]})
    events: QuerySet[AuditEvent] = AuditEvent.objects.filter(subject_id=subject_id)
    if form_code is not None:
        events = events.filter(form_code=form_code)
    if item is not None:
        events = events.filter(item=item)
    if entry_id is not None:
        events = events.filter(entry_id=entry_id)
    if before_seq is not None:
        events = events.filter(seq__lt=before_seq)
    return list(events.order_by("-at", "-seq")[:limit])


# What changes an entry's data (not its verification, lock or queries, which also touch
# the entry row's `updated`).
DATA_ACTIONS = (AuditAction.ITEM_CREATE, AuditAction.ITEM_UPDATE, AuditAction.ITEM_DELETE, AuditAction.ENTRY_CREATE,
                AuditAction.ENTRY_COMPLETE)


def entry_data_saved_at(*, subject_id: int, entry_id: int) -> datetime | None:
    """When the entry's data last changed, from the audit trail (None: never audited)."""
    return (AuditEvent.objects.filter(subject_id=subject_id, entry_id=entry_id, action__in=DATA_ACTIONS)
            .order_by("-at", "-seq").values_list("at", flat=True).first())


def audit_chain_head() -> AuditChainHead | None:
    """The chain's last seq and hash in the current tenant schema."""
    return AuditChainHead.objects.filter(pk=1).first()
