"""Structured logs. Every line carries the request id and the tenant slug (bound in
config.middleware / tenants.middleware through structlog's contextvars).

PHI must never reach a log: `redact_sensitive` blanks known sensitive keys even if a
caller passes them by mistake.
"""

from __future__ import annotations

import re
from typing import Any

import structlog

SENSITIVE_KEYS = frozenset(
    {"password", "token", "authorization", "cookie", "name", "full_name", "phone", "email",
     "national_id", "birth_date", "address", "secret"}
)


# Invitation links carry a secret in their path (e.g. "Not Found: /invite/<token>/").
_INVITE_PATH = re.compile(r"/invite/(?!accept/)[^/\s\"']+")


def redact_path_secrets(text: str) -> str:
    return _INVITE_PATH.sub("/invite/[redacted]", text)


def redact_sensitive(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    for key in list(event_dict):
        if key.lower() in SENSITIVE_KEYS:
            event_dict[key] = "[redacted]"
        elif isinstance(event_dict[key], str) and "/invite/" in event_dict[key]:
            event_dict[key] = redact_path_secrets(event_dict[key])
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
        processors=[*_SHARED_PROCESSORS, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
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
                    structlog.processors.format_exc_info,
                    renderer,
                ],
                "foreign_pre_chain": _SHARED_PROCESSORS,
            }
        },
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "structured"}},
        "root": {"handlers": ["console"], "level": level},
        "loggers": {
            # Request lines hold URLs and hosts only; SQL logging stays off (values are PHI).
            "django.db.backends": {"level": "WARNING", "propagate": True},
            "axes": {"level": "WARNING", "propagate": True},
        },
    }
