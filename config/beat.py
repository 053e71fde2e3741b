"""Celery beat scheduler (imported by beat only, after Django is set up)."""

from __future__ import annotations

from tenant_schemas_celery.scheduler import TenantAwarePersistentScheduler


class SuifangBeatScheduler(TenantAwarePersistentScheduler):
    """Fans periodic tasks out to every tenant that is not suspended."""

    @classmethod
    def get_queryset(cls):
        from tenants.selectors import tenants_live

        return tenants_live()
