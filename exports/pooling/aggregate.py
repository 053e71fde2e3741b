"""The aggregation service: the only code that reads across tenant schemas.

A pooled run has three steps, shared by the Celery chord (exports.pooling.tasks) and the
synchronous `pooled_run_execute` (tests, benchmarks), so both write the same bytes:

1. `pooled_run_prepare`: the run becomes "running"; the tenants with an active
   data-sharing agreement are listed (by slug).
2. `tenant_part_extract`, once per tenant (the chord's header, in parallel): it enters
   that tenant's schema, reads the agreed study's consented fields (never the identifying
   data: the extraction reads no name, phone, e-mail, national ID or address),
   de-identifies them there (exports.deid: keyed pseudonyms, per-subject date shifts,
   free text dropped unless the consortium marks it safe, age top-coded), harmonises
   code lists and units as the common data elements declare (models.Consortium), and
   writes its part to default_storage under pooling/<consortium>/<run>/parts/<tenant>.*:
   the cells as gzip'd CSV rows already in the pooled layout, an index of them per
   subject (gzip'd JSON lines), and the subjects with their quasi-identifiers (gzip'd
   JSON lines). Workers may be on different machines: nothing but storage keys and
   small JSON results crosses tasks, and nothing read back is unpickled.
3. `pooled_run_combine` (the chord's body): makes the pooled subjects k-anonymous over
   the consortium's quasi-identifiers, copies the released subjects' cells from the
   parts (byte ranges from the index: no row is parsed again), and writes the pooled
   long CSV, the pooled subjects CSV and the manifest (rows per tenant, values left out
   by harmonisation, the de-identification report). The parts are then deleted.

Memory stays flat in the number of values: entries stream from a server-side cursor to
a gzip stream and back; only the subjects (one small row each) are held, for k.

Keys come from the environment only (POOLING_SECRET), derived per consortium and purpose
with HKDF, so a pseudonym key and a date-shift key never coincide and no key is stored.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import tempfile
import traceback
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import IO, Any

import pandas as pd
import pyarrow as pa
import structlog
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.files.base import File
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _
from django_tenants.utils import schema_context

from config.errors import Conflict
from exports import deid, extract
from exports.pooling.models import (
    DEFAULT_PRECISION,
    AgreementStatus,
    Consortium,
    DataSharingAgreement,
    PooledRun,
    common_data_elements_problems,
)
from exports.records import EntryRecord
from exports.storage import file_digest

log = structlog.get_logger(__name__)

POOLED_COLUMNS = ("contributor", "subject", "event", "occurrence", "visit_date", "form", "form_version", "item",
                  "item_row", "value")
QUASI_IDENTIFIERS = ("age", "country")  # those the extraction can give (SubjectRecord fields)
# Parts are read once, by the combine step, moments later: fast beats small.
_PART_COMPRESSION = 1
_COPY_CHUNK = 1 << 20
_PART_KINDS = ("cells.csv.gz", "index.jsonl.gz", "subjects.jsonl.gz")


def consortium_keys(consortium: Consortium) -> tuple[bytes, bytes]:
    """(pseudonym key, date-shift key) for the consortium, from POOLING_SECRET."""
    secret = (getattr(settings, "POOLING_SECRET", "") or "").encode()
    if len(secret) < 32:
        raise ImproperlyConfigured("POOLING_SECRET must be set (at least 32 characters) to pool data.")

    def derive(purpose: str) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                    info=f"suifang/pooling/{consortium.slug}/{purpose}".encode()).derive(secret)

    return derive("pseudonym"), derive("date-shift")


def _policy(consortium: Consortium, tenant: str, keys: tuple[bytes, bytes]) -> deid.DeidPolicy:
    return deid.DeidPolicy(tenant=tenant, pseudonym_key=keys[0], shift_key=keys[1],
                           max_shift_days=consortium.max_shift_days, safe_items=_safe_text(consortium))


def _consented(consortium: Consortium, agreement: DataSharingAgreement) -> dict[str, set[str]]:
    """Form code -> the item codes this tenant agreed to share (and the consortium pools)."""
    elements = {str(e["form"]): set(e.get("items") or []) for e in consortium.common_data_elements or []}
    agreed: dict[str, set[str]] = {}
    for path in agreement.fields or []:
        form, _sep, item = str(path).partition(".")
        if item in elements.get(form, set()):
            agreed.setdefault(form, set()).add(item)
    return agreed


def _safe_text(consortium: Consortium) -> frozenset[str]:
    return frozenset(f"{e['form']}.{item}" for e in consortium.common_data_elements or []
                     for item in e.get("safe_text") or [])


def _only_consented(entry: EntryRecord, items: set[str]) -> EntryRecord:
    def consented(path: str) -> bool:
        return path.split("[", 1)[0].split(".", 1)[0] in items

    if entry.values.keys() <= items and all(consented(path) for path in entry.missing):
        return entry  # the usual case: the form holds only agreed items
    return _with_values(entry, {code: value for code, value in entry.values.items() if code in items},
                        {path: code for path, code in entry.missing.items() if consented(path)})


def _with_values(entry: EntryRecord, values: Mapping[str, Any], missing: Mapping[str, str]) -> EntryRecord:
    # Direct construction: dataclasses.replace costs several times more, once per entry.
    return EntryRecord(subject_key=entry.subject_key, site_code=entry.site_code, event_code=entry.event_code,
                       sequence=entry.sequence, form_code=entry.form_code, form_version=entry.form_version,
                       status=entry.status, values=values, missing=missing, visit_date=entry.visit_date,
                       updated=entry.updated)


def _cells(entry: EntryRecord) -> Iterator[tuple[str, str, str]]:
    """(item, row, value) of a de-identified entry, as in the study's long CSV."""
    for code in sorted(entry.values):
        value = entry.values[code]
        if isinstance(value, list) and value and isinstance(value[0], dict):
            for index, row in enumerate(value, start=1):
                for child in sorted(row):
                    yield f"{code}.{child}", str(index), _text(row[child])
        else:
            yield code, "", _text(value)
    for path in sorted(entry.missing):
        yield path, "", entry.missing[path]


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ";".join(str(v) for v in value)
    if isinstance(value, dict):
        return str(value.get("name", ""))
    return "" if value is None else str(value)


# --- harmonisation of code lists and units ---------------------------------------------------

@dataclass(frozen=True)
class _Rule:
    """How one item of one form version of one tenant becomes the consortium's: `codes`
    (tenant code -> consortium code), or a unit `factor` rounded to `quantum`; neither
    (and not `same_unit`): the tenant's item has no unit, or one without a factor, so
    none of its values can be mapped."""

    path: str  # the cell's item path: "weight", or "meds.med_dose" in a repeating group
    group: str
    code: str
    codes: Mapping[str, str] | None = None
    factor: Decimal | None = None
    same_unit: bool = False
    quantum: Decimal = Decimal(1)


def _declared(consortium: Consortium) -> dict[str, dict[str, dict[str, Any]]]:
    """Form code -> item code -> its harmonise declaration."""
    return {str(e["form"]): dict(e.get("harmonise") or {}) for e in consortium.common_data_elements or []
            if e.get("harmonise")}


def _declared_summary(declared: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> dict[str, dict[str, Any]]:
    """What the pooled values are in, for the manifest: the unit, or the consortium codes."""
    summary: dict[str, dict[str, Any]] = {}
    for form, items in sorted(declared.items()):
        for code, rule in sorted(items.items()):
            if "unit" in rule:
                summary[f"{form}.{code}"] = {"unit": rule["unit"]}
            else:
                codes = set((rule.get("codes") or {}).values())
                for mapping in (rule.get("codes_by_tenant") or {}).values():
                    codes |= set(mapping.values())
                summary[f"{form}.{code}"] = {"codes": sorted(codes)}
    return summary


def _rules_of(definition: Mapping[str, Any], declared: Mapping[str, Mapping[str, Any]], tenant: str) -> list[_Rule]:
    """The rules for one form version of one tenant, from its definition (each item's own
    unit) and the consortium's declaration."""
    found: list[tuple[str, Mapping[str, Any]]] = []
    for item in definition.get("items") or []:
        if item.get("type") == "group":
            found += [(str(item["code"]), child) for child in item.get("items") or []]
        else:
            found.append(("", item))
    rules = []
    for group, item in found:
        rule = declared.get(str(item.get("code")))
        if rule is None:
            continue
        code = str(item["code"])
        path = f"{group}.{code}" if group else code
        if "unit" not in rule:
            by_tenant = rule.get("codes_by_tenant") or {}
            codes = by_tenant[tenant] if tenant in by_tenant else (rule.get("codes") or {})
            rules.append(_Rule(path=path, group=group, code=code, codes=dict(codes)))
            continue
        unit = str(item.get("unit") or "").strip()
        quantum = Decimal(1).scaleb(-int(rule.get("precision", DEFAULT_PRECISION)))
        if unit and unit == rule["unit"]:
            rules.append(_Rule(path=path, group=group, code=code, same_unit=True))
        elif unit and unit in (rule.get("factors") or {}):
            rules.append(_Rule(path=path, group=group, code=code, factor=Decimal(str(rule["factors"][unit])),
                               quantum=quantum))
        else:
            rules.append(_Rule(path=path, group=group, code=code))  # no unit, or no factor for it
    return rules


def _harmonised_value(value: Any, rule: _Rule) -> tuple[bool, Any]:
    """(mapped, the value in the consortium's codes or unit)."""
    if rule.codes is not None:
        if isinstance(value, list):
            mapped = [rule.codes.get(str(code)) for code in value]
            return (True, mapped) if all(code is not None for code in mapped) else (False, None)
        code = rule.codes.get(_text(value))
        return (code is not None), code
    if rule.factor is None or isinstance(value, bool):
        return False, None
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        return False, None
    if not number.is_finite():
        return False, None
    return True, (number * rule.factor).quantize(rule.quantum, rounding=ROUND_HALF_UP)


class _Harmoniser:
    """Applies the consortium's declarations to one tenant's de-identified entries and
    counts, per "FORM.item", the values changed and those left out (never a value)."""

    def __init__(self, declared: Mapping[str, Mapping[str, Mapping[str, Any]]], *, tenant: str,
                 definitions: Mapping[tuple[str, int], Mapping[str, Any]]) -> None:
        self.rules = {version: [rule for rule in _rules_of(definition, declared.get(version[0]) or {}, tenant)
                                if not rule.same_unit]
                      for version, definition in definitions.items()}
        self.changed: Counter[str] = Counter()
        self.unmapped: Counter[str] = Counter()

    def apply(self, entry: EntryRecord) -> EntryRecord:
        rules = self.rules.get((entry.form_code, entry.form_version))
        if not rules:
            return entry
        values = dict(entry.values)
        for rule in rules:
            if rule.group:
                rows = values.get(rule.group)
                if isinstance(rows, list) and rows:
                    values[rule.group] = rows = [dict(row) for row in rows]
                    for row in rows:
                        self._one(row, rule, entry.form_code)
            else:
                self._one(values, rule, entry.form_code)
        return _with_values(entry, values, entry.missing)

    def _one(self, values: dict[str, Any], rule: _Rule, form: str) -> None:
        if rule.code not in values or values[rule.code] is None:
            return
        mapped, new = _harmonised_value(values[rule.code], rule)
        if mapped:
            values[rule.code] = new
            self.changed[f"{form}.{rule.path}"] += 1
        else:
            del values[rule.code]
            self.unmapped[f"{form}.{rule.path}"] += 1


# --- step 1: prepare ------------------------------------------------------------------------

def _fail(run: PooledRun, message: str) -> None:
    run.status, run.error, run.finished_at = "failed", message, timezone.now()
    run.save(update_fields=["status", "error", "finished_at"])


def pooled_run_prepare(*, run_id: int) -> list[int] | None:
    """The run becomes "running"; the agreement ids to extract, by tenant slug. None when
    the run was already started (a redelivered task must not start a second chord)."""
    if not PooledRun.objects.filter(pk=run_id, status="queued").update(status="running"):
        return None
    run = PooledRun.objects.select_related("consortium").get(pk=run_id)
    consortium = run.consortium
    try:
        consortium_keys(consortium)
    except ImproperlyConfigured:
        _fail(run, "POOLING_SECRET is not set")
        raise
    problems = common_data_elements_problems(consortium.common_data_elements)
    if problems:
        _fail(run, "the consortium's common data elements are not valid: " + ", ".join(sorted(problems)))
        raise Conflict("common_data_elements_invalid",
                       _("The consortium's common data elements are not valid; ask the platform operator."),
                       fields=problems)
    return list(DataSharingAgreement.objects.filter(consortium=consortium, status=AgreementStatus.ACTIVE)
                .order_by("tenant__slug").values_list("pk", flat=True))


# --- step 2: one tenant's part --------------------------------------------------------------

def _parts_folder(consortium: Consortium, run_id: int) -> str:
    return f"pooling/{consortium.slug}/{run_id}/parts"


def _store(key: str, path: str) -> str:
    if default_storage.exists(key):  # a redelivered task writes the same part again
        default_storage.delete(key)
    with open(path, "rb") as handle:
        return str(default_storage.save(key, File(handle, name=os.path.basename(key))))


class _TextBuffer:
    """What csv.writer writes, kept until taken (one entry's rows at a time)."""

    def __init__(self) -> None:
        self.pieces: list[str] = []

    def write(self, text: str) -> int:
        self.pieces.append(text)
        return len(text)

    def take(self) -> str:
        text = "".join(self.pieces)
        self.pieces.clear()
        return text


def _write_cells(entries: Iterable[EntryRecord], *, tenant: str, cells: gzip.GzipFile,
                 index: IO[str]) -> tuple[int, int]:
    """The pooled CSV rows of `entries` to `cells`, and per run of one subject's entries a
    line {"subject", "bytes", "rows"} to `index`; (entries, values) written."""
    buffer = _TextBuffer()
    writer = csv.writer(buffer, lineterminator="\n")
    subject: str | None = None
    size = rows = entries_written = values = 0

    def close_segment() -> None:
        if subject is not None:
            index.write(json.dumps({"subject": subject, "bytes": size, "rows": rows}) + "\n")

    for entry in entries:
        found = list(_cells(entry))
        if not found:
            continue
        if entry.subject_key != subject:
            close_segment()
            subject, size, rows = entry.subject_key, 0, 0
        visit = entry.visit_date.isoformat() if entry.visit_date else ""
        writer.writerows((tenant, entry.subject_key, entry.event_code, entry.sequence, visit, entry.form_code,
                          entry.form_version, item, row, value) for item, row, value in found)
        data = buffer.take().encode("utf-8")
        cells.write(data)
        size += len(data)
        rows += len(found)
        entries_written += 1
        values += len(found)
    close_segment()
    return entries_written, values


def _extract_part(run: PooledRun, agreement: DataSharingAgreement, folder: str) -> dict[str, Any]:
    from studies.models import Study

    consortium = run.consortium
    tenant = agreement.tenant
    policy = _policy(consortium, tenant.slug, consortium_keys(consortium))
    consented = _consented(consortium, agreement)
    result: dict[str, Any] = {"tenant": tenant.slug, "subjects": 0, "entries": 0, "values_extracted": 0,
                              "items_dropped": [], "values_harmonised": {}, "values_unmapped": {}, "parts": None}
    paths = {kind: os.path.join(folder, kind) for kind in _PART_KINDS}
    with schema_context(tenant.schema_name), transaction.atomic():
        study = Study.objects.filter(code=agreement.study_code).first()
        if study is None or not consented:
            return result
        scope = extract.ExportScope(study_id=study.pk, forms=tuple(sorted(consented)))
        data = extract.study_data(scope, snapshot_at=timezone.now())
        definitions = {(form.code, form.version): form.definition for form in data.study.forms}
        harmoniser = _Harmoniser(_declared(consortium), tenant=tenant.slug, definitions=definitions)
        with gzip.open(paths["subjects.jsonl.gz"], "wt", encoding="utf-8", compresslevel=_PART_COMPRESSION) as out:
            for subject in data.subjects:
                released = deid.deidentify_subject(subject, policy=policy)
                out.write(json.dumps({"pseudonym": released.subject_key, "age": released.age,
                                      "country": released.country or ""}) + "\n")
                result["subjects"] += 1
        dropped: set[str] = set()
        consented_entries = (_only_consented(entry, consented[entry.form_code]) for entry in data.entries
                             if entry.form_code in consented)
        released_entries = (harmoniser.apply(entry) for entry in deid.deidentify_entries(
            consented_entries, policy=policy, definitions=definitions, dropped=dropped))
        try:
            with gzip.open(paths["cells.csv.gz"], "wb", compresslevel=_PART_COMPRESSION) as cells, \
                    gzip.open(paths["index.jsonl.gz"], "wt", encoding="utf-8",
                              compresslevel=_PART_COMPRESSION) as index:
                result["entries"], result["values_extracted"] = _write_cells(released_entries, tenant=tenant.slug,
                                                                             cells=cells, index=index)
        finally:
            # Close the server-side cursor now, inside the transaction: after a failure,
            # the garbage collector would close it outside and fail there.
            getattr(data.entries, "close", lambda: None)()
    result["items_dropped"] = sorted(dropped)
    result["values_harmonised"] = dict(sorted(harmoniser.changed.items()))
    result["values_unmapped"] = dict(sorted(harmoniser.unmapped.items()))
    prefix = f"{_parts_folder(consortium, run.pk)}/{tenant.slug}"
    result["parts"] = {kind.split(".", 1)[0]: _store(f"{prefix}.{kind}", path) for kind, path in paths.items()}
    return result


def tenant_part_extract(*, run_id: int, agreement_id: int) -> dict[str, Any]:
    """One tenant's part of a run (a chord header task). Never raises: a failure comes
    back as {"tenant", "error": the exception's class} so the combine step always runs
    and marks the run failed naming the tenant; the message and traceback, which may
    quote a value, are not logged (only where it was raised)."""
    tenant = f"agreement {agreement_id}"
    try:
        agreement = DataSharingAgreement.objects.select_related("tenant").get(pk=agreement_id)
        tenant = agreement.tenant.slug
        if agreement.status != AgreementStatus.ACTIVE:  # withdrawn since the run started
            return {"tenant": tenant, "withdrawn": True}
        run = PooledRun.objects.select_related("consortium").get(pk=run_id)
        with tempfile.TemporaryDirectory(prefix="suifang-pool-part-") as folder:
            found = _extract_part(run, agreement, folder)
    except Exception as error:
        frames = traceback.extract_tb(error.__traceback__)
        log.error("pooling.tenant_failed", run=run_id, tenant=tenant, error=type(error).__name__,
                  at=f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "")
        return {"tenant": tenant, "error": type(error).__name__}
    log.info("pooling.tenant_extracted", run=run_id, tenant=tenant, values=found["values_extracted"])
    return found


# --- step 3: combine ------------------------------------------------------------------------

def _released(subjects: list[tuple[str, dict[str, Any]]], consortium: Consortium,
              rules: tuple[str, ...]) -> tuple[pd.DataFrame, set[str], dict[str, Any]]:
    """(released subjects with generalised quasi-identifiers, their pseudonyms, report)."""
    wanted = [q for q in consortium.quasi_identifiers or [] if q in QUASI_IDENTIFIERS]
    rows = []
    for tenant, subject in subjects:
        row: dict[str, Any] = {"pseudonym": subject["pseudonym"], "contributor": tenant}
        if "age" in wanted:
            row["age"] = subject["age"]
        if "country" in wanted:
            row["country"] = subject["country"]
        rows.append(row)
    frame = pd.DataFrame(rows, columns=["pseudonym", "contributor", *[q for q in QUASI_IDENTIFIERS if q in wanted]])
    hierarchies: dict[str, deid.Hierarchy] = {}
    if "age" in wanted:
        hierarchies["age"] = deid.age_hierarchy()
    if "country" in wanted:
        hierarchies["country"] = deid.suppression_hierarchy("country")
    if hierarchies and len(frame) >= consortium.k:
        kept_frame, deid_report = deid.k_anonymize(frame, quasi_identifiers=hierarchies, k=consortium.k, rules=rules)
        measured: dict[str, Any] = {
            "requested_k": deid_report.requested_k, "achieved_k": deid_report.achieved_k,
            "achieved_l": deid_report.achieved_l, "records_in": deid_report.records_in,
            "records_out": deid_report.records_out, "records_suppressed": deid_report.records_suppressed,
            "levels": [list(level) for level in deid_report.levels], "rules": list(deid_report.rules)}
        return kept_frame, set(kept_frame["pseudonym"]), measured
    # Too few subjects for k: nothing is released. No quasi-identifiers: all are.
    kept = set() if hierarchies else set(frame["pseudonym"])
    report: dict[str, Any] = {
        "requested_k": consortium.k, "achieved_k": None, "records_in": len(frame), "records_out": len(kept),
        "records_suppressed": len(frame) - len(kept),
        "note": "fewer subjects than k: nothing released" if hierarchies else "no quasi-identifiers"}
    return frame[frame["pseudonym"].isin(kept)], kept, report


def _json_lines(key: str) -> Iterator[dict[str, Any]]:
    with default_storage.open(key, "rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as lines:
        for line in lines:
            yield json.loads(line)


def _copy_released(part: Mapping[str, Any], kept: set[str], out: IO[bytes]) -> int:
    """The released subjects' rows of one part into `out`, by the index's byte ranges."""
    keys = part["parts"]
    written = 0
    with default_storage.open(keys["cells"], "rb") as raw, gzip.open(raw, "rb") as cells:
        for segment in _json_lines(keys["index"]):
            left = int(segment["bytes"])
            keep = segment["subject"] in kept
            while left:
                chunk = cells.read(min(left, _COPY_CHUNK))
                if not chunk:
                    raise ValueError(f"part of {part['tenant']} ends before its index")
                if keep:
                    out.write(chunk)
                left -= len(chunk)
            if keep:
                written += int(segment["rows"])
        if cells.read(1):
            raise ValueError(f"part of {part['tenant']} is longer than its index")
    return written


def _save(key: str, handle: IO[bytes], name: str) -> str:
    if default_storage.exists(key):
        default_storage.delete(key)
    return str(default_storage.save(key, File(handle, name=name)))


def _parts_delete(consortium: Consortium, run_id: int) -> None:
    folder = _parts_folder(consortium, run_id)
    try:
        _dirs, files = default_storage.listdir(folder)
    except FileNotFoundError:
        return
    for name in files:
        default_storage.delete(f"{folder}/{name}")


def _combine(run: PooledRun, parts: list[dict[str, Any]]) -> None:
    consortium = run.consortium
    keys = consortium_keys(consortium)
    subjects = [(part["tenant"], subject) for part in parts if part["parts"]
                for subject in _json_lines(part["parts"]["subjects"])]
    dropped = {path for part in parts for path in part["items_dropped"]}
    rules = deid.rules_applied(_policy(consortium, "pool", keys), dropped=dropped)
    released, kept, report = _released(subjects, consortium, rules)
    rows_by_tenant: Counter[str] = Counter()
    folder = f"pooling/{consortium.slug}/{run.pk}"
    with tempfile.NamedTemporaryFile("w+b", prefix="suifang-pooled-") as out:
        out.write((",".join(POOLED_COLUMNS) + "\n").encode("utf-8"))
        for part in parts:
            if part["parts"]:
                rows_by_tenant[part["tenant"]] = _copy_released(part, kept, out)
        out.flush()
        size, sha256 = file_digest(out)
        stored = _save(f"{folder}/pooled_long.csv", out, "pooled_long.csv")
        out.seek(0)
        parquet = _pooled_parquet(out, folder)
    # The subjects with their quasi-identifiers as released (generalised), sorted.
    subjects_bytes = released.sort_values(["contributor", "pseudonym"]).to_csv(
        index=False, lineterminator="\n").encode("utf-8")
    subjects_stored = _save(f"{folder}/pooled_subjects.csv", io.BytesIO(subjects_bytes), "pooled_subjects.csv")
    run.manifest = {
        "consortium": consortium.slug, "run": run.pk,
        "tenants": [{key: part[key] for key in ("tenant", "subjects", "entries", "values_extracted",
                                                "items_dropped", "values_harmonised", "values_unmapped")}
                    | {"rows_released": rows_by_tenant.get(part["tenant"], 0)} for part in parts],
        "harmonisation": _declared_summary(_declared(consortium)),
        "deidentification": report,
        "files": [{"name": "pooled_long.csv", "storage": stored, "bytes": size, "sha256": sha256,
                   "rows": sum(rows_by_tenant.values())},
                  parquet,
                  {"name": "pooled_subjects.csv", "storage": subjects_stored, "bytes": len(subjects_bytes),
                   "sha256": hashlib.sha256(subjects_bytes).hexdigest(), "rows": len(released)}],
    }


# The pooled long rows in Parquet: the CSV's columns, numbers and dates typed.
POOLED_PARQUET_SCHEMA = pa.schema([
    ("contributor", pa.string()), ("subject", pa.string()), ("event", pa.string()), ("occurrence", pa.int32()),
    ("visit_date", pa.date32()), ("form", pa.string()), ("form_version", pa.int32()), ("item", pa.string()),
    ("item_row", pa.int32()), ("value", pa.string())])


def _pooled_parquet(pooled_csv: IO[bytes], folder: str) -> dict[str, Any]:
    """pooled_long.csv again as Parquet, as the study export converts its long CSV
    (exports.tabular.csv_to_parquet). An empty cell is null: the CSV cannot tell an empty
    text from no value either."""
    from exports.tabular import csv_to_parquet

    with tempfile.NamedTemporaryFile("w+b", prefix="suifang-pooled-parquet-") as out:
        rows = csv_to_parquet(pooled_csv, out, POOLED_PARQUET_SCHEMA)
        out.flush()
        size, sha256 = file_digest(out)
        stored = _save(f"{folder}/pooled_long.parquet", out, "pooled_long.parquet")
    return {"name": "pooled_long.parquet", "storage": stored, "bytes": size, "sha256": sha256, "rows": rows}


def pooled_run_combine(*, run_id: int, parts: list[dict[str, Any]]) -> PooledRun:
    """The chord's body: the pooled files and the manifest from the tenants' parts, or
    the run failed naming the tenants whose part failed. The parts are deleted either
    way. A run no longer "running" is left as it is (a redelivered task)."""
    run = PooledRun.objects.select_related("consortium").get(pk=run_id)
    if run.status != "running":
        return run
    parts = sorted((part for part in parts if not part.get("withdrawn")), key=lambda part: str(part["tenant"]))
    failed = [part for part in parts if part.get("error")]
    try:
        if failed:
            _fail(run, "extraction failed for " + ", ".join(f"{part['tenant']} ({part['error']})" for part in failed))
        else:
            _combine(run, parts)
            run.status, run.finished_at = "done", timezone.now()
            run.save(update_fields=["manifest", "status", "finished_at"])
    except Exception as error:
        frames = traceback.extract_tb(error.__traceback__)
        log.error("pooling.combine_failed", run=run.pk, error=type(error).__name__,
                  at=f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "")
        _fail(run, f"combining the parts failed ({type(error).__name__})")
    finally:
        _parts_delete(run.consortium, run.pk)
    log.info("pooling.done", run=run.pk, status=run.status, tenants=len(parts))
    return run


def pooled_run_fail(*, run_id: int, message: str) -> None:
    """Marks a run failed unless it already ended (for the dispatching task)."""
    run = PooledRun.objects.select_related("consortium").get(pk=run_id)
    if run.status in ("queued", "running"):
        _fail(run, message)
        _parts_delete(run.consortium, run.pk)


def pooled_run_execute(*, run_id: int) -> PooledRun:
    """The whole run in this process: the same three steps as the Celery chord."""
    agreement_ids = pooled_run_prepare(run_id=run_id)
    if agreement_ids is None:
        return PooledRun.objects.get(pk=run_id)
    parts = [tenant_part_extract(run_id=run_id, agreement_id=agreement_id) for agreement_id in agreement_ids]
    return pooled_run_combine(run_id=run_id, parts=parts)
