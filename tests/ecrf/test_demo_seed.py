"""`make run`'s demo: seed_demo then seed_demo_study give each demo tenant a site, a study
with a published form and subjects on the coordinator's worklist; a second run changes
nothing."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from django_tenants.utils import schema_context

from ecrf.models import FormVersion
from studies.models import FollowUpTask, Study, Subject
from tenants.selectors import demo_tenants_and_members

pytestmark = pytest.mark.django_db(transaction=False)


def test_demo_tenants_get_a_study_to_look_at(world):
    call_command("seed_demo", stdout=io.StringIO())
    call_command("seed_demo_study", stdout=io.StringIO())
    call_command("seed_demo_study", stdout=io.StringIO())  # idempotent
    seeded = demo_tenants_and_members()
    assert [t.slug for t, _members in seeded] == ["demo-device", "demo-hospital"]
    for tenant, members in seeded:
        with schema_context(tenant.schema_name):
            assert Study.objects.get().status == "active"
            assert Subject.objects.count() == 12
            assert FormVersion.objects.get().status == "published"
            coordinator_tasks = FollowUpTask.objects.filter(assignee=members["coordinator"])
            assert coordinator_tasks.count() == 48
