"""Writes and integrity check of the eCRF audit trail (docs/adr/0007-audit-trail.md).

- `audit_record_many(rows=...)` appends a whole form save (or any batch) with ONE
  multi-row INSERT and one update of the chain head, under a per-schema advisory lock
  held until commit. Call it inside the transaction that makes the change, as its LAST
  write: every other append in this tenant waits for that commit.
- `audit_record(...)` is the same for one row.
- `audit_commit_with(rows=..., preceded_by=...)` sends writes and their append as one
  implicit transaction, outside any open one (a form's first save).
- `audit_partitions_ensure(months_ahead=...)` creates the coming monthly partitions
  (beat runs it daily in every tenant: ecrf.tasks).
- `audit_chain_verify()` recomputes the hash chain of the current schema and lists every
  changed, removed and inserted row (`manage.py verify_audit`).

The chain itself (canonical serialisation, hashing, seq numbering) is computed inside
PostgreSQL by the functions of ecrf/migrations/0001_audit_trail.py, so that every writer
and the verifier hash exactly the stored values.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

import structlog
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.utils.translation import gettext as _

from config.db import tenant_connection as connection
from config.errors import DomainError
from ecrf.models_audit import AuditAction, AuditSource

log = structlog.get_logger(__name__)

GENESIS_HASH = bytes(32)
MAX_ITEM_PATH = 200
MAX_DETAIL_BYTES = 4096
MAX_BATCH = 10_000
MAX_MONTHS_AHEAD = 36
_TEXT_LIMITS = {"item": MAX_ITEM_PATH, "event_code": 100, "form_code": 100, "reason": 2000,
                "user_email": 254, "user_name": 300}


# --- appending --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class AuditActor:
    """Who did it, as they were at that instant (the snapshot outlives the account).
    `user_id` is None for a patient answering by link (source "epro")."""

    user_id: int | None
    email: str = ""
    name: str = ""

    @classmethod
    def of(cls, user: Any, *, display_name: str = "") -> AuditActor:
        """From a User (or None / an anonymous user). Pass the tenant's display name of
        the member: the global full name is not shown to a tenant (it may come from
        another organisation)."""
        if user is None or not getattr(user, "is_authenticated", False):
            return cls(user_id=None, email="", name=display_name)
        return cls(user_id=int(user.pk), email=str(user.email or ""), name=display_name)

    @classmethod
    def of_membership(cls, membership: Any) -> AuditActor:
        return cls.of(membership.user, display_name=str(getattr(membership, "display_name", "") or ""))


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One audit row to append. `old` / `new` are JSON values; None means "no value"
    (before a creation, after a removal). `detail` is a small JSON object."""

    action: str
    source: str
    actor: AuditActor
    subject_id: int | None = None
    entry_id: int | None = None
    event_code: str = ""
    form_code: str = ""
    form_version: int | None = None
    item: str = ""
    old: Any = None
    new: Any = None
    reason: str = ""
    detail: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class AuditAppended:
    id: int
    seq: int
    at: datetime
    hash: str  # hex


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, Mapping):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_nul(v) for v in value)
    return False


def _json(value: Any, *, label: str, problems: dict[str, list[str]]) -> Any:
    """The value as it will be stored (a JSON round trip), or None after recording a problem."""
    # Most item values are one number or one text: stored as they are, no round trip.
    if value is None or type(value) in (bool, int) or (type(value) is float and math.isfinite(value)) or (
            type(value) is str and "\x00" not in value):
        return value
    if _has_nul(value):
        problems.setdefault(label, []).append(_("Text may not contain NUL characters."))
        return None
    try:
        return json.loads(json.dumps(value, cls=DjangoJSONEncoder, allow_nan=False))
    except (TypeError, ValueError):
        problems.setdefault(label, []).append(_("The value cannot be stored as JSON."))
        return None


_ACTIONS = frozenset(AuditAction.values)  # .values builds a list on every read
_SOURCES = frozenset(AuditSource.values)


def _row_payload(index: int, row: AuditRow, problems: dict[str, list[str]]) -> dict[str, Any]:
    def bad(name: str, message: str) -> None:
        problems.setdefault(f"rows[{index}].{name}", []).append(message)

    if row.action not in _ACTIONS:
        bad("action", _("Unknown audit action %(value)r.") % {"value": row.action})
    if row.source not in _SOURCES:
        bad("source", _("Unknown audit source %(value)r.") % {"value": row.source})
    texts = {"item": row.item, "event_code": row.event_code, "form_code": row.form_code, "reason": row.reason,
             "user_email": row.actor.email, "user_name": row.actor.name}
    for name, text in texts.items():
        if not isinstance(text, str):
            bad(name, _("Must be text."))
        elif "\x00" in text:
            bad(name, _("Text may not contain NUL characters."))
        elif name in _TEXT_LIMITS and len(text) > _TEXT_LIMITS[name]:
            bad(name, _("At most %(n)d characters.") % {"n": _TEXT_LIMITS[name]})
    # Most rows (every item change of a save) carry no detail: nothing to round-trip.
    detail = _json(dict(row.detail), label=f"rows[{index}].detail", problems=problems) if row.detail else {}
    if detail and len(json.dumps(detail)) > MAX_DETAIL_BYTES:
        bad("detail", _("The detail is limited to %(n)d bytes.") % {"n": MAX_DETAIL_BYTES})
    for name in ("user_id", "subject_id", "entry_id", "form_version"):
        value = row.actor.user_id if name == "user_id" else getattr(row, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            bad(name, _("Must be a whole number."))
    payload: dict[str, Any] = {
        "action": row.action, "source": row.source,
        "user_id": row.actor.user_id, "user_email": row.actor.email, "user_name": row.actor.name,
        "subject_id": row.subject_id, "entry_id": row.entry_id, "event_code": row.event_code,
        "form_code": row.form_code, "form_version": row.form_version, "item": row.item,
        "reason": row.reason, "detail": detail if detail is not None else {},
    }
    # Absent key = SQL NULL ("no value"); a JSON null inside a structure is kept as is.
    for key, value in (("old_value", row.old), ("new_value", row.new)):
        if value is not None:
            payload[key] = _json(value, label=f"rows[{index}].{key.removesuffix('_value')}", problems=problems)
    return payload


def _require_tenant_transaction(what: str) -> None:
    if getattr(connection, "schema_name", "public") == "public":
        raise RuntimeError(f"{what} runs in a tenant schema (the audit trail is per tenant)")
    if not connection.in_atomic_block:
        raise RuntimeError(f"{what} must run inside the transaction that makes the change it records")


Statement = tuple[str, Sequence[Any]]


def audit_record_many(*, rows: Sequence[AuditRow], preceded_by: Sequence[Statement] = (),
                      followed_by: Sequence[Statement] = ()) -> list[AuditAppended]:
    """Append `rows`, in order, to this tenant's audit trail: one INSERT, one head update.

    Must run inside the caller's transaction (the one that makes the change), as its last
    write: from here until commit, every other append in this tenant waits.
    `preceded_by`: the caller's last other writes, (sql, params) whose results are not
    needed; they are sent in the same round trip and run first (a form save completing
    its visit), which saves a round trip on the hottest write path. `followed_by`: checks
    that must run once the append holds the audit lock (then nothing is returned; with no
    rows there is no append and no lock: the caller's writes and checks still run)."""
    _require_tenant_transaction("audit_record_many")
    return _append(rows, preceded_by, followed_by)


def audit_commit_with(*, rows: Sequence[AuditRow], preceded_by: Sequence[Statement],
                      followed_by: Sequence[Statement] = ()) -> list[AuditAppended]:
    """The writes `preceded_by`, the append of `rows` and the checks `followed_by` as ONE
    query of several statements, outside any open transaction: PostgreSQL runs such a
    query as one implicit transaction and commits it at its end, so the change and its
    audit land together or not at all (a failing statement rolls back the ones before
    it). For a change that needs nothing read under a lock first (a form's first save);
    one round trip instead of BEGIN, the writes and COMMIT."""
    if getattr(connection, "schema_name", "public") == "public":
        raise RuntimeError("audit_commit_with runs in a tenant schema (the audit trail is per tenant)")
    if connection.in_atomic_block or not connection.get_autocommit():
        raise RuntimeError("audit_commit_with must run outside a transaction: it is its own")
    if not rows or not preceded_by:
        raise RuntimeError("audit_commit_with records a change: writes and their audit rows")
    return _append(rows, preceded_by, followed_by)


def audit_lock() -> None:
    """Take this tenant's audit lock now, until the transaction ends: for a change that
    reads what earlier appends wrote and must not miss one (signing a casebook)."""
    _require_tenant_transaction("audit_lock")
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(ecrf_audit_lock_key())")


def _append(rows: Sequence[AuditRow], preceded_by: Sequence[Statement],
            followed_by: Sequence[Statement]) -> list[AuditAppended]:
    if len(rows) > MAX_BATCH:
        raise DomainError("audit_invalid", _("At most %(n)d audit rows at once.") % {"n": MAX_BATCH})
    problems: dict[str, list[str]] = {}
    payload = [_row_payload(index, row, problems) for index, row in enumerate(rows)]
    if problems:
        raise DomainError("audit_invalid", _("The audit record is not valid."), fields=problems)
    # Nothing to audit (a save that changed nothing): the caller's writes still run.
    append: list[Statement] = [("SELECT id, seq, at, encode(hash, 'hex') FROM ecrf_audit_append(%s::jsonb)",
                                [json.dumps(payload, ensure_ascii=False)])] if payload else []
    statements = [*preceded_by, *append, *followed_by]
    if not statements:
        return []
    with connection.cursor() as cursor:
        if len(statements) == 1:
            cursor.execute(*statements[0])
        else:
            # Bound client-side by psycopg2 (as every execute is), then one query string
            # of several statements: the result read is the last one's.
            cursor.execute(b"; ".join(cursor.mogrify(sql, params) for sql, params in statements)
                           .decode())  # Django sets client_encoding UTF8
        if not append or followed_by:
            return []
        return [AuditAppended(id=r[0], seq=r[1], at=r[2], hash=r[3]) for r in cursor.fetchall()]


def audit_record(
    *,
    action: str,
    source: str,
    actor: AuditActor,
    subject_id: int | None = None,
    entry_id: int | None = None,
    event_code: str = "",
    form_code: str = "",
    form_version: int | None = None,
    item: str = "",
    old: Any = None,
    new: Any = None,
    reason: str = "",
    detail: Mapping[str, Any] | None = None,
) -> AuditAppended:
    """Append one row (see audit_record_many)."""
    row = AuditRow(action=action, source=source, actor=actor, subject_id=subject_id, entry_id=entry_id,
                   event_code=event_code, form_code=form_code, form_version=form_version, item=item,
                   old=old, new=new, reason=reason, detail=detail)
    return audit_record_many(rows=[row])[0]


# --- partitions -------------------------------------------------------------------------

def audit_partitions_ensure(*, months_ahead: int = 3) -> list[str]:
    """Create this month's partition and the next `months_ahead` ones where missing, in
    the current tenant schema; returns the names created. A month whose rows already sit
    in the DEFAULT partition is skipped (logged): they stay there, still correct."""
    if getattr(connection, "schema_name", "public") == "public":
        raise RuntimeError("audit_partitions_ensure runs in a tenant schema")
    if isinstance(months_ahead, bool) or not isinstance(months_ahead, int) or not 0 <= months_ahead <= MAX_MONTHS_AHEAD:
        raise DomainError("audit_invalid", _("months_ahead must be between 0 and %(n)d.") % {"n": MAX_MONTHS_AHEAD},
                          fields={"months_ahead": [_("Out of range.")]})
    connection.ensure_connection()
    raw = connection.connection  # psycopg2: RAISE WARNING arrives in .notices (last 50 kept)
    raw.notices.clear()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT ecrf_audit_partitions_ensure(%s)", [months_ahead])
        created = [name for (name,) in cursor.fetchall()]
    for notice in list(raw.notices):
        if "audit partition" in notice:
            log.warning("audit.partition_skipped", notice=notice.strip(), schema=connection.schema_name)
    if created:
        log.info("audit.partitions_created", partitions=created, schema=connection.schema_name)
    return created


# --- verification -----------------------------------------------------------------------

CHANGED = "changed"
REMOVED = "removed"
INSERTED = "inserted"


@dataclass(frozen=True, slots=True)
class AuditProblem:
    kind: str  # changed / removed / inserted
    seq: int | None
    id: int | None
    message: str

    def __str__(self) -> str:
        where = f"seq {self.seq}" if self.seq is not None else "chain"
        if self.id is not None:
            where += f" (id {self.id})"
        return f"{self.kind.upper()}: {where}: {self.message}"


@dataclass(slots=True)
class AuditChainReport:
    schema: str
    rows: int = 0
    head_seq: int = 0
    last_seq: int = 0
    problems: list[AuditProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class _Row(NamedTuple):
    seq: int
    id: int
    prev_hash: bytes
    hash: bytes
    content_ok: bool


_VERIFY_SQL = """
    SELECT e.seq, e.id, e.prev_hash, e.hash, ecrf_audit_row_hash(e) = e.hash
      FROM ecrf_auditevent e
     ORDER BY e.seq, e.id
"""


def _stream(batch_size: int) -> Iterator[_Row]:
    cursor = connection.chunked_cursor()
    try:
        cursor.execute(_VERIFY_SQL)
        while True:
            chunk = cursor.fetchmany(batch_size)
            if not chunk:
                return
            for seq, id_, prev, hash_, ok in chunk:
                yield _Row(seq, id_, bytes(prev), bytes(hash_), ok)
    finally:
        cursor.close()


def _head() -> tuple[int, bytes] | None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT last_seq, last_hash FROM ecrf_auditchainhead WHERE id = 1")
        row = cursor.fetchone()
    return None if row is None else (int(row[0]), bytes(row[1]))


def _pick(group: list[_Row], expected_prev: bytes, next_prevs: set[bytes]) -> _Row:
    """Among rows sharing one seq, the one that belongs to the chain: linked to the
    previous row, intact, and the one the next row links to."""
    def score(row: _Row) -> tuple[int, int]:
        return (int(row.prev_hash == expected_prev) + int(row.content_ok) + 2 * int(row.hash in next_prevs), -row.id)

    return max(group, key=score)


def _check(report: AuditChainReport, rows: Iterator[_Row], head: tuple[int, bytes] | None) -> None:
    """Walk the rows in (seq, id) order. Rows sharing a seq are judged once the next seq
    is known (the real one is the row the next row links to)."""
    problems = report.problems
    head_seq, head_hash = head if head is not None else (0, GENESIS_HASH)
    if head is None:
        problems.append(AuditProblem(REMOVED, None, None, "the chain head row is missing"))
    expected_seq, expected_prev = 1, GENESIS_HASH
    pending: list[_Row] | None = None  # the previous seq's rows, not judged yet
    pending_gap = False  # rows were missing just before `pending`

    def settle(group: list[_Row], next_prevs: set[bytes], gap: bool) -> None:
        nonlocal expected_prev
        chosen = group[0] if len(group) == 1 else _pick(group, expected_prev, next_prevs)
        if len(group) > 1:
            for row in group:
                if row is not chosen:
                    problems.append(AuditProblem(INSERTED, row.seq, row.id, "a second row with this seq (forged)"))
        if not chosen.content_ok:
            problems.append(AuditProblem(CHANGED, chosen.seq, chosen.id,
                                         "content does not match its hash (changed after it was written)"))
        if chosen.prev_hash != expected_prev and not gap:
            problems.append(AuditProblem(
                INSERTED, chosen.seq, chosen.id,
                "prev_hash does not match the previous row's hash (forged row, or the previous row re-hashed)"))
        expected_prev = chosen.hash

    def close(group: list[_Row]) -> None:
        nonlocal pending, pending_gap, expected_seq
        seq = group[0].seq
        gap = seq > expected_seq
        if pending is not None:
            settle(pending, {r.prev_hash for r in group} if len(pending) > 1 else set(), pending_gap)
        if gap:
            problems.append(AuditProblem(REMOVED, expected_seq, None,
                                         f"seq {_span(expected_seq, seq - 1)} missing (gap)"))
        pending, pending_gap = group, gap
        expected_seq = seq + 1

    beyond: list[_Row] = []
    current: list[_Row] = []
    count = 0
    for row in rows:
        count += 1
        if row.seq > head_seq:
            beyond.append(row)
        elif not current or row.seq == current[0].seq:
            current.append(row)
        else:
            close(current)
            current = [row]
    if current:
        close(current)
    if pending is not None:
        settle(pending, {head_hash} if expected_seq - 1 == head_seq else set(), pending_gap)
    report.rows, report.last_seq, report.head_seq = count, expected_seq - 1, head_seq
    if expected_seq - 1 < head_seq:
        problems.append(AuditProblem(REMOVED, expected_seq, None,
                                     f"seq {_span(expected_seq, head_seq)} missing: the chain ends before "
                                     f"its head (#{head_seq})"))
    elif head_seq and expected_prev != head_hash:
        problems.append(AuditProblem(CHANGED, head_seq, None, "the last row's hash differs from the chain head"))
    for row in beyond:
        problems.append(AuditProblem(INSERTED, row.seq, row.id, f"row beyond the chain head (#{head_seq})"))


def _span(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}..{last}"


def audit_chain_verify(*, batch_size: int = 20_000) -> AuditChainReport:
    """Recompute the current schema's chain from its stored rows and list its problems.
    Read in one snapshot (REPEATABLE READ when it owns the transaction), so appends that
    commit meanwhile are simply not seen. Streams: memory does not grow with the table."""
    schema = str(getattr(connection, "schema_name", "public"))
    if schema == "public":
        raise RuntimeError("audit_chain_verify runs in a tenant schema")
    report = AuditChainReport(schema=schema)
    if connection.in_atomic_block:
        _check(report, _stream(batch_size), _head())
        return report
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        _check(report, _stream(batch_size), _head())
    return report
