"""Reads of consortia (public schema)."""

from __future__ import annotations

from typing import Any

from django.db.models import OuterRef, QuerySet, Subquery

from exports.pooling.models import Consortium, ConsortiumMember, DataSharingAgreement, PooledRun


def is_consortium_member(user: Any) -> bool:
    """settings.PUBLIC_MEMBER_CHECK: may this non-operator sign in on the public host."""
    return bool(getattr(user, "pk", None)) and ConsortiumMember.objects.filter(user_id=user.pk).exists()


def consortia_of(*, user: Any) -> QuerySet[Consortium]:
    """The user's consortia, each with `member_role`: their role in it (read in the same
    query, not once per row)."""
    role = ConsortiumMember.objects.filter(consortium=OuterRef("pk"), user_id=user.pk).values("role")[:1]
    return Consortium.objects.filter(members__user_id=user.pk).distinct().annotate(member_role=Subquery(role))


def member_role(*, user: Any, consortium: Consortium) -> str | None:
    if not getattr(user, "pk", None):
        return None
    return (ConsortiumMember.objects.filter(consortium=consortium, user_id=user.pk)
            .values_list("role", flat=True).first())


def consortium_with_role(*, user: Any, slug: str) -> tuple[Consortium, str] | None:
    """The consortium and the user's role in it; None for an unknown slug and for a
    consortium without a role alike (so slugs cannot be probed)."""
    consortium = Consortium.objects.filter(slug=slug).first()
    role = member_role(user=user, consortium=consortium) if consortium is not None else None
    return (consortium, role) if consortium is not None and role is not None else None


def runs_of(*, consortium: Consortium) -> QuerySet[PooledRun]:
    return PooledRun.objects.filter(consortium=consortium)


def agreements_of(*, consortium: Consortium) -> QuerySet[DataSharingAgreement]:
    return DataSharingAgreement.objects.filter(consortium=consortium).select_related("tenant")
