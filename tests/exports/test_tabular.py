"""Tabular writers (exports.tabular): Parquet and XLSX of the long rows, and the wide CSV
ZIP, each read back and compared with the long CSV that PostgreSQL's COPY writes for the
same scope; byte-identical reruns; the XLSX sheet split; text that looks like a formula;
text Excel cannot hold; flat memory on a larger study written with SQL."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import tempfile
import tracemalloc
import zipfile
from collections.abc import Callable
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from django.db import connection
from openpyxl import load_workbook

from exports import extract, tabular
from tests.ecrf.test_entries import GOOD, crf  # noqa: F401 (fixture)

pytestmark = pytest.mark.django_db

Writer = Callable[[extract.ExportScope, IO[bytes]], int]
# The entry-level columns in the long CSV; csv_wide names them in upper case.
LONG_IDS = ("study", "site", "subject", "event", "occurrence", "visit_date", "form", "form_version", "entry_status")


@pytest.fixture
def exported(crf, world, in_tenant):  # noqa: F811
    """One saved VITALS entry at D7: two medication rows (one with a comma), a missing code
    for weight, and a note with markup and Chinese text. The test runs in alpha's schema."""
    values = {**GOOD, "meds": [{"med_name": "Aspirin", "med_dose": 100},
                               {"med_name": "Metformin, XR", "med_dose": 500}]}
    values.pop("weight")
    saved = crf["coordinator"].put(crf["url"], {"values": values, "missing": {"weight": "UNK"}, "version": 0},
                                   format="json")
    assert saved.status_code == 200, saved.content
    in_tenant(world.alpha)
    return {**crf, "scope": extract.ExportScope(study_id=crf["study"])}


def _run(writer: Writer, scope: extract.ExportScope) -> tuple[bytes, int]:
    out = io.BytesIO()
    rows = writer(scope, out)
    return out.getvalue(), rows


def _long_csv(scope: extract.ExportScope) -> list[dict[str, str]]:
    """The reference: the long CSV of COPY, parsed here."""
    out = io.BytesIO()
    extract.long_csv_copy(scope, out)
    return list(csv.DictReader(io.StringIO(out.getvalue().decode("utf-8"))))


def _as_csv_text(value: Any) -> str:
    """A read-back value as the long CSV writes it."""
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return value.date().isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


def _set_values(change: dict[str, Any]) -> None:
    """Merge `change` into every entry's values with SQL (bypassing validation on purpose)."""
    with connection.cursor() as cursor:
        cursor.execute("UPDATE ecrf_entry SET values = values || %s::jsonb", [json.dumps(change)])


# --- Parquet ---------------------------------------------------------------------------

def test_parquet_holds_the_long_rows_with_typed_columns(exported):
    scope = exported["scope"]
    body, count = _run(tabular.parquet_long, scope)
    table = pq.read_table(io.BytesIO(body))
    expected = _long_csv(scope)
    assert count == table.num_rows == len(expected) > 10
    assert table.column_names == list(extract.LONG_COLUMNS)
    types = {field.name: field.type for field in table.schema}
    assert types["occurrence"] == types["form_version"] == types["item_row"] == pa.int32()
    assert types["visit_date"] == pa.date32() and types["value"] == pa.string()
    got = [{name: _as_csv_text(value) for name, value in row.items()} for row in table.to_pylist()]
    assert got == expected  # same rows, same order, same text
    # NULL stays null (not ""): plain items have no group row, weight has no value.
    rows = table.to_pylist()
    weight = next(r for r in rows if r["item"] == "weight")
    assert weight["value"] is None and weight["missing_code"] == "UNK" and weight["item_row"] is None
    assert [r["item_row"] for r in rows if r["item"] == "meds.med_name"] == [1, 2]


def test_parquet_reruns_are_byte_identical_and_a_change_shows(exported, world):
    scope = exported["scope"]
    first, _ = _run(tabular.parquet_long, scope)
    assert _run(tabular.parquet_long, scope)[0] == first
    _set_values({"pain": 9})
    assert _run(tabular.parquet_long, scope)[0] != first


def test_parquet_of_an_empty_scope_is_a_valid_empty_table(exported):
    scope = extract.ExportScope(study_id=exported["study"], date_from=dt.date(2099, 1, 1))
    body, count = _run(tabular.parquet_long, scope)
    table = pq.read_table(io.BytesIO(body))
    assert count == table.num_rows == 0 and table.column_names == list(extract.LONG_COLUMNS)


# --- XLSX ------------------------------------------------------------------------------

def _xlsx_data(body: bytes) -> tuple[list[str], dict[str, list[tuple[Any, ...]]]]:
    workbook = load_workbook(io.BytesIO(body), read_only=True)
    sheets = {}
    for sheet in workbook.worksheets:
        rows = list(sheet.iter_rows(values_only=True))
        width = max((len(row) for row in rows), default=0)  # empty trailing cells are not stored
        sheets[sheet.title] = [tuple(row) + (None,) * (width - len(row)) for row in rows]
    names = list(workbook.sheetnames)
    workbook.close()
    return names, sheets


def test_xlsx_holds_the_long_rows_a_readme_and_typed_cells(exported):
    scope = exported["scope"]
    body, count = _run(tabular.xlsx_long, scope)
    names, sheets = _xlsx_data(body)
    expected = _long_csv(scope)
    assert names == ["README", "long_1"] and count == len(expected)
    header, *rows = sheets["long_1"]
    assert header == extract.LONG_COLUMNS
    got = [{name: _as_csv_text(value) for name, value in zip(header, row, strict=True)} for row in rows]
    assert got == expected
    first = dict(zip(header, rows[0], strict=True))
    assert isinstance(first["visit_date"], dt.datetime) and isinstance(first["occurrence"], int)
    assert isinstance(first["form_version"], int) and isinstance(first["value"], str)
    readme = {row[0]: row[1:] for row in sheets["README"] if row and row[0]}
    assert readme["Study"][0] == "CRF" and readme["Title"][0] == "eCRF"
    assert readme["Data rows"][0] == len(expected)
    assert all(name in readme for name in extract.LONG_COLUMNS)
    assert readme["long_1"][0] == f"data rows 1 to {len(expected)}"


def test_xlsx_reruns_are_byte_identical_with_fixed_dates(exported):
    scope = exported["scope"]
    first, _ = _run(tabular.xlsx_long, scope)
    assert _run(tabular.xlsx_long, scope)[0] == first
    with zipfile.ZipFile(io.BytesIO(first)) as archive:
        assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        core = archive.read("docProps/core.xml").decode()
    assert "2000-01-01T00:00:00Z" in core and str(dt.date.today().year) not in core


def test_xlsx_starts_a_new_sheet_at_the_row_limit(exported, monkeypatch):
    scope = exported["scope"]
    expected = _long_csv(scope)
    limit = 4
    monkeypatch.setattr(tabular, "XLSX_MAX_DATA_ROWS", limit)
    body, count = _run(tabular.xlsx_long, scope)
    names, sheets = _xlsx_data(body)
    full, rest = divmod(len(expected), limit)
    wanted = full + (1 if rest else 0)
    assert rest and names == ["README"] + [f"long_{n}" for n in range(1, wanted + 1)]
    joined = []
    for name in names[1:]:
        header, *rows = sheets[name]
        assert header == extract.LONG_COLUMNS and 0 < len(rows) <= limit
        joined += [{k: _as_csv_text(v) for k, v in zip(header, row, strict=True)} for row in rows]
    assert count == len(joined) and joined == expected  # nothing lost or repeated at the seams
    readme = {row[0]: row[1:] for row in sheets["README"] if row and row[0]}
    assert readme["long_2"][0] == f"data rows {limit + 1} to {2 * limit}"
    assert readme[names[-1]][0] == f"data rows {full * limit + 1} to {len(expected)}"


def test_xlsx_text_that_looks_like_a_formula_stays_text(exported):
    risky = {"notes": "=HYPERLINK(\"http://evil.example\",\"x\")",
             "meds": [{"med_name": "+1+2", "med_dose": 1}, {"med_name": "-3", "med_dose": 2},
                      {"med_name": "@SUM(A1)", "med_dose": 3}, {"med_name": "=1+1", "med_dose": 4}]}
    _set_values(risky)
    body, _ = _run(tabular.xlsx_long, exported["scope"])
    workbook = load_workbook(io.BytesIO(body))  # not read-only: cells keep their type and style
    sheet = workbook["long_1"]
    header = [cell.value for cell in sheet[1]]
    value_column = header.index("value") + 1
    cells = {sheet.cell(row=r, column=value_column).value: sheet.cell(row=r, column=value_column)
             for r in range(2, sheet.max_row + 1)}
    for text in ("=HYPERLINK(\"http://evil.example\",\"x\")", "+1+2", "-3", "@SUM(A1)", "=1+1"):
        assert cells[text].data_type == "s", text
        assert cells[text].quotePrefix, text
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        assert b"<f>" not in archive.read("xl/worksheets/sheet2.xml")


def test_xlsx_refuses_text_longer_than_a_cell_and_names_the_row(exported):
    from django.utils import translation

    _set_values({"notes": "x" * (tabular.XLSX_MAX_CELL_CHARS + 1)})
    with translation.override("en"), pytest.raises(tabular.ExportDataError) as refused:
        _run(tabular.xlsx_long, exported["scope"])
    expected = _long_csv(exported["scope"])
    row = next(n for n, r in enumerate(expected, start=2) if r["item"] == "notes")
    assert refused.value.dataset == "long_1" and refused.value.variable == "value"
    assert refused.value.row == str(row) and f"row {row}" in str(refused.value)
    # Worded in the language of whoever asked for the export (the worker runs in it).
    with translation.override("zh-hans"), pytest.raises(tabular.ExportDataError) as in_chinese:
        _run(tabular.xlsx_long, exported["scope"])
    assert f"第 {row} 行" in str(in_chinese.value) and "Excel" in str(in_chinese.value)


def test_xlsx_replaces_characters_xml_cannot_hold(exported):
    _set_values({"notes": "a\x0bb"})
    body, _ = _run(tabular.xlsx_long, exported["scope"])
    _, sheets = _xlsx_data(body)
    assert any(row[-2] == "a\ufffdb" for row in sheets["long_1"][1:])


# --- CSV wide --------------------------------------------------------------------------

def _wide(body: bytes) -> dict[str, list[dict[str, str]]]:
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        return {name: list(csv.DictReader(io.StringIO(archive.read(name).decode("utf-8"))))
                for name in archive.namelist()}


def _long_to_wide(expected: list[dict[str, str]]) -> dict[tuple[str, ...], dict[str, str]]:
    """The wide rows computed here from the long CSV: entry -> {column: text}."""
    wide: dict[tuple[str, ...], dict[str, str]] = {}
    for row in expected:
        cells = wide.setdefault(tuple(row[c] for c in LONG_IDS), {c.upper(): row[c] for c in LONG_IDS})
        column = row["item"] + (f"_{row['item_row']}" if row["item_row"] else "")
        cells[column] = row["value"]
        if row["missing_code"]:
            cells[column + "__missing"] = row["missing_code"]
    return wide


def test_csv_wide_has_one_row_per_entry_and_one_column_per_item(exported):
    scope = exported["scope"]
    body, count = _run(tabular.csv_wide, scope)
    files = _wide(body)
    assert list(files) == ["VITALS.csv"] and count == 1
    (row,) = files["VITALS.csv"]
    expected = _long_to_wide(_long_csv(scope))
    assert list(expected) == [tuple(row[c] for c in tabular.WIDE_ID_COLUMNS)]
    assert {k: v for k, v in row.items() if v} == {k: v for k, v in next(iter(expected.values())).items() if v}
    header = list(row)
    assert header[:len(tabular.WIDE_ID_COLUMNS)] == list(tabular.WIDE_ID_COLUMNS)
    # Columns follow the form: weight's companion right after it, the group row by row.
    assert header[header.index("weight") + 1] == "weight__missing"
    assert row["weight"] == "" and row["weight__missing"] == "UNK"
    meds = [c for c in header if c.startswith("meds.")]
    assert meds == ["meds.med_name_1", "meds.med_dose_1", "meds.med_name_2", "meds.med_dose_2"]
    assert row["meds.med_name_2"] == "Metformin, XR"
    assert [c for c in header if c.endswith("__missing")] == ["weight__missing"]
    # An item of the form without any value in scope still has its column.
    assert "bmi" in header and not any(r["item"] == "bmi" for r in _long_csv(scope))
    assert header[:9] == [c.upper() for c in LONG_IDS] and row["VISIT_DATE"] != row["visit_date"]
    assert header.index("visit_date") < header.index("sex") < header.index("sbp") < header.index("meds.med_name_1")


def test_csv_wide_reruns_are_byte_identical_and_an_empty_scope_keeps_the_header(exported):
    scope = exported["scope"]
    first, _ = _run(tabular.csv_wide, scope)
    assert _run(tabular.csv_wide, scope)[0] == first
    with zipfile.ZipFile(io.BytesIO(first)) as archive:
        assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    empty, count = _run(tabular.csv_wide, extract.ExportScope(study_id=exported["study"],
                                                              date_from=dt.date(2099, 1, 1)))
    with zipfile.ZipFile(io.BytesIO(empty)) as archive:
        lines = archive.read("VITALS.csv").decode().splitlines()
    assert count == 0 and len(lines) == 1 and lines[0].startswith("STUDY,SITE,SUBJECT,EVENT,")


def test_form_layouts_merge_versions_newest_first():
    label = {"en": "x"}
    newer = {"items": [{"code": "b", "type": "text", "label": label}, {"code": "hdr", "type": "section"},
                       {"code": "g", "type": "group", "items": [{"code": "y", "type": "text"}]},
                       {"code": "a", "type": "text"}]}
    older = {"items": [{"code": "a", "type": "text"}, {"code": "gone", "type": "integer"},
                       {"code": "g", "type": "group", "items": [{"code": "x", "type": "text"},
                                                                 {"code": "y", "type": "text"}]}]}
    (layout,) = tabular.form_layouts(["F"], {"F": [newer, older]})
    assert layout.items == ("b", ("g", ("y", "x")), "a", "gone")
    uses = {"g.y": tabular.ItemUse(max_row=2, has_missing=True), "g.x": tabular.ItemUse(max_row=1),
            "stray": tabular.ItemUse()}
    assert tabular.wide_columns(layout, uses)[len(tabular.WIDE_ID_COLUMNS):] == [
        "b", "g.y_1", "g.y_1__missing", "g.x_1", "g.y_2", "g.y_2__missing", "g.x_2", "a", "gone", "stray"]
    clash = tabular.FormLayout(form="F", items=("weight", "weight__missing"))
    with pytest.raises(tabular.ExportDataError, match=r"F\.csv: two columns would be named weight__missing"):
        tabular.wide_columns(clash, {"weight": tabular.ItemUse(has_missing=True)})


class _WriteOnly:
    """Like services' hashing wrapper: write, and nothing else (no tell, seek or flush)."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.chunks.append(bytes(data))
        return len(data)


@pytest.mark.parametrize("writer", [tabular.parquet_long, tabular.xlsx_long, tabular.csv_wide])
def test_writers_need_only_write_of_their_output(exported, writer):
    target = _WriteOnly()
    rows = writer(exported["scope"], target)  # type: ignore[arg-type]
    body, again = _run(writer, exported["scope"])
    assert rows == again > 0 and b"".join(target.chunks) == body


# --- a larger study, written with SQL --------------------------------------------------

def _fill(crf: dict[str, Any], subjects: int) -> None:  # noqa: F811
    """`subjects` more subjects with their tasks, and a VITALS entry on every task that
    has none: ten plain values, 1-3 medication rows, a missing code on every seventh."""
    from ecrf.models import FormVersion
    from studies.bulk import tasks_generate
    from studies.models import ScheduleStatus, ScheduleVersion, Subject, SubjectStatus

    today = dt.date.today()
    study = Subject.objects.get(pk=crf["subject"]).study
    Subject.objects.bulk_create([
        Subject(study=study, site_id=crf["site"], subject_code=f"S1-B{n:06d}", status=SubjectStatus.ENROLLED,
                consent_date=today, enrolment_date=today) for n in range(subjects)], batch_size=5000)
    version = ScheduleVersion.objects.filter(study=study, status=ScheduleStatus.PUBLISHED).order_by("-number").first()
    assert version is not None
    fresh = Subject.objects.filter(study=study).exclude(pk=crf["subject"])
    tasks_generate(version=version, subjects=fresh.values_list("pk", "study_id", "site_id", "enrolment_date",
                                                               "index_date").iterator(), today=today,
                   assignee_by_site={})
    form_version = FormVersion.objects.get(form_id=crf["form"]).pk
    with connection.cursor() as cursor:
        cursor.execute("""
            INSERT INTO ecrf_entry (subject_id, task_id, form_id, form_version_id, status, values, missing,
                                    item_versions, verified, version, locked, created, updated)
            SELECT t.subject_id, t.id, %s, %s, 'complete',
                   jsonb_build_object('visit_date', to_char(current_date, 'YYYY-MM-DD'), 'sex', '2',
                                      'pregnant', false, 'height', 150 + t.id %% 40, 'pain', t.id %% 10,
                                      'symptoms', jsonb_build_array('a'), 'notes', 'note ' || md5(t.id::text),
                                      'sbp', 100 + t.id %% 50, 'dbp', 70 + t.id %% 20, 'email', 'p@example.org',
                                      'meds', (SELECT jsonb_agg(jsonb_build_object('med_name', 'drug ' || n,
                                                                                   'med_dose', n * 10))
                                                 FROM generate_series(1, 1 + t.id %% 3) n))
                   || CASE WHEN t.id %% 7 = 0 THEN '{}'::jsonb ELSE '{"weight": "70.5"}'::jsonb END,
                   CASE WHEN t.id %% 7 = 0 THEN '{"weight": "NA"}'::jsonb ELSE '{}'::jsonb END,
                   '{}', '{}', 1, false, now(), now()
              FROM studies_followuptask t
             WHERE t.subject_id IN (SELECT id FROM studies_subject WHERE study_id = %s)
               AND NOT EXISTS (SELECT 1 FROM ecrf_entry e WHERE e.task_id = t.id AND e.form_id = %s)""",
                       [crf["form"], form_version, crf["study"], crf["form"]])


def _peak(writer: Writer, scope: extract.ExportScope) -> tuple[int, int, str]:
    """Rows, tracemalloc peak and the SHA-256 of the output, written to a temporary file
    (a BytesIO would grow with the output and hide the writer's own memory)."""
    import hashlib

    with tempfile.TemporaryFile() as out:
        tracemalloc.start()
        try:
            rows = writer(scope, out)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        out.seek(0)
        digest = hashlib.sha256(out.read()).hexdigest()
    return rows, peak, digest


def _counts(scope: extract.ExportScope) -> tuple[int, int]:
    """(item values, entries) of the scope, counted by the database."""
    with connection.cursor() as cursor:
        cursor.execute(extract.count_query(scope).as_string(cursor.cursor))
        values = sum(int(n) for _, _, n in cursor.fetchall())
        cursor.execute("SELECT count(*) FROM ecrf_entry")
        return values, int(cursor.fetchone()[0])


def _warm_up(writer: Writer, exported: dict[str, Any]) -> None:
    """One run on the fixture's single entry first: what is paid once per process
    (imports pyarrow makes on its first conversion: over 20 MiB) is not per row and must
    not count against the writer's own memory."""
    writer(exported["scope"], io.BytesIO())


MIB = 1 << 20
# Holding the rows of these studies as Python tuples would take well over 100 MiB; one
# batch of FETCH_ROWS (lowered to a few thousand here) takes a few MiB.
MEMORY_BOUND = 24 * MIB


def test_parquet_and_csv_wide_memory_stays_flat_on_a_larger_study(exported, monkeypatch):
    for writer in (tabular.parquet_long, tabular.csv_wide):
        _warm_up(writer, exported)
    _fill(exported, subjects=7000)  # 2 tasks each: about 14,000 entries, 200k item values
    scope = exported["scope"]
    values, entries = _counts(scope)
    assert values > 200_000
    monkeypatch.setattr(tabular, "FETCH_ROWS", 5_000)
    rows, peak, _ = _peak(tabular.parquet_long, scope)
    assert rows == values and peak < MEMORY_BOUND, peak / MIB
    rows, peak, _ = _peak(tabular.csv_wide, scope)
    assert rows == entries and peak < MEMORY_BOUND, peak / MIB


def test_xlsx_memory_stays_flat_on_a_larger_study(exported, monkeypatch):
    # Fewer values than above: openpyxl under tracemalloc writes about 2,000 rows a second.
    _warm_up(tabular.xlsx_long, exported)
    _fill(exported, subjects=2000)
    scope = exported["scope"]
    values, _ = _counts(scope)
    assert values > 55_000
    monkeypatch.setattr(tabular, "FETCH_ROWS", 2_000)
    monkeypatch.setattr(tabular, "XLSX_MAX_DATA_ROWS", 25_000)  # the split costs no memory either
    rows, peak, _ = _peak(tabular.xlsx_long, scope)
    assert rows == values and peak < MEMORY_BOUND, peak / MIB


def test_csv_wide_of_many_entries_matches_the_long_csv(exported):
    _fill(exported, subjects=150)
    scope = exported["scope"]
    body, count = _run(tabular.csv_wide, scope)
    (rows,) = _wide(body).values()
    expected = _long_to_wide(_long_csv(scope))
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM ecrf_entry")
        entries = int(cursor.fetchone()[0])
    assert count == len(rows) == len(expected) == entries == 302  # 150 x 2 tasks, the first subject's two
    assert [tuple(r[c] for c in tabular.WIDE_ID_COLUMNS) for r in rows] == list(expected)  # the long order
    for row, wanted in zip(rows, expected.values(), strict=True):
        assert {k: v for k, v in row.items() if v} == {k: v for k, v in wanted.items() if v}
    header = list(rows[0])
    assert "meds.med_name_3" in header and "meds.med_name_4" not in header  # up to the most rows present
    assert "weight__missing" in header and "meds.med_name_1__missing" not in header


# --- cell order ----------------------------------------------------------------------------

MIXED = {"code": "MIX", "title": {"en": "Mixed", "zh-hans": "混合"}, "items": [
    {"code": "first", "type": "text", "label": {"en": "First"}},
    {"code": "hdr", "type": "section", "label": {"en": "Header"}},
    {"code": "g", "type": "group", "label": {"en": "Group"}, "items": [
        {"code": "x", "type": "text", "label": {"en": "X"}},
        {"code": "y", "type": "integer", "label": {"en": "Y"}, "missing_codes": ["UNK"]}]},
    {"code": "middle", "type": "integer", "label": {"en": "Middle"}, "missing_codes": ["NA"]},
    {"code": "h", "type": "group", "label": {"en": "Other group"}, "items": [
        {"code": "z", "type": "text", "label": {"en": "Z"}}]},
    {"code": "last", "type": "text", "label": {"en": "Last"}},
]}


def test_long_rows_follow_the_form_with_groups_between_items_row_by_row(world, in_tenant, email_of, api):
    """The long CSV writes an entry's cells in the definition's order without sorting
    them: a group between plain items sits at its place, row by row, each row's children
    in the group's order; a missing-data code inside a group is a cell of its row."""
    from tests.ecrf.test_entries import _crf_in

    mixed = _crf_in(world.alpha, world, in_tenant, email_of, api, definition=MIXED)
    values = {"last": "L", "g": [{"y": 2, "x": "a"}, {"x": "b"}, {"y": 4}], "first": "F", "h": [{"z": "c"}]}
    saved = mixed["coordinator"].put(mixed["url"], {"values": values, "version": 0,
                                                "missing": {"middle": "NA", "g[1].y": "UNK"}}, format="json")
    assert saved.status_code == 200, saved.content
    in_tenant(world.alpha)
    rows = _long_csv(extract.ExportScope(study_id=mixed["study"]))
    assert [(r["item"], r["item_row"], r["value"], r["missing_code"]) for r in rows] == [
        ("first", "", "F", ""),
        ("g.x", "1", "a", ""), ("g.y", "1", "2", ""),
        ("g.x", "2", "b", ""), ("g.y", "2", "", "UNK"),
        ("g.y", "3", "4", ""),
        ("middle", "", "", "NA"),
        ("h.z", "1", "c", ""),
        ("last", "", "L", ""),
    ]
    counts = extract.count_query(extract.ExportScope(study_id=mixed["study"]))
    with connection.cursor() as cursor:
        cursor.execute(counts.as_string(cursor.cursor))
        assert cursor.fetchall() == [("MIX", "S1", len(rows))]


def test_parquet_counts_agree_with_the_count_query(exported):
    """The manifest's counts of a run that writes Parquet come from its writer: the same
    list (form, site, values), in the same order, as the count query gives."""
    scope = exported["scope"]
    totals: dict[tuple[str, str], int] = {}
    out = io.BytesIO()
    rows = tabular.parquet_long(scope, out, counts=totals)
    assert out.getvalue() == _run(tabular.parquet_long, scope)[0]  # the same file
    with connection.cursor() as cursor:
        cursor.execute(extract.count_query(scope).as_string(cursor.cursor))
        queried = [{"form": form, "site": site, "values": int(n)} for form, site, n in cursor.fetchall()]
    assert tabular.manifest_counts(totals) == queried and queried[0]["values"] == rows > 0


def test_parquet_counts_order_forms_then_sites_by_code_point():
    header = ",".join(extract.LONG_COLUMNS)
    cells = [("S2", "B"), ("S10", "B"), ("S1", "a"), ("S2", "B"), ("S1", "B")]
    lines = [header] + [f"X,{site},001,D7,1,2026-01-01,{form},1,complete,i,,v," for site, form in cells]
    source = io.BytesIO(("\n".join(lines) + "\n").encode())
    totals: dict[tuple[str, str], int] = {}
    assert tabular.csv_to_parquet(source, io.BytesIO(), tabular.PARQUET_SCHEMA, counts=totals) == 5
    assert tabular.manifest_counts(totals) == [
        {"form": "B", "site": "S1", "values": 1}, {"form": "B", "site": "S10", "values": 1},
        {"form": "B", "site": "S2", "values": 2}, {"form": "a", "site": "S1", "values": 1}]
