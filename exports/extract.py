"""Reads of one tenant's study for exports, in the current schema only.

The long CSV is PostgreSQL's own COPY of one query that flattens every entry's values
(repeating-group rows and multiple choices included) into one row per item value: the
rows never pass through Python, so the export runs at the speed of COPY and memory stays
flat whatever the study size. Order is fully determined (site, subject, event in
schedule order, occurrence, form, item in form order, group row), so the same data gives
the same bytes.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime
from typing import IO, Any, TypeVar

import structlog
from django.db import transaction
from psycopg2 import sql as pgsql

from config.db import tenant_connection as connection
from ecrf.definition import VALUELESS_TYPES
from ecrf.models import FormDefinition, FormVersion, FormVersionStatus
from exports.records import (
    CellChunk,
    CellItem,
    EntryRecord,
    EventMeta,
    FormMeta,
    StudyData,
    StudyMeta,
    SubjectRecord,
    VisitRecord,
)
from studies.models import ScheduleStatus, ScheduleVersion, Study

log = structlog.get_logger(__name__)

LONG_COLUMNS = ("study", "site", "subject", "event", "occurrence", "visit_date", "form", "form_version",
                "entry_status", "item", "item_row", "value", "missing_code")


# For the transaction of an export run. JIT compiles the big flattening queries anew on
# every run (about 0.15 s, more than it saves on them); the entry ranking sorts narrow rows
# that spill to disk past PostgreSQL's default 4 MB of sort memory on a large study; and
# the planner puts a Memoize cache keyed on each entry's values over the cells of an
# entry, where no two entries ever hit (0 hits in 50,000 at 1M values), hashing for nothing.
TRANSACTION_SETTINGS = "SET LOCAL jit = off; SET LOCAL work_mem = '32MB'; SET LOCAL enable_memoize = off"


@dataclass(frozen=True)
class ExportScope:
    """What one export reads: a study, optionally narrowed to forms (codes), sites (ids)
    and a visit-date range (the visit's completion date, else its target date)."""

    study_id: int
    forms: tuple[str, ...] = ()
    sites: tuple[int, ...] = ()
    date_from: date | None = None
    date_to: date | None = None
    # Set by the export run: the id of its REPEATABLE READ snapshot (pg_export_snapshot),
    # which other connections may import to read the same data in parallel. None inside a
    # caller's transaction (a test's), whose rows another connection could not see.
    snapshot: str | None = None


def _event_order(study_id: int) -> list[tuple[str, int]]:
    """Event codes in the order of the newest published schedule (then any others)."""
    version = (ScheduleVersion.objects.filter(study_id=study_id, status=ScheduleStatus.PUBLISHED)
               .order_by("-number").first())
    codes = [str(raw.get("code")) for raw in (version.events if version else [])]
    return [(code, index) for index, code in enumerate(dict.fromkeys(codes), start=1)]


def _item_specs(study_id: int) -> dict[str, list[dict[str, Any]]]:
    """Form version id -> its value-holding items in the definition's order, as segments:
    {"plain": [codes]} for a run of items outside groups, {"grp": code, "children":
    [codes]} for a repeating group (its cells go row by row, each row's children in the
    group's order). Expanded in this order, the cells need no sort (see _CELLS)."""
    specs: dict[str, list[dict[str, Any]]] = {}
    for version in FormVersion.objects.filter(form__study_id=study_id).only("pk", "definition").order_by("pk"):
        segments: list[dict[str, Any]] = []
        for item in version.definition.get("items") or []:
            if item.get("type") == "group":
                segments.append({"grp": item["code"], "children": [child["code"] for child in item.get("items") or []]})
            elif item.get("type") not in VALUELESS_TYPES:
                if not segments or "plain" not in segments[-1]:
                    segments.append({"plain": []})
                segments[-1]["plain"].append(item["code"])
        specs[str(version.pk)] = segments
    return specs


def event_order_values(study_id: int) -> pgsql.Composable:
    """The study's events in schedule order, as the VALUES of an `event_order(code,
    position)` CTE."""
    return _values(_event_order(study_id), ("text", "int"))


def read_snapshot() -> None:
    """Makes the current transaction (begun, nothing read yet) one REPEATABLE READ, READ
    ONLY snapshot with the export's settings: every read of the run sees the same data."""
    with connection.cursor() as cursor:
        cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        cursor.execute(TRANSACTION_SETTINGS)


def forms_in_scope(scope: ExportScope) -> list[FormDefinition]:
    forms = FormDefinition.objects.filter(study_id=scope.study_id).order_by("code")
    return list(forms.filter(code__in=scope.forms) if scope.forms else forms)


def published_versions(scope: ExportScope) -> dict[str, list[int]]:
    """Form code -> the version numbers entries were made against (for the manifest)."""
    found: dict[str, list[int]] = {}
    for code, number in (FormVersion.objects.filter(form__in=forms_in_scope(scope),
                                                    status=FormVersionStatus.PUBLISHED)
                         .order_by("form__code", "number").values_list("form__code", "number")):
        found.setdefault(code, []).append(number)
    return found


def _values(rows: Sequence[tuple[Any, ...]], types: Sequence[str]) -> pgsql.Composable:
    """A VALUES list (at least one row, so the CTE is never empty)."""
    if not rows:
        rows = [tuple(None for _ in types)]
    rendered = [pgsql.SQL("({})").format(pgsql.SQL(", ").join(
        pgsql.SQL("{}::{}").format(pgsql.Literal(value), pgsql.SQL(kind)) for value, kind in zip(row, types,
                                                                                                  strict=True)))
        for row in rows]
    return pgsql.SQL("VALUES {}").format(pgsql.SQL(", ").join(rendered))


# One row per item value, driven by the definitions' item order (so no sort of the value
# rows is needed beyond each entry's own): entries are ranked once (site, subject, event
# in schedule order, occurrence, form); each entry's items follow in form order, a
# repeating group's cells row by row. Multiple choices are their codes joined by ";", a
# file is its name. An item given a missing-data code instead of a value is a row too.
# An entry with its subject, site, visit, form and version, narrowed to the scope.
ENTRY_JOINS = """  FROM ecrf_entry e
  JOIN studies_subject s ON s.id = e.subject_id
  JOIN sites_site si ON si.id = s.site_id
  JOIN studies_followuptask t ON t.id = e.task_id
  JOIN ecrf_formdefinition f ON f.id = e.form_id
  JOIN ecrf_formversion v ON v.id = e.form_version_id
  LEFT JOIN event_order eo ON eo.code = t.event_code
 WHERE s.study_id = {study} {filters}
"""

# The entries in scope, ranked, without their values: the ranking sorts narrow rows (the
# values, most of an entry's bytes, would make that sort spill to disk on a big study).
_RANKED = """
SELECT e.id, e.status, e.form_version_id,
       {study_code}::text AS study, si.code AS site,
       s.subject_code AS subject, t.event_code AS event,
       t.sequence{as_text} AS occurrence, coalesce(t.completed_on, t.target_date){as_text} AS visit_date,
       f.code AS form, v.number{as_text} AS form_version,
       row_number() OVER (ORDER BY si.code, s.subject_code, coalesce(eo.position, 100000), t.event_code,
                          t.sequence, f.code) AS entry_rank
""" + ENTRY_JOINS

# Each ranked entry (those in {ranks}), in rank order, with its values read by primary key
# (LIMIT 1 keeps it a per-row lookup, so the rank order carries through to the cells).
_RANKED_WITH_VALUES = """(SELECT * FROM (""" + _RANKED + """) ranked WHERE {ranks} ORDER BY entry_rank) c
 CROSS JOIN LATERAL (SELECT x.values, x.missing FROM ecrf_entry x WHERE x.id = c.id LIMIT 1) ev"""  # noqa: S608

# The cells of one entry, in the definition's order with no sort: {specs} maps each form
# version to its segments (see _item_specs), read by key; the segments are expanded in
# array order (WITH ORDINALITY scans in order, a lateral nested loop keeps its outer
# order, UNION ALL keeps its branches' order, and only one branch yields rows for a
# segment). Sorting the million cells of a large study instead cost a quarter of the
# long COPY. A cell is an item with a value or a missing-data code; a group's cells go
# row by row (item_row from 1), a missing code of a group cell is keyed "grp[i].code".
_CELLS = """
       SELECT io.code AS item, NULL::int AS item_row, ev.values -> io.code AS value,
              ev.missing ->> io.code AS missing_code
         FROM jsonb_array_elements_text(seg.s -> 'plain') AS io(code)
        WHERE ev.values ? io.code OR ev.missing ? io.code
       UNION ALL
       SELECT (seg.s ->> 'grp') || '.' || ch.code, r.n::int, r.row_value -> ch.code,
              ev.missing ->> ((seg.s ->> 'grp') || '[' || (r.n - 1) || '].' || ch.code)
         FROM jsonb_array_elements(CASE WHEN jsonb_typeof(ev.values -> (seg.s ->> 'grp')) = 'array'
                                        THEN ev.values -> (seg.s ->> 'grp') ELSE '[]' END)
              WITH ORDINALITY AS r(row_value, n)
        CROSS JOIN LATERAL jsonb_array_elements_text(seg.s -> 'children') AS ch(code)
        WHERE r.row_value ? ch.code OR ev.missing ? ((seg.s ->> 'grp') || '[' || (r.n - 1) || '].' || ch.code)
"""
_SEGMENTS = """jsonb_array_elements(({specs}::jsonb) -> (c.form_version_id::text)) WITH ORDINALITY AS seg(s, n)"""

_LONG_SQL = """
WITH event_order(code, position) AS ({events})
SELECT c.study, c.site, c.subject, c.event, c.occurrence, c.visit_date, c.form, c.form_version,
       c.status AS entry_status, cell.item, cell.item_row,
       CASE jsonb_typeof(cell.value)
         WHEN 'string' THEN cell.value #>> '{{}}'
         WHEN 'array' THEN (SELECT string_agg(x #>> '{{}}', ';' ORDER BY o)
                              FROM jsonb_array_elements(cell.value) WITH ORDINALITY AS a(x, o))
         WHEN 'object' THEN coalesce(cell.value ->> 'name', cell.value::text)
         WHEN 'null' THEN NULL
         ELSE cell.value::text END AS value,
       cell.missing_code
  FROM """ + _RANKED_WITH_VALUES + """
 CROSS JOIN LATERAL """ + _SEGMENTS + """
 CROSS JOIN LATERAL (""" + _CELLS + """) cell
 ORDER BY c.entry_rank
"""  # noqa: S608 (constant fragments; values are bound by psycopg2.sql)

# The manifest's counts: the same cells, counted, without ranking, formatting or order.
_COUNT_SQL = """
WITH event_order(code, position) AS ({events})
SELECT c.form, c.site, count(cell.item)
  FROM (SELECT e.form_version_id, e.values, e.missing, f.code AS form, si.code AS site
""" + ENTRY_JOINS + """) c
 CROSS JOIN LATERAL (SELECT c.values, c.missing) ev
  LEFT JOIN LATERAL (SELECT cell.item FROM """ + _SEGMENTS + """ CROSS JOIN LATERAL (""" + _CELLS + """) cell) cell
    ON true
 GROUP BY c.form, c.site ORDER BY c.form COLLATE "C", c.site COLLATE "C"
"""  # noqa: S608 (constant fragments; values are bound by psycopg2.sql)


def _filters(scope: ExportScope) -> pgsql.Composable:
    """The scope's narrowing conditions on entries (aliases f, s, t of the queries here)."""
    filters: list[pgsql.Composable] = []
    if scope.forms:
        filters.append(pgsql.SQL("AND f.code = ANY({})").format(pgsql.Literal(list(scope.forms))))
    if scope.sites:
        filters.append(pgsql.SQL("AND s.site_id = ANY({})").format(pgsql.Literal(list(scope.sites))))
    if scope.date_from:
        filters.append(pgsql.SQL("AND coalesce(t.completed_on, t.target_date) >= {}").format(
            pgsql.Literal(scope.date_from)))
    if scope.date_to:
        filters.append(pgsql.SQL("AND coalesce(t.completed_on, t.target_date) <= {}").format(
            pgsql.Literal(scope.date_to)))
    return pgsql.SQL(" ").join(filters)


def _format(template: str, scope: ExportScope, ranks: tuple[int, int | None] | None = None,
            as_text: bool = False) -> pgsql.Composable:
    specs = _item_specs(scope.study_id)
    study_code = Study.objects.filter(pk=scope.study_id).values_list("code", flat=True).first() or ""
    return pgsql.SQL(template).format(
        as_text=pgsql.SQL("::text" if as_text else ""),
        ranks=_rank_range(ranks),
        study_code=pgsql.Literal(study_code),
        events=event_order_values(scope.study_id),
        specs=pgsql.Literal(json.dumps(specs, separators=(",", ":"))),
        study=pgsql.Literal(scope.study_id), filters=_filters(scope))


def _rank_range(ranks: tuple[int, int | None] | None) -> pgsql.Composable:
    if ranks is None:
        return pgsql.SQL("true")
    after, up_to = ranks
    if up_to is None:
        return pgsql.SQL("entry_rank > {}").format(pgsql.Literal(after))
    return pgsql.SQL("entry_rank > {} AND entry_rank <= {}").format(pgsql.Literal(after), pgsql.Literal(up_to))


def count_query(scope: ExportScope) -> pgsql.Composable:
    """(form, site, item values) for the manifest."""
    return _format(_COUNT_SQL, scope)


def long_query(scope: ExportScope, ranks: tuple[int, int | None] | None = None, *,
               for_copy: bool = False) -> pgsql.Composable:
    """The query of the long format (LONG_COLUMNS), for COPY or a cursor; with `ranks`
    (after, up to or None), only the entries ranked in that range. `for_copy`: an entry's
    number and date columns become text once per entry, as COPY would write them (the
    same bytes), instead of being formatted again on each of its cells' rows."""
    return _format(_LONG_SQL, scope, ranks, as_text=for_copy)


# Below this many entries a second connection costs more than it saves.
PARALLEL_MIN_ENTRIES = 2000


def long_csv_copy(scope: ExportScope, out: IO[bytes]) -> int:
    """Write the long CSV (header + rows, UTF-8) to `out` with COPY, streaming; returns
    the number of rows (PostgreSQL's own count of the COPY).

    Within an export run (`scope.snapshot` set), a large study is written in two halves
    by entry rank: the second on another connection in the run's snapshot, into a
    temporary file appended after the first. The flattening is most of the COPY's time
    and PostgreSQL runs one query on one core; the halves run on two. Same bytes."""
    entries = _entries_in_scope(scope) if scope.snapshot is not None else 0
    if entries < PARALLEL_MIN_ENTRIES:
        return copy_out(long_query(scope, for_copy=True), out, header=True)
    middle = entries // 2
    with tempfile.TemporaryFile(prefix="suifang-export-tail-", buffering=1 << 20) as tail:
        second = in_snapshot_beside(scope, lambda: copy_out(long_query(scope, (middle, None), for_copy=True), tail,
                                                              header=False))
        try:
            rows = copy_out(long_query(scope, (0, middle), for_copy=True), out, header=True)
        finally:
            # Waited for even when the first half failed: the thread holds a connection.
            rows_after = second.result()
        tail.seek(0)
        shutil.copyfileobj(tail, out, 1 << 20)
    return rows + rows_after


def copy_out(query: pgsql.Composable, out: IO[bytes], *, header: bool) -> int:
    with connection.cursor() as cursor:
        raw = cursor.cursor  # psycopg2's own cursor: copy_expert streams into `out`
        statement = pgsql.SQL("COPY ({}) TO STDOUT WITH (FORMAT csv, HEADER {}, ENCODING 'UTF8')").format(
            query, pgsql.SQL("true" if header else "false"))
        raw.copy_expert(statement.as_string(raw), out, size=1 << 20)
        return int(raw.rowcount)


def _entries_in_scope(scope: ExportScope) -> int:
    """Entries in scope: joined only to what the scope's filters name (joining every
    visit costs more than the count itself on a large study)."""
    joins = ["JOIN studies_subject s ON s.id = e.subject_id"]
    if scope.date_from or scope.date_to:
        joins.append("JOIN studies_followuptask t ON t.id = e.task_id")
    if scope.forms:
        joins.append("JOIN ecrf_formdefinition f ON f.id = e.form_id")
    query = pgsql.SQL("SELECT count(*) FROM ecrf_entry e {} WHERE s.study_id = {} {}").format(
        pgsql.SQL(" ").join(pgsql.SQL(join) for join in joins), pgsql.Literal(scope.study_id), _filters(scope))
    with connection.cursor() as cursor:
        cursor.execute(query.as_string(cursor.cursor))
        return int(cursor.fetchone()[0])


T = TypeVar("T")


def in_snapshot_beside(scope: ExportScope, work: Callable[[], T]) -> Future[T]:
    """Run `work` on a thread with a database connection of its own that reads the export
    run's snapshot (`scope.snapshot`) in this schema; the connection closes after it."""
    assert scope.snapshot is not None
    schema, snapshot = connection.schema_name, scope.snapshot

    def run() -> T:
        try:
            connection.set_schema(schema)
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                cursor.execute("SET TRANSACTION SNAPSHOT %s", [snapshot])
                cursor.execute(TRANSACTION_SETTINGS)
                return work()
        finally:
            connection.close()

    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="export-beside")
    future = executor.submit(run)
    executor.shutdown(wait=False)
    return future


# --- records for the CDISC writers -------------------------------------------------------------
#
# Subjects, visits and entries in one order: subject code by byte ("C" collation, the
# writers compare keys as Python strings), then event in schedule order, occurrence, form.

# Subjects by key; or by USUBJID: site code, "-", subject code (the SDTM datasets' order).
# Both by code point, as Python compares text.
_SUBJECT_ORDER = pgsql.SQL('s.subject_code COLLATE "C"')
_USUBJID_ORDER = pgsql.SQL("(si.code || '-' || s.subject_code) COLLATE \"C\"")

# Entries (of some forms: {forms}, or all) in the subjects' {order}.
_ENTRIES_SQL = """
WITH event_order(code, position) AS ({events})
SELECT s.subject_code, si.code, t.event_code, t.sequence, f.code, v.number, e.status, e.values, e.missing,
       coalesce(t.completed_on, t.target_date), e.updated
""" + ENTRY_JOINS + """ {forms} ORDER BY {order}, coalesce(eo.position, 100000), t.event_code, t.sequence, f.code
"""

_VISITS_SQL = """
WITH event_order(code, position) AS ({events})
SELECT s.subject_code, t.event_code, t.sequence, t.completed_on, t.unscheduled
  FROM studies_followuptask t
  JOIN studies_subject s ON s.id = t.subject_id
  JOIN sites_site si ON si.id = s.site_id
 WHERE s.study_id = {study} AND t.status = 'completed' {task_filters}
 ORDER BY {order}, coalesce((SELECT position FROM event_order eo WHERE eo.code = t.event_code), 100000),
          t.event_code, t.sequence
"""


def _stream(query: pgsql.Composable, *, batch: int = 2000) -> Iterator[tuple[Any, ...]]:
    """Rows of a query through a server-side cursor (the caller holds a transaction)."""
    raw_connection = connection.connection
    with raw_connection.cursor(name=f"export_{id(query):x}") as cursor:
        cursor.itersize = batch
        cursor.execute(query.as_string(raw_connection))
        yield from cursor


def study_meta(scope: ExportScope) -> StudyMeta:
    study = Study.objects.get(pk=scope.study_id)
    version = (ScheduleVersion.objects.filter(study_id=scope.study_id, status=ScheduleStatus.PUBLISHED)
               .order_by("-number").first())
    events = tuple(EventMeta(code=str(raw["code"]), name=str(raw.get("name_en") or raw["code"]),
                             visit_num=float(position), forms=tuple(raw.get("forms") or ()),
                             offset_days=None)
                   for position, raw in enumerate(version.events if version else [], start=1))
    forms = tuple(FormMeta(code=v.form.code, version=v.number, definition=v.definition)
                  for v in FormVersion.objects.filter(form__in=forms_in_scope(scope))
                  .exclude(status=FormVersionStatus.DRAFT).select_related("form").order_by("form__code", "number"))
    return StudyMeta(oid=f"ST.{connection.schema_name}.{study.code}", code=study.code, title=study.title,
                     protocol=study.code, events=events, forms=forms)


def subject_records(scope: ExportScope) -> list[SubjectRecord]:
    from studies.models import Subject

    subjects = Subject.objects.filter(study_id=scope.study_id)
    if scope.sites:
        subjects = subjects.filter(site_id__in=scope.sites)
    records = []
    # Tuples, not model instances (a tenth of a second per 10,000 subjects); the birth
    # date still goes through its field's decryption (values_list applies it).
    for code, status, enrolled, status_date, birth_text, site_code, country, arm in subjects.values_list(
            "subject_code", "status", "enrolment_date", "status_changed_on", "birth_date", "site__code",
            "site__country_region", "arm__name"):
        try:  # an encrypted text field: "YYYY-MM-DD" when given
            birth = date.fromisoformat(birth_text) if birth_text else None
        except ValueError:
            birth = None
        age = None
        if birth is not None and enrolled is not None:
            age = enrolled.year - birth.year - ((enrolled.month, enrolled.day) < (birth.month, birth.day))
        records.append(SubjectRecord(
            subject_key=code, site_code=site_code, status=status, enrolment_date=enrolled, arm=arm or "",
            birth_year=birth.year if birth else None, age=age, country=country or "", status_date=status_date))
    return sorted(records, key=lambda record: record.subject_key)


def study_data(scope: ExportScope, *, snapshot_at: datetime) -> StudyData:
    """The study as records for the CDISC writers (call inside the run's transaction:
    entries and visits stream through server-side cursors)."""
    filters = _filters(scope)
    events = event_order_values(scope.study_id)
    entries_query = pgsql.SQL(_ENTRIES_SQL).format(events=events, study=pgsql.Literal(scope.study_id),
                                                   filters=filters, forms=pgsql.SQL(""), order=_SUBJECT_ORDER)
    visits_query = pgsql.SQL(_VISITS_SQL).format(events=events, study=pgsql.Literal(scope.study_id),
                                                 task_filters=_task_filters(scope), order=_SUBJECT_ORDER)

    return StudyData(study=study_meta(scope), snapshot_at=snapshot_at, subjects=subject_records(scope),
                     visits=_visit_records(visits_query), entries=_entry_records(entries_query),
                     sdtm_source=SqlSdtmSource(scope))


def _task_filters(scope: ExportScope) -> pgsql.Composable:
    """The scope's narrowing conditions on visits (aliases s, t)."""
    return pgsql.SQL(" ").join(
        ([pgsql.SQL("AND s.site_id = ANY({})").format(pgsql.Literal(list(scope.sites)))] if scope.sites else [])
        + ([pgsql.SQL("AND t.completed_on >= {}").format(pgsql.Literal(scope.date_from))] if scope.date_from else [])
        + ([pgsql.SQL("AND t.completed_on <= {}").format(pgsql.Literal(scope.date_to))] if scope.date_to else []))


def _visit_records(query: pgsql.Composable) -> Iterator[VisitRecord]:
    for subject, event, sequence, completed_on, unscheduled in _stream(query):
        yield VisitRecord(subject_key=subject, event_code=event, sequence=sequence, start=completed_on,
                          end=completed_on, unscheduled=unscheduled)


def _entry_records(query: pgsql.Composable) -> Iterator[EntryRecord]:
    """EntryRecords from a query of _ENTRIES_SQL's columns."""
    for (subject, site, event, sequence, form, version, status, values, missing, visit_date,
         updated) in _stream(query):
        yield EntryRecord(subject_key=subject, site_code=site, event_code=event, sequence=sequence,
                          form_code=form, form_version=version, status=status,
                          values=values if isinstance(values, dict) else json.loads(values or "{}"),
                          # Most entries have no missing-data code: no parse for those.
                          missing=missing if isinstance(missing, dict) else
                          ({} if not missing or missing == "{}" else json.loads(missing)),
                          visit_date=visit_date, updated=updated)


# --- the findings cells for SDTM (exports.sdtm_columns) -----------------------------------------
#
# One row per (entry, annotated item) value, and one per missing-data code. A number whose
# SDTM text PostgreSQL can write exactly as the Python path does (see exports.sdtm
# _entry_findings) comes as that text and its float: an integer as it is; a decimal as
# entered, trailing zeros dropped; a decimal with a precision padded to it. Python reads
# a value as a float from jsonb's plain numeric text, so both agree whenever that text
# has at most 15 significant digits (a double then gives the same digits back) and, with
# a precision, no more decimals than it and at most 15 digits in all. Any other value
# (text, code, yes/no, null, a longer number) comes as its JSON for Python to map.
#
# The group's entries are read by key (the reader lists them first), each looked up once
# per annotated item of its form, and each subquery is kept whole (OFFSET 0): flattened,
# PostgreSQL would evaluate the value's text again in every expression that uses it, and
# would scan every entry once per item instead of the group's entries once.
_FINDING_CELLS_SQL = """
WITH spec(version_id, code, idx, prec) AS ({items}),
en AS MATERIALIZED (
  SELECT e.id, e.form_version_id, e.values, e.missing FROM ecrf_entry e WHERE e.id = ANY({entries})
)
SELECT entry, idx,
       CASE WHEN plain THEN CASE WHEN position('.' in t) = 0 THEN t
                                 WHEN prec IS NULL THEN rtrim(rtrim(t, '0'), '.')
                                 ELSE round(t::numeric, prec)::text END END,
       CASE WHEN NOT plain THEN t END,
       NULL::text
  FROM (SELECT entry, idx, prec, t,
               CASE WHEN NOT num THEN false
                    WHEN position('.' in t) = 0 THEN true
                    WHEN prec IS NULL THEN length(t) <= 16
                    WHEN prec < 0 THEN false
                    ELSE length(split_part(ltrim(t, '-'), '.', 1)) + prec <= 15
                         AND length(rtrim(split_part(t, '.', 2), '0')) <= prec END AS plain
          FROM (SELECT entry, idx, prec, jsonb_typeof(v) = 'number' AS num, v::text AS t
                  FROM (SELECT en.id AS entry, sp.idx, sp.prec,
                               CASE jsonb_typeof(en.values) WHEN 'object' THEN en.values -> sp.code END AS v
                          FROM en JOIN spec sp ON sp.version_id = en.form_version_id
                        OFFSET 0) looked
                 WHERE v IS NOT NULL
                OFFSET 0) cell
        OFFSET 0) judged
UNION ALL
SELECT km.id, sp.idx, NULL, NULL, km.value::text
  FROM (SELECT en.id, en.form_version_id, km.key, km.value
          FROM en, jsonb_each(CASE jsonb_typeof(en.missing) WHEN 'object' THEN en.missing END) km
        OFFSET 0) km
  JOIN spec sp ON sp.version_id = km.form_version_id AND sp.code = km.key
"""

# The entries in the datasets' order (USUBJID, i.e. site and subject code, by code point as
# Python compares them), each subject's in the order of StudyData.entries.
_USUBJID_ENTRIES_SQL = """
WITH event_order(code, position) AS ({events})
SELECT e.id, s.subject_code, t.event_code, t.sequence, f.code, v.number,
       coalesce(t.completed_on, t.target_date)::text, coalesce(t.completed_on, t.target_date) - s.enrolment_date
""" + ENTRY_JOINS + """ ORDER BY {order}, coalesce(eo.position, 100000), t.event_code, t.sequence, f.code
"""

# Entries per group of cells (whole subjects; about 8 cells an entry in the benchmark).
GROUP_ENTRIES = 2500
# Connections reading cells while the SDTM build runs: with the one listing the entries,
# both cores work while the build waits for cells.
CELL_READERS = 2
# Groups read beyond those being read (a few MB each): the readers work through the
# build's walk of the subjects, before it asks for the first group.
CELL_GROUPS_AHEAD = 1

# (key, subject, event, occurrence, form, version, visit date, days from enrolment to it)
EntryRow = tuple[int, str, str, int, str, int, "str | None", "int | None"]


class SqlSdtmSource:
    """exports.records.SdtmSource for a study export run, in the current schema."""

    def __init__(self, scope: ExportScope) -> None:
        self.scope = scope
        self._versions = {(code, number): pk for pk, code, number in FormVersion.objects.filter(
            form__study_id=scope.study_id).values_list("pk", "form__code", "number")}
        # The queries' common parts: the schedule's event order, the study, the scope's filters.
        self._base = {"events": event_order_values(scope.study_id),
                      "study": pgsql.Literal(scope.study_id), "filters": _filters(scope)}

    def visits(self) -> Iterator[VisitRecord]:
        return _visit_records(pgsql.SQL(_VISITS_SQL).format(
            events=self._base["events"], study=self._base["study"], task_filters=_task_filters(self.scope),
            order=_USUBJID_ORDER))

    def entries(self, forms: Collection[tuple[str, int]] | None) -> Iterator[EntryRecord]:
        narrowed = pgsql.SQL("")
        if forms is not None:
            versions = [self._versions[key] for key in forms if key in self._versions]
            narrowed = pgsql.SQL("AND e.form_version_id = ANY({}::bigint[])").format(pgsql.Literal(versions))
        return _entry_records(pgsql.SQL(_ENTRIES_SQL).format(forms=narrowed, order=_USUBJID_ORDER, **self._base))

    def chunks(self, items: Sequence[CellItem]) -> Iterator[CellChunk]:
        rows = [(self._versions[(item.form_code, item.form_version)], item.item, item.index, item.precision)
                for item in items if (item.form_code, item.form_version) in self._versions]
        items_sql = _values(rows, ("bigint", "text", "int", "int"))
        entries_query = pgsql.SQL(_USUBJID_ENTRIES_SQL).format(order=_USUBJID_ORDER, **self._base)
        if self.scope.snapshot is None:  # inside the caller's transaction: read when asked, on its connection
            return (_cell_chunk(group, items_sql) for group in _entry_groups(_stream(entries_query)))
        return _CellsAhead(self.scope, entries_query, items_sql)


def _entry_groups(rows: Iterator[EntryRow]) -> Iterator[list[EntryRow]]:
    """The entries in groups of about GROUP_ENTRIES, never splitting a subject."""
    group: list[EntryRow] = []
    for row in rows:
        if len(group) >= GROUP_ENTRIES and row[1] != group[-1][1]:
            yield group
            group = []
        group.append(row)
    if group:
        yield group


def _cell_chunk(group: Sequence[EntryRow], items: pgsql.Composable) -> CellChunk:
    """A group's entries and the cells of their annotated items, read by entry key."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    keys, subjects, events, sequences, forms, versions, dates, days = (
        list(column) for column in zip(*group, strict=True))
    table = copy_table(pgsql.SQL(_FINDING_CELLS_SQL).format(
        items=items, entries=pgsql.SQL("{}::bigint[]").format(pgsql.Literal(keys))),
        {"entry": pa.int64(), "index": pa.int32(), "orres": pa.string(), "raw": pa.string(), "missing": pa.string()})

    def numbers(column: Any, kind: Any) -> Any:
        # From the buffers: Arrow's to_numpy() imports pandas (60 MB, 0.3 s) to do this.
        array = column.combine_chunks()
        size = np.dtype(kind).itemsize
        values = np.frombuffer(array.buffers()[1], dtype=kind, count=len(array), offset=array.offset * size)
        values = values.astype(np.float64 if kind == np.float64 else np.int64)
        if array.null_count:
            valid = np.unpackbits(np.frombuffer(array.buffers()[0], dtype=np.uint8), bitorder="little")
            values[~valid[array.offset:array.offset + len(array)].astype(bool)] = np.nan
        return values

    def texts(name: str) -> Any:
        return np.array(table.column(name).to_pylist(), dtype=object)

    # --STRESN: the plain numbers' float, parsed here (C, correctly rounded, as Python's
    # float() of the value) rather than by PostgreSQL, whose time is the scarcer.
    stresn = pc.cast(table.column("orres"), pa.float64(), memory_pool=pa.system_memory_pool())

    return CellChunk(entry=numbers(table.column("entry"), np.int64), index=numbers(table.column("index"), np.int32),
                     orres=texts("orres"), stresn=numbers(stresn, np.float64), raw=texts("raw"),
                     missing=texts("missing"),
                     entry_key=np.array(keys, dtype=np.int64), entry_subject=subjects, entry_event=events,
                     entry_sequence=sequences, entry_form=forms, entry_version=versions, entry_date=dates,
                     entry_days=days)


class _CellsAhead(Iterator[CellChunk]):
    """The chunks of _entry_groups in order, read beside the caller in the run's snapshot:
    one connection lists the entries into groups, `readers` others read each group's
    cells. At most readers + CELL_GROUPS_AHEAD groups are in hand or waiting at any time
    (memory stays flat). close() (also before the first chunk is asked for) stops the
    threads, and their connections, after the work at hand; a thread's error is raised
    to the caller."""

    def __init__(self, scope: ExportScope, entries_query: pgsql.Composable, items: pgsql.Composable,
                 readers: int = CELL_READERS) -> None:
        import queue
        import threading

        self._items = items
        self._entries_query = entries_query
        self._readers = readers
        self._work: queue.Queue[tuple[int, list[EntryRow]] | None] = queue.Queue()
        self._done: dict[int, tuple[bool, Any]] = {}
        self._ready = threading.Condition()
        self._slots = threading.Semaphore(readers + CELL_GROUPS_AHEAD)
        self._stop = threading.Event()
        self._listed: int | None = None  # the number of groups, once all are listed
        self._failed_at: int | None = None  # the listing failed before this group
        self._next = 0
        self._closed = False
        self._threads = [in_snapshot_beside(scope, self._list_groups)] + [
            in_snapshot_beside(scope, self._read_cells) for _ in range(readers)]

    def _finish(self, number: int, outcome: tuple[bool, Any]) -> None:
        with self._ready:
            self._done[number] = outcome
            self._ready.notify_all()

    def _list_groups(self) -> None:
        count = 0
        try:
            for group in _entry_groups(_stream(self._entries_query)):
                while not self._slots.acquire(timeout=0.1):
                    if self._stop.is_set():
                        return
                if self._stop.is_set():
                    return
                self._work.put((count, group))
                count += 1
        except BaseException as error:  # handed to the caller, which raises it
            with self._ready:
                self._failed_at = count
            self._finish(count, (False, error))
        else:
            with self._ready:  # before the readers can end: the caller then knows where the list ends
                self._listed = count
                self._ready.notify_all()
        finally:
            for _ in range(self._readers):
                self._work.put(None)

    def _read_cells(self) -> None:
        while (task := self._work.get()) is not None:
            number, group = task
            if self._stop.is_set():
                continue
            try:
                self._finish(number, (True, _cell_chunk(group, self._items)))
            except BaseException as error:  # handed to the caller, which raises it
                self._finish(number, (False, error))

    def _take(self, number: int) -> tuple[bool, Any] | None:
        with self._ready:
            while number not in self._done:
                if self._listed is not None and number >= self._listed:
                    return None
                if self._failed_at is not None and number > self._failed_at:
                    return None  # (the listing's error, at _failed_at, was raised before)
                # A thread that ended without handing over what is awaited (its
                # connection or snapshot failed before its work began) raises here.
                listing_over = self._threads[0].done() and self._listed is None and self._failed_at is None
                if listing_over or all(thread.done() for thread in self._threads[1:]):
                    for thread in self._threads:
                        if thread.done():
                            thread.result()
                    raise RuntimeError("The export's reading threads stopped early.")
                self._ready.wait(timeout=0.2)
            return self._done.pop(number)

    def __next__(self) -> CellChunk:
        if self._closed:
            raise StopIteration
        try:
            outcome = self._take(self._next)
        except BaseException:
            self.close()
            raise
        if outcome is None:
            self.close()
            raise StopIteration
        ok, value = outcome
        if not ok:
            self.close()
            raise value
        self._slots.release()
        self._next += 1
        return value

    def _signal_stop(self) -> None:
        self._closed = True
        self._stop.set()
        self._slots.release()  # a lister waiting for a slot sees the stop
        for _ in range(self._readers):
            self._work.put(None)  # readers waiting for work end (also if the lister never ran)

    def close(self) -> None:
        """Stop the threads and wait for them to end (idempotent). A thread's own failure
        after its work (closing its connection) is logged, never raised: it would take the
        place of the build's outcome."""
        if self._closed and all(thread.done() for thread in self._threads):
            return
        if not self._closed:
            self._signal_stop()
        for thread in self._threads:
            error = thread.exception()
            if error is not None:
                log.warning("export.cells_reader_failed", error=type(error).__name__)

    def __del__(self) -> None:
        # Dropped without close(): the threads end after the work at hand (not waited for).
        if not self._closed:
            self._signal_stop()


def copy_table(query: pgsql.Composable, columns: dict[str, Any]) -> Any:
    """A query's rows as an Arrow table, through COPY (CSV) and Arrow's CSV reader: the
    rows never become Python objects on the way."""
    import io

    import pyarrow as pa
    from pyarrow import csv as pa_csv

    buffer = io.BytesIO()
    with connection.cursor() as cursor:
        raw = cursor.cursor
        raw.copy_expert(pgsql.SQL("COPY ({}) TO STDOUT WITH (FORMAT csv)").format(query).as_string(raw), buffer,
                        size=1 << 20)
    size = buffer.tell()
    if not size:  # no rows: Arrow's reader refuses an empty input
        return pa.schema(list(columns.items())).empty_table()
    buffer.seek(0)
    # A NULL is an empty field, an empty text a quoted one (""); only the first is None.
    # One block for the whole input: a row longer than a block cannot be read.
    return pa_csv.read_csv(buffer, read_options=pa_csv.ReadOptions(column_names=list(columns), use_threads=False,
                                                                   block_size=max(1 << 20, size + 1)),
                           memory_pool=pa.system_memory_pool(),
                           convert_options=pa_csv.ConvertOptions(column_types=columns, null_values=[""],
                                                                 strings_can_be_null=True,
                                                                 quoted_strings_can_be_null=False))
