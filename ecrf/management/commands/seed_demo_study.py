"""Seed each demo tenant with a study to look at (after seed_demo made the tenants and
users): an active site with its staff, a heart-failure follow-up registry whose visits
collect the sample eCRF form, and subjects enrolled over the last four months, so the
worklist, the subject pages, the data-entry pages and the dashboard have something in
them. Development only; idempotent (a tenant that has the study is left alone)."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management.base import BaseCommand
from django.utils import timezone
from django_tenants.utils import schema_context

from ecrf import services as ecrf_services
from ecrf.samples import VITALS
from sites import services as site_services
from studies import services as study_services
from studies.models import Study
from tenants.selectors import demo_tenants_and_members

STUDY_CODE = "HF-FU"
SUBJECTS = 12


def _event(code: str, days: int, window: int, mode: str, forms: list[str], name_zh: str) -> dict[str, Any]:
    return {"code": code, "name_en": code, "name_zh": name_zh, "anchor": "enrolment", "anchor_event": None,
            "offset": {"amount": days, "unit": "day"}, "window_before": window, "window_after": window,
            "mode": mode, "forms": forms, "repeat_every": None, "repeat_until": None}


class Command(BaseCommand):
    help = "Create the demo study, site, form and subjects in each demo tenant (development only)."

    def handle(self, *args: Any, **opts: Any) -> None:
        for tenant, members in demo_tenants_and_members():
            with schema_context(tenant.schema_name):
                if Study.objects.filter(code=STUDY_CODE).exists():
                    continue
                self._seed(tenant, members)
                self.stdout.write(f"  demo study {STUDY_CODE} seeded in {tenant.slug}")

    def _seed(self, tenant: Any, members: dict[str, Any]) -> None:
        rng = random.Random(tenant.slug)  # noqa: S311 (demo data, the same every time)
        today = timezone.localdate()
        site = site_services.site_create(code="SH01", name="Cardiology", institution=tenant.name,
                                         country_region="CN", principal_investigator="Dr Demo",
                                         target_enrolment=60, time_zone=tenant.time_zone)
        opened = today - timedelta(days=200)
        site = site_services.site_update_checklist(
            site=site, ethics_approval_date=opened, contract_signed=opened, staff_trained=opened,
            ethics_document=SimpleUploadedFile("ethics-approval.pdf", b"%PDF-1.4 demo", "application/pdf"))
        site = site_services.site_activate(site=site)
        for role, is_primary in (("coordinator", True), ("investigator", False), ("monitor", False)):
            if role in members:
                site_services.site_staff_assign(site=site, tenant=tenant, user=members[role], role=role,
                                                is_primary=is_primary)
        study = study_services.study_create(code=STUDY_CODE, study_type="registry", target_enrolment=60,
                                            title="心衰出院后随访登记 Heart-failure follow-up registry")
        schedule = study_services.schedule_draft_save(study=study, events=[
            _event("D7", 7, 3, "phone", ["VITALS"], "出院7天"),
            _event("D30", 30, 7, "clinic", ["VITALS"], "出院30天"),
            _event("D90", 90, 14, "clinic", ["VITALS"], "出院90天"),
            _event("D180", 180, 14, "phone", ["VITALS"], "出院180天"),
        ])
        study_services.schedule_publish(version=schedule)
        actor = ecrf_services.Actor(user_id=members["tenant_admin"].pk, label="seed", role="tenant_admin")
        draft = ecrf_services.form_draft_save(study=study, definition=VITALS, actor=actor)
        ecrf_services.form_publish(version=draft, actor=actor)
        study = study_services.study_activate(study=study)
        for _n in range(SUBJECTS):
            enrolled = today - timedelta(days=rng.randrange(0, 120))
            study_services.subject_enrol(study=study, site=site, consent_date=enrolled, enrolment_date=enrolled,
                                         language=tenant.default_language,
                                         phone=f"138{rng.randrange(10_000_000, 99_999_999)}")
        study_services.tasks_refresh_statuses()
