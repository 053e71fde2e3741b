"""REDCap data dictionaries: import into form definitions (ecrf.definition) and export back.

``redcap_dictionary_import`` reads a data-dictionary CSV and returns one form definition
per REDCap instrument (``form_name``, in file order) plus a report: one entry per thing
that was not translated, or translated with a loss. Nothing is dropped silently. Each
entry is ``{"line", "row", "field", "column", "message", "severity"}``: ``line`` is the
physical line of the file where the record starts (header = 1; a quoted cell with line
breaks spans several lines, so later records start further down), ``row`` the record
number as a spreadsheet shows it (header = 1), ``column`` the dictionary column as the file
spells it, ``severity`` "error" (the construct is lost or the field is skipped) or
"warning" (translated approximately, or a display detail is lost).

Reading: UTF-8 with or without BOM, UTF-16 with BOM, GB18030 as the fallback; comma,
semicolon or tab separated; header spellings matched case-insensitively on normalised
prefixes ("Variable / Field Name", "field_name", ...); 17-column exports without "Field
Annotation"; CRLF records with LF inside cells; every cell quoted.

Decisions:

* Labels: the REDCap text goes to ``label.en``, and also to ``label["zh-hans"]`` when it
  contains CJK ideographs (the same for help, section headers, choice labels, titles).
* HTML in labels, notes, headers and choice labels: tags are stripped (block tags become
  line breaks) and entities decoded; a warning says markup was removed. The original HTML
  is *not* copied into ``annotation``, which keeps exactly the REDCap Field Annotation (so
  the annotation survives export unchanged).
* Piping (``[field]``, ``[event][field][1]``) in texts is kept literally, with a warning.
* Form code: form_name upper-cased, other characters -> "_", a leading letter ensured,
  at most 30 characters, made unique. Title: form_name with "_" as spaces, capitalised.
* Item code: the variable name (lower-cased / sanitised / shortened to 64 with a warning
  when needed; references follow the rename).
* A Section Header becomes a ``section`` item coded ``sh_<field>`` just before its field;
  a descriptive field becomes a ``section`` item with its own code.
* Text Validation Min/Max become ``range.hard`` (REDCap itself only warns on out-of-range
  values). Dates stay ISO, datetimes become "YYYY-MM-DDTHH:MM[:SS]".
* Plain file fields accept FILE_TYPES (REDCap accepts any file); signature fields become
  image/png uploads, with a warning.
* Calculations that cannot be translated leave a read-only decimal item (error reported).
* Branching that cannot be translated leaves the item without ``show_if`` (error reported).
* ``@DEFAULT`` -> ``default``; ``@READONLY`` -> ``readonly``; ``@CALCTEXT(..)`` on a text
  field -> a ``calculated`` item; every other action tag is reported (and kept in the
  annotation). ``@HIDDEN`` is not turned into ``show_if: false``: hidden items are not
  stored, and REDCap's hidden fields are.

``redcap_dictionary_export`` writes the standard 18-column dictionary (UTF-8, no BOM) and
returns a report of what it could not write (``{"form", "field", "column", "message",
"severity"}``).

Round trip (import -> export -> import gives the same definitions) except for these known
lossy parts: date/datetime display order (mdy/dmy come back as ymd); datetime seconds and
time HH:MM:SS / MM:SS (come back as datetime_ymd / time); comma decimals (come back as
dots); other validation types (postal codes, SSN, phone outside North America: free text);
mrn_10d/vmrn (come back as mrn_generic); Custom Alignment, Question Number, Matrix Ranking,
Show Slider Number, the middle slider label; HTML markup; @HIDDEN, @NOW, @TODAY and other
untranslated action tags (kept only as annotation text); sql fields; ``not (..)``
(comes back as the inverted comparison); unsigned ``datediff`` (comes back signed). And in
the other direction, Suifang-only properties have no REDCap column: checks, missing codes,
units, partial dates, max_length, soft ranges, soft required, scale steps, file limits,
repeating groups (flattened), CDISC annotations, second-language texts, form titles and
``patient_reported``; all of these are reported by the export.
"""

from __future__ import annotations

import csv
import html
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from django.utils.translation import gettext as _

from config.errors import DomainError
from ecrf.definition import (
    DEFAULT_MAX_LENGTH,
    FORM_CODE_RE,
    MAX_CODE_LIST,
    MAX_LABEL,
    definition_validate,
    iter_items,
)
from ecrf.redcap_logic import FieldRef, RedcapLogicError, logic_to_redcap, redcap_to_logic

__all__ = [
    "MAX_DICTIONARY_BYTES",
    "MAX_FIELDS",
    "REDCAP_HEADER",
    "RedcapImport",
    "redcap_dictionary_export",
    "redcap_dictionary_import",
]

MAX_DICTIONARY_BYTES = 5 * 1024 * 1024
MAX_FIELDS = 5000

# (key, standard header, normalised header prefixes), in the standard column order.
_COLUMNS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("field_name", "Variable / Field Name", ("variable", "field name")),
    ("form_name", "Form Name", ("form name", "form", "instrument")),
    ("section_header", "Section Header", ("section",)),
    ("field_type", "Field Type", ("field type",)),
    ("field_label", "Field Label", ("field label",)),
    ("choices", "Choices, Calculations, OR Slider Labels", ("choices", "select choices")),
    ("field_note", "Field Note", ("field note",)),
    ("validation_min", "Text Validation Min", ("text validation min", "validation min")),
    ("validation_max", "Text Validation Max", ("text validation max", "validation max")),
    ("validation", "Text Validation Type OR Show Slider Number", ("text validation", "validation type")),
    ("identifier", "Identifier?", ("identifier",)),
    ("branching", "Branching Logic (Show field only if...)", ("branching",)),
    ("required", "Required Field?", ("required",)),
    ("alignment", "Custom Alignment", ("custom alignment", "alignment")),
    ("question_number", "Question Number (surveys only)", ("question number",)),
    ("matrix_group", "Matrix Group Name", ("matrix group",)),
    ("matrix_ranking", "Matrix Ranking?", ("matrix ranking",)),
    ("annotation", "Field Annotation", ("field annotation", "annotation")),
)
_STANDARD_ORDER = ("field_name", "form_name", "section_header", "field_type", "field_label", "choices",
                   "field_note", "validation", "validation_min", "validation_max", "identifier", "branching",
                   "required", "alignment", "question_number", "matrix_group", "matrix_ranking", "annotation")
_HEADERS = {key: header for key, header, _prefixes in _COLUMNS}
REDCAP_HEADER = tuple(_HEADERS[key] for key in _STANDARD_ORDER)
_REQUIRED_COLUMNS = ("field_name", "form_name", "field_type", "field_label")

FIELD_TYPES = frozenset({"text", "notes", "dropdown", "radio", "checkbox", "yesno", "truefalse", "calc", "slider",
                         "file", "descriptive", "sql"})
FILE_TYPES = ["application/pdf", "image/jpeg", "image/png", "image/gif", "image/tiff", "text/plain", "text/csv",
              "application/msword", "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
              "application/vnd.ms-excel", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
              "application/zip"]
SIGNATURE_TYPES = ["image/png"]
TF_LIST: list[dict[str, Any]] = [{"value": "1", "labels": {"en": "True"}}, {"value": "0", "labels": {"en": "False"}}]
_TEXT_FORMATS = {"email": "email", "phone": "phone", "zipcode": "zipcode", "alpha_only": "alpha_only",
                 "mrn_generic": "mrn"}
_APPROXIMATE_FORMATS = {"mrn_10d": "mrn", "vmrn": "mrn"}
_FORMATS_BACK = {"email": "email", "phone": "phone", "zipcode": "zipcode", "alpha_only": "alpha_only",
                 "mrn": "mrn_generic"}
_NOW_TAGS = frozenset({"NOW", "TODAY", "NOW-SERVER", "TODAY-SERVER", "NOW-UTC", "TODAY-UTC"})
_HIDDEN_TAGS = frozenset({"HIDDEN", "HIDDEN-FORM", "HIDDEN-SURVEY", "HIDDEN-APP", "HIDDEN-PDF"})

_CJK_RE = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f]")
_TAG_RE = re.compile(r"<[A-Za-z/!][^<>]*>")
_BLOCK_TAG_RE = re.compile(r"<(br|/p|/div|/li|/tr|/h[1-6])\b[^<>]*>", re.IGNORECASE)
_ENTITY_RE = re.compile(r"&(#\d+|#x[0-9a-fA-F]+|[A-Za-z]+);")
_PIPING_RE = re.compile(r"\[[A-Za-z][A-Za-z0-9_:\-]*(\([^()\[\]]*\))?\](\[[^\[\]]*\])*")
_ACTION_TAG_RE = re.compile(r"(?<![\w@.])@([A-Z][A-Z0-9_]*(?:-[A-Z0-9_]+)*)")
_NUMBER_DP_RE = re.compile(r"number_(\d)dp(_comma_decimal)?")
_ISO_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
_TIME_RE = re.compile(r"\d{2}:\d{2}(:\d{2})?")


# --- the result ------------------------------------------------------------------------------

@dataclass
class RedcapImport:
    """The forms (definition documents), the report, and counts."""

    forms: list[dict[str, Any]] = field(default_factory=list)
    report: list[dict[str, Any]] = field(default_factory=list)
    forms_ok: bool = False  # every form passes definition_validate (and there is one)
    field_count: int = 0  # dictionary records (fields) read
    item_count: int = 0  # items created, sections included
    problems: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # definition_validate by form

    @property
    def form_count(self) -> int:
        return len(self.forms)

    @property
    def error_count(self) -> int:
        return sum(1 for entry in self.report if entry["severity"] == "error")

    @property
    def warning_count(self) -> int:
        return sum(1 for entry in self.report if entry["severity"] == "warning")

    def as_dict(self) -> dict[str, Any]:
        return {"forms": self.forms, "report": self.report, "forms_ok": self.forms_ok,
                "field_count": self.field_count, "item_count": self.item_count, "form_count": self.form_count,
                "error_count": self.error_count, "warning_count": self.warning_count, "problems": self.problems}


def _file_error(code: str, message: str) -> DomainError:
    return DomainError(code, message, fields={"file": [message]})


# --- reading -----------------------------------------------------------------------------------

@dataclass
class _Record:
    line: int
    row: int
    cells: dict[str, str]
    extra: list[str]


def _decode(content: bytes) -> str:
    if content.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return content.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise _file_error("redcap_unreadable", _("The file is not readable UTF-16 text.")) from exc
    try:
        return content.decode("utf-8-sig")
    except UnicodeDecodeError:
        try:
            return content.decode("gb18030")
        except UnicodeDecodeError as exc:
            raise _file_error("redcap_unreadable", _("The file is neither UTF-8 nor GB18030 text.")) from exc


def _normalise_header(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


def _column_key(header: str) -> str | None:
    normal = _normalise_header(header)
    if not normal:
        return None
    for key, _standard, prefixes in _COLUMNS:
        if any(normal.startswith(prefix) for prefix in prefixes):
            return key
    return None


def _delimiter(text: str) -> str:
    first = (text.strip("\r\n").splitlines() or [""])[0]
    best, best_score = ",", -1
    for candidate in (",", ";", "\t"):
        try:
            cells = next(csv.reader([first], delimiter=candidate), [])
        except csv.Error:
            continue
        score = sum(1 for cell in cells if _column_key(cell))
        if score > best_score:
            best, best_score = candidate, score
    return best


def _rows(text: str, delimiter: str) -> Iterator[tuple[int, int, list[str]]]:
    """(physical start line, record number, cells) of every record (both 1-based)."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    number = 0
    while True:
        number += 1
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            message = _("Line %(line)d is not valid CSV (%(error)s).") % {"line": start, "error": exc}
            raise _file_error("redcap_not_csv", message) from exc
        yield start, number, cells


class _Reporter:
    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []
        self.headers = dict(_HEADERS)
        self.header_line = self.header_row = 1

    def add(self, record: _Record | None, field_name: str, column: str, message: str, severity: str = "warning"
            ) -> None:
        self.entries.append({
            "line": record.line if record else self.header_line, "row": record.row if record else self.header_row,
            "field": field_name,
            "column": self.headers.get(column, column), "message": message, "severity": severity})


def _read(content: bytes, file_name: str, report: _Reporter) -> list[_Record]:
    if len(content) > MAX_DICTIONARY_BYTES:
        message = _("The data dictionary is %(size).1f MB; the limit is %(max)d MB.") % {
            "size": len(content) / (1024 * 1024), "max": MAX_DICTIONARY_BYTES // (1024 * 1024)}
        raise _file_error("redcap_too_large", message)
    if content.startswith(b"PK\x03\x04") or file_name.lower().endswith((".xlsx", ".xls", ".xlsm")):
        raise _file_error("redcap_not_csv", _("This is a spreadsheet workbook; save the data dictionary as CSV."))
    text = _decode(content)
    if not text.strip():
        raise _file_error("redcap_empty", _("The file is empty."))
    if "\x00" in text:
        raise _file_error("redcap_not_csv", _("This is not a CSV text file (it contains NUL bytes)."))
    rows = _rows(text, _delimiter(text))
    header: list[str] | None = None
    header_line = header_row = 1
    for line, number, cells in rows:
        if any(cell.strip() for cell in cells):
            header, header_line, header_row = cells, line, number
            break
    if header is None:
        raise _file_error("redcap_empty", _("The file has no data dictionary header."))
    report.header_line, report.header_row = header_line, header_row
    keys: list[str | None] = []
    seen: set[str] = set()
    header_record = _Record(header_line, header_row, {}, [])
    for text_cell in header:
        key = _column_key(text_cell)
        if key is None:
            if text_cell.strip():
                report.add(header_record, "", text_cell, f"Unknown column {text_cell.strip()!r}; its cells are "
                                                         "ignored.")
            keys.append(None)
        elif key in seen:
            report.add(header_record, "", text_cell, f"Column {text_cell.strip()!r} appears twice; the second one "
                                                     "is ignored.")
            keys.append(None)
        else:
            seen.add(key)
            report.headers[key] = text_cell.strip()
            keys.append(key)
    missing = [_HEADERS[key] for key in _REQUIRED_COLUMNS if key not in seen]
    if missing:
        message = _("This is not a REDCap data dictionary: the columns %(columns)s are missing.") % {
            "columns": ", ".join(f'"{name}"' for name in missing)}
        raise _file_error("redcap_not_dictionary", message)
    records: list[_Record] = []
    for line, row_number, cells in rows:
        if not any(cell.strip() for cell in cells):
            continue
        values = {key: cell for key, cell in zip(keys, cells, strict=False) if key is not None}
        extra = [cell for cell in cells[len(keys):] if cell.strip()]
        records.append(_Record(line, row_number, values, extra))
        if len(records) > MAX_FIELDS:
            message = _("The data dictionary has more than %(max)d fields.") % {"max": MAX_FIELDS}
            raise _file_error("redcap_too_many_fields", message)
    return records


# --- text helpers ------------------------------------------------------------------------------

def _texts(text: str) -> dict[str, str]:
    return {"en": text, "zh-hans": text} if _CJK_RE.search(text) else {"en": text}


def _clean(text: str, record: _Record, field_name: str, column: str, report: _Reporter) -> str:
    """Strip HTML (with a warning), report piping, cap the length."""
    text = text.strip()
    if _TAG_RE.search(text) or _ENTITY_RE.search(text):
        plain = _BLOCK_TAG_RE.sub("\n", text)
        plain = html.unescape(_TAG_RE.sub("", plain)).replace("\xa0", " ")
        lines = [" ".join(line.split()) for line in plain.splitlines()]
        text = "\n".join(line for line in lines if line)
        report.add(record, field_name, column, "HTML markup was removed; the text is kept.")
    for match in _PIPING_RE.finditer(text):
        kind = "piping across events or instances" if match.group(0).count("[") > 1 else "piping"
        report.add(record, field_name, column, f"The {kind} {match.group(0)} is not translated; it stays as "
                                               "literal text.")
    if len(text) > MAX_LABEL:
        report.add(record, field_name, column, f"The text is longer than {MAX_LABEL} characters and was cut.",
                   "error")
        text = text[:MAX_LABEL]
    return text


def _humanise(form_name: str) -> str:
    words = form_name.replace("_", " ").strip()
    return words[:1].upper() + words[1:]


def _unique(base: str, used: set[str], limit: int) -> str:
    code, number = base[:limit], 2
    while code in used:
        suffix = f"_{number}"
        code = base[:limit - len(suffix)] + suffix
        number += 1
    used.add(code)
    return code


def _form_code(form_name: str, used: set[str]) -> str:
    code = re.sub(r"[^A-Z0-9_]", "_", form_name.upper())
    if not code[:1].isalpha():
        code = "F_" + code
    return _unique(code, used, 30)


def _item_code(name: str) -> str:
    code = re.sub(r"[^a-z0-9_]", "_", name.lower())
    if not code[:1].isalpha():
        code = "f_" + code
    return code


def section_code(field_code: str) -> str:
    """The code of the section item a Section Header becomes (before its field)."""
    return ("sh_" + field_code)[:64]


# --- action tags -------------------------------------------------------------------------------

def _balanced(text: str, start: int, opening: str, closing: str) -> int:
    """Index just past the bracket matching text[start] (== opening), quotes respected; -1 if none."""
    depth, index, quote = 0, start, ""
    while index < len(text):
        char = text[index]
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == opening:
            depth += 1
        elif char == closing:
            depth -= 1
            if depth == 0:
                return index + 1
        index += 1
    return -1


def _action_tags(annotation: str) -> list[tuple[str, str | None]]:
    """[(TAG, argument or None)] in order; the argument unquoted for =value, raw for (..)/{..}."""
    tags: list[tuple[str, str | None]] = []
    for match in _ACTION_TAG_RE.finditer(annotation):
        tag, end = match.group(1), match.end()
        argument: str | None = None
        rest = annotation[end:]
        if rest.startswith("("):
            close = _balanced(annotation, end, "(", ")")
            argument = annotation[end + 1:close - 1] if close > 0 else annotation[end + 1:]
        elif rest.startswith("="):
            value_start = end + 1
            first = annotation[value_start:value_start + 1]
            if first in ("'", '"'):
                close = annotation.find(first, value_start + 1)
                argument = annotation[value_start + 1:close] if close > 0 else annotation[value_start + 1:]
            elif first in ("{", "["):
                close = _balanced(annotation, value_start, first, "}" if first == "{" else "]")
                argument = annotation[value_start:close] if close > 0 else annotation[value_start:]
            else:
                token = re.match(r"\S*", annotation[value_start:])
                argument = token.group(0) if token else ""
        tags.append((tag, argument))
    return tags


# --- import ------------------------------------------------------------------------------------

@dataclass
class _Field:
    record: _Record
    name: str
    code: str
    form_name: str
    type: str
    has_value: bool
    checkbox: bool


class _Importer:
    def __init__(self, records: list[_Record], report: _Reporter) -> None:
        self.records = records
        self.report = report
        self.fields: dict[str, _Field] = {}  # by REDCap variable name
        self.form_names: list[str] = []
        self.form_codes: dict[str, str] = {}
        self.form_fields: dict[str, list[_Field]] = {}
        self.used_codes: set[str] = set()
        self.problems: dict[str, dict[str, list[str]]] = {}

    # pass 1: which fields exist, in which forms
    def scan(self) -> None:
        used_forms: set[str] = set()
        for record in self.records:
            cells = record.cells
            raw_name = cells.get("field_name", "").strip()
            form_name = cells.get("form_name", "").strip()
            kind = cells.get("field_type", "").strip().lower()
            if not raw_name:
                self.report.add(record, "", "field_name", "The record has no variable name; it is skipped.", "error")
                continue
            name = raw_name.lower()
            if name in self.fields:
                self.report.add(record, raw_name, "field_name",
                                f"The variable {raw_name} is defined twice; this record is skipped.", "error")
                continue
            if not form_name:
                self.report.add(record, raw_name, "form_name", "The field has no form name; it is skipped.", "error")
                continue
            if kind not in FIELD_TYPES:
                self.report.add(record, raw_name, "field_type",
                                f"The field type {kind or '(empty)'!r} is unknown; the field is skipped.", "error")
                continue
            if kind == "sql":
                self.report.add(record, raw_name, "field_type",
                                "sql fields (dynamic SQL queries) are not supported; the field is skipped.", "error")
                continue
            code = _item_code(name)
            if len(code) > 64 or code in self.used_codes:
                code = _unique(code, self.used_codes, 64)
            else:
                self.used_codes.add(code)
            if code != raw_name:
                self.report.add(record, raw_name, "field_name",
                                f"The variable {raw_name} does not fit item codes (lower-case letter, then up to 63 "
                                f"lower-case letters, digits or _); it is imported as {code}.")
            if form_name not in self.form_codes:
                self.form_names.append(form_name)
                self.form_codes[form_name] = code_of_form = _form_code(form_name, used_forms)
                self.form_fields[form_name] = []
                if code_of_form != form_name.upper():
                    self.report.add(record, raw_name, "form_name",
                                    f"The form name {form_name} does not fit form codes; the form is coded "
                                    f"{code_of_form}.")
            cells_type = kind
            item = _Field(record=record, name=name, code=code, form_name=form_name, type=cells_type,
                          has_value=kind != "descriptive", checkbox=kind == "checkbox")
            self.fields[name] = item
            self.form_fields[form_name].append(item)

    # logic
    def resolver(self, form_name: str, record: _Record) -> Any:
        form_code = self.form_codes[form_name]

        def resolve(ref: FieldRef) -> tuple[str, bool]:
            target = self.fields.get(ref.field)
            if target is None:
                if ref.field.endswith("_complete") and any(
                        name.lower() == ref.field[:-9] for name in self.form_names):
                    raise RedcapLogicError(f"[{ref.field}] is a REDCap form status field, which Suifang does not "
                                           "have")
                raise RedcapLogicError(f"[{ref.field}] is not a field of this data dictionary")
            if not target.has_value:
                raise RedcapLogicError(f"[{ref.field}] is a descriptive field and holds no value")
            other_form = self.form_codes[target.form_name]
            if ref.event is not None:
                event = ref.event.upper()
                if not FORM_CODE_RE.fullmatch(event):
                    raise RedcapLogicError(f"the event name [{ref.event}] does not fit event codes")
                return f"{event}.{other_form}.{target.code}", target.checkbox
            if other_form == form_code:
                return target.code, target.checkbox
            return f"{other_form}.{target.code}", target.checkbox

        return resolve

    def logic(self, source: str, form_name: str, record: _Record, field_name: str, column: str,
              consequence: str) -> Any | None:
        """JSON Logic for a REDCap expression, or None (reported)."""
        from ecrf.logic import LogicError, logic_validate

        try:
            expr, warnings = redcap_to_logic(source, resolve=self.resolver(form_name, record))
        except RedcapLogicError as exc:
            self.report.add(record, field_name, column, f"Not translated: {exc}; {consequence}.", "error")
            return None
        try:
            issues = logic_validate(expr)
        except LogicError as exc:
            issues = [str(exc)]
        if issues:
            self.report.add(record, field_name, column,
                            f"The translation is not valid JSON Logic ({'; '.join(issues)}); {consequence}.",
                            "error")
            return None
        for warning in warnings:
            self.report.add(record, field_name, column, f"Translated with a difference: {warning}.")
        return expr

    # pass 2: items
    def build(self) -> list[dict[str, Any]]:
        forms: list[dict[str, Any]] = []
        for form_name in self.form_names:
            form = _FormBuilder(self, form_name)
            for item_field in self.form_fields[form_name]:
                form.add(item_field)
            doc = form.document()
            if not doc["items"]:
                first = self.form_fields[form_name][0].record
                self.report.add(first, "", "form_name", f"The form {form_name} has no field that could be "
                                                        "imported; it is not created.", "error")
                continue
            forms.append(doc)
            form.check(doc)
        return forms


class _FormBuilder:
    def __init__(self, importer: _Importer, form_name: str) -> None:
        self.importer = importer
        self.report = importer.report
        self.form_name = form_name
        self.code = importer.form_codes[form_name]
        self.items: list[dict[str, Any]] = []
        self.lines: list[_Record] = []  # the record of each item, for problems
        self.code_lists: dict[str, list[dict[str, Any]]] = {}
        self.list_keys: dict[str, str] = {}  # canonical content -> list name
        self.list_records: dict[str, _Record] = {}

    def document(self) -> dict[str, Any]:
        title = _humanise(self.form_name) or self.code
        doc: dict[str, Any] = {"code": self.code, "title": _texts(title), "items": self.items}
        if self.code_lists:
            doc["code_lists"] = self.code_lists
        return doc

    def check(self, doc: dict[str, Any]) -> None:
        problems = definition_validate(doc)
        if problems:
            self.importer.problems[self.code] = problems
        for path, messages in problems.items():
            parts = path.split(".")
            record: _Record | None = None
            field_name = ""
            if parts[0] == "items" and len(parts) > 1 and parts[1].isdigit() and int(parts[1]) < len(self.lines):
                record = self.lines[int(parts[1])]
                field_name = self.items[int(parts[1])].get("code", "")
            elif parts[0] == "code_lists" and len(parts) > 1:
                record = self.list_records.get(parts[1])
            for message in messages:
                self.report.add(record, field_name, "", f"Form {self.code}: {path}: {message}", "error")

    def add_code_list(self, name: str, entries: list[dict[str, Any]], record: _Record) -> str:
        key = repr([(entry["value"], sorted(entry["labels"].items())) for entry in entries])
        if key in self.list_keys:
            return self.list_keys[key]
        list_name = _unique(re.sub(r"[^A-Za-z0-9_]", "_", name), set(self.code_lists), 40)
        self.code_lists[list_name] = entries
        self.list_keys[key] = list_name
        self.list_records[list_name] = record
        return list_name

    def warn(self, item_field: _Field, column: str, message: str, severity: str = "warning") -> None:
        self.report.add(item_field.record, item_field.name, column, message, severity)

    def cell(self, item_field: _Field, key: str) -> str:
        return item_field.record.cells.get(key, "")

    # -- one field
    def add(self, item_field: _Field) -> None:
        record = item_field.record
        if record.extra:
            self.warn(item_field, "", f"The record has {len(record.extra)} cell(s) beyond the header; they are "
                                      "ignored.")
        header = self.cell(item_field, "section_header")
        if header.strip():
            text = _clean(header, record, item_field.name, "section_header", self.report)
            code = section_code(item_field.code)
            if code in self.importer.used_codes:
                code = _unique(code, self.importer.used_codes, 64)
            else:
                self.importer.used_codes.add(code)
            self.items.append({"code": code, "type": "section", "label": _texts(text)})
            self.lines.append(record)
        item = self.item(item_field)
        self.items.append(item)
        self.lines.append(record)

    def item(self, f: _Field) -> dict[str, Any]:
        kind = f.type
        label = _clean(self.cell(f, "field_label"), f.record, f.name, "field_label", self.report)
        item: dict[str, Any] = {"code": f.code, "type": "text"}
        if kind == "descriptive":
            item["type"] = "section"
            item["label"] = _texts(label)
        else:
            if not label:
                self.warn(f, "field_label", f"The field has no label; its variable name {f.name} is used.")
                label = f.name
            item["label"] = _texts(label)
        note = self.cell(f, "field_note")
        if note.strip():
            item["help"] = _texts(_clean(note, f.record, f.name, "field_note", self.report))
        getattr(self, f"type_{kind}")(f, item)
        self.common(f, item)
        return item

    def common(self, f: _Field, item: dict[str, Any]) -> None:
        valueless = item["type"] == "section"
        flag_columns = (("required", "required"), ("identifier", "identifier"), ("matrix_ranking", "matrix ranking"))
        for key, what in flag_columns:
            value = self.cell(f, key).strip().lower()
            if not value:
                continue
            if value not in ("y", "yes", "1", "n", "no", "0"):
                self.warn(f, key, f"The value {value!r} is not y or n; the {what} setting is ignored.")
                continue
            if value not in ("y", "yes", "1"):
                continue
            if key == "matrix_ranking":
                self.warn(f, key, "Matrix ranking is not supported; it is ignored.")
            elif valueless:
                self.warn(f, key, f"A descriptive field holds no value; the {what} setting is ignored.")
            elif key == "required":
                item["required"] = "hard"
            else:
                item["identifier"] = True
        alignment = self.cell(f, "alignment").strip()
        if alignment:
            self.warn(f, "alignment", f"Custom Alignment {alignment} is not kept (Suifang lays items out itself).")
        number = self.cell(f, "question_number").strip()
        if number:
            self.warn(f, "question_number", f"The survey question number {number!r} is not kept.")
        group = self.cell(f, "matrix_group").strip()
        if group:
            item["matrix_group"] = group
        branching = self.cell(f, "branching")
        if branching.strip():
            expr = self.importer.logic(branching, f.form_name, f.record, f.name, "branching",
                                       "the field is kept and always shown")
            if expr is not None:
                item["show_if"] = expr
        annotation = self.cell(f, "annotation")
        if annotation.strip():
            item["annotation"] = annotation
            self.tags(f, item, annotation)

    def tags(self, f: _Field, item: dict[str, Any], annotation: str) -> None:
        for tag, argument in _action_tags(annotation):
            if tag == "READONLY":
                if item["type"] == "section":
                    self.warn(f, "annotation", "@READONLY on a descriptive field has no effect.")
                else:
                    item["readonly"] = True
            elif tag == "DEFAULT":
                self.default(f, item, argument or "")
            elif tag == "CALCTEXT":
                self.calctext(f, item, argument)
            elif tag in _NOW_TAGS:
                self.warn(f, "annotation", f"@{tag} (fill in the current date/time) is not translated; it stays "
                                           "in the annotation.")
            elif tag in _HIDDEN_TAGS:
                self.warn(f, "annotation", f"@{tag} is not translated: the item stays visible (show_if false "
                                           "would stop storing its value); the tag stays in the annotation.")
            else:
                self.warn(f, "annotation", f"The action tag @{tag} is not translated; it stays in the annotation.")

    def default(self, f: _Field, item: dict[str, Any], text: str) -> None:
        kind = item["type"]
        value: Any = text
        problem = ""
        if _PIPING_RE.search(text):
            problem = "piping in @DEFAULT is not translated"
        elif kind in ("section", "calculated", "file", "group"):
            problem = f"a {kind} item takes no default"
        elif kind in ("integer", "decimal", "scale"):
            number = _number(text, kind)
            if number is None:
                problem = f"{text!r} is not a number"
            value = number
        elif kind == "yes_no":
            if text.strip() not in ("0", "1"):
                problem = f"{text!r} is not 1 (yes) or 0 (no)"
            value = text.strip()
        elif kind in ("single_choice", "multiple_choice"):
            allowed = {entry["value"] for entry in self.code_lists.get(item.get("code_list", ""), [])}
            chosen = [part.strip() for part in text.split(",")] if kind == "multiple_choice" else [text.strip()]
            if set(chosen) - allowed:
                problem = f"{text!r} is not among the field's choice codes"
            value = chosen if kind == "multiple_choice" else chosen[0]
        elif kind in ("date", "datetime", "time"):
            iso = _iso(text, kind)
            if iso is None:
                problem = f"{text!r} is not an ISO {kind}"
            value = iso
        if problem:
            self.warn(f, "annotation", f"@DEFAULT is not translated: {problem}.")
        else:
            item["default"] = value

    def calctext(self, f: _Field, item: dict[str, Any], argument: str | None) -> None:
        if item["type"] not in ("text", "long_text") or argument is None:
            self.warn(f, "annotation", "@CALCTEXT is only translated on text fields; it stays in the annotation.",
                      "error")
            return
        expr = self.importer.logic(argument, f.form_name, f.record, f.name, "annotation",
                                   "the field stays a text field without the calculation")
        if expr is None:
            return
        for key in ("format", "max_length", "default", "readonly"):
            item.pop(key, None)
        item["type"] = "calculated"
        item["calc"] = expr

    # -- field types
    def type_text(self, f: _Field, item: dict[str, Any]) -> None:
        validation = self.cell(f, "validation").strip().lower()
        comma = False
        if not validation:
            pass
        elif validation.startswith("date_"):
            item["type"] = "date"
            if validation != "date_ymd":
                self.warn(f, "validation", f"{validation}: the day/month order of REDCap's entry field is not kept; "
                                           "dates are stored as ISO YYYY-MM-DD.")
        elif validation.startswith("datetime_"):
            item["type"] = "datetime"
            if not validation.endswith("_ymd"):
                self.warn(f, "validation", f"{validation}: the day/month order of REDCap's entry field is not kept; "
                                           "date-times are stored as ISO YYYY-MM-DDTHH:MM.")
        elif validation in ("time", "time_hh_mm_ss"):
            item["type"] = "time"
        elif validation == "time_mm_ss":
            item["type"] = "time"
            self.warn(f, "validation", "time_mm_ss (minutes:seconds) becomes a time of day (HH:MM).")
        elif validation == "integer":
            item["type"] = "integer"
        elif validation in ("number", "number_comma_decimal", "float") or _NUMBER_DP_RE.fullmatch(validation):
            item["type"] = "decimal"
            places = _NUMBER_DP_RE.fullmatch(validation)
            if places:
                item["precision"] = int(places.group(1))
            comma = "comma" in validation
            if comma:
                self.warn(f, "validation", f"{validation}: the comma as decimal separator is a display setting; "
                                           "the number is stored with a point.")
        elif validation in _TEXT_FORMATS:
            item["format"] = _TEXT_FORMATS[validation]
        elif validation in _APPROXIMATE_FORMATS:
            item["format"] = _APPROXIMATE_FORMATS[validation]
            self.warn(f, "validation", f"{validation} becomes the generic MRN format (letters, digits, -).")
        else:
            self.warn(f, "validation", f"The validation type {validation} is not supported; the field is free text.")
        self.range(f, item, comma)

    def range(self, f: _Field, item: dict[str, Any], comma: bool = False) -> None:
        kind = item["type"]
        bounds: dict[str, Any] = {}
        for side, key in (("min", "validation_min"), ("max", "validation_max")):
            text = self.cell(f, key).strip()
            if not text:
                continue
            if kind not in ("integer", "decimal", "date", "datetime", "time"):
                self.warn(f, key, f"A {side}imum ({text}) only applies to numbers, dates and times; it is ignored.")
                continue
            if text.lower().lstrip("@") in ("today", "now", "today-server", "now-server", "today-utc", "now-utc"):
                self.warn(f, key, f"The relative bound {text} is not translated.")
                continue
            value: Any = _number(text, kind, comma) if kind in ("integer", "decimal") else _iso(text, kind)
            if value is None:
                self.warn(f, key, f"The {side}imum {text!r} is not a valid {kind}; it is ignored.")
                continue
            bounds[side] = value
        if "min" in bounds and "max" in bounds and type(bounds["min"]) is type(bounds["max"]) \
                and bounds["min"] > bounds["max"]:
            self.warn(f, "validation_min", "The minimum is greater than the maximum; the range is ignored.")
            return
        if bounds:
            item["range"] = {"hard": bounds}

    def type_notes(self, f: _Field, item: dict[str, Any]) -> None:
        item["type"] = "long_text"
        self.ignore_validation(f)

    def ignore_validation(self, f: _Field) -> None:
        for key in ("validation", "validation_min", "validation_max"):
            value = self.cell(f, key).strip()
            if value:
                self.warn(f, key, f"{value!r} does not apply to a {f.type} field; it is ignored.")

    def choices(self, f: _Field, item: dict[str, Any], kind: str, widget: str) -> None:
        text = self.cell(f, "choices")
        entries: list[dict[str, Any]] = []
        values: set[str] = set()
        parts = text.split("|") if "|" in text or "\n" not in text.strip() else text.split("\n")
        for part in parts:
            if not part.strip():
                continue
            if "," in part:
                value, label = (piece.strip() for piece in part.split(",", 1))
            else:
                value = label = part.strip()
                self.warn(f, "choices", f"The choice {part.strip()!r} has no code; the text is used as the code.")
            label = _clean(label, f.record, f.name, "choices", self.report) or value
            if not value or len(value) > 100:
                self.warn(f, "choices", f"The choice code {value!r} is empty or longer than 100 characters; the "
                                        "choice is dropped.", "error")
                continue
            if value in values:
                self.warn(f, "choices", f"The choice code {value!r} appears twice; the second one is dropped.",
                          "error")
                continue
            values.add(value)
            entries.append({"value": value, "labels": _texts(label)})
        if len(entries) > MAX_CODE_LIST:
            self.warn(f, "choices", f"More than {MAX_CODE_LIST} choices; the rest are dropped.", "error")
            entries = entries[:MAX_CODE_LIST]
        if not entries:
            self.warn(f, "choices", "The field has no choices; it is imported as free text.", "error")
            return
        item["type"] = kind
        item["code_list"] = self.add_code_list(f.code, entries, f.record)
        item["widget"] = widget
        validation = self.cell(f, "validation").strip()
        if validation:
            self.warn(f, "validation", f"{validation!r} (such as autocomplete) is not kept for choice fields.")

    def type_dropdown(self, f: _Field, item: dict[str, Any]) -> None:
        self.choices(f, item, "single_choice", "dropdown")

    def type_radio(self, f: _Field, item: dict[str, Any]) -> None:
        self.choices(f, item, "single_choice", "radio")

    def type_checkbox(self, f: _Field, item: dict[str, Any]) -> None:
        self.choices(f, item, "multiple_choice", "checkbox")

    def type_yesno(self, f: _Field, item: dict[str, Any]) -> None:
        item["type"] = "yes_no"
        self.ignore_validation(f)

    def type_truefalse(self, f: _Field, item: dict[str, Any]) -> None:
        item["type"] = "single_choice"
        entries = [{"value": entry["value"], "labels": dict(entry["labels"])} for entry in TF_LIST]
        item["code_list"] = self.add_code_list("TF", entries, f.record)
        item["widget"] = "radio"
        self.ignore_validation(f)

    def type_calc(self, f: _Field, item: dict[str, Any]) -> None:
        source = self.cell(f, "choices")
        expr = None
        if source.strip():
            expr = self.importer.logic(source, f.form_name, f.record, f.name, "choices",
                                       "the field is kept as a read-only number without its calculation")
        else:
            self.warn(f, "choices", "The calc field has no calculation; it is kept as a read-only number.", "error")
        if expr is None:
            item.update(type="decimal", readonly=True)
        else:
            item.update(type="calculated", calc=expr)
        self.ignore_validation(f)

    def type_slider(self, f: _Field, item: dict[str, Any]) -> None:
        item["type"] = "scale"
        scale: dict[str, Any] = {"min": 0, "max": 100, "step": 1}
        for side, key in (("min", "validation_min"), ("max", "validation_max")):
            text = self.cell(f, key).strip()
            if text:
                number = _number(text, "integer")
                if number is None:
                    self.warn(f, key, f"The slider {side}imum {text!r} is not a whole number; {scale[side]} is used.")
                else:
                    scale[side] = number
        if scale["min"] >= scale["max"]:
            self.warn(f, "validation_min", "The slider minimum is not below its maximum; 0 to 100 is used.", "error")
            scale.update(min=0, max=100)
        labels = [part.strip() for part in self.cell(f, "choices").split("|")]
        labels = [_clean(label, f.record, f.name, "choices", self.report) for label in labels]
        if len(labels) > 3:
            self.warn(f, "choices", "A slider has at most 3 labels (left | middle | right); the rest are dropped.")
        left = labels[0] if labels else ""
        right = labels[2] if len(labels) >= 3 else labels[1] if len(labels) == 2 else ""
        middle = labels[1] if len(labels) >= 3 else ""
        if left:
            scale["min_label"] = _texts(left)
        if right:
            scale["max_label"] = _texts(right)
        if middle:
            self.warn(f, "choices", f"The middle slider label {middle!r} is not kept (scales have end labels only).")
        item["scale"] = scale
        shown = self.cell(f, "validation").strip()
        if shown:
            self.warn(f, "validation", f"The slider display option {shown!r} (Show Slider Number) is not kept.")

    def type_file(self, f: _Field, item: dict[str, Any]) -> None:
        item["type"] = "file"
        validation = self.cell(f, "validation").strip().lower()
        if validation == "signature":
            item["file"] = {"types": list(SIGNATURE_TYPES)}
            self.warn(f, "validation", "Signature fields become PNG image uploads (there is no signature pad).")
        else:
            item["file"] = {"types": list(FILE_TYPES)}
            if validation:
                self.warn(f, "validation", f"{validation!r} does not apply to a file field; it is ignored.")
        for key in ("validation_min", "validation_max"):
            value = self.cell(f, key).strip()
            if value:
                self.warn(f, key, f"{value!r} does not apply to a file field; it is ignored.")

    def type_descriptive(self, f: _Field, item: dict[str, Any]) -> None:
        item["type"] = "section"
        self.ignore_validation(f)
        if self.cell(f, "choices").strip():
            self.warn(f, "choices", "A descriptive field has no choices; the cell is ignored.")


def _number(text: str, kind: str, comma: bool = False) -> int | float | None:
    text = text.strip()
    if comma or re.fullmatch(r"-?\d+,\d+", text):
        text = text.replace(",", ".")
    try:
        number = Decimal(text)
    except InvalidOperation:
        return None
    if not number.is_finite():
        return None
    if kind == "integer":
        return int(number) if number == number.to_integral_value() else None
    return float(number) if "." in text or "e" in text.lower() else int(number)


def _iso(text: str, kind: str) -> str | None:
    text = text.strip()
    try:
        if kind == "date":
            return date.fromisoformat(text).isoformat() if _ISO_DATE_RE.fullmatch(text) else None
        if kind == "time":
            return text if _TIME_RE.fullmatch(text) and datetime.strptime(
                text, "%H:%M:%S" if len(text) == 8 else "%H:%M") else None
        if kind == "datetime":
            match = re.fullmatch(r"(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2}(:\d{2})?)", text)
            if not match:
                return None
            value = f"{match.group(1)}T{match.group(2)}"
            datetime.fromisoformat(value)
            return value
    except ValueError:
        return None
    return text


def redcap_dictionary_import(*, content: bytes, file_name: str = "") -> RedcapImport:
    """Form definitions from a REDCap data dictionary CSV, with a report of what was lost.

    Raises DomainError (fields={"file": [...]}) for a file that is not a readable
    dictionary: too large, empty, not CSV, required columns missing, too many fields."""
    reporter = _Reporter()
    records = _read(content, file_name, reporter)
    importer = _Importer(records, reporter)
    importer.scan()
    forms = importer.build()
    report = sorted(reporter.entries, key=lambda entry: (entry["line"], entry["row"]))
    item_count = sum(len(iter_items(form["items"])) for form in forms)
    return RedcapImport(forms=forms, report=report, forms_ok=bool(forms) and not importer.problems,
                        field_count=len(records), item_count=item_count, problems=importer.problems)


# --- export ------------------------------------------------------------------------------------

class _Exporter:
    def __init__(self, forms: list[dict[str, Any]]) -> None:
        self.forms = forms
        self.report: list[dict[str, Any]] = []
        self.names: dict[tuple[str, str], str] = {}  # (form code, item code) -> REDCap variable
        self.items: dict[tuple[str, str], dict[str, Any]] = {}
        self.used: set[str] = set()

    def warn(self, form: str, item: str, column: str, message: str, severity: str = "warning") -> None:
        self.report.append({"form": form, "field": item, "column": _HEADERS.get(column, column),
                            "message": message, "severity": severity})

    def assign_names(self) -> None:
        for form in self.forms:
            code = str(form.get("code", ""))
            for item in iter_items(form.get("items") or []):
                item_code = str(item.get("code", ""))
                name = item_code
                if name in self.used:
                    name = _unique(item_code, self.used, 64)
                    self.warn(code, item_code, "field_name", f"The item code {item_code} is used in another form "
                                                             f"too; REDCap needs unique names, so it is {name}.")
                else:
                    self.used.add(name)
                self.names[(code, item_code)] = name
                self.items[(code, item_code)] = item

    def namer(self, form_code: str) -> Any:
        def name(path: str) -> tuple[str | None, str]:
            parts = path.split(".")
            if len(parts) == 1:
                return None, self.names.get((form_code, parts[0]), parts[0])
            if len(parts) == 2:
                return None, self.names.get((parts[0], parts[1]), parts[1])
            if len(parts) == 3:
                return parts[0].lower(), self.names.get((parts[1], parts[2]), parts[2])
            raise RedcapLogicError(f"the variable {path!r} has no REDCap equivalent")

        return name

    def same_calctext(self, form: str, annotation: str, calc: Any) -> bool:
        """Whether the annotation's @CALCTEXT(..) already reads as ``calc`` (then it stays verbatim)."""
        argument = next((arg for tag, arg in _action_tags(annotation) if tag == "CALCTEXT"), None)
        if argument is None:
            return False
        where = {name: key for key, name in self.names.items()}

        def resolve(ref: FieldRef) -> tuple[str, bool]:
            if ref.field not in where:
                raise RedcapLogicError(f"[{ref.field}] is unknown")
            form_code, item_code = where[ref.field]
            item = self.items.get((form_code, item_code)) or {}
            path = item_code if form_code == form else f"{form_code}.{item_code}"
            return (f"{ref.event.upper()}.{form_code}.{item_code}" if ref.event else path,
                    item.get("type") == "multiple_choice")

        try:
            return redcap_to_logic(argument, resolve=resolve)[0] == calc
        except RedcapLogicError:
            return False

    def print_logic(self, expr: Any, form: str, item: str, column: str) -> str:
        try:
            return logic_to_redcap(expr, namer=self.namer(form))
        except RedcapLogicError as exc:
            self.warn(form, item, column, f"Not exported: {exc}.", "error")
            return ""

    def rows(self) -> list[list[str]]:
        self.assign_names()
        rows: list[list[str]] = [list(REDCAP_HEADER)]
        for form in self.forms:
            rows.extend(self.form_rows(form))
        return rows

    def form_rows(self, form: dict[str, Any]) -> list[list[str]]:
        code = str(form.get("code", ""))
        title = (form.get("title") or {}).get("en") or (form.get("title") or {}).get("zh-hans") or ""
        # The REDCap form name the title came from, when it gives this code back on import.
        candidate = title.strip().lower().replace(" ", "_")
        fits = re.fullmatch(r"[a-z][a-z0-9_]*", candidate) and _form_code(candidate, set()) == code
        form_name = candidate if fits else code.lower()
        if title and title != _humanise(form_name):
            self.warn(code, "", "form_name", f"The form title {title!r} is not exported (REDCap dictionaries carry "
                                             "only the form name).")
        if form.get("patient_reported"):
            self.warn(code, "", "form_name", "patient_reported is not exported (enable the REDCap survey yourself).")
        lists = form.get("code_lists") or {}
        items: list[dict[str, Any]] = []
        for item in form.get("items") or []:
            if item.get("type") == "group":
                self.warn(code, item.get("code", ""), "field_type", "Repeating groups do not exist in REDCap "
                                                                    "dictionaries; the group's items are exported "
                                                                    "as plain fields.", "error")
                items.extend(item.get("items") or [])
            else:
                items.append(item)
        rows: list[list[str]] = []
        header = ""
        for index, item in enumerate(items):
            following = items[index + 1] if index + 1 < len(items) else None
            if item.get("type") == "section" and following is not None and not item.get("show_if") \
                    and str(item.get("code", "")).startswith(section_code(str(following.get("code", "")))):
                header = self.text(item.get("label"), code, item, "section_header")
                continue
            cells = self.row(code, form_name, item, lists)
            cells["section_header"] = header
            header = ""
            rows.append([cells.get(key, "") for key in _STANDARD_ORDER])
        return rows

    def text(self, texts: Any, form: str, item: dict[str, Any], column: str) -> str:
        if not isinstance(texts, dict):
            return ""
        english, chinese = texts.get("en") or "", texts.get("zh-hans") or ""
        if english and chinese and chinese != english:
            self.warn(form, item.get("code", ""), column, "The zh-hans text is not exported (REDCap has one "
                                                          "language).")
        return english or chinese

    def row(self, form: str, form_name: str, item: dict[str, Any], lists: dict[str, Any]) -> dict[str, str]:
        code, kind = str(item.get("code", "")), item.get("type")
        cells: dict[str, str] = {"field_name": self.names.get((form, code), code), "form_name": form_name,
                                 "field_label": self.text(item.get("label"), form, item, "field_label"),
                                 "field_note": self.text(item.get("help"), form, item, "field_note")}
        extra_tags: list[str] = []
        annotation = item.get("annotation") or ""

        def lost(what: str, column: str = "field_type") -> None:
            self.warn(form, code, column, f"{what} is not exported (no REDCap equivalent).")

        if kind in ("text", "long_text"):
            cells["field_type"] = "text" if kind == "text" else "notes"
            text_format = item.get("format")
            if text_format in _FORMATS_BACK and kind == "text":
                cells["validation"] = _FORMATS_BACK[text_format]
            elif text_format:
                lost(f"The text format {text_format}", "validation")
            if item.get("max_length") not in (None, DEFAULT_MAX_LENGTH.get(str(kind))):
                lost(f"max_length {item.get('max_length')}", "validation")
        elif kind in ("integer", "decimal"):
            cells["field_type"] = "text"
            precision = item.get("precision")
            if kind == "integer":
                cells["validation"] = "integer"
            elif precision is not None and 1 <= precision <= 4:
                cells["validation"] = f"number_{precision}dp"
            else:
                cells["validation"] = "number"
                if precision is not None:
                    lost(f"precision {precision}", "validation")
        elif kind in ("date", "datetime", "time"):
            cells["field_type"] = "text"
            cells["validation"] = {"date": "date_ymd", "datetime": "datetime_ymd", "time": "time"}[kind]
            if item.get("partial"):
                lost("partial (dates such as 2024 or 2024-05)", "validation")
        elif kind in ("single_choice", "multiple_choice"):
            entries = lists.get(str(item.get("code_list", "")), [])
            if kind == "single_choice" and item.get("code_list") == "TF" and _plain(entries) == _plain(TF_LIST):
                cells["field_type"] = "truefalse"
            else:
                cells["field_type"] = "checkbox" if kind == "multiple_choice" else (
                    "dropdown" if item.get("widget") == "dropdown" else "radio")
                if kind == "single_choice" and item.get("widget") == "checkbox":
                    lost("The checkbox widget of a single choice (radio is used)", "field_type")
                cells["choices"] = self.choices(form, item, entries)
        elif kind == "yes_no":
            cells["field_type"] = "yesno"
        elif kind == "scale":
            cells["field_type"] = "slider"
            scale = item.get("scale") or {}
            low, high = scale.get("min", 0), scale.get("max", 100)
            if (low, high) != (0, 100):
                cells["validation_min"], cells["validation_max"] = _format_number(low), _format_number(high)
            if scale.get("step", 1) != 1:
                lost(f"The scale step {scale.get('step')}", "validation")
            left = self.text(scale.get("min_label"), form, item, "choices")
            right = self.text(scale.get("max_label"), form, item, "choices")
            if left or right:
                cells["choices"] = f"{left} | | {right}" if right else left
        elif kind == "calculated":
            expression = self.print_logic(item.get("calc"), form, code, "choices")
            if "@CALCTEXT" in annotation:
                cells["field_type"] = "text"
                if expression and not self.same_calctext(form, annotation, item.get("calc")):
                    annotation = _replace_calctext(annotation, expression)
            else:
                cells["field_type"] = "calc"
                cells["choices"] = expression
        elif kind == "file":
            cells["field_type"] = "file"
            spec = item.get("file") or {}
            types = spec.get("types") or []
            if types == SIGNATURE_TYPES:
                cells["validation"] = "signature"
            elif types != FILE_TYPES:
                lost(f"The accepted file types ({', '.join(map(str, types))})", "validation")
            if spec.get("max_bytes") is not None:
                lost(f"The file size limit ({spec['max_bytes']} bytes)", "validation")
        elif kind == "section":
            cells["field_type"] = "descriptive"
        else:
            self.warn(form, code, "field_type", f"The item type {kind!r} cannot be exported; the item is written as "
                                                "a text field.", "error")
            cells["field_type"] = "text"
        self.ranges(form, item, cells)
        if item.get("required") == "hard":
            cells["required"] = "y"
        elif item.get("required") == "soft":
            cells["required"] = "y"
            lost("Soft required (REDCap's required is exported instead)", "required")
        if item.get("identifier"):
            cells["identifier"] = "y"
        if item.get("show_if") is not None:
            cells["branching"] = self.print_logic(item["show_if"], form, code, "branching")
        if item.get("matrix_group"):
            cells["matrix_group"] = str(item["matrix_group"])
        if item.get("readonly") and "@READONLY" not in annotation:
            extra_tags.append("@READONLY")
        if "default" in item and item["default"] is not None and "@DEFAULT" not in annotation:
            value = item["default"]
            text = ",".join(map(str, value)) if isinstance(value, list) else _format_number(value) \
                if isinstance(value, int | float) and not isinstance(value, bool) else str(value)
            text = text.replace("T", " ") if kind == "datetime" else text
            quote = "'" if '"' in text else '"'
            extra_tags.append(f"@DEFAULT={quote}{text}{quote}")
        for key, what in (("checks", "Edit checks"), ("missing_codes", "Missing codes"), ("unit", "The unit"),
                          ("cdisc", "The CDISC annotation")):
            if item.get(key):
                lost(what, "annotation")
        cells["annotation"] = " ".join(part for part in (annotation, *extra_tags) if part)
        return cells

    def choices(self, form: str, item: dict[str, Any], entries: list[dict[str, Any]]) -> str:
        parts = []
        for entry in entries:
            value = str(entry.get("value", ""))
            label = self.text(entry.get("labels"), form, item, "choices")
            if "," in value or "|" in value:
                self.warn(form, item.get("code", ""), "choices", f"The code {value!r} contains , or | which REDCap "
                                                                 "cannot hold; the choice is dropped.", "error")
                continue
            if "|" in label:
                self.warn(form, item.get("code", ""), "choices", f"The label {label!r} contains |; it is written "
                                                                 "as /.")
                label = label.replace("|", "/")
            parts.append(f"{value}, {label}")
        return " | ".join(parts)

    def ranges(self, form: str, item: dict[str, Any], cells: dict[str, str]) -> None:
        ranges = item.get("range") or {}
        hard = ranges.get("hard") or {}
        for side in ("min", "max"):
            if side in hard:
                value = hard[side]
                text = _format_number(value) if isinstance(value, int | float) else str(value)
                cells[f"validation_{side}"] = text.replace("T", " ") if item.get("type") == "datetime" else text
        if ranges.get("soft"):
            self.warn(form, item.get("code", ""), "validation_min", "The soft range is not exported (REDCap has one "
                                                                    "range per field).")


def _plain(entries: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(str(entry.get("value")), str((entry.get("labels") or {}).get("en", ""))) for entry in entries]


def _format_number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return repr(value)
    return str(value)


def _replace_calctext(annotation: str, expression: str) -> str:
    match = re.search(r"@CALCTEXT\(", annotation)
    if not match:
        return annotation
    close = _balanced(annotation, match.end() - 1, "(", ")")
    if close < 0:
        return annotation
    return f"{annotation[:match.end()]}{expression}{annotation[close - 1:]}"


def redcap_dictionary_export(*, forms: list[dict[str, Any]]) -> tuple[bytes, list[dict[str, Any]]]:
    """A REDCap data dictionary CSV (UTF-8, the standard 18 columns) for the forms, and a
    report of what could not be written ({"form", "field", "column", "message", "severity"})."""
    exporter = _Exporter(forms)
    rows = exporter.rows()
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8"), exporter.report
