"""Writes of a study's reminder rules (who is reminded of what, when, by which channel).

A rule is never deleted, only switched off: outbox keys name the rule, so a deleted and
re-created rule would send again every reminder the old one already sent."""

from __future__ import annotations

from datetime import time
from typing import Any

import structlog
from django.db import transaction
from django.utils.translation import gettext as _

from config.errors import Conflict, ValidationFailed
from notifications.models import Channel, ReminderKind, ReminderRule
from studies.models import Study

log = structlog.get_logger(__name__)

MAX_DAYS = 365
MAX_RULES_PER_STUDY = 50
EDITABLE = ("days", "channel", "quiet_from", "quiet_until", "active")


def _check(*, kind: str, days: int, channel: str, quiet_from: time, quiet_until: time) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {}
    if kind not in ReminderKind.values:
        errors["kind"] = [_("Choose one of: %(choices)s.") % {"choices": ", ".join(ReminderKind.values)}]
    if channel not in Channel.values:
        errors["channel"] = [_("Choose one of: %(choices)s.") % {"choices": ", ".join(Channel.values)}]
    elif kind in (ReminderKind.COORDINATOR_OVERDUE, ReminderKind.INVESTIGATOR_OVERDUE) and channel != Channel.EMAIL:
        # Staff are reached by their account's email address; only patients have phones here.
        errors["channel"] = [_("Reminders to staff go by email.")]
    if not 0 <= days <= MAX_DAYS:
        errors["days"] = [_("Between 0 and %(max)d days.") % {"max": MAX_DAYS}]
    elif kind == ReminderKind.INVESTIGATOR_OVERDUE and days < 1:
        errors["days"] = [_("Escalate to the investigators at least one day after a task became overdue.")]
    if quiet_from == quiet_until:
        errors["quiet_until"] = [_("Quiet hours must start and end at different times (or cover the night).")]
    return errors


def _same_rule_exists(*, study_id: int, kind: str, days: int, channel: str, exclude_pk: int | None = None) -> bool:
    rules = ReminderRule.objects.filter(study_id=study_id, kind=kind, days=days, channel=channel, active=True)
    if exclude_pk is not None:
        rules = rules.exclude(pk=exclude_pk)
    return rules.exists()


def reminder_rule_create(*, study: Any, kind: str, days: int = 0, channel: str = Channel.EMAIL,
                         quiet_from: time = time(21, 0), quiet_until: time = time(8, 0)) -> ReminderRule:
    errors = _check(kind=kind, days=days, channel=channel, quiet_from=quiet_from, quiet_until=quiet_until)
    if errors:
        raise ValidationFailed(errors)
    with transaction.atomic():
        # One writer per study at a time, so two identical rules cannot slip in together.
        Study.objects.select_for_update().filter(pk=study.pk).first()
        if ReminderRule.objects.filter(study_id=study.pk).count() >= MAX_RULES_PER_STUDY:
            raise Conflict("too_many_rules", _("A study may have at most %(max)d reminder rules.")
                           % {"max": MAX_RULES_PER_STUDY})
        if _same_rule_exists(study_id=study.pk, kind=kind, days=days, channel=channel):
            raise ValidationFailed({"kind": [_("This study already has an active rule like this one.")]})
        rule = ReminderRule.objects.create(study_id=study.pk, kind=kind, days=days, channel=channel,
                                           quiet_from=quiet_from, quiet_until=quiet_until)
    log.info("reminder_rule.created", study_id=study.pk, rule_id=rule.pk, kind=kind)
    return rule


def reminder_rule_update(*, rule: ReminderRule, **changes: Any) -> ReminderRule:
    unknown = sorted(set(changes) - set(EDITABLE))
    if unknown:
        raise ValidationFailed({name: [_("This cannot be changed; create another rule.")] for name in unknown})
    merged = {name: changes.get(name, getattr(rule, name)) for name in EDITABLE}
    errors = _check(kind=rule.kind, days=merged["days"], channel=merged["channel"],
                    quiet_from=merged["quiet_from"], quiet_until=merged["quiet_until"])
    if errors:
        raise ValidationFailed(errors)
    with transaction.atomic():
        locked = ReminderRule.objects.select_for_update().get(pk=rule.pk)
        if merged["active"] and _same_rule_exists(study_id=locked.study_id, kind=locked.kind, days=merged["days"],
                                                  channel=merged["channel"], exclude_pk=locked.pk):
            raise ValidationFailed({"days": [_("This study already has an active rule like this one.")]})
        for name, value in merged.items():
            setattr(locked, name, value)
        locked.save()
    log.info("reminder_rule.updated", rule_id=locked.pk, fields=sorted(changes))
    return locked
