"""Re-encrypt identifying data with the primary key, in every tenant (or one).

Rotation: put the new key first in PII_ENCRYPTION_KEYS, deploy, run this command, then
remove the old key. Rows already under the primary key are left alone, so the command can
be re-run after an interruption."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction
from django_tenants.utils import schema_context

from notifications.models import OutboxMessage, RecordedMessage
from studies.models import ContactAttempt, Subject
from studies.pii import EncryptedTextField, pii_needs_rotation, pii_rotate
from tenants.selectors import tenants_live

MODELS = (Subject, ContactAttempt, OutboxMessage, RecordedMessage)
BATCH = 500


class Command(BaseCommand):
    help = "Re-encrypt identifying data under the primary PII key (after adding a new key in front)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", help="only this tenant slug")

    def handle(self, *args: Any, **opts: Any) -> None:
        tenants = tenants_live()
        if opts["tenant"]:
            tenants = tenants.filter(slug=opts["tenant"])
        total = 0
        for tenant in tenants:
            # This command is operator tooling that must visit every tenant by design.
            with schema_context(tenant.schema_name):
                count = sum(self._rotate_model(model) for model in MODELS)
            total += count
            self.stdout.write(f"{tenant.slug}: {count} value(s) re-encrypted")
        self.stdout.write(self.style.SUCCESS(f"done: {total} value(s) re-encrypted"))

    def _rotate_model(self, model: Any) -> int:
        fields = [f for f in model._meta.get_fields() if isinstance(f, EncryptedTextField)]
        columns = [f.attname for f in fields]
        rotated = 0
        last_pk = 0
        while True:
            # Ciphertexts are read and written as raw SQL: the field would decrypt them.
            rows = list(model.objects.filter(pk__gt=last_pk).order_by("pk").values_list("pk", flat=True)[:BATCH])
            if not rows:
                return rotated
            last_pk = rows[-1]
            with transaction.atomic():
                raw = _raw_values(model, columns, rows)
                for pk, values in raw.items():
                    updates: dict[str, Any] = {}
                    for field, token in zip(fields, values, strict=True):
                        if token is not None and pii_needs_rotation(token):
                            updates[field.attname] = pii_rotate(token, purpose=field.purpose)
                    if updates:
                        _raw_update(model, pk, updates)
                        rotated += len(updates)


def _raw_values(model: Any, columns: list[str], pks: list[int]) -> dict[int, list[str | None]]:
    from django.db import connection

    table = connection.ops.quote_name(model._meta.db_table)
    cols = ", ".join(connection.ops.quote_name(c) for c in columns)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT id, {cols} FROM {table} WHERE id = ANY(%s) FOR UPDATE", [pks])  # noqa: S608
        return {row[0]: list(row[1:]) for row in cursor.fetchall()}


def _raw_update(model: Any, pk: int, updates: dict[str, Any]) -> None:
    from django.db import connection

    table = connection.ops.quote_name(model._meta.db_table)
    assignments = ", ".join(f"{connection.ops.quote_name(c)} = %s" for c in updates)
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {table} SET {assignments} WHERE id = %s", [*updates.values(), pk])  # noqa: S608
