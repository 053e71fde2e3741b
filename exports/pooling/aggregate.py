"""The aggregation service: the only code that reads across tenant schemas.

A pooled run has three steps, shared by the Celery chord (exports.pooling.tasks) and the
synchronous `pooled_run_execute` (tests, benchmarks), so both write the same bytes:

1. `pooled_run_prepare`: the run becomes "running"; the tenants with an active
   data-sharing agreement are listed (by slug).
2. `tenant_part_extract`, once per tenant (the chord's header, in parallel): it enters
   that tenant's schema and, in one REPEATABLE READ snapshot, reads the agreed study's
   consented fields (never the identifying data: the extraction reads no name, phone,
   e-mail, national ID or address), de-identifies them there (exports.deid: keyed
   pseudonyms, per-subject date shifts, free text dropped unless the consortium marks it
   safe, age top-coded), harmonises code lists and units as the common data elements
   declare (exports.pooling.harmonise), and writes its part to default_storage under
   pooling/<consortium>/<run>/parts/<tenant>.*: the cells as an Arrow IPC stream (the
   pooled columns and each row's CSV line, ordered by pseudonym; exports.pooling.columns,
   docs/adr/0016) and the subjects with their quasi-identifiers (gzip'd JSON lines).
   Workers may be on different machines: nothing but storage keys and small JSON results
   crosses tasks, and nothing read back is unpickled.
3. `pooled_run_combine` (the chord's body): makes the pooled subjects k-anonymous over
   the consortium's quasi-identifiers, keeps the released subjects' rows of each part
   (a tenant none of whose subjects was suppressed is copied whole), writes their lines
   as the pooled long CSV and their columns as the Parquet file (on a thread), the pooled
   subjects CSV and the manifest (rows per tenant, values left out by harmonisation, the
   de-identification report). The parts are then deleted.

Memory stays flat in the number of values: a part is read and written a group of
entries at a time, and combined a record batch at a time; only the subjects (one small
row each) are held, for k.

Keys come from the environment only (POOLING_SECRET), derived per consortium and purpose
with HKDF, so a pseudonym key and a date-shift key never coincide and no key is stored.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tempfile
import traceback
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO, Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import structlog
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.files.base import File
from django.core.files.storage import default_storage
from django.db import connection, transaction
from django.utils import timezone
from django.utils.translation import gettext as _
from django_tenants.utils import schema_context

from config.errors import Conflict
from exports import deid, extract
from exports.pooling import columns, harmonise
from exports.pooling.models import (
    AgreementStatus,
    Consortium,
    DataSharingAgreement,
    PooledRun,
    common_data_elements_problems,
)
from exports.storage import file_digest

log = structlog.get_logger(__name__)

POOLED_COLUMNS = ("contributor", "subject", "event", "occurrence", "visit_date", "form", "form_version", "item",
                  "item_row", "value")
QUASI_IDENTIFIERS = ("age", "country")  # those the extraction can give (SubjectRecord fields)
# Parts are read once, by the combine step, moments later: fast beats small.
_PART_COMPRESSION = 1
_PART_KINDS = ("cells.arrow", "subjects.jsonl.gz")
# Released rows gathered before the pooled Parquet file gets a row group of them.
_PARQUET_GROUP_ROWS = 100_000


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


class _MovableFile(File):
    """A finished local file: a local storage moves it into place instead of copying it
    (FileSystemStorage looks for temporary_file_path); any other storage reads it."""

    def temporary_file_path(self) -> str:
        return str(getattr(self.file, "name", ""))


def _store(key: str, path: str) -> str:
    """A finished local file into storage under `key` (its base name the file's name)."""
    if default_storage.exists(key):  # a redelivered task (or combine step) writes it again
        default_storage.delete(key)
    with open(path, "rb") as handle:
        return str(default_storage.save(key, _MovableFile(handle, name=os.path.basename(key))))


def _extract_part(run: PooledRun, agreement: DataSharingAgreement, folder: str, *,
                  vectorise: bool = True) -> dict[str, Any]:
    """The tenant's part (see the module's docstring and exports.pooling.columns), read in
    one snapshot. `vectorise=False`: every value by deid's rules, value by value (tests)."""
    from ecrf.models import FormVersion, FormVersionStatus
    from studies.models import Study

    consortium = run.consortium
    tenant = agreement.tenant
    policy = _policy(consortium, tenant.slug, consortium_keys(consortium))
    consented = _consented(consortium, agreement)
    result: dict[str, Any] = {"tenant": tenant.slug, "subjects": 0, "entries": 0, "values_extracted": 0,
                              "items_dropped": [], "values_harmonised": {}, "values_unmapped": {}, "parts": None,
                              "values_by_rules": 0}
    paths = {kind: os.path.join(folder, kind) for kind in _PART_KINDS}
    outermost = not connection.in_atomic_block
    with schema_context(tenant.schema_name), transaction.atomic():
        if outermost:  # the subjects, the entries and every group's values from one snapshot
            extract.read_snapshot()
        study = Study.objects.filter(code=agreement.study_code).first()
        if study is None or not consented:
            return result
        scope = extract.ExportScope(study_id=study.pk, forms=tuple(sorted(consented)))
        versions = list(FormVersion.objects.filter(form__study_id=study.pk, form__code__in=consented)
                        .exclude(status=FormVersionStatus.DRAFT).select_related("form").order_by("pk"))
        definitions = {(v.form.code, v.number): v.definition for v in versions}
        counts = columns.PartCounts()
        harmoniser = harmonise.Harmoniser(harmonise.declared(consortium), tenant=tenant.slug, definitions=definitions,
                                          changed=counts.harmonised, unmapped=counts.unmapped)
        plans = {v.pk: columns.item_plans(form=v.form.code, definition=v.definition,
                                          consented=consented[v.form.code], safe_items=policy.safe_items,
                                          rules=harmoniser.rules.get((v.form.code, v.number), []))
                 for v in versions}
        released: list[tuple[str, str, int]] = []
        with gzip.open(paths["subjects.jsonl.gz"], "wt", encoding="utf-8", compresslevel=_PART_COMPRESSION) as out:
            for subject in extract.subject_records(scope):
                keys = deid.subject_keys(subject, policy=policy)
                shown = deid.deidentify_subject(subject, policy=policy, keys=keys)
                out.write(json.dumps({"pseudonym": shown.subject_key, "age": shown.age,
                                      "country": shown.country or ""}) + "\n")
                released.append((subject.subject_key, *keys))
        result["subjects"] = len(released)
        indexes = {(v.form.code, v.number): deid.form_index(v.definition, v.form.code) for v in versions}

        def python_values(entry: columns.PartEntry, code: str, value: Any) -> list[tuple[str, str, str]]:
            where = f"{entry.form} of {entry.event}#{entry.occurrence}, subject {entry.subject_code}"
            cleaned = deid.deidentify_values({code: value}, form=indexes[(entry.form, entry.form_version)],
                                             days=entry.shift, safe_items=policy.safe_items, where=where,
                                             dropped=counts.dropped)
            harmonised = harmoniser.apply_values(entry.form, entry.form_version, cleaned)
            return [cell for key, kept in harmonised.items() for cell in harmonise.value_cells(key, kept)]

        builder = columns.PartBuilder(
            tenant=tenant.slug, plans=plans, consented=consented, python_values=python_values, counts=counts,
            vectorise=vectorise,
            filter_keys=not all(columns.every_item_consented(v.definition, consented[v.form.code]) for v in versions))
        listing = columns.entry_listing(study_id=study.pk, forms=sorted(consented), subjects=released,
                                        events=extract.event_order_values(study.pk))
        with open(paths["cells.arrow"], "wb") as cells_file:
            columns.write_batches((builder.batch(entries, columns.read_cells(entries, builder.keys))
                                   for entries in listing), cells_file)
    result["entries"], result["values_extracted"] = counts.entries, counts.values
    result["items_dropped"] = sorted(counts.dropped)
    result["values_harmonised"] = dict(sorted(counts.harmonised.items()))
    result["values_unmapped"] = dict(sorted(counts.unmapped.items()))
    result["values_by_rules"] = counts.by_rules
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


def _part_batches(key: str) -> Iterator[pa.RecordBatch]:
    """A part's record batches (columns.PART_SCHEMA), one at a time: memory-mapped from a
    local storage (no copy), streamed from any other."""
    try:
        local: str | None = default_storage.path(key)
    except NotImplementedError:
        local = None
    with (pa.memory_map(local) if local else default_storage.open(key, "rb")) as raw, \
            pa.ipc.open_stream(raw) as reader:
        if not reader.schema.equals(columns.PART_SCHEMA):
            raise ValueError("a part does not have the pooled columns")
        yield from reader


def _save(key: str, handle: IO[bytes], name: str) -> str:
    if default_storage.exists(key):
        default_storage.delete(key)
    return str(default_storage.save(key, File(handle, name=name)))


def _row_group(writer: pq.ParquetWriter, batches: list[pa.RecordBatch]) -> None:
    # The parts' dictionary columns as plain text: readers get strings, not categories.
    writer.write_table(pa.Table.from_batches(batches).cast(columns.POOLED_PARQUET_SCHEMA), row_group_size=1 << 30)


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
    kept_subjects = pa.array(sorted(kept), pa.string())
    suppressed_in = {tenant for tenant, subject in subjects if subject["pseudonym"] not in kept}
    rows_by_tenant: Counter[str] = Counter()
    folder = f"pooling/{consortium.slug}/{run.pk}"
    with tempfile.TemporaryDirectory(prefix="suifang-pooled-") as scratch:
        long_path, parquet_path = os.path.join(scratch, "pooled_long.csv"), os.path.join(scratch, "pooled.parquet")
        digest = hashlib.sha256()
        header = (",".join(POOLED_COLUMNS) + "\n").encode("utf-8")
        # Parquet is encoded on a thread (Arrow lets go of the GIL) while the CSV lines,
        # already written by the parts, are copied and hashed here.
        # (The encoder is shut down, its writes done, before the Parquet writer closes.)
        with open(long_path, "wb") as out, pq.ParquetWriter(parquet_path, columns.POOLED_PARQUET_SCHEMA,
                                                            compression="zstd", use_dictionary=True,
                                                            write_statistics=True) as parquet, \
                ThreadPoolExecutor(1, thread_name_prefix="pooled-parquet") as encoder:
            out.write(header)
            digest.update(header)
            size = len(header)
            pending: list[pa.RecordBatch] = []
            waiting = 0
            written: list[Future[None]] = []
            for part in parts:
                if not part["parts"]:
                    continue
                whole = part["tenant"] not in suppressed_in  # no subject of it left out: no filter
                for batch in _part_batches(part["parts"]["cells"]):
                    chosen = batch if whole else batch.filter(pc.is_in(batch.column("subject"),
                                                                       value_set=kept_subjects))
                    text = columns.text_bytes(chosen.column("line"))  # the lines' own buffer
                    out.write(text)
                    digest.update(text)
                    size += len(text)
                    rows_by_tenant[part["tenant"]] += chosen.num_rows
                    pending.append(chosen.drop_columns(["line"]))
                    waiting += chosen.num_rows
                    if waiting >= _PARQUET_GROUP_ROWS:
                        if written:  # one row group encoding at a time, one waiting: memory stays flat
                            written.pop(0).result()
                        written.append(encoder.submit(_row_group, parquet, pending))
                        pending, waiting = [], 0
            if pending:
                written.append(encoder.submit(_row_group, parquet, pending))
            for future in written:
                future.result()  # an encoding error surfaces here
        with open(parquet_path, "rb") as handle:
            parquet_size, parquet_sha256 = file_digest(handle)
        stored = _store(f"{folder}/pooled_long.csv", long_path)
        parquet_stored = _store(f"{folder}/pooled_long.parquet", parquet_path)
    # The subjects with their quasi-identifiers as released (generalised), sorted.
    subjects_bytes = released.sort_values(["contributor", "pseudonym"]).to_csv(
        index=False, lineterminator="\n").encode("utf-8")
    subjects_stored = _save(f"{folder}/pooled_subjects.csv", io.BytesIO(subjects_bytes), "pooled_subjects.csv")
    total = sum(rows_by_tenant.values())
    run.manifest = {
        "consortium": consortium.slug, "run": run.pk,
        "tenants": [{key: part[key] for key in ("tenant", "subjects", "entries", "values_extracted",
                                                "items_dropped", "values_harmonised", "values_unmapped")}
                    | {"rows_released": rows_by_tenant.get(part["tenant"], 0)} for part in parts],
        "harmonisation": harmonise.declared_summary(harmonise.declared(consortium)),
        "deidentification": report,
        "files": [{"name": "pooled_long.csv", "storage": stored, "bytes": size, "sha256": digest.hexdigest(),
                   "rows": total},
                  {"name": "pooled_long.parquet", "storage": parquet_stored, "bytes": parquet_size,
                   "sha256": parquet_sha256, "rows": total},
                  {"name": "pooled_subjects.csv", "storage": subjects_stored, "bytes": len(subjects_bytes),
                   "sha256": hashlib.sha256(subjects_bytes).hexdigest(), "rows": len(released)}],
    }


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
