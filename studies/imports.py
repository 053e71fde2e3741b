"""Bulk import of subjects from CSV or XLSX.

Every row is checked first; rows that pass are then enrolled through
``services.subject_enrol`` (gapless subject IDs, encrypted identifying data, task
planning). If any row is invalid nothing is imported, unless the caller asks for the
valid rows only. Each imported row is recorded by a stable key (``SubjectImportRow``),
so uploading the same file again imports nothing new.

``_validate_row`` parses a row's text and applies the same rules as ``subject_enrol``
(``studies.enrolment_rules``), with the database checks batched, so 10,000 rows are
checked with a few queries instead of 10,000 rolled-back enrolments; ``subject_enrol``
still checks every row again when it enrols it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import structlog
from django.db import IntegrityError, transaction
from django.utils.translation import gettext as _

from config.errors import Conflict, DomainError, PermissionDenied
from sites.models import Site, SiteStatus
from sites.selectors import site_ids_visible
from studies import error_codes, services
from studies.enrolment_rules import duplicate_national_id_message, enrolment_check
from studies.models import Arm, Study, StudyStatus, Subject, SubjectImportRow
from studies.selectors import ENROLLING_ROLES

log = structlog.get_logger(__name__)

MAX_FILE_BYTES = 20 * 1024 * 1024
MAX_ROWS = 50_000
PROGRESS_EVERY = 500
IMPORTING_ROLES = ENROLLING_ROLES

FIELDS = ("site", "arm", "consent_date", "enrolment_date", "index_date", "language", "name", "phone", "email",
          "national_id", "birth_date", "address", "external_ref")
REQUIRED = ("site", "consent_date")
DATE_FIELDS = ("consent_date", "enrolment_date", "index_date", "birth_date")
LANGUAGE_ALIASES = {"zh": "zh-hans", "zh-cn": "zh-hans", "中文": "zh-hans", "english": "en", "英文": "en"}

# Header aliases (compared lower-cased, with spaces, hyphens and underscores removed).
ALIASES: dict[str, str] = {
    "site": "site", "sitecode": "site", "中心": "site", "中心编号": "site", "中心代码": "site", "研究中心": "site",
    "arm": "arm", "armcode": "arm", "组别": "arm", "分组": "arm",
    "consentdate": "consent_date", "知情同意日期": "consent_date", "签署知情同意日期": "consent_date",
    "enrolmentdate": "enrolment_date", "enrollmentdate": "enrolment_date", "入组日期": "enrolment_date",
    "indexdate": "index_date", "基线日期": "index_date", "索引日期": "index_date", "手术日期": "index_date",
    "language": "language", "语言": "language",
    "name": "name", "fullname": "name", "姓名": "name",
    "phone": "phone", "mobile": "phone", "电话": "phone", "手机": "phone", "手机号": "phone", "联系电话": "phone",
    "email": "email", "邮箱": "email", "电子邮件": "email", "电子邮箱": "email",
    "nationalid": "national_id", "idnumber": "national_id", "身份证号": "national_id", "身份证号码": "national_id",
    "证件号码": "national_id",
    "birthdate": "birth_date", "dateofbirth": "birth_date", "dob": "birth_date", "出生日期": "birth_date",
    "address": "address", "地址": "address", "住址": "address", "联系地址": "address",
    "externalref": "external_ref", "externalid": "external_ref", "ref": "external_ref", "外部编号": "external_ref",
    "病历号": "external_ref", "外部参考号": "external_ref",
}

ProgressCallback = Callable[[int, int], None]


@dataclass
class ImportReport:
    """What an import did. ``errors`` are {"row": n (1-based data row), "field", "message"};
    ``already_imported`` lists the data rows a previous import already enrolled."""

    fingerprint: str
    total_rows: int = 0
    imported: int = 0
    already_imported: list[int] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    subject_ids: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "total_rows": self.total_rows, "imported": self.imported,
                "already_imported": len(self.already_imported), "already_imported_rows": self.already_imported,
                "errors": self.errors, "subject_ids": self.subject_ids}


def file_error(code: str, message: str) -> DomainError:
    return DomainError(code, message, fields={"file": [message]})


# --- reading ---------------------------------------------------------------------------------

def _cell_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _csv_rows(content: bytes) -> Iterator[list[str]]:
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError:
        try:
            text = content.decode("gb18030")
        except UnicodeDecodeError as exc:
            raise file_error("import_unreadable", _("The file is neither UTF-8 nor GB18030 text.")) from exc
    try:
        dialect: Any = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    try:
        for row in csv.reader(io.StringIO(text, newline=""), dialect):
            yield [cell.strip() for cell in row]
    except csv.Error as exc:
        raise file_error("import_unreadable", _("The CSV file is malformed: %(error)s") % {"error": exc}) from exc


# What a damaged workbook raises, opening it or reading its rows (read-only mode parses
# the sheet lazily). The XML parse errors of lxml and of xml.etree are both SyntaxErrors;
# IndexError is a workbook without a worksheet.
_UNREADABLE_XLSX = (zipfile.BadZipFile, KeyError, ValueError, OSError, SyntaxError, IndexError, TypeError)


def _xlsx_rows(content: bytes) -> Iterator[list[str]]:
    from openpyxl import load_workbook

    try:
        workbook = load_workbook(io.BytesIO(content), read_only=True, data_only=True)
    except _UNREADABLE_XLSX as exc:
        raise file_error("import_unreadable", _("The file is not a readable XLSX workbook.")) from exc
    try:
        sheet = workbook.worksheets[0]
        for values in sheet.iter_rows(values_only=True):
            yield [_cell_text(v) for v in values]
    except _UNREADABLE_XLSX as exc:
        raise file_error("import_unreadable", _("The file is not a readable XLSX workbook.")) from exc
    finally:
        workbook.close()


def is_xlsx(file_name: str, content: bytes) -> bool:
    return file_name.lower().endswith((".xlsx", ".xlsm")) or content[:4] == b"PK\x03\x04"


def _header_key(text: str) -> str:
    return re.sub(r"[\s_\-]", "", text.strip().lstrip("\ufeff").lower())


def read_rows(file_name: str, content: bytes) -> tuple[list[tuple[int, dict[str, str]]], int]:
    """(row number, values by field) of every non-blank data row, and the data row count."""
    rows = _xlsx_rows(content) if is_xlsx(file_name, content) else _csv_rows(content)
    header = next(rows, None)
    while header is not None and not any(header):
        header = next(rows, None)
    if header is None:
        raise file_error("import_empty", _("The file has no header row."))
    columns: dict[int, str] = {}
    for index, title in enumerate(header):
        name = ALIASES.get(_header_key(title or ""))
        if name is not None:
            if name in columns.values():
                raise file_error("import_bad_header", _("The column %(column)s appears twice.") % {"column": name})
            columns[index] = name
    missing = [name for name in REQUIRED if name not in columns.values()]
    if missing:
        raise file_error("import_bad_header", _("Required columns are missing: %(columns)s.")
                          % {"columns": ", ".join(missing)})
    data: list[tuple[int, dict[str, str]]] = []
    number = 0
    for raw in rows:
        number += 1
        if number > MAX_ROWS:
            raise file_error("import_too_many_rows", _("A file may hold at most %(max)d rows.") % {"max": MAX_ROWS})
        if not any(raw):
            continue
        data.append((number, {name: (raw[i] if i < len(raw) else "") for i, name in columns.items()}))
    return data, number


# --- checking --------------------------------------------------------------------------------

def _parse_date(value: str) -> date | None:
    text = value.strip().replace("/", "-").replace(".", "-")
    if " " in text:
        text = text.split(" ", 1)[0]
    match = re.fullmatch(r"(\d{4})-(\d{1,2})-(\d{1,2})", text)
    if not match:
        return None
    try:
        return date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        return None


@dataclass
class _Row:
    number: int
    values: dict[str, str]
    key: str = ""
    national_hash: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    errors: list[tuple[str, str]] = field(default_factory=list)


def _row_key(values: dict[str, str], national_hash: str | None) -> str:
    ref = values.get("external_ref", "").strip()
    if ref:
        return hashlib.sha256(b"ref\x00" + ref.encode("utf-8")).hexdigest()
    if national_hash:
        return hashlib.sha256(b"nid\x00" + national_hash.encode("ascii")).hexdigest()
    canonical = json.dumps({k: values.get(k, "") for k in FIELDS}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(b"row\x00" + canonical.encode("utf-8")).hexdigest()


def _validate_row(row: _Row, *, study: Study, sites: dict[str, Site], arms: dict[str, Arm],
                  today_by_site: dict[int, date]) -> None:
    """Parse one row and apply the enrolment rules, so a whole file can be checked
    before anything is written."""
    values, errors = row.values, row.errors
    site = sites.get(values.get("site", "").strip().upper())
    if site is None:
        errors.append(("site", _("No such site, or it is not one of yours.")))
    elif site.status != SiteStatus.ACTIVE:
        errors.append(("site", _("This site is not active.")))
    arm = None
    if values.get("arm", "").strip():
        arm = arms.get(values["arm"].strip().upper())
        if arm is None:
            errors.append(("arm", _("No such arm in this study.")))
    parsed: dict[str, date | None] = {}
    for name in DATE_FIELDS:
        text = values.get(name, "").strip()
        parsed[name] = _parse_date(text) if text else None
        if text and parsed[name] is None:
            errors.append((name, _("Use the form YYYY-MM-DD.")))
    if not values.get("consent_date", "").strip():
        errors.append(("consent_date", _("This field is required.")))
    today = today_by_site.get(site.pk) if site is not None else None
    consent, birth = parsed["consent_date"], parsed["birth_date"]
    language = values.get("language", "").strip().lower().replace("_", "-") or "zh-hans"
    language = LANGUAGE_ALIASES.get(language, language)
    phone, email, national_id = values.get("phone", ""), values.get("email", ""), values.get("national_id", "")
    check = enrolment_check(today=today, consent_date=consent, enrolment_date=parsed["enrolment_date"],
                            index_date=parsed["index_date"], birth_date=birth, language=language,
                            name=values.get("name", ""), phone=phone, email=email, national_id=national_id,
                            address=values.get("address", ""))
    errors.extend(check.problems)
    row.national_hash = check.national_id_hash
    if len(values.get("external_ref", "")) > 200:
        errors.append(("external_ref", _("At most %(max)d characters.") % {"max": 200}))
    row.key = _row_key(values, row.national_hash)
    if not errors and site is not None and consent is not None:
        row.kwargs = {"site": site, "arm": arm, "consent_date": consent, "enrolment_date": parsed["enrolment_date"],
                      "index_date": parsed["index_date"], "language": language, "name": values.get("name", ""),
                      "phone": phone, "email": email, "national_id": national_id,
                      "birth_date": birth.isoformat() if birth else "", "address": values.get("address", "")}


# --- the import ------------------------------------------------------------------------------

def subjects_import(
    *, study: Study, file_name: str, content: bytes, membership: Any, valid_rows_only: bool = False,
    progress: ProgressCallback | None = None,
) -> ImportReport:
    """Import subjects from a CSV or XLSX file into `study` at the member's sites."""
    if membership is None or membership.role not in IMPORTING_ROLES:
        raise PermissionDenied("permission_denied", _("Your role does not allow enrolling subjects."))
    if len(content) > MAX_FILE_BYTES:
        raise file_error("import_too_large", _("A file may be at most %(max)d MB.")
                          % {"max": MAX_FILE_BYTES // (1024 * 1024)})
    if study.status != StudyStatus.ACTIVE:
        raise Conflict(error_codes.STUDY_NOT_ACTIVE, _("Subjects can only be enrolled in an active study."))
    report = ImportReport(fingerprint=hashlib.sha256(content).hexdigest())
    data, _count = read_rows(file_name, content)
    report.total_rows = len(data)

    visible = site_ids_visible(membership=membership)
    site_query = Site.objects.all() if visible is None else Site.objects.filter(pk__in=visible)
    sites = {s.code.upper(): s for s in site_query}
    arms = {a.code.upper(): a for a in Arm.objects.filter(study=study)}
    today_by_site = {s.pk: services.site_today(s) for s in sites.values()}

    rows = [_Row(number=n, values=v) for n, v in data]
    for row in rows:
        _validate_row(row, study=study, sites=sites, arms=arms, today_by_site=today_by_site)

    done_keys = set(SubjectImportRow.objects.filter(study=study, row_key__in=[r.key for r in rows])
                    .values_list("row_key", flat=True))
    pending = []
    for row in rows:
        if row.key in done_keys:
            report.already_imported.append(row.number)
        else:
            pending.append(row)

    hashes = [r.national_hash for r in pending if r.national_hash]
    taken = set(Subject.objects.filter(national_id_hash__in=hashes).values_list("national_id_hash", flat=True))
    first_by_hash: dict[str, int] = {}
    first_by_key: dict[str, int] = {}
    for row in pending:
        if row.national_hash:
            if row.national_hash in taken:
                row.errors.append(("national_id", duplicate_national_id_message()))
            elif row.national_hash in first_by_hash:
                row.errors.append(("national_id", _("The same national ID is on row %(row)d.")
                                   % {"row": first_by_hash[row.national_hash]}))
            else:
                first_by_hash[row.national_hash] = row.number
        if row.key in first_by_key:
            has_ref = bool(row.values.get("external_ref", "").strip())
            if has_ref or not row.national_hash:  # a repeated national ID is reported on its own field
                row.errors.append(("external_ref" if has_ref else "row",
                                   _("This row repeats row %(row)d.") % {"row": first_by_key[row.key]}))
        else:
            first_by_key[row.key] = row.number

    for row in pending:
        for field_name, message in row.errors:
            report.errors.append({"row": row.number, "field": field_name, "message": str(message)})
    valid = [row for row in pending if not row.errors]
    if report.errors and not valid_rows_only:
        log.info("subjects.import_refused", study_id=study.pk, rows=report.total_rows, errors=len(report.errors))
        return report

    total = len(valid)
    with transaction.atomic():
        for done, row in enumerate(valid, start=1):
            try:
                with transaction.atomic():
                    subject = services.subject_enrol(study=study, **row.kwargs)
                    SubjectImportRow.objects.create(study=study, row_key=row.key, subject=subject,
                                                    file_sha256=report.fingerprint)
            except (DomainError, IntegrityError) as exc:
                # A concurrent enrolment or import took the national ID or the row since the
                # check, or the enrolment itself refused the row (no schedule for its arm).
                if isinstance(exc, DomainError):
                    fields = exc.fields or {"row": [str(exc.message)]}
                else:
                    fields = {"row": [_("This row was imported at the same time by someone else.")]}
                for field_name, messages in fields.items():
                    for message in messages:
                        report.errors.append({"row": row.number, "field": field_name, "message": message})
                if not valid_rows_only:
                    transaction.set_rollback(True)
                    report.imported, report.subject_ids = 0, []
                    break
                continue
            report.imported += 1
            report.subject_ids.append(subject.pk)
            if progress is not None and done % PROGRESS_EVERY == 0:
                progress(done, total)
    if progress is not None:
        progress(total, total)
    report.errors.sort(key=lambda e: (e["row"], e["field"]))
    log.info("subjects.imported", study_id=study.pk, rows=report.total_rows, imported=report.imported,
             already=len(report.already_imported), errors=len(report.errors))
    return report
