"""Structured logs. Every line carries the request id and the tenant slug (bound in
config.middleware / tenants.middleware through structlog's contextvars).

PHI must never reach a log: `redact_sensitive` blanks known sensitive keys even if a
caller passes them by mistake, and `format_exc_info_redacted` writes tracebacks without
the messages of exceptions from outside the project (a database error quotes the failing
row, a parser its input).
"""

from __future__ import annotations

import re
import sys
import traceback
from typing import Any

import structlog

SENSITIVE_KEYS = frozenset(
    {"password", "token", "authorization", "cookie", "name", "full_name", "phone", "email",
     "national_id", "birth_date", "address", "secret"}
)


# Invitation and patient (ePRO) links carry a secret in their path ("Not Found:
# /invite/<token>/", "Bad Request: /epro/<token>/"): whoever reads the log could use it.
_SECRET_PATH = re.compile(r"/(invite|epro)/(?!accept/)[^/\s\"']+")
_SECRET_PREFIXES = ("/invite/", "/epro/")


def redact_path_secrets(text: str) -> str:
    return _SECRET_PATH.sub(r"/\1/[redacted]", text)


def redact_sensitive(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    for key in list(event_dict):
        if key.lower() in SENSITIVE_KEYS:
            event_dict[key] = "[redacted]"
        elif isinstance(event_dict[key], str) and any(p in event_dict[key] for p in _SECRET_PREFIXES):
            event_dict[key] = redact_path_secrets(event_dict[key])
    return event_dict


# The project's own packages: their exceptions carry messages written for users (no data
# values), so they stay readable in logs and in Sentry.
OWN_PACKAGES = frozenset({"config", "tenants", "sites", "studies", "notifications", "ecrf", "exports", "billing",
                          "infra"})
REDACTED_MESSAGE = "[message redacted: it may quote data]"


def exception_message_is_safe(module: str | None) -> bool:
    return (module or "").split(".", 1)[0] in OWN_PACKAGES


def redacted_traceback(error: BaseException) -> str:
    """The traceback (every frame, every chained exception), with the message of each
    exception from outside the project replaced."""
    root = traceback.TracebackException.from_exception(error)
    pending, seen = [root], set()
    while pending:
        part = pending.pop()
        if id(part) in seen:
            continue
        seen.add(id(part))
        if not exception_message_is_safe(getattr(part.exc_type, "__module__", None)):
            part._str = REDACTED_MESSAGE  # type: ignore[attr-defined]  # printed after the type
            if part.exc_type is not None and issubclass(part.exc_type, SyntaxError):
                # A SyntaxError (XML parsers' errors are ones) prints its msg and the
                # offending text line instead of _str: both may quote the parsed input.
                part.msg, part.text = REDACTED_MESSAGE, ""
        pending += [p for p in (part.__cause__, part.__context__) if p is not None]
        pending += list(getattr(part, "exceptions", None) or [])
    return "".join(root.format())


_EXCEPTION_NAME = re.compile(r"\b([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Retry|Warning|Failed|Failure))\b")


class TaskFailureMessageFilter:
    """Celery logs a failed or retried task as "Task … raised unexpected: <repr of the
    exception>", the message inside the log line itself (its traceback comes through
    exc_info, which format_exc_info_redacted handles). Keeps the exception's type only;
    the task's argument reprs are dropped as well (they are ids here, but need not be)."""

    def filter(self, record: Any) -> bool:
        if isinstance(record.args, dict) and "exc" in record.args:
            args = dict(record.args)
            text = str(args.get("exc") or "")
            found = _EXCEPTION_NAME.search(text)
            args["exc"] = f"{found.group(1)}({REDACTED_MESSAGE})" if found else REDACTED_MESSAGE
            for key in ("traceback", "args", "kwargs"):
                if key in args:
                    args[key] = "[redacted]"
            record.args = args
            if isinstance(getattr(record, "data", None), dict):
                record.data = args
        elif isinstance(record.args, tuple):
            record.args = tuple(f"{type(arg).__name__}({REDACTED_MESSAGE})" if isinstance(arg, BaseException)
                                else arg for arg in record.args)
        return True


def format_exc_info_redacted(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog's format_exc_info, with redacted_traceback."""
    exc_info = event_dict.pop("exc_info", None)
    if exc_info:
        error = exc_info if isinstance(exc_info, BaseException) else (
            exc_info[1] if isinstance(exc_info, tuple) else sys.exc_info()[1])
        if error is not None:
            event_dict["exception"] = redacted_traceback(error)
    return event_dict


_SHARED_PROCESSORS: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    redact_sensitive,
]


def build_logging_config(*, fmt: str, level: str) -> dict[str, Any]:
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=False)
        if fmt == "console"
        else structlog.processors.JSONRenderer(ensure_ascii=False)
    )
    structlog.configure(
        # filter_by_level first: an event below the level costs one isEnabledFor call, not
        # the whole processor chain (a form save's info line cost ~0.25 ms at level ERROR).
        processors=[structlog.stdlib.filter_by_level, *_SHARED_PROCESSORS,
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "structured": {
                "()": structlog.stdlib.ProcessorFormatter,
                "processors": [
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    format_exc_info_redacted,
                    renderer,
                ],
                "foreign_pre_chain": _SHARED_PROCESSORS,
            }
        },
        "filters": {"task_failure_message": {"()": "config.logging.TaskFailureMessageFilter"}},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "structured"}},
        "root": {"handlers": ["console"], "level": level},
        "loggers": {
            # Request lines hold URLs and hosts only; SQL logging stays off (values are PHI).
            "django.db.backends": {"level": "WARNING", "propagate": True},
            "axes": {"level": "WARNING", "propagate": True},
            # A failed task's line quotes its exception's message (see TaskFailureMessageFilter).
            "celery.app.trace": {"filters": ["task_failure_message"], "propagate": True},
            "celery.worker.request": {"filters": ["task_failure_message"], "propagate": True},
        },
    }
