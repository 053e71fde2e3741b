"""For browser tests whose server writes files or queues tasks: the environment the test
server inherits when it starts (a module-scoped fixture sets it up before the server)."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def isolated_media_and_queue(folder: Path, queue_prefix: str) -> Iterator[Path]:
    """Files go to `folder` (the test process writes there too) and tasks to a Celery
    queue of their own, which no worker reads and which is deleted afterwards."""
    queue = f"{queue_prefix}-{uuid.uuid4().hex[:10]}"
    before = {name: os.environ.get(name) for name in ("MEDIA_ROOT", "CELERY_TASK_DEFAULT_QUEUE")}
    os.environ["MEDIA_ROOT"] = str(folder)
    os.environ["CELERY_TASK_DEFAULT_QUEUE"] = queue
    try:
        yield folder
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        from config.celery import app

        with app.connection_for_write() as conn:
            conn.default_channel.queue_delete(queue)


def file_storages(folder: Path) -> dict[str, Any]:
    """settings.STORAGES with the default storage on `folder` (where the server writes)."""
    from django.conf import settings

    return {**settings.STORAGES, "default": {"BACKEND": "django.core.files.storage.FileSystemStorage",
                                             "OPTIONS": {"location": str(folder)}}}


def committed(act: Callable[[], Any], *, tenant: Any = None) -> Any:
    """Run `act` on a connection of its own, in autocommit, in `tenant`'s schema (the
    public schema when None): the server process sees what it writes, while the test's
    own connection is inside the test's transaction. Its exception is raised here."""
    from django.db import connection

    result: dict[str, Any] = {}

    def run() -> None:
        try:
            if tenant is None:
                connection.set_schema_to_public()
            else:
                connection.set_tenant(tenant)
            result["value"] = act()
        except BaseException as error:  # handed to the test's thread
            result["error"] = error
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]
