"""The Celery app. tenant-schemas-celery's CeleryApp carries the publishing schema in
each message and switches to it in the worker; the plain Celery app would silently
run every task in `public`."""

from __future__ import annotations

import os
from typing import Any

from celery.signals import task_prerun, worker_process_init
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


@worker_process_init.connect(dispatch_uid="suifang_arrow_system_allocator")
def arrow_system_allocator(**_kwargs: Any) -> None:
    """Arrow allocates from the system allocator in worker processes: its default
    (mimalloc) kept the freed memory of each export or pooled part, so a process's peak
    grew with the work it had done (pooled parts: 267 -> 226 MB over 20 parts, same
    time; docs/adr/0016). glibc returns large blocks to the system when freed."""
    import pyarrow as pa

    pa.set_memory_pool(pa.system_memory_pool())


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
