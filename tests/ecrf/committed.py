"""A committed eCRF study in alpha, for tests whose code runs outside the test's
transaction (a live server, autocommit paths): an active site with staff, a study whose
D3 visit (open today) collects the first of the given forms (all published), enrolled
subjects; and its removal afterwards."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection

from ecrf import services as ecrf_services
from ecrf.models import CasebookLock, Entry, EproLink, FormDefinition, Query, Signature
from notifications.models import OutboxMessage
from sites import services as site_services
from sites.models import Site
from studies import services
from studies.models import Study, Subject
from tests.studies.test_enrolment import event


def _email(role: str) -> str:
    return f"{role}@alpha.example.org"


@contextmanager
def committed_ecrf_study(world: Any, *, site_code: str, study_code: str, roles: Sequence[str],
                         definitions: Sequence[dict[str, Any]], subjects: Sequence[str],
                         contact: bool = False) -> Iterator[dict[str, Any]]:
    """Call with the database unblocked, outside any test transaction. Yields the site,
    study, forms (code -> form), subjects and their D3 tasks (name -> object); `roles`:
    alpha's members assigned to the site (the first is primary); `contact`: subjects
    speak English and have an email and a phone (ePRO links)."""
    day = dt.date.today() - dt.timedelta(days=3)
    connection.set_tenant(world.alpha)
    site = site_services.site_create(code=site_code, name=f"{study_code} site", institution="H",
                                     country_region="CN", principal_investigator="Dr E", target_enrolment=9,
                                     time_zone="Asia/Shanghai")
    site = site_services.site_update_checklist(
        site=site, ethics_approval_date=day, contract_signed=day, staff_trained=day,
        ethics_document=SimpleUploadedFile("e.pdf", b"%PDF", "application/pdf"))
    site = site_services.site_activate(site=site)
    for index, role in enumerate(roles):
        site_services.site_staff_assign(site=site, tenant=world.alpha, user=world.users[_email(role)], role=role,
                                        is_primary=index == 0)
    study = services.study_create(code=study_code, title=study_code, study_type="registry", target_enrolment=9)
    services.schedule_publish(version=services.schedule_draft_save(
        study=study, events=[{**event("D3", 3, before=3, after=3), "forms": [d["code"] for d in definitions[:1]]}]))
    study = services.study_activate(study=study)
    designer = ecrf_services.Actor(user_id=world.users[_email("data_manager")].pk, label=_email("data_manager"),
                                   role="data_manager")
    forms = {}
    for definition in definitions:
        draft = ecrf_services.form_draft_save(study=study, definition=definition, actor=designer)
        forms[definition["code"]] = ecrf_services.form_publish(version=draft, actor=designer).form
    enrolled = {name: services.subject_enrol(
        study=study, site=site, consent_date=day, enrolment_date=day,
        **({"language": "en", "email": f"{name}@example.org", "phone": "13800002222"} if contact else {}))
        for name in subjects}
    tasks = {name: subject.tasks.get() for name, subject in enrolled.items()}
    connection.set_schema_to_public()
    try:
        yield {"site": site, "study": study, "forms": forms, "subjects": enrolled, "tasks": tasks}
    finally:
        committed_study_remove(world, study=study, site=site)


def committed_study_remove(world: Any, *, study: Any, site: Any) -> None:
    """Delete a committed study of alpha, its subjects' clinical data and its site, in an
    order the foreign keys accept (the append-only audit rows stay). Database unblocked."""
    connection.set_tenant(world.alpha)
    ids = list(Subject.objects.filter(study=study).values_list("pk", flat=True))
    links = list(EproLink.objects.filter(subject_id__in=ids).values_list("pk", flat=True))
    OutboxMessage.objects.filter(key__in=[f"epro:{pk}" for pk in links]).delete()
    EproLink.objects.filter(subject_id__in=ids).delete()
    Query.objects.filter(subject_id__in=ids).delete()
    Signature.objects.filter(subject_id__in=ids).delete()
    CasebookLock.objects.filter(subject_id__in=ids).delete()
    Entry.objects.filter(subject_id__in=ids).delete()
    FormDefinition.objects.filter(study=study).delete()
    Subject.objects.filter(study=study).delete()
    Study.objects.filter(pk=study.pk).delete()
    Site.objects.filter(pk=site.pk).delete()
    connection.set_schema_to_public()
    connection.close()
