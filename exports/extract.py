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
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import IO, Any

from psycopg2 import sql as pgsql

from config.db import tenant_connection as connection
from ecrf.definition import VALUELESS_TYPES
from ecrf.models import FormDefinition, FormVersion, FormVersionStatus
from studies.models import ScheduleStatus, ScheduleVersion

LONG_COLUMNS = ("study", "site", "subject", "event", "occurrence", "visit_date", "form", "form_version",
                "entry_status", "item", "item_row", "value", "missing_code")


@dataclass(frozen=True)
class ExportScope:
    """What one export reads: a study, optionally narrowed to forms (codes), sites (ids)
    and a visit-date range (the visit's completion date, else its target date)."""

    study_id: int
    forms: tuple[str, ...] = ()
    sites: tuple[int, ...] = ()
    date_from: date | None = None
    date_to: date | None = None


def _event_order(study_id: int) -> list[tuple[str, int]]:
    """Event codes in the order of the newest published schedule (then any others)."""
    version = (ScheduleVersion.objects.filter(study_id=study_id, status=ScheduleStatus.PUBLISHED)
               .order_by("-number").first())
    codes = [str(raw.get("code")) for raw in (version.events if version else [])]
    return [(code, index) for index, code in enumerate(dict.fromkeys(codes), start=1)]


def _item_specs(study_id: int) -> dict[str, list[dict[str, Any]]]:
    """Form version id -> its value-holding items in the definition's order: a group child
    sorts at its group's place (then row by row, then by its own place in the group)."""
    specs: dict[str, list[dict[str, Any]]] = {}
    for version in FormVersion.objects.filter(form__study_id=study_id).only("pk", "definition").order_by("pk"):
        items: list[dict[str, Any]] = []
        for position, item in enumerate(version.definition.get("items") or [], start=1):
            if item.get("type") == "group":
                items += [{"grp": item["code"], "code": child["code"], "grp_position": position,
                           "position": child_position}
                          for child_position, child in enumerate(item.get("items") or [], start=1)]
            elif item.get("type") not in VALUELESS_TYPES:
                items.append({"grp": "", "code": item["code"], "grp_position": position, "position": 0})
        specs[str(version.pk)] = items
    return specs


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
_SCOPED = """
SELECT e.id, e.values, e.missing, e.status, e.form_version_id,
       st.code AS study, si.code AS site, s.subject_code AS subject, t.event_code AS event,
       t.sequence AS occurrence, coalesce(t.completed_on, t.target_date) AS visit_date,
       f.code AS form, v.number AS form_version,
       row_number() OVER (ORDER BY si.code, s.subject_code, coalesce(eo.position, 100000), t.event_code,
                          t.sequence, f.code) AS entry_rank
  FROM ecrf_entry e
  JOIN studies_subject s ON s.id = e.subject_id
  JOIN studies_study st ON st.id = s.study_id
  JOIN sites_site si ON si.id = s.site_id
  JOIN studies_followuptask t ON t.id = e.task_id
  JOIN ecrf_formdefinition f ON f.id = e.form_id
  JOIN ecrf_formversion v ON v.id = e.form_version_id
  LEFT JOIN event_order eo ON eo.code = t.event_code
 WHERE s.study_id = {study} {filters}
"""

# {specs}: {"<form version id>": [{"grp", "code", "grp_position", "position"}, ...]}: each
# entry reads its own version's items (a key lookup), whatever the number of forms.
_ITEMS_OF_ENTRY = ("jsonb_to_recordset(({specs}::jsonb) -> (c.form_version_id::text)) "
                   "AS io(grp text, code text, grp_position int, position int)")

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
  FROM (""" + _SCOPED + """ ORDER BY entry_rank) c
 CROSS JOIN LATERAL (
       SELECT io.code AS item, NULL::int AS item_row, c.values -> io.code AS value,
              c.missing ->> io.code AS missing_code, io.grp_position, 0::bigint AS row_n, io.position
         FROM """ + _ITEMS_OF_ENTRY + """
        WHERE io.grp = '' AND (c.values ? io.code OR c.missing ? io.code)
       UNION ALL
       SELECT io.grp || '.' || io.code, r.n::int, r.row_value -> io.code,
              c.missing ->> (io.grp || '[' || (r.n - 1) || '].' || io.code), io.grp_position, r.n, io.position
         FROM """ + _ITEMS_OF_ENTRY + """
        CROSS JOIN LATERAL jsonb_array_elements(CASE WHEN jsonb_typeof(c.values -> io.grp) = 'array'
                                                     THEN c.values -> io.grp ELSE '[]' END)
              WITH ORDINALITY AS r(row_value, n)
        WHERE io.grp <> '' AND (r.row_value ? io.code OR c.missing ? (io.grp || '[' || (r.n - 1) || '].' || io.code))
       ) cell
 ORDER BY c.entry_rank, cell.grp_position, cell.row_n, cell.position
"""  # noqa: S608 (constant fragments; values are bound by psycopg2.sql)

# The manifest's counts: the same cells, counted, without formatting or order.
_COUNT_SQL = """
WITH event_order(code, position) AS ({events})
SELECT c.form, c.site, sum(
         (SELECT count(*) FROM """ + _ITEMS_OF_ENTRY + """
           WHERE io.grp = '' AND (c.values ? io.code OR c.missing ? io.code))
       + (SELECT count(*) FROM """ + _ITEMS_OF_ENTRY + """
           CROSS JOIN LATERAL jsonb_array_elements(CASE WHEN jsonb_typeof(c.values -> io.grp) = 'array'
                                                        THEN c.values -> io.grp ELSE '[]' END)
                 WITH ORDINALITY AS r(row_value, n)
          WHERE io.grp <> ''
            AND (r.row_value ? io.code OR c.missing ? (io.grp || '[' || (r.n - 1) || '].' || io.code))))
  FROM (""" + _SCOPED + """) c
 GROUP BY c.form, c.site ORDER BY c.form, c.site
"""  # noqa: S608 (constant fragments; values are bound by psycopg2.sql)


def _format(template: str, scope: ExportScope) -> pgsql.Composable:
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
    return pgsql.SQL(template).format(
        events=_values(_event_order(scope.study_id), ("text", "int")),
        specs=pgsql.Literal(json.dumps(_item_specs(scope.study_id), separators=(",", ":"))),
        study=pgsql.Literal(scope.study_id), filters=pgsql.SQL(" ").join(filters))


def count_query(scope: ExportScope) -> pgsql.Composable:
    """(form, site, item values) for the manifest."""
    return _format(_COUNT_SQL, scope)


def long_query(scope: ExportScope) -> pgsql.Composable:
    """The query of the long format (LONG_COLUMNS), for COPY or a cursor."""
    return _format(_LONG_SQL, scope)


def long_csv_copy(scope: ExportScope, out: IO[bytes]) -> int:
    """Write the long CSV (header + rows, UTF-8) to `out` with COPY, streaming; returns
    the number of rows (PostgreSQL's own count of the COPY)."""
    query = long_query(scope)
    with connection.cursor() as cursor:
        raw = cursor.cursor  # psycopg2's own cursor: copy_expert streams into `out`
        statement = pgsql.SQL("COPY ({}) TO STDOUT WITH (FORMAT csv, HEADER true, ENCODING 'UTF8')").format(query)
        raw.copy_expert(statement.as_string(raw), out, size=1 << 20)
        return int(raw.rowcount)


