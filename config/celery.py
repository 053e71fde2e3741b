"""The Celery app. tenant-schemas-celery's CeleryApp carries the publishing schema in
each message and switches to it in the worker; the plain Celery app would silently
run every task in `public`."""

from __future__ import annotations

import os
from typing import Any

from celery.signals import task_prerun
from tenant_schemas_celery.app import CeleryApp

from config.errors import DomainError

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.dev")

app = CeleryApp("suifang")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@task_prerun.connect(dispatch_uid="suifang_bind_task_log_context")
def bind_task_log_context(task_id: str | None = None, task: Any = None, **_kwargs: Any) -> None:
    """Tasks log, and report to Sentry, with their tenant like requests do. Connected
    after tenant-schemas-celery's own prerun handler, so the schema is already set."""
    import structlog
    from django.db import connection

    schema = getattr(connection, "schema_name", "public")
    tenant = getattr(getattr(connection, "tenant", None), "slug", None) or schema
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(task_id=task_id, task=getattr(task, "name", None), tenant=tenant)
    from django.conf import settings

    if getattr(settings, "SENTRY_ENABLED", False):
        from config.observability import tag_tenant

        tag_tenant(tenant)




class QueueUnavailable(DomainError):
    """The broker could not take a task (it is down or unreachable): a 503 that says to
    try again. The caller records that its job was not queued (never "queued" for ever)
    and lets it go up to the user."""

    status_code = 503

    def __init__(self) -> None:
        from django.utils.translation import gettext as _

        super().__init__("queue_unavailable", _("It could not be queued: the task queue cannot be reached just "
                                                "now. Nothing was lost; try again in a minute."))


def enqueue(task: Any, *args: Any) -> None:
    """task.delay(*args), with a broker failure raised as QueueUnavailable instead of a 500."""
    from kombu.exceptions import OperationalError

    try:
        task.delay(*args)
    except (OperationalError, OSError) as error:
        raise QueueUnavailable from error
