"""Tabular study exports, streamed from the long query (exports.extract.long_query):

- ``parquet_long``: the long rows as Parquet, converted from the long CSV's COPY by Arrow;
- ``xlsx_long``: the long rows as XLSX, a "README" sheet then "long_1", "long_2", ...
  (a new sheet every XLSX_MAX_DATA_ROWS data rows: Excel's limit, header included);
- ``csv_wide``: a ZIP with one CSV per form ("VITALS.csv"): one row per entry, one
  column per item (a repeating group's cells "meds.med_name_1", "meds.med_name_2", ...,
  a "<item>__missing" companion only where a missing-data code occurs).

Each has the services.WRITERS signature ``(scope, out) -> data rows written``. Rows come
from a server-side (named) cursor in fixed-size batches, so memory stays flat whatever
the study size, and every byte that could vary between runs (zip entry dates, document
properties) is fixed, so the same data gives the same bytes.

All reads of one run share one snapshot: a writer opens a REPEATABLE READ, READ ONLY
transaction unless its caller already runs in one (export_run does), because csv_wide
reads the data more than once and its columns must match its rows.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import fcntl
import io
import itertools
import os
import re
import threading
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq
from django.db import transaction
from django.utils.translation import gettext
from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.writer.excel import ExcelWriter
from psycopg2 import sql as pgsql

from config.db import tenant_connection as connection
from ecrf.definition import VALUELESS_TYPES
from ecrf.models import FormVersion, FormVersionStatus
from exports import extract
from exports.extract import LONG_COLUMNS, ExportScope, forms_in_scope, long_query
from studies.models import Study

# Rows fetched from the server per round trip; also the Parquet row group size.
FETCH_ROWS = 50_000
# Excel holds 1,048,576 rows per sheet, the header included. Tests lower it.
XLSX_MAX_DATA_ROWS = 1_048_575
# Excel refuses longer cell text (the workbook "needs repair").
XLSX_MAX_CELL_CHARS = 32_767
# Zip entries and document properties carry this date whatever the run's clock says.
FIXED_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
FIXED_DOC_TIME = datetime(2000, 1, 1)

# Entry-level columns of csv_wide, in this order, then the item columns. Upper case: item
# codes are lower case (ecrf.definition.ITEM_CODE_RE), and forms do have an item
# "visit_date", so these names can never collide with an item's column.
_WIDE_ID_SOURCES = ("study", "site", "subject", "event", "occurrence", "visit_date", "form", "form_version",
                    "entry_status")
WIDE_ID_COLUMNS = tuple(name.upper() for name in _WIDE_ID_SOURCES)
MISSING_SUFFIX = "__missing"

_COLUMN = {name: index for index, name in enumerate(LONG_COLUMNS)}
_INT_COLUMNS = frozenset({"occurrence", "form_version", "item_row"})

# Arrow parses the long CSV in blocks of this size, and reads up to 32 blocks ahead of the
# parsing (its background reader's queue) when the CSV arrives faster than it converts, as
# it does from the export's two-connection COPY: 4 MB blocks took a 5M-value export to
# 400 MB. A row group is PARQUET_GROUP_BLOCKS blocks' rows (about 25,000 long rows).
PARQUET_BLOCK_BYTES = 1 << 20
PARQUET_GROUP_BLOCKS = 4
PIPE_BYTES = 1 << 20

PARQUET_SCHEMA = pa.schema([
    pa.field(name, pa.int32() if name in _INT_COLUMNS else pa.date32() if name == "visit_date" else pa.string(),
             nullable=name in ("visit_date", "item_row", "value", "missing_code"))
    for name in LONG_COLUMNS])

COLUMN_MEANINGS = {
    "study": "Study code.",
    "site": "Site code.",
    "subject": "Subject ID.",
    "event": "Scheduled event code.",
    "occurrence": "Occurrence of the event (1 unless the event repeats).",
    "visit_date": "Date the visit was done, else its target date.",
    "form": "Form code.",
    "form_version": "Form version the entry was made against.",
    "entry_status": "in_progress or complete.",
    "item": "Item code; a repeating group's item is group.item.",
    "item_row": "Row of the repeating group (1-based); empty outside groups.",
    "value": "The value as text; multiple choices are codes joined by ';', a file is its name.",
    "missing_code": "Missing-data code given instead of a value (NA, UNK, ASKU, NASK).",
}


class ExportDataError(ValueError):
    """Data that a format cannot hold, or that changed under a run. The message names
    the dataset, the variable and the row, for the API's field messages."""

    def __init__(self, message: str, *, dataset: str, variable: str = "", row: str = "") -> None:
        super().__init__(message)
        self.dataset, self.variable, self.row = dataset, variable, row


# --- shared plumbing ---------------------------------------------------------------------

class _Sink:
    """What zipfile and pyarrow need of `out` (write, tell, flush), over any object that
    only writes (services' hashing wrapper has no tell). Never seekable, so zipfile
    writes data descriptors, and never closes `out`: the caller owns it."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out, self._position = out, 0

    def write(self, data: bytes) -> int:
        self._out.write(data)
        self._position += len(data)
        return len(data)

    def tell(self) -> int:
        return self._position

    def flush(self) -> None:
        flush = getattr(self._out, "flush", None)
        if flush is not None:
            flush()

    @property
    def closed(self) -> bool:
        return False

    def close(self) -> None:  # pyarrow closes its sink; `out` stays open
        self.flush()

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readable(self) -> bool:
        return False


@contextlib.contextmanager
def _snapshot() -> Iterator[None]:
    """One consistent view of the data for every query of the run."""
    outermost = not connection.in_atomic_block
    with transaction.atomic():
        if outermost:
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                cursor.execute(extract.TRANSACTION_SETTINGS)
        yield


_cursor_numbers = itertools.count(1)


@contextlib.contextmanager
def _long_batches(scope: ExportScope, *, size: int | None = None) -> Iterator[Iterator[list[tuple[Any, ...]]]]:
    """The long rows in batches of `size` from a named (server-side) cursor, which holds
    only one batch on this side. A named cursor lives in a transaction: the caller's,
    or a savepoint of it."""
    rows = size or FETCH_ROWS
    with transaction.atomic():
        with connection.cursor():  # django-tenants sets this session's search_path here
            pass
        raw = connection.connection.cursor(name=f"suifang_tabular_{next(_cursor_numbers)}")
        try:
            raw.execute(long_query(scope).as_string(raw))
            yield iter(lambda: raw.fetchmany(rows), [])
        finally:
            raw.close()


def _fixed_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=FIXED_ZIP_DATE)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.create_system = 3  # Unix, whatever the host
    info.external_attr = 0o644 << 16
    return info


class _FixedDateZip(zipfile.ZipFile):
    """A ZipFile whose entries all carry FIXED_ZIP_DATE and fixed attributes, in the
    order they are written (openpyxl writes through write/writestr)."""

    def writestr(self, zinfo_or_arcname: str | zipfile.ZipInfo, data: Any,
                 compress_type: int | None = None, compresslevel: int | None = None) -> None:
        name = zinfo_or_arcname.filename if isinstance(zinfo_or_arcname, zipfile.ZipInfo) else zinfo_or_arcname
        info = _fixed_info(name)
        info.file_size = len(data)
        super().writestr(info, data)

    def write(self, filename: Any, arcname: Any = None, compress_type: int | None = None,
              compresslevel: int | None = None) -> None:
        info = _fixed_info(str(arcname or os.path.basename(filename)))
        info.file_size = os.path.getsize(filename)  # lets zipfile choose zip64 for big sheets
        with open(filename, "rb") as source, self.open(info, "w") as target:
            while chunk := source.read(1 << 20):
                target.write(chunk)


# --- Parquet -----------------------------------------------------------------------------

def _record_batch(rows: Sequence[tuple[Any, ...]]) -> pa.RecordBatch:
    columns = list(zip(*rows, strict=True))
    return pa.RecordBatch.from_arrays(
        [pa.array(values, type=field.type) for values, field in zip(columns, PARQUET_SCHEMA, strict=True)],
        schema=PARQUET_SCHEMA)


def parquet_long(scope: ExportScope, out: IO[bytes], *, counts: dict[tuple[str, str], int] | None = None) -> int:
    """The long rows (LONG_COLUMNS, in the long CSV's order) as one Parquet file. The rows
    come from the same COPY as the long CSV, through a pipe, and are parsed by Arrow's CSV
    reader in C, block by block, in a second thread while PostgreSQL still sends them: no
    row becomes a Python object, memory is bounded by a block, and the conversion costs
    little more time than the COPY alone. Strings stay strings (a NULL is null, an empty
    text stays empty); occurrence, form_version and item_row are int32, visit_date is
    date32. Returns the number of rows. With `counts`, adds the rows per (form, site) to
    it on the way (the manifest's counts: a run writing Parquet needs no count query)."""
    read_end, write_end = os.pipe()
    # COPY hands over one row per write: a 1 MB pipe and write buffer (not 64 KB and 8 KB)
    # wake the converter once per megabyte rather than per few dozen rows.
    with contextlib.suppress(OSError):  # Linux only; the default size works, only slower
        fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    outcome: dict[str, Any] = {}
    converter = threading.Thread(target=_parquet_from_csv, args=(read_end, out, outcome, counts),
                                 name="export-parquet")
    converter.start()
    broken: BrokenPipeError | None = None
    try:
        with os.fdopen(write_end, "wb", buffering=PIPE_BYTES) as pipe, _snapshot():
            extract.long_csv_copy(scope, pipe)
    except BrokenPipeError as error:  # the converter stopped reading: its own error tells why
        broken = error
    finally:
        converter.join()
    if "error" in outcome:
        raise outcome["error"]
    if broken is not None:
        raise broken
    return int(outcome["rows"])


def manifest_counts(totals: Mapping[tuple[str, str], int]) -> list[dict[str, Any]]:
    """(form, site) -> rows as the manifest lists them: by form, then site, by code point
    (the count query's "C" order)."""
    return [{"form": form, "site": site, "values": count} for (form, site), count in sorted(totals.items())]


def _count_into(totals: dict[tuple[str, str], int], table: pa.Table) -> None:
    # The columns' dictionary codes, paired and counted by numpy, read from the index
    # buffers: Array.to_numpy() and pyarrow.compute's string kernels import pandas (50 MB
    # of the export's memory), Table.group_by runs an Acero plan.
    import numpy as np

    def codes(array: pa.Array) -> Any:  # int32 dictionary indices, no nulls (the columns are required)
        return np.frombuffer(array.buffers()[1], dtype=np.int32, count=len(array), offset=array.offset * 4)

    forms = table.column("form").combine_chunks().dictionary_encode()
    sites = table.column("site").combine_chunks().dictionary_encode()
    width = max(len(sites.dictionary), 1)
    pairs = np.bincount(codes(forms.indices).astype(np.int64) * width + codes(sites.indices))
    form_names, site_names = forms.dictionary.to_pylist(), sites.dictionary.to_pylist()
    for key in np.flatnonzero(pairs):
        form, site = form_names[key // width], site_names[key % width]
        totals[(form, site)] = totals.get((form, site), 0) + int(pairs[key])


def _parquet_from_csv(read_end: int, out: IO[bytes], outcome: dict[str, Any],
                      totals: dict[tuple[str, str], int] | None) -> None:
    """The converter thread: CSV from the pipe to Parquet in `out`. Blocks are read whole
    (a buffered read of a pipe returns the full block until the end), so the row groups,
    and the file's bytes, do not depend on how the COPY's writes were timed."""
    try:
        with os.fdopen(read_end, "rb") as source:
            outcome["rows"] = csv_to_parquet(source, pa.PythonFile(_Sink(out), mode="w"), PARQUET_SCHEMA,
                                             counts=totals)
    except BaseException as error:  # handed to the exporting thread, which raises it
        outcome["error"] = error


def csv_to_parquet(source: IO[bytes], sink: Any, schema: pa.Schema,
                   counts: dict[tuple[str, str], int] | None = None) -> int:
    """CSV (with a header row naming `schema`'s columns) to Parquet in `sink`, parsed by
    Arrow's CSV reader in C block by block (a bare empty cell is null, a quoted "" an
    empty text): no row becomes a Python object, memory is
    bounded by a block, and the same input gives the same bytes (no wall-clock time is
    stored; created_by names the pyarrow version only). Returns the number of rows; with
    `counts`, adds the rows per (form, site) to it."""
    import pyarrow.csv as pacsv

    reader = pacsv.open_csv(
        source, read_options=pacsv.ReadOptions(block_size=PARQUET_BLOCK_BYTES, use_threads=False),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            column_types={field.name: field.type for field in schema}, strings_can_be_null=True,
            quoted_strings_can_be_null=False))  # COPY writes NULL bare and "" quoted
    written = 0
    pending: list[pa.RecordBatch] = []
    with pq.ParquetWriter(sink, schema, compression="zstd", use_dictionary=True, write_statistics=True) as writer:
        for batch in reader:
            pending.append(batch)
            written += batch.num_rows
            if len(pending) == PARQUET_GROUP_BLOCKS:
                _write_group(writer, pending, schema, counts)
                pending = []
        if pending:
            _write_group(writer, pending, schema, counts)
    return written


def _write_group(writer: pq.ParquetWriter, batches: list[pa.RecordBatch], schema: pa.Schema,
                 counts: dict[tuple[str, str], int] | None) -> None:
    table = pa.Table.from_batches(batches)
    if counts is not None:
        _count_into(counts, table)
    writer.write_table(table.cast(schema), row_group_size=1 << 30)


# --- XLSX --------------------------------------------------------------------------------

# Characters XML 1.0 cannot hold (openpyxl refuses them); shown as U+FFFD in XLSX only.
_XML_ILLEGAL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")
# A text starting with one of these is a formula to Excel once edited, or to a
# spreadsheet that imports the sheet's text: it is stored as text with a quote prefix.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _text_cell(sheet: Any, value: str, *, dataset: str, variable: str, row: int) -> Any:
    if len(value) > XLSX_MAX_CELL_CHARS:
        raise ExportDataError(
            gettext("%(dataset)s, row %(row)d, %(variable)s: %(n)d characters; an Excel cell holds at most "
                    "%(max)d. Export this study as CSV or Parquet instead.") % {
                "dataset": dataset, "row": row, "variable": variable, "n": len(value), "max": XLSX_MAX_CELL_CHARS},
            dataset=dataset, variable=variable, row=str(row))
    cell = WriteOnlyCell(sheet, value=_XML_ILLEGAL.sub("\ufffd", value))
    cell.data_type = "s"  # openpyxl would make "=..." a formula
    if value.startswith(_FORMULA_START):
        cell.quotePrefix = True  # Excel keeps it text even when the cell is edited
    return cell


def _xlsx_row(sheet: Any, row: Sequence[Any], *, dataset: str, number: int) -> list[Any]:
    cells: list[Any] = []
    for name, value in zip(LONG_COLUMNS, row, strict=True):
        if isinstance(value, str):
            cells.append(_text_cell(sheet, value, dataset=dataset, variable=name, row=number))
        else:  # None, int (occurrence, form_version, item_row) or date (visit_date)
            cells.append(value)
    return cells


def _date_cell(sheet: Any, value: date | None) -> Any:
    cell = WriteOnlyCell(sheet, value=value)
    if value is not None:
        cell.number_format = "yyyy-mm-dd"
    return cell


def _readme_rows(scope: ExportScope, sheets: Sequence[tuple[str, int, int]], total: int) -> list[list[Any]]:
    study = Study.objects.filter(pk=scope.study_id).values_list("code", "title").first()
    code, title = study or ("", "")
    filters = [f"forms: {', '.join(scope.forms)}" if scope.forms else "",
               f"sites (ids): {', '.join(map(str, scope.sites))}" if scope.sites else "",
               f"visit date from {scope.date_from.isoformat()}" if scope.date_from else "",
               f"visit date to {scope.date_to.isoformat()}" if scope.date_to else ""]
    rows: list[list[Any]] = [
        ["Suifang study export: long format (one row per item value)"],
        ["Study", code], ["Title", title],
        ["Filters", "; ".join(f for f in filters if f) or "none"],
        [],
        ["Column", "Meaning"],
        *[[name, COLUMN_MEANINGS[name]] for name in LONG_COLUMNS],
        [],
        ["Sheets", f"Excel holds {XLSX_MAX_DATA_ROWS + 1:,} rows per sheet, the header included: the data "
                   f"continue on the next sheet every {XLSX_MAX_DATA_ROWS:,} rows, in the same order."],
        *[[name, f"data rows {first:,} to {last:,}" if last >= first else "no data"]
          for name, first, last in sheets],
        ["Data rows", total],
        [],
        ["Text", "Values are text as in the CSV; visit_date is a date; occurrence, form_version and item_row "
                 "are numbers. Text starting with =, +, - or @ is stored as text, never as a formula. "
                 "Control characters XML cannot hold are shown as \ufffd (the CSV and Parquet keep them)."],
    ]
    return rows


def xlsx_long(scope: ExportScope, out: IO[bytes]) -> int:
    """The long rows as an XLSX workbook written to `out`: sheet "README" (the study, the
    filters, what each column means, which sheet holds which rows), then "long_1",
    "long_2", ... each with the header row and at most XLSX_MAX_DATA_ROWS data rows.
    Returns the number of data rows. Raises ExportDataError for a text Excel cannot hold."""
    workbook = Workbook(write_only=True)
    workbook.properties.creator = "Suifang"
    workbook.properties.created = workbook.properties.modified = FIXED_DOC_TIME
    readme = workbook.create_sheet("README")  # first: sheets keep their creation order
    sheets: list[tuple[str, int, int]] = []
    sheet: Any = None
    in_sheet = total = 0
    try:
        with _snapshot(), _long_batches(scope) as batches:
            for rows in batches:
                for row in rows:
                    if sheet is None or in_sheet == XLSX_MAX_DATA_ROWS:
                        sheet = _new_long_sheet(workbook, len(sheets) + 1)
                        sheets.append((sheet.title, total + 1, total))
                        in_sheet = 0
                    total += 1
                    in_sheet += 1
                    cells = _xlsx_row(sheet, row, dataset=sheet.title, number=in_sheet + 1)
                    cells[_COLUMN["visit_date"]] = _date_cell(sheet, row[_COLUMN["visit_date"]])
                    sheet.append(cells)
            if sheet is None:
                sheet = _new_long_sheet(workbook, 1)
                sheets.append((sheet.title, 1, 0))
            # Each sheet ends where the next begins; the last at the total.
            sheets = [(name, first, (sheets[n + 1][1] - 1) if n + 1 < len(sheets) else total)
                      for n, (name, first, _) in enumerate(sheets)]
            for line in _readme_rows(scope, sheets, total):
                readme.append([_text_cell(readme, v, dataset="README", variable="", row=0) if isinstance(v, str)
                               else v for v in line])
        # openpyxl's save_workbook stamps the time: its ExcelWriter into our fixed-date zip does not.
        archive = _FixedDateZip(_Sink(out), "w", zipfile.ZIP_DEFLATED, allowZip64=True)
        ExcelWriter(workbook, archive).save()  # closes the archive, not `out`
    except BaseException:
        _drop_sheet_files(workbook)
        raise
    return total


def _new_long_sheet(workbook: Any, number: int) -> Any:
    sheet = workbook.create_sheet(f"long_{number}")
    sheet.freeze_panes = "A2"
    sheet.append(list(LONG_COLUMNS))
    return sheet


def _drop_sheet_files(workbook: Any) -> None:
    """Remove the temporary files of write-only sheets of a failed run (a worker lives long)."""
    for sheet in workbook.worksheets:
        path = getattr(getattr(sheet, "_writer", None), "out", None)
        if not isinstance(path, str):
            continue
        with contextlib.suppress(Exception):  # ends the sheet's XML; half-written, the file goes anyway
            sheet.close()
        if os.path.exists(path):
            os.remove(path)


# --- CSV wide ----------------------------------------------------------------------------

@dataclass(frozen=True)
class FormLayout:
    """A form's items in column order: plain item codes, and groups as (code, children)."""

    form: str
    items: tuple[str | tuple[str, tuple[str, ...]], ...]


@dataclass(frozen=True)
class ItemUse:
    """What the data hold for one item path of a form: the highest group row (0 outside
    groups) and whether any missing-data code occurs."""

    max_row: int = 0
    has_missing: bool = False


def form_layouts(forms: Iterable[str], definitions: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[FormLayout]:
    """Column order per form from its published definitions, newest first: the newest
    version's order, then items only older versions have, in their place after them."""
    layouts = []
    for form in forms:
        order: list[str] = []
        children: dict[str, list[str]] = {}
        for definition in definitions.get(form, ()):
            for item in definition.get("items") or []:
                code = str(item["code"])
                if item.get("type") == "group":
                    if code not in children:
                        order.append(code)
                        children[code] = []
                    children[code] += [str(c["code"]) for c in item.get("items") or []
                                       if str(c["code"]) not in children[code]]
                elif item.get("type") not in VALUELESS_TYPES and code not in order:
                    order.append(code)
        layouts.append(FormLayout(form=form, items=tuple((c, tuple(children[c])) if c in children else c
                                                         for c in order)))
    return layouts


def wide_columns(layout: FormLayout, uses: Mapping[str, ItemUse]) -> list[str]:
    """The CSV header of a form: WIDE_ID_COLUMNS, each plain item (and its missing
    companion when any code occurs), each group row by row up to the highest row present.
    Item paths the data hold but no published definition names come last."""
    columns = list(WIDE_ID_COLUMNS)
    named: set[str] = set()
    for entry in layout.items:
        if isinstance(entry, str):
            named.add(entry)
            columns += [entry, entry + MISSING_SUFFIX] if uses.get(entry, ItemUse()).has_missing else [entry]
            continue
        group, kids = entry
        paths = [f"{group}.{kid}" for kid in kids]
        named.update(paths)
        for row in range(1, max((uses.get(p, ItemUse()).max_row for p in paths), default=0) + 1):
            for path in paths:
                columns.append(f"{path}_{row}")
                if uses.get(path, ItemUse()).has_missing:
                    columns.append(f"{path}_{row}{MISSING_SUFFIX}")
    for path in sorted(set(uses) - named):
        use = uses[path]
        cells = [f"{path}_{row}" for row in range(1, use.max_row + 1)] if use.max_row else [path]
        for cell in cells:
            columns += [cell, cell + MISSING_SUFFIX] if use.has_missing else [cell]
    seen: set[str] = set()
    for column in columns:  # e.g. an item named "weight__missing" beside weight's missing codes
        if column in seen:
            raise ExportDataError(gettext("%(dataset)s: two columns would be named %(column)s; rename the item or "
                                          "export the long format.") % {"dataset": f"{layout.form}.csv",
                                                                        "column": column},
                                  dataset=f"{layout.form}.csv", variable=column)
        seen.add(column)
    return columns


def _item_uses(scope: ExportScope) -> dict[str, dict[str, ItemUse]]:
    """The first pass: per form and item path, the highest group row and whether a
    missing code occurs, aggregated in PostgreSQL (one small row per item)."""
    statement = pgsql.SQL("SELECT l.form, l.item, coalesce(max(l.item_row), 0), bool_or(l.missing_code IS NOT NULL)"
                          " FROM ({}) l GROUP BY l.form, l.item").format(long_query(scope))
    found: dict[str, dict[str, ItemUse]] = {}
    with connection.cursor() as cursor:
        cursor.execute(statement.as_string(cursor.cursor))
        for form, item, max_row, has_missing in cursor.fetchall():
            found.setdefault(form, {})[item] = ItemUse(max_row=int(max_row), has_missing=bool(has_missing))
    return found


def _published_definitions(forms: Sequence[str], study_id: int) -> dict[str, list[Mapping[str, Any]]]:
    found: dict[str, list[Mapping[str, Any]]] = {}
    versions = (FormVersion.objects.filter(form__study_id=study_id, form__code__in=forms,
                                           status=FormVersionStatus.PUBLISHED)
                .order_by("form__code", "-number").values_list("form__code", "definition"))
    for code, definition in versions:
        found.setdefault(code, []).append(definition)
    return found


def _text(value: Any) -> str:
    """As PostgreSQL's COPY writes it in the long CSV (dates ISO, NULL empty)."""
    if value is None:
        return ""
    return value.isoformat() if isinstance(value, date) else str(value)


def _write_form(scope: ExportScope, form: str, columns: Sequence[str], target: IO[str]) -> int:
    """The second pass for one form: long rows entry by entry into wide rows."""
    index = {name: position for position, name in enumerate(columns)}
    ids = [_COLUMN[name] for name in _WIDE_ID_SOURCES]
    item_at, row_at, value_at, missing_at = (_COLUMN["item"], _COLUMN["item_row"], _COLUMN["value"],
                                             _COLUMN["missing_code"])
    writer = csv.writer(target, lineterminator="\n")
    writer.writerow(columns)
    written = 0
    key: tuple[Any, ...] | None = None
    cells: list[str] = []
    filled: set[int] = set()
    with _long_batches(dataclasses.replace(scope, forms=(form,))) as batches:
        for rows in batches:
            for row in rows:
                entry = tuple(row[i] for i in ids)
                if entry != key:
                    if key is not None:
                        writer.writerow(cells)
                        written += 1
                    key, cells, filled = entry, [""] * len(columns), set()
                    cells[:len(ids)] = [_text(v) for v in entry]
                path = row[item_at] if row[row_at] is None else f"{row[item_at]}_{row[row_at]}"
                place = index.get(path)
                if place is None or place in filled:
                    what = "has no column (the data changed between passes)" if place is None else "appears twice"
                    raise ExportDataError(f"{form}.csv, subject {row[_COLUMN['subject']]}, event "
                                          f"{row[_COLUMN['event']]}: item {path} {what}.",
                                          dataset=f"{form}.csv", variable=path, row=str(written + 2))
                filled.add(place)
                cells[place] = _text(row[value_at])
                if row[missing_at] is not None:
                    companion = index.get(path + MISSING_SUFFIX)
                    if companion is None:
                        raise ExportDataError(f"{form}.csv: item {path} has a missing code but no column for it "
                                              "(the data changed between passes).",
                                              dataset=f"{form}.csv", variable=path, row=str(written + 2))
                    cells[companion] = row[missing_at]
    if key is not None:
        writer.writerow(cells)
        written += 1
    return written


def csv_wide(scope: ExportScope, out: IO[bytes]) -> int:
    """A ZIP written to `out` with one UTF-8 CSV per form in scope ("<FORM>.csv", by form
    code; a form without data gets its header): one row per entry, in the long order,
    with WIDE_ID_COLUMNS then the item columns (see wide_columns). Cells are the long
    CSV's text. Returns the number of entry rows over all forms."""
    written = 0
    with _snapshot():
        forms = [form.code for form in forms_in_scope(scope)]
        layouts = form_layouts(forms, _published_definitions(forms, scope.study_id))
        uses = _item_uses(scope)
        with zipfile.ZipFile(_Sink(out), "w", zipfile.ZIP_DEFLATED, allowZip64=True) as archive:
            for layout in layouts:
                columns = wide_columns(layout, uses.get(layout.form, {}))
                with archive.open(_fixed_info(f"{layout.form}.csv"), "w", force_zip64=True) as raw, \
                        io.TextIOWrapper(raw, encoding="utf-8", newline="") as text:
                    written += _write_form(scope, layout.form, columns, text)
    return written
