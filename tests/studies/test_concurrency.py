"""Subject numbers stay gapless and unique when many coordinators enrol at once.

Real concurrency needs committed data and several connections, so this module commits
its own site and study in tenant alpha and removes them afterwards."""

from __future__ import annotations

import datetime as dt
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection, connections

from sites import services as site_services
from sites.models import Site
from studies import services
from studies.models import Study, Subject

# django_db sets the test database up; the work itself runs on other connections, committed.
pytestmark = pytest.mark.django_db

DAY = dt.date.today() - dt.timedelta(days=3)


def _event(code: str, months: int) -> dict:
    return {"code": code, "name_en": code, "name_zh": code, "anchor": "enrolment", "anchor_event": None,
            "offset": {"amount": months, "unit": "month"}, "window_before": 7, "window_after": 7,
            "mode": "phone", "forms": [], "repeat_every": None, "repeat_until": None}


@pytest.fixture(scope="module")
def committed(world, django_db_blocker):  # type: ignore[no-untyped-def]
    with django_db_blocker.unblock():
        connection.set_tenant(world.alpha)
        site = site_services.site_create(code="CC01", name="Concurrency", institution="Test", country_region="CN",
                                         principal_investigator="Dr Li", target_enrolment=100,
                                         time_zone="Asia/Shanghai")
        site = site_services.site_update_checklist(
            site=site, ethics_approval_date=DAY, contract_signed=DAY, staff_trained=DAY,
            ethics_document=SimpleUploadedFile("e.pdf", b"%PDF", "application/pdf"))
        site = site_services.site_activate(site=site)
        study = services.study_create(code="CONC", title="Concurrency", study_type="registry", target_enrolment=100)
        services.schedule_publish(version=services.schedule_draft_save(study=study, events=[_event("M1", 1)]))
        study = services.study_activate(study=study)
        connection.set_schema_to_public()
        try:
            yield study, site
        finally:
            connection.set_tenant(world.alpha)
            Subject.objects.filter(study=study).delete()
            Study.objects.filter(pk=study.pk).delete()
            Site.objects.filter(pk=site.pk).delete()
            connection.set_schema_to_public()
            connection.close()


def test_concurrent_enrolments_get_distinct_gapless_numbers(world, committed, django_db_blocker):
    study, site = committed

    def enrol(index: int) -> str:
        try:
            connection.set_tenant(world.alpha)
            return services.subject_enrol(study=study, site=site, consent_date=DAY,
                                          national_id=f"1101011990030{index:05d}").subject_code
        finally:
            connections.close_all()

    with django_db_blocker.unblock(), ThreadPoolExecutor(max_workers=8) as pool:
        codes = list(pool.map(enrol, range(24)))
    assert sorted(codes) == [f"CC01-{n:04d}" for n in range(1, 25)]
