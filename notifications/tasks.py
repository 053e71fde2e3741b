"""Celery entry points (thin). Beat runs the dispatcher in every tenant every minute,
so a message written while Redis was down is still sent once Redis is back."""

from __future__ import annotations

from config.celery import app
from notifications import services


@app.task(name="notifications.tasks.outbox_dispatch")
def outbox_dispatch() -> dict[str, int]:
    return services.outbox_dispatch_due()
