"""Gunicorn settings for the web container (`gunicorn -c infra/gunicorn.conf.py config.wsgi`).

Every knob reads the environment, so the Helm chart (or `docker run -e`) tunes it without
rebuilding the image. Defaults suit one container behind an ingress controller with a
read-only root filesystem (only /tmp is writable).

PHI: the access log is OFF by default. When it is switched on (GUNICORN_ACCESS_LOG=1) it
logs the URL *path* only (`%(U)s`), never the query string (`%(q)s`) nor the request line
(`%(r)s`, which contains the query string): search boxes and links can carry patient data
in query strings. Referer and User-Agent are left out for the same reason.
"""

from __future__ import annotations

import gc
import os
from typing import Any

from gunicorn.glogging import Logger


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    return int(raw) if raw.strip() else default


def _bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


# --- socket -----------------------------------------------------------------------------
bind = f"0.0.0.0:{_int('PORT', 8000)}"
# The ingress controller (or a kube Service) is the only client. It overwrites
# X-Forwarded-Proto; Django reads that header itself (SECURE_PROXY_SSL_HEADER).
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "*")
backlog = _int("GUNICORN_BACKLOG", 2048)

# --- workers ----------------------------------------------------------------------------
# WEB_CONCURRENCY is the usual name for "processes"; Kubernetes sets it from the chart.
workers = _int("WEB_CONCURRENCY", 2)
# gthread: a few threads per process hide slow clients and slow S3 round trips without
# the memory of more processes. Each thread keeps its own database connection.
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "gthread")
threads = _int("GUNICORN_THREADS", 4)
# A request that takes longer than this is killed (and reported to Sentry by Django's
# handler only if it raised first). Long work belongs in Celery.
timeout = _int("GUNICORN_TIMEOUT", 30)
# Kubernetes sends SIGTERM and waits terminationGracePeriodSeconds (chart: 40 s).
graceful_timeout = _int("GUNICORN_GRACEFUL_TIMEOUT", 25)
keepalive = _int("GUNICORN_KEEPALIVE", 5)
# Recycle workers now and then so a slow leak cannot grow without bound.
max_requests = _int("GUNICORN_MAX_REQUESTS", 2000)
max_requests_jitter = _int("GUNICORN_MAX_REQUESTS_JITTER", 200)
# The worker heartbeat file must sit on a memory-backed, writable filesystem (gunicorn's
# advice for containers); /dev/shm is a tmpfs even when the root filesystem is read-only.
worker_tmp_dir = os.environ.get("GUNICORN_WORKER_TMP_DIR", "/dev/shm")  # noqa: S108
tmp_upload_dir = None
# Load the app in the arbiter once: faster boots, shared memory pages, and an import error
# fails the container at start instead of looping workers.
preload_app = _bool("GUNICORN_PRELOAD", True)
# Gunicorn >= 25.1 opens a control socket under $HOME by default; $HOME is read-only in
# the container and nobody needs `gunicornc` there.
control_socket_disable = True

# --- request limits ---------------------------------------------------------------------
limit_request_line = _int("GUNICORN_LIMIT_REQUEST_LINE", 8190)
limit_request_fields = _int("GUNICORN_LIMIT_REQUEST_FIELDS", 100)
limit_request_field_size = _int("GUNICORN_LIMIT_REQUEST_FIELD_SIZE", 8190)

# --- logging ----------------------------------------------------------------------------
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")
errorlog = "-"
# Django's own logs (JSON, with request_id and tenant) are the request log of record.
accesslog = "-" if _bool("GUNICORN_ACCESS_LOG", False) else None
# JSON, one object per line, path only. %({x-request-id}o)s is the id that
# config.middleware.RequestIdMiddleware puts on the response, so a line can be joined
# with the application's logs.
access_log_format = (
    '{"logger":"gunicorn.access","remote":"%(h)s","method":"%(m)s","path":"%(U)s",'
    '"status":"%(s)s","bytes":"%(B)s","duration_ms":"%(M)s",'
    '"request_id":"%({x-request-id}o)s"}'
)
# Probes hit /healthz and /readyz every few seconds; keep them out of the access log.
_PROBE_PATHS = frozenset({"/healthz", "/readyz"})


class ProbeQuietLogger(Logger):
    """Gunicorn's logger, minus access lines for the health probes."""

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        if environ.get("PATH_INFO") in _PROBE_PATHS:
            return
        super().access(resp, req, environ, request_time)


logger_class = ProbeQuietLogger
proc_name = "suifang-web"


# --- garbage collector ------------------------------------------------------------------
# Django, the app and their caches are some 170,000 objects that live as long as the
# process. Left to the cyclic collector, each full collection walks all of them: 80 ms
# with the worker stalled, about every 600 form saves (measured in process,
# docs/BENCHMARKS.md §5), a latency spike for whichever requests wait on that worker.
# gc.freeze() moves them to a generation the collector never scans: once when the app is
# loaded (in the master with preload_app, so the forked workers also keep those pages
# shared instead of copying them when the collector writes to the objects' headers), and
# once more after the first requests have filled the lazy caches (URL resolvers,
# translation catalogues, prepared statements, published form versions). Garbage that
# exists at that moment is kept for the worker's life; max_requests bounds it.
GC_FREEZE_AFTER_REQUESTS = _int("GUNICORN_GC_FREEZE_AFTER", 200)


def when_ready(server: Any) -> None:
    gc.freeze()


def post_worker_init(worker: Any) -> None:
    gc.freeze()


def post_request(worker: Any, req: Any, environ: dict[str, Any], resp: Any) -> None:
    # `>=` and a flag, not `==`: gthread counts a request when it starts and calls this
    # when it ends, so with requests in flight the exact count can pass unseen.
    if worker.nr >= GC_FREEZE_AFTER_REQUESTS and not getattr(worker, "gc_refrozen", False):
        worker.gc_refrozen = True
        gc.collect()  # what is garbage by now is not frozen with the rest
        gc.freeze()
