"""/healthz and /readyz."""

from __future__ import annotations

import socket

import pytest

pytestmark = pytest.mark.django_db


def test_readyz_reports_each_component(web):
    response = web(None, HTTP_HOST="10.0.0.7").get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"postgres": "ok", "redis": "ok", "storage": "ok"}}


def test_readyz_is_503_and_names_redis_when_redis_is_down(web, settings):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings.REDIS_URL = f"redis://127.0.0.1:{port}/0"
    response = web(None).get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "fail"
    assert body["checks"]["redis"].startswith("fail")
    assert body["checks"]["postgres"] == "ok"


def test_readyz_is_503_and_names_storage_when_storage_fails(web, monkeypatch):
    from config import health

    def broken() -> None:
        raise OSError("bucket unreachable")

    monkeypatch.setitem(health.READINESS_CHECKS, "storage", broken)
    response = web(None).get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["storage"] == "fail: OSError"


def test_readyz_is_503_when_postgres_fails(web, monkeypatch):
    from django.db import OperationalError

    from config import health

    def broken() -> None:
        raise OperationalError("connection refused")

    monkeypatch.setitem(health.READINESS_CHECKS, "postgres", broken)
    response = web(None).get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["postgres"] == "fail: OperationalError"
