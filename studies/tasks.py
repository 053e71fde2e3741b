"""Celery tasks of the follow-up engine (thin wrappers over services)."""

from __future__ import annotations

from config.celery import app
from studies import services


@app.task(name="studies.tasks.tasks_refresh_statuses")
def tasks_refresh_statuses() -> dict[str, int]:
    # Runs in every tenant (beat fan-out), in that tenant's schema.
    return services.tasks_refresh_statuses()


@app.task(name="studies.tasks.reminders_scan")
def reminders_scan() -> int:
    from studies.reminders import reminders_scan as scan

    return scan()
