"""Reads of study exports. Who sees which job: tenant admins and data managers every job
of the tenant; a statistician the jobs they started (the API and the pages share this)."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from exports.models import ExportJob

ALL_JOBS_ROLES = frozenset({"tenant_admin", "data_manager"})


def jobs_visible(*, membership: Any) -> QuerySet[ExportJob]:
    jobs = ExportJob.objects.select_related("study").prefetch_related("files")
    if membership.role not in ALL_JOBS_ROLES:
        jobs = jobs.filter(requested_by_id=membership.user_id)
    return jobs


def job_get(*, membership: Any, job_id: int) -> ExportJob | None:
    return jobs_visible(membership=membership).filter(pk=job_id).first()
