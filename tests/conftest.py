"""Test-wide fixtures. Real PostgreSQL and Redis (see infra/test.py); tenant schemas for
the shared world are created once per session through the real provisioning service."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message

import pytest
from django.test import Client
from rest_framework.test import APIClient

from tenants.models import Tenant, User
from tenants.roles import Role

PASSWORD = "correct-horse-battery-9"


@dataclass
class World:
    alpha: Tenant
    beta: Tenant
    users: dict[str, User] = field(default_factory=dict)

    @staticmethod
    def host(tenant: Tenant) -> str:
        return f"{tenant.slug}.localhost"


def _email(role: str, slug: str) -> str:
    return f"{role}@{slug}.example.org"


@pytest.fixture(scope="session")
def world(django_db_setup, django_db_blocker) -> World:  # type: ignore[no-untyped-def]
    from tenants import schema_pool, services

    with django_db_blocker.unblock():
        schema_pool.pool_refill(target_size=2)
        tenants = {}
        for slug, kind in (("alpha", "hospital"), ("beta", "device_company")):
            tenants[slug] = services.tenant_create(
                name=f"{slug.title()} Org", slug=slug, kind=kind,
                admin_email=_email(Role.TENANT_ADMIN, slug), admin_password=PASSWORD,
                time_zone="Asia/Shanghai" if slug == "alpha" else "Europe/Berlin",
                default_language="zh-hans" if slug == "alpha" else "en",
            )
            for role in Role.values:
                if role != Role.TENANT_ADMIN:
                    services.member_add(tenant=tenants[slug], email=_email(role, slug), role=role,
                                        password=PASSWORD)
        # One person who is a member of both tenants.
        for slug in ("alpha", "beta"):
            services.member_add(tenant=tenants[slug], email="both@example.org", role=Role.MONITOR,
                                password=PASSWORD)
        world = World(alpha=tenants["alpha"], beta=tenants["beta"])
        for user in User.objects.all():
            world.users[user.email] = user
    return world


@pytest.fixture
def email_of():  # type: ignore[no-untyped-def]
    return _email


@pytest.fixture
def web(world: World):  # type: ignore[no-untyped-def]
    """web(tenant) -> a Django test Client on that tenant's host."""

    def make(tenant: Tenant | None = None, **extra: str) -> Client:
        extra.setdefault("HTTP_HOST", World.host(tenant) if tenant else "localhost")
        return Client(**extra)

    return make


@pytest.fixture
def api(world: World):  # type: ignore[no-untyped-def]
    """api(tenant, email=None) -> an APIClient on the tenant's host, logged in with a token
    obtained through the real token endpoint when `email` is given."""

    def make(tenant: Tenant | None, email: str | None = None) -> APIClient:
        host = World.host(tenant) if tenant else "localhost"
        client = APIClient(HTTP_HOST=host)
        if email:
            response = client.post("/api/v1/auth/token/", {"email": email, "password": PASSWORD},
                                   format="json")
            assert response.status_code == 201, response.content
            client.credentials(HTTP_AUTHORIZATION=f"Token {response.json()['token']}")
        return client

    return make


class _Collector:
    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        with self.lock:
            self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"


@pytest.fixture
def smtp_server(settings) -> Iterator[_Collector]:  # type: ignore[no-untyped-def]
    """A real SMTP server (aiosmtpd) on a free local port; Django sends to it."""
    import socket

    from aiosmtpd.controller import Controller

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    collector = _Collector()
    controller = Controller(collector, hostname="127.0.0.1", port=port)
    controller.start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST = "127.0.0.1"
    settings.EMAIL_PORT = port
    settings.EMAIL_USE_TLS = False
    try:
        yield collector
    finally:
        controller.stop()


@pytest.fixture(autouse=True)
def english_outside_requests():  # type: ignore[no-untyped-def]
    """Services called directly speak the active language; tests read English messages
    unless they switch on purpose (requests pick their own language)."""
    from django.utils import translation

    with translation.override("en"):
        yield


@pytest.fixture(autouse=True)
def fresh_cache():  # type: ignore[no-untyped-def]
    """Rate-limit counters live in Redis; each test starts with none."""
    from django.core.cache import cache
    from django.db import connection

    cache.clear()
    # A request handled in an earlier test leaves the connection in its tenant's schema.
    connection.set_schema_to_public()
    yield


@pytest.fixture
def in_tenant():  # type: ignore[no-untyped-def]
    """in_tenant(tenant): run the rest of the test in that tenant's schema (as a request
    on its host would), and come back to public afterwards."""
    from django.db import connection

    def enter(tenant: Tenant) -> None:
        connection.set_tenant(tenant)

    yield enter
    connection.set_schema_to_public()


@pytest.fixture(autouse=True)
def media_in_tmp(settings, tmp_path):  # type: ignore[no-untyped-def]
    """Uploaded files go to a per-test folder, never into the checkout."""
    settings.STORAGES = {**settings.STORAGES, "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": str(tmp_path / "media")}}}
