"""Writing to and dispatching from the outbox."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from django.db import connection, transaction
from django.utils import timezone

from notifications.channels import adapter_for
from notifications.models import DeliveryLog, OutboxMessage, OutboxStatus
from studies.pii import pii_encrypt

log = structlog.get_logger(__name__)

MAX_ATTEMPTS = 6


@dataclass(frozen=True)
class Outgoing:
    key: str
    channel: str
    recipient: str
    subject: str
    body: str
    language: str
    not_before: datetime


def outbox_enqueue(*, messages: list[Outgoing]) -> int:
    """Insert messages, skipping keys already written (a second scan writes nothing).
    Returns how many were new. Runs in the caller's transaction."""
    if not messages:
        return 0
    keys = [m.key for m in messages]
    existing = set(OutboxMessage.objects.filter(key__in=keys).values_list("key", flat=True))
    return _insert_new([m for m in messages if m.key not in existing])


# The outbox columns written by an insert, in order. Rows are built straight from the
# messages, not as model instances: at tens of thousands of reminders per scan, Django's
# per-instance and per-field preparation cost more than the insert itself.
_INSERT_COLUMNS = ("key", "channel", "recipient", "language", "subject", "body", "not_before", "status",
                   "attempts", "next_attempt_at", "last_error", "sent_at", "created")


def _insert_new(messages: list[Outgoing], batch_size: int = 1000) -> int:
    """INSERT ... ON CONFLICT (key) DO NOTHING, counting the rows PostgreSQL really
    inserted: a concurrent scan may write the same key between our read and our write,
    and bulk_create(ignore_conflicts=True) would count its rows as ours."""
    recipient_purpose = OutboxMessage._meta.get_field("recipient").purpose
    body_purpose = OutboxMessage._meta.get_field("body").purpose
    table = connection.ops.quote_name(OutboxMessage._meta.db_table)
    columns = ", ".join(connection.ops.quote_name(c) for c in _INSERT_COLUMNS)
    one_row = "(" + ", ".join(["%s"] * len(_INSERT_COLUMNS)) + ")"
    now = timezone.now()
    inserted = 0
    with connection.cursor() as cursor:
        for start in range(0, len(messages), batch_size):
            batch = messages[start:start + batch_size]
            params: list[Any] = []
            for m in batch:
                params.extend((m.key, m.channel, pii_encrypt(m.recipient, purpose=recipient_purpose), m.language,
                               m.subject[:200], pii_encrypt(m.body, purpose=body_purpose), m.not_before,
                               OutboxStatus.PENDING.value, 0, m.not_before, "", None, now))
            cursor.execute(f"INSERT INTO {table} ({columns}) VALUES {', '.join([one_row] * len(batch))} "  # noqa: S608
                           "ON CONFLICT (key) DO NOTHING", params)
            inserted += cursor.rowcount
    return inserted


def _backoff(attempts: int) -> timedelta:
    return timedelta(minutes=2 ** min(attempts, 8))


def outbox_dispatch_due(*, now: datetime | None = None, limit: int = 200) -> dict[str, int]:
    """Send what is due. Each message is sent while its row is locked (FOR UPDATE SKIP
    LOCKED), so two workers never take the same one, and a worker that dies mid-send
    leaves the row pending for the next run."""
    now = now or timezone.now()
    counts = {"sent": 0, "failed": 0, "retry": 0}
    for _ in range(limit):
        with transaction.atomic():
            message = (OutboxMessage.objects.select_for_update(skip_locked=True)
                       .filter(status=OutboxStatus.PENDING, next_attempt_at__lte=now).order_by("next_attempt_at")
                       .first())
            if message is None:
                break
            message.attempts += 1
            try:
                reference = adapter_for(message.channel).send(recipient=message.recipient, subject=message.subject,
                                                              body=message.body)
            except Exception as exc:
                detail = f"{type(exc).__name__}"[:300]
                message.last_error = detail
                if message.attempts >= MAX_ATTEMPTS:
                    message.status = OutboxStatus.FAILED
                    counts["failed"] += 1
                else:
                    message.next_attempt_at = now + _backoff(message.attempts)
                    counts["retry"] += 1
                DeliveryLog.objects.create(message=message, ok=False, detail=detail)
            else:
                message.status = OutboxStatus.SENT
                message.sent_at = timezone.now()
                DeliveryLog.objects.create(message=message, ok=True, detail=reference[:300])
                counts["sent"] += 1
            message.save(update_fields=["attempts", "status", "next_attempt_at", "last_error", "sent_at"])
    if any(counts.values()):
        log.info("outbox.dispatched", **counts)
    return counts
