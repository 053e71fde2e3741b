"""Enrolment: gapless subject IDs, encrypted identifying data, one task per scheduled
occurrence, and amendments that re-plan only what is not done."""

from __future__ import annotations

import datetime as dt

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection

from config.errors import Conflict, ValidationFailed
from sites import services as site_services
from studies import services
from studies.models import FollowUpTask, Subject, TaskStatus

pytestmark = pytest.mark.django_db

TODAY = dt.date(2026, 2, 10)


@pytest.fixture(autouse=True)
def fixed_today(monkeypatch):  # type: ignore[no-untyped-def]
    """Task statuses depend on "today" at the site; pin it so the expectations hold on any day."""
    monkeypatch.setattr(services, "site_today", lambda site: TODAY)


def event(code: str, amount: int, unit: str = "day", *, before: int = 7, after: int = 7, anchor: str = "enrolment",
          anchor_event: str | None = None, every: dict | None = None, until: dict | None = None,
          mode: str = "phone") -> dict:
    return {"code": code, "name_en": code, "name_zh": code, "anchor": anchor, "anchor_event": anchor_event,
            "offset": {"amount": amount, "unit": unit}, "window_before": before, "window_after": after,
            "mode": mode, "forms": [], "repeat_every": every, "repeat_until": until}


@pytest.fixture
def study_site(world, in_tenant, email_of):  # type: ignore[no-untyped-def]
    in_tenant(world.alpha)
    site = site_services.site_create(code="BJ01", name="Beijing", institution="PUMCH", country_region="CN",
                                     principal_investigator="Dr Wang", target_enrolment=100,
                                     time_zone="Asia/Shanghai")
    day = dt.date(2026, 1, 5)
    site = site_services.site_update_checklist(
        site=site, ethics_approval_date=day, contract_signed=day, staff_trained=day,
        ethics_document=SimpleUploadedFile("e.pdf", b"%PDF", "application/pdf"))
    site = site_services.site_activate(site=site)
    coordinator = world.users[email_of("coordinator", "alpha")]
    site_services.site_staff_assign(site=site, tenant=world.alpha, user=coordinator, role="coordinator",
                                    is_primary=True)
    study = services.study_create(code="HF-REG", title="Heart failure registry", study_type="registry",
                                  target_enrolment=500)
    version = services.schedule_draft_save(study=study, events=[
        event("M1", 1, "month"), event("M3", 3, "month", before=14, after=14)])
    services.schedule_publish(version=version)
    study = services.study_activate(study=study)
    return study, site, coordinator


def test_enrolment_numbers_subjects_without_gaps_and_plans_tasks(study_site):
    study, site, coordinator = study_site
    first = services.subject_enrol(study=study, site=site, consent_date=dt.date(2026, 1, 31),
                                   enrolment_date=dt.date(2026, 1, 31), phone="13812345678")
    with pytest.raises(ValidationFailed):
        services.subject_enrol(study=study, site=site, consent_date=dt.date(2026, 2, 1),
                               enrolment_date=dt.date(2026, 1, 31))  # enrolment before consent
    second = services.subject_enrol(study=study, site=site, consent_date=dt.date(2026, 2, 1))
    assert (first.subject_code, second.subject_code) == ("BJ01-0001", "BJ01-0002")
    tasks = list(FollowUpTask.objects.filter(subject=first).order_by("target_date"))
    # Jan 31 + 1 calendar month clamps to Feb 28 (2026 is not a leap year); + 3 months = Apr 30.
    assert [(t.event_code, t.target_date, t.window_open, t.window_close) for t in tasks] == [
        ("M1", dt.date(2026, 2, 28), dt.date(2026, 2, 21), dt.date(2026, 3, 7)),
        ("M3", dt.date(2026, 4, 30), dt.date(2026, 4, 16), dt.date(2026, 5, 14)),
    ]
    assert all(t.assignee_id == coordinator.pk for t in tasks)


def test_identifying_data_is_encrypted_at_rest(study_site):
    study, site, _ = study_site
    subject = services.subject_enrol(
        study=study, site=site, consent_date=dt.date(2026, 1, 10), name="张三丰", phone="13812345678",
        national_id="11010119900307777X", birth_date="1990-03-07", address="北京市朝阳区建国路88号")
    with connection.cursor() as cursor:
        cursor.execute("SELECT name, phone, national_id, birth_date, address, national_id_hash "
                       "FROM studies_subject WHERE id = %s", [subject.pk])
        raw = cursor.fetchone()
    row_text = " ".join(str(v) for v in raw)
    for plaintext in ("张三丰", "13812345678", "5678", "11010119900307777X", "1990-03-07", "建国路"):
        assert plaintext not in row_text
    assert all(str(v).startswith("pii1:") for v in raw[:5])
    reloaded = Subject.objects.get(pk=subject.pk)
    assert (reloaded.name, reloaded.phone) == ("张三丰", "13812345678")


def test_duplicate_national_id_is_refused_and_uses_no_number(study_site):
    study, site, _ = study_site
    services.subject_enrol(study=study, site=site, consent_date=dt.date(2026, 1, 10), national_id="110101199003077770")
    with pytest.raises(ValidationFailed) as dup:
        services.subject_enrol(study=study, site=site, consent_date=dt.date(2026, 1, 10),
                               national_id="110101 19900307 7770")
    assert "already enrolled" in dup.value.fields["national_id"][0]
    third = services.subject_enrol(study=study, site=site, consent_date=dt.date(2026, 1, 10))
    assert third.subject_code == "BJ01-0002"


def test_only_active_sites_and_studies_enrol(study_site):
    study, site, _ = study_site
    site_services.site_close(site=site, reason="closed early")
    site.refresh_from_db()
    with pytest.raises(Conflict) as refused:
        services.subject_enrol(study=study, site=site, consent_date=dt.date(2026, 1, 10))
    assert refused.value.code == "site_not_active"
    assert not Subject.objects.exists()


def test_amendment_replans_only_tasks_that_are_not_done(study_site):
    study, site, _ = study_site
    subject = services.subject_enrol(study=study, site=site, consent_date=dt.date(2026, 1, 10),
                                     enrolment_date=dt.date(2026, 1, 10))
    m1 = FollowUpTask.objects.get(subject=subject, event_code="M1")
    assert (m1.target_date, m1.status) == (dt.date(2026, 2, 10), TaskStatus.OPEN)
    FollowUpTask.objects.filter(pk=m1.pk).update(status=TaskStatus.COMPLETED, completed_on=dt.date(2026, 2, 9))
    draft = services.schedule_draft_save(study=study, events=[
        event("M1", 5, "week"), event("M3", 13, "week", before=10, after=10), event("M6", 6, "month")])
    preview = services.tasks_replan_preview(version=draft)
    assert preview.summary() == {"create": 1, "update": 1, "cancel": 0}
    services.schedule_publish(version=draft)
    m1.refresh_from_db()
    assert (m1.status, m1.target_date) == (TaskStatus.COMPLETED, dt.date(2026, 2, 10))  # untouched
    m3 = FollowUpTask.objects.get(subject=subject, event_code="M3")
    # Jan 10 + 13 weeks (91 days) = Apr 11, window ±10 days.
    assert (m3.target_date, m3.window_open, m3.window_close) == (
        dt.date(2026, 4, 11), dt.date(2026, 4, 1), dt.date(2026, 4, 21))
    assert m3.status == TaskStatus.UPCOMING and m3.schedule_version_id == draft.pk
    assert FollowUpTask.objects.get(subject=subject, event_code="M6").target_date == dt.date(2026, 7, 10)


def test_dropping_an_event_cancels_its_open_tasks(study_site):
    study, site, _ = study_site
    subject = services.subject_enrol(study=study, site=site, consent_date=dt.date(2026, 1, 10))
    draft = services.schedule_draft_save(study=study, events=[event("M1", 1, "month")])
    assert services.tasks_replan_preview(version=draft).summary() == {"create": 0, "update": 0, "cancel": 1}
    services.schedule_publish(version=draft)
    assert FollowUpTask.objects.get(subject=subject, event_code="M3").status == TaskStatus.CANCELLED


@pytest.mark.parametrize(("events", "field"), [
    ([], "events"),
    ([event("M1", 1, "month"), event("M1", 2, "month")], "events.1.code"),
    ([event("M1", 1, "fortnight")], "events.0.offset"),
    ([event("M2", 1, anchor="event", anchor_event="NOPE")], "events.0.anchor_event"),
])
def test_bad_schedules_are_refused_per_field(study_site, events, field):
    study, _, _ = study_site
    with pytest.raises(ValidationFailed) as refused:
        services.schedule_draft_save(study=study, events=events)
    assert field in refused.value.fields, refused.value.fields


def test_key_rotation_reencrypts_every_value_and_the_old_key_can_go(study_site, settings):
    import base64

    from django.core.management import call_command

    from studies.pii import pii_decrypt

    study, site, _ = study_site
    subject = services.subject_enrol(study=study, site=site, consent_date=dt.date(2026, 1, 10), name="李雷",
                                     phone="13900001111")
    old_keys = settings.PII_ENCRYPTION_KEYS
    new_key = base64.urlsafe_b64encode(b"n" * 32).decode()
    settings.PII_ENCRYPTION_KEYS = f"{new_key},{old_keys}"
    call_command("pii_rotate", "--tenant", "alpha", stdout=open("/dev/null", "w"))  # noqa: SIM115
    settings.PII_ENCRYPTION_KEYS = new_key  # the old key is gone now
    with connection.cursor() as cursor:
        cursor.execute("SELECT name, phone FROM studies_subject WHERE id = %s", [subject.pk])
        name_token, phone_token = cursor.fetchone()
    assert pii_decrypt(name_token, purpose="subject.name") == "李雷"
    assert pii_decrypt(phone_token, purpose="subject.phone") == "13900001111"
    assert Subject.objects.get(pk=subject.pk).phone == "13900001111"
