"""Logs carry tenant and request id and no PHI; Sentry gets no PII and is tagged."""

from __future__ import annotations

import json
import logging

import pytest
import structlog

from config.logging import build_logging_config
from config.observability import init_sentry, scrub_event

pytestmark = pytest.mark.django_db


def test_request_id_is_echoed_or_generated(web, world):
    response = web(world.alpha, HTTP_X_REQUEST_ID="abc-123").get("/login/")
    assert response["X-Request-ID"] == "abc-123"
    generated = web(world.alpha, HTTP_X_REQUEST_ID="bad id with spaces").get("/login/")
    assert generated["X-Request-ID"] != "bad id with spaces" and len(generated["X-Request-ID"]) == 32


def test_log_lines_are_json_with_tenant_and_request_id_and_no_phi(web, world, capsys):
    import logging.config

    logging.config.dictConfig(build_logging_config(fmt="json", level="INFO"))
    try:
        logger = structlog.get_logger("test")
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id="r1", tenant="alpha")
        logger.info("subject.called", phone="13812345678", national_id="110101199003077777", attempt=2)
        line = capsys.readouterr().err.strip().splitlines()[-1]
        record = json.loads(line)
        assert record["request_id"] == "r1" and record["tenant"] == "alpha" and record["attempt"] == 2
        assert "13812345678" not in line and "110101199003077777" not in line
    finally:
        structlog.contextvars.clear_contextvars()
        logging.config.dictConfig(build_logging_config(fmt="console", level="WARNING"))


def test_logged_tracebacks_keep_frames_but_not_foreign_exception_messages(capsys):
    """A database error quotes the failing row; a parser quotes its input. The traceback
    is logged with every frame and chained exception, each foreign message replaced; the
    project's own errors (messages written for users) keep theirs."""
    import logging.config

    from config.errors import ValidationFailed

    logging.config.dictConfig(build_logging_config(fmt="json", level="INFO"))
    try:
        logger = structlog.get_logger("test")
        # Built at run time: a traceback shows the source lines, which must not hold them.
        phone, name, national_id = "1381234" + "5678", "张" + "三", "1101011990" + "03077777"
        try:
            try:
                int(phone + "x")
            except ValueError as inner:
                raise RuntimeError(f"Failing row contains (42, {name}, {national_id})") from inner
        except RuntimeError:
            logger.exception("import.failed")
        try:
            raise ValidationFailed({"weight": ["Out of range."]}, message="Fix the items marked.")
        except ValidationFailed:
            logging.getLogger("django.request").error("Internal Server Error", exc_info=True)
        lines = capsys.readouterr().err.strip().splitlines()
        first, second = json.loads(lines[-2]), json.loads(lines[-1])
        assert phone not in lines[-2] and name not in first["exception"] and national_id not in lines[-2]
        assert "RuntimeError: [message redacted" in first["exception"]
        assert "ValueError: [message redacted" in first["exception"]  # the cause, chained
        assert "test_observability.py" in first["exception"]  # the frames are kept
        assert "Fix the items marked." in second["exception"]
        # An XML parser's error is a SyntaxError: it prints its msg and text line, not _str.
        from lxml import etree

        try:
            etree.fromstring(("<a>" + name + phone + "</b>").encode())
        except etree.XMLSyntaxError:
            logger.exception("import.unreadable")
        parsed = json.loads(capsys.readouterr().err.strip().splitlines()[-1])["exception"]
        assert "XMLSyntaxError: [message redacted" in parsed and "tag mismatch" not in parsed
        assert name not in parsed and phone not in parsed
    finally:
        logging.config.dictConfig(build_logging_config(fmt="console", level="WARNING"))


def test_a_failed_task_line_keeps_the_exception_type_not_its_message(capsys):
    """Celery writes "Task … raised unexpected: <repr of the exception>" into the line
    itself (celery.app.trace, with its own format and context keys)."""
    import logging.config

    from celery.app.trace import LOG_FAILURE, LOG_RETRY

    logging.config.dictConfig(build_logging_config(fmt="json", level="INFO"))
    phone = "1381234" + "5678"
    try:
        failure = RuntimeError(f"Failing row contains ({phone})")
        trace_logger = logging.getLogger("celery.app.trace")
        context = {"hostname": "w1", "id": "abc", "name": "exports.tasks.export_run_task", "exc": repr(failure),
                   "traceback": f"Traceback ...\nRuntimeError: Failing row contains ({phone})",
                   "args": f"[{phone!r}]", "kwargs": "{}", "description": "raised unexpected", "internal": False}
        try:
            raise failure
        except RuntimeError as error:
            trace_logger.error(LOG_FAILURE.strip(), context, exc_info=(type(error), error, error.__traceback__),
                               extra={"data": context})
        trace_logger.info(LOG_RETRY.strip(), {"id": "abc", "name": "x", "exc": f"Retry in 5s: {failure!r}"})
        logging.getLogger("celery.worker.request").error("Task handler raised error: %r", failure)
        lines = capsys.readouterr().err.strip().splitlines()[-3:]
        assert all(phone not in line for line in lines), lines
        failed, retried, handler = (json.loads(line)["event"] for line in lines)
        assert failed.startswith("Task exports.tasks.export_run_task[abc] raised unexpected: RuntimeError(")
        assert "RuntimeError(" in retried and "RuntimeError(" in handler
    finally:
        logging.config.dictConfig(build_logging_config(fmt="console", level="WARNING"))


def test_middleware_binds_tenant_to_the_log_context(web, world, monkeypatch):
    captured: dict = {}
    from tenants import views

    original = views.login_view

    def spy(request):  # type: ignore[no-untyped-def]
        captured.update(structlog.contextvars.get_contextvars())
        return original(request)

    monkeypatch.setattr(views, "login_view", spy)
    from django.urls import clear_url_caches

    clear_url_caches()
    # Resolve through a fresh URLconf import so the spy is used.
    import importlib

    import config.urls_tenant

    importlib.reload(config.urls_tenant)
    try:
        web(world.alpha, HTTP_X_REQUEST_ID="req-9").get("/login/")
    finally:
        monkeypatch.undo()
        importlib.reload(config.urls_tenant)
        clear_url_caches()
    assert captured["tenant"] == "alpha" and captured["request_id"] == "req-9"


def test_sentry_is_off_without_a_dsn():
    assert init_sentry(dsn="", environment="test") is False


def test_sentry_event_scrubbing_drops_bodies_cookies_and_user():
    event = {
        "request": {"data": {"name": "张三"}, "cookies": {"sessionid": "x"}, "query_string": "phone=1",
                    "headers": {"Authorization": "Token sf_x", "User-Agent": "ua"}},
        "user": {"email": "a@b.c"},
    }
    cleaned = scrub_event(event, {})
    assert "data" not in cleaned["request"] and "cookies" not in cleaned["request"]
    assert "query_string" not in cleaned["request"] and "user" not in cleaned
    assert cleaned["request"]["headers"]["Authorization"] == "[redacted]"
    assert cleaned["request"]["headers"]["User-Agent"] == "ua"


def test_sentry_event_scrubbing_drops_foreign_exception_messages():
    event = {"exception": {"values": [
        {"type": "IntegrityError", "module": "psycopg2.errors", "value": "Failing row contains (张三)"},
        {"type": "ValueError", "value": "invalid literal: '13812345678'"},
        {"type": "Conflict", "module": "config.errors", "value": "This record is locked."}]}}
    values = scrub_event(event, {})["exception"]["values"]
    assert [v["value"] for v in values[:2]] == ["[message redacted: it may quote data]"] * 2
    assert values[2]["value"] == "This record is locked." and values[0]["type"] == "IntegrityError"


def test_sentry_sends_no_pii_and_tags_the_tenant(web, world, monkeypatch, settings):
    """Initialise the real SDK with a transport that records envelopes instead of
    sending them (Sentry is a paid external service), then raise inside a request."""
    import sentry_sdk
    from sentry_sdk.transport import Transport

    sent: list = []

    class Recording(Transport):
        def capture_envelope(self, envelope):  # type: ignore[no-untyped-def]
            sent.append(envelope)

    # The production configuration, with only the transport swapped.
    assert init_sentry(dsn="https://key@o0.ingest.sentry.io/1", environment="test", transport=Recording)
    settings.SENTRY_ENABLED = True
    from tenants import views

    phone = "1381234" + "5678"  # built at run time: the frames' source lines are sent

    def boom(request):  # type: ignore[no-untyped-def]
        raise RuntimeError(f"boom for patient {phone}")

    monkeypatch.setattr(views, "home", boom)
    import importlib

    from django.urls import clear_url_caches

    import config.urls_tenant

    importlib.reload(config.urls_tenant)
    clear_url_caches()
    try:
        client = web(world.alpha)
        client.raise_request_exception = False
        response = client.get(f"/?phone={phone}")
        assert response.status_code == 500
        sentry_sdk.flush()
    finally:
        monkeypatch.undo()
        importlib.reload(config.urls_tenant)
        clear_url_caches()
        sentry_sdk.init(dsn=None)
    events = [item.payload.json for env in sent for item in env.items if item.type == "event"]
    assert events, "no event captured"
    event = events[-1]
    assert event["tags"]["tenant"] == "alpha"
    assert "user" not in event
    assert "query_string" not in event.get("request", {})
    # The exception's message quoted a phone number: only its type and frames are sent.
    assert phone not in json.dumps(event, ensure_ascii=False)
    assert event["exception"]["values"][-1]["type"] == "RuntimeError"
    assert event["exception"]["values"][-1]["stacktrace"]["frames"]
    logging.getLogger(__name__).debug("captured %d events", len(events))


def test_patient_and_invitation_link_secrets_never_reach_a_log_line(capsys):
    """Django logs a refused ePRO save as "Bad Request: /epro/<token>/", and the link still
    works after a refused draft: the token is blanked like an invitation's."""
    import logging.config

    logging.config.dictConfig(build_logging_config(fmt="json", level="INFO"))
    try:
        token = "eyJ0YXNrIjo" + "xfQ.Zp9-sig"
        logging.getLogger("django.request").warning("Bad Request: %s", f"/epro/{token}/")
        structlog.get_logger("test").info("request.done", path=f"/invite/{token}/")
        out = capsys.readouterr().err
        assert token not in out and out.count("[redacted]") == 2
        assert "/epro/[redacted]/" in out and "/invite/[redacted]/" in out
    finally:
        logging.config.dictConfig(build_logging_config(fmt="console", level="WARNING"))
