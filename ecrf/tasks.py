"""Celery tasks of the eCRF (thin wrappers over services)."""

from __future__ import annotations

from config.celery import app
from ecrf import audit


@app.task(name="ecrf.tasks.audit_partitions_ensure")
def audit_partitions_ensure(months_ahead: int = 3) -> list[str]:
    # Runs in every tenant (beat fan-out, config/beat.py), in that tenant's schema.
    return audit.audit_partitions_ensure(months_ahead=months_ahead)
