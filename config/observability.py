"""Sentry: on only when SENTRY_DSN is set, and it never carries PHI."""

from __future__ import annotations

from typing import Any


def scrub_event(event: dict[str, Any], _hint: dict[str, Any]) -> dict[str, Any]:
    # Request bodies, cookies and query strings may hold patient data or credentials.
    request = event.get("request") or {}
    for key in ("data", "cookies", "query_string", "env"):
        request.pop(key, None)
    headers = request.get("headers") or {}
    for header in list(headers):
        if header.lower() in {"authorization", "cookie", "x-csrftoken"}:
            headers[header] = "[redacted]"
    event.pop("user", None)
    from config.logging import REDACTED_MESSAGE, exception_message_is_safe, redact_path_secrets

    # An exception's message may quote data (a database error's failing row); the type and
    # the frames say where it happened. The project's own exceptions keep theirs.
    for error in (event.get("exception") or {}).get("values") or []:
        if not exception_message_is_safe(error.get("module")):
            error["value"] = REDACTED_MESSAGE

    if isinstance(request.get("url"), str):
        request["url"] = redact_path_secrets(request["url"])
    return event


def init_sentry(*, dsn: str, environment: str, transport: Any = None) -> bool:
    if not dsn:
        return False
    import sentry_sdk
    from sentry_sdk.integrations.celery import CeleryIntegration
    from sentry_sdk.integrations.django import DjangoIntegration

    sentry_sdk.init(
        dsn=dsn,
        environment=environment,
        # send_default_pii=False is the contract we were asked for; data_collection is the
        # SDK's newer, finer switch and takes precedence, so both say "no PHI".
        send_default_pii=False,
        data_collection={"user_info": False, "http_bodies": [], "database_query_data": False,
                         "stack_frame_variables": False},
        max_request_body_size="never",
        include_local_variables=False,
        before_send=scrub_event,  # type: ignore[arg-type]
        integrations=[DjangoIntegration(), CeleryIntegration()],
        traces_sample_rate=0.0,
        **({"transport": transport} if transport is not None else {}),
    )
    return True


def tag_tenant(slug: str) -> None:
    """Tag the current request's Sentry scope with the tenant slug (not PHI)."""
    import sentry_sdk

    sentry_sdk.get_isolation_scope().set_tag("tenant", slug)
