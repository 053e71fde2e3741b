"""Celery beat scheduler (imported by beat only, after Django is set up)."""

from __future__ import annotations

from typing import Any

from celery.schedules import crontab
from tenant_schemas_celery.scheduler import TenantAwarePersistentScheduler

# Periodic jobs declared here rather than in settings.CELERY_BEAT_SCHEDULE (an entry of
# the same name there wins). No `tenant_schemas` key: one copy per live tenant.
EXTRA_BEAT_SCHEDULE: dict[str, dict[str, Any]] = {
    # Monthly audit partitions three months ahead (docs/adr/0007-audit-trail.md); daily,
    # at a quiet hour, so a missed run or a new tenant is caught up the next night.
    "audit-partitions-ensure": {"task": "ecrf.tasks.audit_partitions_ensure", "schedule": crontab(hour=2, minute=17)},
}


class SuifangBeatScheduler(TenantAwarePersistentScheduler):
    """Fans periodic tasks out to every tenant that is not suspended."""

    @classmethod
    def get_queryset(cls):
        from tenants.selectors import tenants_live

        return tenants_live()

    def merge_inplace(self, b: dict[str, Any]) -> None:
        super().merge_inplace({**EXTRA_BEAT_SCHEDULE, **b})
