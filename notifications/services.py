"""Writing to and dispatching from the outbox."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from django.db import connection, transaction
from django.utils import timezone

from notifications.channels import adapter_for
from notifications.models import DeliveryLog, OutboxMessage, OutboxStatus

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
    rows = [OutboxMessage(key=m.key, channel=m.channel, recipient=m.recipient, subject=m.subject[:200],
                          body=m.body, language=m.language, not_before=m.not_before,
                          next_attempt_at=m.not_before)
            for m in messages if m.key not in existing]
    return _insert_new(rows)


def _insert_new(rows: list[OutboxMessage], batch_size: int = 1000) -> int:
    """INSERT ... ON CONFLICT (key) DO NOTHING, counting the rows PostgreSQL really
    inserted: a concurrent scan may write the same key between our read and our write,
    and bulk_create(ignore_conflicts=True) would count its rows as ours."""
    fields = [f for f in OutboxMessage._meta.concrete_fields if not f.primary_key]
    table = connection.ops.quote_name(OutboxMessage._meta.db_table)
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    one_row = "(" + ", ".join(["%s"] * len(fields)) + ")"
    inserted = 0
    with connection.cursor() as cursor:
        for start in range(0, len(rows), batch_size):
            batch = rows[start:start + batch_size]
            params = [f.get_db_prep_save(f.pre_save(row, add=True), connection) for row in batch for f in fields]
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
