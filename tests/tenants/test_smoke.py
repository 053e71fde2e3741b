from __future__ import annotations

import pytest

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]


def test_health_answers_on_any_host(web):
    response = web(None, HTTP_HOST="10.1.2.3").get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_login_page_renders_on_tenant_host(web, world):
    response = web(world.alpha).get("/login/")
    assert response.status_code == 200
    assert world.alpha.name in response.content.decode()
