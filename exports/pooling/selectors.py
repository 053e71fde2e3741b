"""Reads of consortia (public schema)."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from exports.pooling.models import Consortium, ConsortiumMember, DataSharingAgreement, PooledRun


def is_consortium_member(user: Any) -> bool:
    """settings.PUBLIC_MEMBER_CHECK: may this non-operator sign in on the public host."""
    return bool(getattr(user, "pk", None)) and ConsortiumMember.objects.filter(user_id=user.pk).exists()


def consortia_of(*, user: Any) -> QuerySet[Consortium]:
    return Consortium.objects.filter(members__user_id=user.pk).distinct()


def member_role(*, user: Any, consortium: Consortium) -> str | None:
    if not getattr(user, "pk", None):
        return None
    return (ConsortiumMember.objects.filter(consortium=consortium, user_id=user.pk)
            .values_list("role", flat=True).first())


def runs_of(*, consortium: Consortium) -> QuerySet[PooledRun]:
    return PooledRun.objects.filter(consortium=consortium)


def agreements_of(*, consortium: Consortium) -> QuerySet[DataSharingAgreement]:
    return DataSharingAgreement.objects.filter(consortium=consortium).select_related("tenant")
