"""Reads of one tenant's study for exports, in the current schema only.

The long CSV is PostgreSQL's own COPY of one query that flattens every entry's values
(repeating-group rows and multiple choices included) into one row per item value: the
rows never pass through Python, so the export runs at the speed of COPY and memory stays
flat whatever the study size. Order is fully determined (site, subject, event in
schedule order, occurrence, form, item in form order, group row), so the same data gives
the same bytes.
"""

from __future__ import annotations

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


def _item_order(study_id: int) -> list[tuple[int, str, int]]:
    """(form version id, item code, position) for every item of every form version of the
    study, group children after their group, in the definition's order."""
    rows: list[tuple[int, str, int]] = []
    for version in FormVersion.objects.filter(form__study_id=study_id).only("pk", "definition"):
        position = 0
        for item in version.definition.get("items") or []:
            position += 1
            if item.get("type") not in VALUELESS_TYPES or item.get("type") == "group":
                rows.append((version.pk, str(item["code"]), position))
            for child in item.get("items") or []:
                position += 1
                rows.append((version.pk, f"{item['code']}.{child['code']}", position))
    return rows


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


# One row per item value. Repeating groups (arrays of row objects) become one row per
# child value with its row number; multiple choices are their codes joined by ";"; a file
# is its name. Items given a missing-data code instead of a value are rows too.
_LONG_SQL = """
WITH event_order(code, position) AS ({events}),
     item_order(form_version_id, path, position) AS ({items}),
     scoped AS (
       SELECT e.id, e.values, e.missing, e.status, e.form_version_id,
              st.code AS study, si.code AS site, s.subject_code AS subject, t.event_code AS event,
              t.sequence AS occurrence, coalesce(t.completed_on, t.target_date) AS visit_date,
              f.code AS form, v.number AS form_version, coalesce(eo.position, 100000) AS event_position
         FROM ecrf_entry e
         JOIN studies_subject s ON s.id = e.subject_id
         JOIN studies_study st ON st.id = s.study_id
         JOIN sites_site si ON si.id = s.site_id
         JOIN studies_followuptask t ON t.id = e.task_id
         JOIN ecrf_formdefinition f ON f.id = e.form_id
         JOIN ecrf_formversion v ON v.id = e.form_version_id
         LEFT JOIN event_order eo ON eo.code = t.event_code
        WHERE s.study_id = {study} {filters}
     ),
     flat AS (
       SELECT c.id, kv.key AS item, NULL::int AS item_row, kv.key AS order_path, kv.value
         FROM scoped c, jsonb_each(c.values) kv
        WHERE NOT (jsonb_typeof(kv.value) = 'array' AND jsonb_typeof(kv.value -> 0) = 'object')
       UNION ALL
       SELECT c.id, kv.key || '.' || cell.key, r.n::int, kv.key || '.' || cell.key, cell.value
         FROM scoped c, jsonb_each(c.values) kv,
              jsonb_array_elements(kv.value) WITH ORDINALITY AS r(row_value, n), jsonb_each(r.row_value) cell
        WHERE jsonb_typeof(kv.value) = 'array' AND jsonb_typeof(kv.value -> 0) = 'object'
       UNION ALL
       SELECT c.id, regexp_replace(m.key, '\\[[0-9]+\\]', ''),
              nullif(substring(m.key FROM '\\[([0-9]+)\\]'), '')::int + 1,
              regexp_replace(m.key, '\\[[0-9]+\\]', ''), NULL
         FROM scoped c, jsonb_each_text(c.missing) m
     )
SELECT c.study, c.site, c.subject, c.event, c.occurrence, c.visit_date, c.form, c.form_version,
       c.status AS entry_status,
       fl.item, fl.item_row,
       CASE jsonb_typeof(fl.value)
         WHEN 'string' THEN fl.value #>> '{{}}'
         WHEN 'array' THEN (SELECT string_agg(x #>> '{{}}', ';' ORDER BY o)
                              FROM jsonb_array_elements(fl.value) WITH ORDINALITY AS a(x, o))
         WHEN 'object' THEN coalesce(fl.value ->> 'name', fl.value::text)
         WHEN 'null' THEN NULL
         ELSE fl.value::text END AS value,
       c.missing ->> (CASE WHEN fl.item_row IS NULL THEN fl.item
                          ELSE split_part(fl.item, '.', 1) || '[' || (fl.item_row - 1) || '].'
                               || split_part(fl.item, '.', 2) END) AS missing_code
  FROM flat fl
  JOIN scoped c ON c.id = fl.id
  LEFT JOIN item_order io ON io.form_version_id = c.form_version_id AND io.path = fl.order_path
 WHERE fl.value IS NOT NULL OR c.missing ? (CASE WHEN fl.item_row IS NULL THEN fl.item
                          ELSE split_part(fl.item, '.', 1) || '[' || (fl.item_row - 1) || '].'
                               || split_part(fl.item, '.', 2) END)
 ORDER BY c.site, c.subject, c.event_position, c.event, c.occurrence, c.form, coalesce(io.position, 100000),
          fl.item, fl.item_row NULLS FIRST
"""


def long_query(scope: ExportScope) -> pgsql.Composable:
    """The query of the long format (LONG_COLUMNS), for COPY or a cursor."""
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
    return pgsql.SQL(_LONG_SQL).format(
        events=_values(_event_order(scope.study_id), ("text", "int")),
        items=_values(_item_order(scope.study_id), ("int", "text", "int")),
        study=pgsql.Literal(scope.study_id), filters=pgsql.SQL(" ").join(filters))


def long_csv_copy(scope: ExportScope, out: IO[bytes]) -> None:
    """Write the long CSV (header + rows, UTF-8) to `out` with COPY, streaming."""
    query = long_query(scope)
    with connection.cursor() as cursor:
        raw = cursor.cursor  # psycopg2's own cursor: copy_expert streams into `out`
        statement = pgsql.SQL("COPY ({}) TO STDOUT WITH (FORMAT csv, HEADER true, ENCODING 'UTF8')").format(query)
        raw.copy_expert(statement.as_string(raw), out, size=1 << 20)


def long_count(scope: ExportScope) -> int:
    with connection.cursor() as cursor:
        raw = cursor.cursor
        cursor.execute(pgsql.SQL("SELECT count(*) FROM ({}) q").format(long_query(scope)).as_string(raw))
        return int(cursor.fetchone()[0])
