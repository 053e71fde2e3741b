"""Reminders: outbox rows written once, sent over real SMTP, never lost when a worker
dies mid-send, retried with backoff, quiet hours and opt-out respected."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from zoneinfo import ZoneInfo

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from notifications import services as outbox
from notifications.models import DeliveryLog, OutboxMessage, OutboxStatus, RecordedMessage, ReminderRule
from sites import services as site_services
from studies import services
from studies.models import FollowUpTask, TaskStatus
from studies.reminders import next_allowed_instant, reminders_scan
from tests.studies.test_enrolment import event

pytestmark = pytest.mark.django_db

UTC = zoneinfo.ZoneInfo("UTC")
SHANGHAI = zoneinfo.ZoneInfo("Asia/Shanghai")
# The sites here are in Asia/Shanghai, and "today" is theirs (the server keeps dates by
# the site's time zone): from 16:00 UTC it is already tomorrow there.
TODAY = dt.datetime.now(ZoneInfo("Asia/Shanghai")).date()
NOON_SHANGHAI = dt.datetime.combine(TODAY, dt.time(12, 0), tzinfo=SHANGHAI).astimezone(UTC)


@pytest.fixture
def setup(world, in_tenant, email_of):  # type: ignore[no-untyped-def]
    in_tenant(world.alpha)
    site = site_services.site_create(code="R1", name="R1", institution="H", country_region="CN",
                                     principal_investigator="Dr A", target_enrolment=10, time_zone="Asia/Shanghai")
    day = dt.date(2026, 1, 5)
    site = site_services.site_update_checklist(site=site, ethics_approval_date=day, contract_signed=day,
                                               staff_trained=day,
                                               ethics_document=SimpleUploadedFile("e.pdf", b"%PDF", "application/pdf"))
    site = site_services.site_activate(site=site)
    coordinator = world.users[email_of("coordinator", "alpha")]
    site_services.site_staff_assign(site=site, tenant=world.alpha, user=coordinator, role="coordinator",
                                    is_primary=True)
    study = services.study_create(code="REM", title="Reminders", study_type="registry", target_enrolment=10)
    services.schedule_publish(version=services.schedule_draft_save(study=study, events=[
        event("D10", 10, before=3, after=3), event("D60", 60)]))
    study = services.study_activate(study=study)
    rule = ReminderRule.objects.create(study=study, kind="patient_before_window", days=7, channel="email")
    return study, site, rule


def _enrol(study, site, **extra):  # type: ignore[no-untyped-def]
    return services.subject_enrol(study=study, site=site, consent_date=TODAY, email="patient@example.org",
                                  phone="13800000000", **extra)


def test_the_scan_writes_each_reminder_once(setup):
    study, site, _rule = setup
    _enrol(study, site)
    # D10's window opens in 7 days: inside the 7-day horizon. D60's does not.
    assert reminders_scan(now=NOON_SHANGHAI) == 1
    assert reminders_scan(now=NOON_SHANGHAI) == 0
    assert reminders_scan(now=NOON_SHANGHAI + dt.timedelta(hours=1)) == 0
    message = OutboxMessage.objects.get()
    assert message.key.endswith(":1") and message.status == OutboxStatus.PENDING


def test_the_same_keys_from_two_writers_are_stored_once(setup):
    item = outbox.Outgoing(key="r:t:1", channel="email", recipient="a@example.org", subject="s", body="b",
                           language="en", not_before=NOON_SHANGHAI)
    assert outbox.outbox_enqueue(messages=[item]) == 1
    assert outbox.outbox_enqueue(messages=[item, item]) == 0
    assert OutboxMessage.objects.count() == 1


def test_reminder_is_sent_over_smtp_in_the_patients_language(setup, smtp_server):
    study, site, _rule = setup
    _enrol(study, site, language="en")
    reminders_scan(now=NOON_SHANGHAI)
    assert outbox.outbox_dispatch_due(now=NOON_SHANGHAI) == {"sent": 1, "failed": 0, "retry": 0}
    mail = smtp_server.messages[0]
    assert mail["To"] == "patient@example.org" and "follow-up" in mail["Subject"]
    assert OutboxMessage.objects.get().status == OutboxStatus.SENT
    assert DeliveryLog.objects.get().ok
    assert outbox.outbox_dispatch_due(now=NOON_SHANGHAI)["sent"] == 0  # never twice


def test_opted_out_patients_get_nothing(setup):
    study, site, _rule = setup
    subject = _enrol(study, site)
    subject.reminders_opt_out = True
    subject.save(update_fields=["reminders_opt_out"])
    assert reminders_scan(now=NOON_SHANGHAI) == 0


def test_quiet_hours_hold_the_message_until_morning(setup, smtp_server):
    study, site, _rule = setup
    _enrol(study, site)
    late = dt.datetime.combine(TODAY, dt.time(23, 30), tzinfo=SHANGHAI).astimezone(UTC)
    reminders_scan(now=late)
    message = OutboxMessage.objects.get()
    morning = dt.datetime.combine(TODAY + dt.timedelta(days=1), dt.time(8, 0), tzinfo=SHANGHAI)
    assert message.not_before == morning
    assert outbox.outbox_dispatch_due(now=late)["sent"] == 0
    assert outbox.outbox_dispatch_due(now=morning + dt.timedelta(minutes=1))["sent"] == 1


def test_quiet_hours_arithmetic():
    berlin = "Europe/Berlin"
    quiet = {"quiet_from": dt.time(21, 0), "quiet_until": dt.time(8, 0)}
    # 20:59 local is allowed; 21:00 is quiet until 08:00 the next day.
    evening = dt.datetime(2026, 3, 28, 19, 59, tzinfo=UTC)  # 20:59 CET
    assert next_allowed_instant(now=evening, tz_name=berlin, **quiet) == evening
    night = dt.datetime(2026, 3, 28, 20, 0, tzinfo=UTC)  # 21:00 CET; the clocks go forward that night
    assert next_allowed_instant(now=night, tz_name=berlin, **quiet) == dt.datetime(2026, 3, 29, 6, 0, tzinfo=UTC)
    early = dt.datetime(2026, 10, 25, 5, 0, tzinfo=UTC)  # 06:00 CET after the clocks went back
    assert next_allowed_instant(now=early, tz_name=berlin, **quiet) == dt.datetime(2026, 10, 25, 7, 0, tzinfo=UTC)


def test_a_worker_that_dies_mid_send_loses_nothing(setup, smtp_server, monkeypatch):
    from notifications import channels

    study, site, _rule = setup
    _enrol(study, site)
    reminders_scan(now=NOON_SHANGHAI)

    class Dies:
        def send(self, **kwargs):  # type: ignore[no-untyped-def]
            raise SystemExit("worker killed")  # not an Exception: the process is going away

    monkeypatch.setattr(outbox, "adapter_for", lambda channel: Dies())
    with pytest.raises(SystemExit):
        outbox.outbox_dispatch_due(now=NOON_SHANGHAI)
    message = OutboxMessage.objects.get()
    assert (message.status, message.attempts) == (OutboxStatus.PENDING, 0)
    monkeypatch.setattr(outbox, "adapter_for", channels.adapter_for)
    assert outbox.outbox_dispatch_due(now=NOON_SHANGHAI)["sent"] == 1
    assert len(smtp_server.messages) == 1


def test_delivery_failures_are_retried_with_backoff_then_given_up(setup, settings):
    study, site, _rule = setup
    _enrol(study, site)
    reminders_scan(now=NOON_SHANGHAI)
    # A real SMTP connection to a port where nothing listens.
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", 9, 2
    now = NOON_SHANGHAI
    first = outbox.outbox_dispatch_due(now=now)
    message = OutboxMessage.objects.get()
    assert first["retry"] == 1 and message.next_attempt_at == now + dt.timedelta(minutes=2)
    assert outbox.outbox_dispatch_due(now=now)["retry"] == 0  # not due again yet
    for _ in range(outbox.MAX_ATTEMPTS):
        now += dt.timedelta(days=1)
        outbox.outbox_dispatch_due(now=now)
    message.refresh_from_db()
    assert message.status == OutboxStatus.FAILED and message.attempts == outbox.MAX_ATTEMPTS
    assert DeliveryLog.objects.filter(message=message, ok=False).count() == outbox.MAX_ATTEMPTS


def test_sms_goes_through_the_recording_adapter_and_is_encrypted_at_rest(setup):
    from django.db import connection

    study, site, rule = setup
    rule.channel = "sms"
    rule.save()
    _enrol(study, site)
    reminders_scan(now=NOON_SHANGHAI)
    assert outbox.outbox_dispatch_due(now=NOON_SHANGHAI)["sent"] == 1
    assert RecordedMessage.objects.get().recipient == "13800000000"
    with connection.cursor() as cursor:
        cursor.execute("SELECT recipient, body FROM notifications_outboxmessage")
        raw = " ".join(cursor.fetchone())
    assert "13800000000" not in raw and "pii1:" in raw


def test_coordinator_and_investigator_overdue_rules(setup, world, email_of):
    study, site, _rule = setup
    subject = _enrol(study, site)
    investigator = world.users[email_of("investigator", "alpha")]
    site_services.site_staff_assign(site=site, tenant=world.alpha, user=investigator, role="investigator")
    ReminderRule.objects.create(study=study, kind="coordinator_overdue", channel="email")
    ReminderRule.objects.create(study=study, kind="investigator_overdue", days=5, channel="email")
    task = FollowUpTask.objects.get(subject=subject, event_code="D10")
    FollowUpTask.objects.filter(pk=task.pk).update(status=TaskStatus.OVERDUE, target_date=TODAY - dt.timedelta(days=6),
                                                  window_open=TODAY - dt.timedelta(days=9),
                                                  window_close=TODAY + dt.timedelta(days=1))
    reminders_scan(now=NOON_SHANGHAI)
    recipients = sorted(m.recipient for m in OutboxMessage.objects.all())
    assert recipients == sorted([email_of("coordinator", "alpha"), email_of("investigator", "alpha")])
