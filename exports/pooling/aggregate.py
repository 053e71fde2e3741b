"""The aggregation service: the only code that reads across tenant schemas.

For each tenant with an active data-sharing agreement it enters that tenant's schema,
reads the agreed study's consented fields (never the identifying data: the extraction
reads no name, phone, e-mail, national ID or address), de-identifies them inside the
loop (exports.deid: keyed pseudonyms, per-subject date shifts, free text dropped unless
the consortium marks it safe, age top-coded), then makes the pooled subjects
k-anonymous over the consortium's quasi-identifiers and writes the pooled long CSV and
its manifest (rows per tenant, the de-identification report).

Keys come from the environment only (POOLING_SECRET), derived per consortium and purpose
with HKDF, so a pseudonym key and a date-shift key never coincide and no key is stored.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import pickle
import tempfile
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pandas as pd
import structlog
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.files.base import File
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone
from django_tenants.utils import schema_context

from exports import deid, extract
from exports.pooling.models import AgreementStatus, Consortium, DataSharingAgreement, PooledRun
from exports.records import EntryRecord, SubjectRecord

log = structlog.get_logger(__name__)

POOLED_COLUMNS = ("contributor", "subject", "event", "occurrence", "visit_date", "form", "form_version", "item",
                  "item_row", "value")


def consortium_keys(consortium: Consortium) -> tuple[bytes, bytes]:
    """(pseudonym key, date-shift key) for the consortium, from POOLING_SECRET."""
    secret = (getattr(settings, "POOLING_SECRET", "") or "").encode()
    if len(secret) < 32:
        raise ImproperlyConfigured("POOLING_SECRET must be set (at least 32 characters) to pool data.")

    def derive(purpose: str) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                    info=f"suifang/pooling/{consortium.slug}/{purpose}".encode()).derive(secret)

    return derive("pseudonym"), derive("date-shift")


def _consented(consortium: Consortium, agreement: DataSharingAgreement) -> dict[str, set[str]]:
    """Form code -> the item codes this tenant agreed to share (and the consortium pools)."""
    elements = {str(e["form"]): set(e.get("items") or []) for e in consortium.common_data_elements or []}
    agreed: dict[str, set[str]] = {}
    for path in agreement.fields or []:
        form, _, item = str(path).partition(".")
        if item in elements.get(form, set()):
            agreed.setdefault(form, set()).add(item)
    return agreed


def _safe_text(consortium: Consortium) -> frozenset[str]:
    return frozenset(f"{e['form']}.{item}" for e in consortium.common_data_elements or []
                     for item in e.get("safe_text") or [])


def _only_consented(entry: EntryRecord, items: set[str]) -> EntryRecord:
    values = {code: value for code, value in entry.values.items() if code in items}
    missing = {path: code for path, code in entry.missing.items() if path.split("[", 1)[0].split(".", 1)[0] in items}
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


def _extract_tenant(consortium: Consortium, agreement: DataSharingAgreement, keys: tuple[bytes, bytes],
                    spool: Any) -> dict[str, Any]:
    """In the tenant's schema: de-identified subjects, and entries pickled to `spool`."""
    from studies.models import Study

    tenant = agreement.tenant
    policy = deid.DeidPolicy(tenant=tenant.slug, pseudonym_key=keys[0], shift_key=keys[1],
                             max_shift_days=consortium.max_shift_days, safe_items=_safe_text(consortium))
    consented = _consented(consortium, agreement)
    with schema_context(tenant.schema_name), transaction.atomic():
        study = Study.objects.filter(code=agreement.study_code).first()
        if study is None or not consented:
            return {"tenant": tenant.slug, "subjects": [], "entries": 0, "values": 0, "dropped": []}
        scope = extract.ExportScope(study_id=study.pk, forms=tuple(sorted(consented)))
        data = extract.study_data(scope, snapshot_at=timezone.now())
        definitions = {(form.code, form.version): form.definition for form in data.study.forms}
        subjects = [deid.deidentify_subject(subject, policy=policy) for subject in data.subjects]
        dropped: set[str] = set()
        entries = values = 0
        consented_entries = (_only_consented(entry, consented[entry.form_code]) for entry in data.entries
                             if entry.form_code in consented)
        for entry in deid.deidentify_entries(consented_entries, policy=policy, definitions=definitions,
                                             dropped=dropped):
            cells = list(_cells(entry))
            if cells:
                pickle.dump((tenant.slug, entry, cells), spool)
                entries += 1
                values += len(cells)
    return {"tenant": tenant.slug, "subjects": subjects, "entries": entries, "values": values,
            "dropped": sorted(dropped), "policy": policy}


def _quasi_frame(subjects: list[tuple[str, SubjectRecord]], wanted: list[str]) -> pd.DataFrame:
    rows = []
    for tenant, subject in subjects:
        row: dict[str, Any] = {"pseudonym": subject.subject_key, "contributor": tenant}
        if "age" in wanted:
            row["age"] = subject.age
        if "country" in wanted:
            row["country"] = subject.country or ""
        rows.append(row)
    return pd.DataFrame(rows, columns=["pseudonym", "contributor", *[q for q in ("age", "country") if q in wanted]])


def pooled_run_execute(*, run_id: int) -> PooledRun:
    run = PooledRun.objects.select_related("consortium").get(pk=run_id)
    consortium = run.consortium
    run.status = "running"
    run.save(update_fields=["status"])
    try:
        keys = consortium_keys(consortium)
    except ImproperlyConfigured:
        run.status, run.error = "failed", "POOLING_SECRET is not set"
        run.save(update_fields=["status", "error"])
        raise
    agreements = list(DataSharingAgreement.objects.filter(consortium=consortium, status=AgreementStatus.ACTIVE)
                      .select_related("tenant").order_by("tenant__slug"))
    handle, spool_path = tempfile.mkstemp(prefix="suifang-pool-")
    try:
        per_tenant = []
        subjects: list[tuple[str, SubjectRecord]] = []
        policy = None
        with os.fdopen(handle, "wb") as spool:
            for agreement in agreements:
                found = _extract_tenant(consortium, agreement, keys, spool)
                subjects += [(found["tenant"], subject) for subject in found["subjects"]]
                policy = found.get("policy") or policy
                per_tenant.append({"tenant": found["tenant"], "subjects": len(found["subjects"]),
                                   "entries": found["entries"], "values_extracted": found["values"],
                                   "items_dropped": found["dropped"]})
        wanted = [q for q in consortium.quasi_identifiers or [] if q in ("age", "country")]
        hierarchies: dict[str, deid.Hierarchy] = {}
        if "age" in wanted:
            hierarchies["age"] = deid.age_hierarchy()
        if "country" in wanted:
            hierarchies["country"] = deid.suppression_hierarchy("country")
        frame = _quasi_frame(subjects, wanted)
        report: dict[str, Any]
        if hierarchies and len(frame) >= consortium.k:
            kept_frame, deid_report = deid.k_anonymize(
                frame, quasi_identifiers=hierarchies, k=consortium.k,
                rules=deid.rules_applied(policy) if policy is not None else ())
            kept = set(kept_frame["pseudonym"])
            released = kept_frame
            report = {"requested_k": deid_report.requested_k, "achieved_k": deid_report.achieved_k,
                      "achieved_l": deid_report.achieved_l, "records_in": deid_report.records_in,
                      "records_out": deid_report.records_out, "records_suppressed": deid_report.records_suppressed,
                      "levels": [list(level) for level in deid_report.levels], "rules": list(deid_report.rules)}
        else:
            # Too few subjects for k: nothing is released. No quasi-identifiers: all are.
            kept = set() if hierarchies else set(frame["pseudonym"])
            released = frame[frame["pseudonym"].isin(kept)]
            report = {"requested_k": consortium.k, "achieved_k": None, "records_in": len(frame),
                      "records_out": len(kept), "records_suppressed": len(frame) - len(kept),
                      "note": "fewer subjects than k: nothing released" if hierarchies else "no quasi-identifiers"}
        rows_by_tenant: Counter[str] = Counter()
        digest = hashlib.sha256()
        with tempfile.NamedTemporaryFile("w+b", prefix="suifang-pooled-") as out, open(spool_path, "rb") as spool_in:
            text = io.TextIOWrapper(out, encoding="utf-8", newline="")
            writer = csv.writer(text, lineterminator="\n")
            writer.writerow(POOLED_COLUMNS)
            while True:
                try:
                    tenant, entry, cells = pickle.load(spool_in)  # noqa: S301 (our own spool file)
                except EOFError:
                    break
                if entry.subject_key not in kept:
                    continue
                for item, row, value in cells:
                    writer.writerow((tenant, entry.subject_key, entry.event_code, entry.sequence,
                                     entry.visit_date.isoformat() if entry.visit_date else "", entry.form_code,
                                     entry.form_version, item, row, value))
                    rows_by_tenant[tenant] += 1
            text.flush()
            text.detach()
            out.seek(0)
            for chunk in iter(lambda: out.read(1 << 20), b""):
                digest.update(chunk)
            out.seek(0)
            key = f"pooling/{consortium.slug}/{run.pk}/pooled_long.csv"
            if default_storage.exists(key):
                default_storage.delete(key)
            stored = default_storage.save(key, File(out, name="pooled_long.csv"))
            size = os.path.getsize(out.name)
        # The subjects with their quasi-identifiers as released (generalised), sorted.
        subjects_csv = released.sort_values(["contributor", "pseudonym"]).to_csv(index=False, lineterminator="\n")
        subjects_bytes = subjects_csv.encode("utf-8")
        subjects_key = f"pooling/{consortium.slug}/{run.pk}/pooled_subjects.csv"
        if default_storage.exists(subjects_key):
            default_storage.delete(subjects_key)
        subjects_stored = default_storage.save(subjects_key, File(io.BytesIO(subjects_bytes),
                                                                  name="pooled_subjects.csv"))
        run.manifest = {
            "consortium": consortium.slug, "run": run.pk,
            "tenants": [{**t, "rows_released": rows_by_tenant.get(t["tenant"], 0)} for t in per_tenant],
            "deidentification": report,
            "files": [{"name": "pooled_long.csv", "storage": stored, "bytes": size, "sha256": digest.hexdigest(),
                       "rows": sum(rows_by_tenant.values())},
                      {"name": "pooled_subjects.csv", "storage": subjects_stored, "bytes": len(subjects_bytes),
                       "sha256": hashlib.sha256(subjects_bytes).hexdigest(), "rows": len(released)}],
        }
        run.status, run.finished_at = "done", timezone.now()
        run.save(update_fields=["manifest", "status", "finished_at"])
    except Exception as error:
        run.status, run.error = "failed", type(error).__name__
        run.save(update_fields=["status", "error"])
        log.exception("pooling.failed", run=run.pk)
        raise
    finally:
        os.unlink(spool_path)
    log.info("pooling.done", run=run.pk, tenants=len(agreements))
    return run
