"""Overdue reminders to staff are written in each recipient's language: their own
preference, else their organisation's default; never the scanning worker's language."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import translation

from notifications.models import OutboxMessage, ReminderRule
from sites import services as site_services
from studies import services
from studies.models import FollowUpTask, TaskStatus
from studies.reminders import reminders_scan
from tests.notifications.test_reminders import NOON_SHANGHAI, TODAY
from tests.studies.test_enrolment import event
from tests.studies.test_studies_api import _active_site

pytestmark = pytest.mark.django_db


def _overdue_task_with_staff_rules(tenant, world, email_of):  # type: ignore[no-untyped-def]
    """In `tenant` (already entered): a site with a coordinator and an investigator, one
    subject whose first visit is 6 days overdue, and both staff overdue rules."""
    site = _active_site("R1")
    coordinator = world.users[email_of("coordinator", tenant.slug)]
    investigator = world.users[email_of("investigator", tenant.slug)]
    site_services.site_staff_assign(site=site, tenant=tenant, user=coordinator, role="coordinator", is_primary=True)
    site_services.site_staff_assign(site=site, tenant=tenant, user=investigator, role="investigator")
    study = services.study_create(code="REM", title="Reminders", study_type="registry", target_enrolment=10)
    services.schedule_publish(version=services.schedule_draft_save(study=study, events=[event("D10", 10)]))
    study = services.study_activate(study=study)
    subject = services.subject_enrol(study=study, site=site, consent_date=TODAY)
    FollowUpTask.objects.filter(subject=subject).update(
        status=TaskStatus.OVERDUE, target_date=TODAY - dt.timedelta(days=6),
        window_open=TODAY - dt.timedelta(days=9), window_close=TODAY + dt.timedelta(days=1))
    ReminderRule.objects.create(study=study, kind="coordinator_overdue", channel="email")
    ReminderRule.objects.create(study=study, kind="investigator_overdue", days=5, channel="email")
    return coordinator, investigator


def _sent() -> dict[str, tuple[str, str, str]]:
    return {m.recipient: (m.language, m.subject, m.body) for m in OutboxMessage.objects.all()}


@pytest.fixture
def preferences(world, email_of):  # type: ignore[no-untyped-def]
    """Set a user's preferred language for one test."""
    changed = []

    def prefer(email: str, language: str) -> None:
        user = world.users[email]
        changed.append((user, user.preferred_language))
        type(user).objects.filter(pk=user.pk).update(preferred_language=language)

    yield prefer
    for user, language in changed:
        type(user).objects.filter(pk=user.pk).update(preferred_language=language)


def test_staff_of_an_english_organisation_get_english_reminders(world, email_of, in_tenant):
    in_tenant(world.beta)  # default_language "en"
    _overdue_task_with_staff_rules(world.beta, world, email_of)
    with translation.override("zh-hans"):  # a worker left in the platform's default language
        assert reminders_scan(now=NOON_SHANGHAI) == 2
    sent = _sent()
    coordinator, investigator = sent[email_of("coordinator", "beta")], sent[email_of("investigator", "beta")]
    assert coordinator[0] == "en" and coordinator[1] == "Overdue follow-up: R1-0001 D10"
    assert investigator[0] == "en" and investigator[1] == "Follow-up overdue for 6 days: R1-0001"
    assert investigator[2] == "Follow-up D10 of R1-0001 at site R1 is overdue."


def test_a_staff_members_own_language_comes_before_the_organisations(world, email_of, in_tenant, preferences):
    preferences(email_of("investigator", "alpha"), "en")
    in_tenant(world.alpha)  # default_language "zh-hans"
    _overdue_task_with_staff_rules(world.alpha, world, email_of)
    with translation.override("en"):
        assert reminders_scan(now=NOON_SHANGHAI) == 2
    sent = _sent()
    coordinator, investigator = sent[email_of("coordinator", "alpha")], sent[email_of("investigator", "alpha")]
    assert coordinator[0] == "zh-hans" and coordinator[1].startswith("随访逾期") and "R1-0001 D10" in coordinator[1]
    assert investigator[0] == "en" and investigator[1] == "Follow-up overdue for 6 days: R1-0001"
