"""eCRF audit trail benchmark (issue 4) at 100k / 1M / 10M audit rows. Every figure is
printed next to a baseline measured in the same run, on the same data.

    .venv/bin/python bench/audit_trail.py                          # 100k, 1M, 10M rows
    .venv/bin/python bench/audit_trail.py --levels 100000,1000000  # quick
    .venv/bin/python bench/audit_trail.py --levels 10000000 --verify-max 0   # skip the full verify

It DROPS and recreates its own database, --db (default
postgresql://postgres@127.0.0.1:5432/suifang_bench_audit, or AUDIT_BENCH_DATABASE_URL),
migrates it, and for each level creates one tenant (tenants.services.tenant_create: the
real migration, partitions, triggers and functions) and in its schema:

1. untimed setup: monthly partitions for the last 24 months (ecrf_audit_partitions_ensure),
   then N rows bulk-loaded with COPY, `at` evenly spread over those 24 months, subjects
   drawn at random from N/100 (--rows-per-subject; 100,000 subjects at 10M rows), each
   row with its real seq, prev_hash and hash (computed here in Python with the canonical
   serialisation of ecrf_audit_row_hash; a sample is re-checked by PostgreSQL, and the
   full verify below re-checks every row), the chain head set to the last row; lookup
   indexes built after the load; then the same rows copied into an UNPARTITIONED table
   with the same primary key and indexes (the baseline); VACUUM ANALYZE of both;
2. `audit_for_subject` (ecrf.audit_selectors) for --runs random subjects, page 1 (the 50
   newest rows) and page 2 (`before_seq`): one warm-up pass over the subjects, then the
   timed pass; median and p95. Timed three ways: the selector end to end (ORM, model
   instances), and its SQL (taken from the selector's queryset) run raw on the
   partitioned table and, the baseline, on the unpartitioned copy;
3. appends: --saves form saves of --batch rows each, one transaction per save, through
   `audit_record_many` (advisory lock, chain, head update; rows/s), against the same rows
   written by a plain multi-row INSERT (psycopg2 execute_values, no chain, no lock) into a
   partitioned twin table with the same indexes and no triggers;
4. `audit_chain_verify()` (what `manage.py verify_audit` runs) over the whole chain, up to
   --verify-max rows: it must find no problem.
Prints figures, never pass/fail.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import io
import json
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DEFAULT_DB = "postgresql://postgres@127.0.0.1:5432/suifang_bench_audit"
MONTHS = 24
PAGE = 50
COPY_CHUNK = 50_000
GENESIS = bytes(32)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

COLUMNS = ("id", "seq", "at", "user_id", "subject_id", "entry_id", "form_version", "action", "source",
           "user_email", "user_name", "event_code", "form_code", "item", "reason", "old_value", "new_value",
           "detail", "prev_hash", "hash")
ACTIONS = ["item_create"] * 10 + ["item_update"] * 6 + ["item_delete", "entry_complete", "query_open",
                                                       "query_answer", "query_close", "sdv_set", "sign"]
SOURCES = ["web"] * 6 + ["api", "api", "import", "epro"]
EVENTS = ["BL", "M1", "M3", "M6", "M12", "M24"]
FORMS = ["VITALS", "AE", "CM", "LAB", "QOL", "DM"]
ITEMS = ["weight", "height", "sbp", "dbp", "pulse", "term", "severity", "meds[0].dose", "meds[1].dose",
         "meds[2].dose", "glucose", "hba1c", "qol_total", "smoker"]
TEXTS = ["headache", "nausea", "10 mg", "20 mg", "yes", "no", "unknown"]
USERS = 200


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default="100000,1000000,10000000", help="audit rows, comma separated")
    parser.add_argument("--rows-per-subject", type=int, default=100)
    parser.add_argument("--runs", type=int, default=50, help="subjects timed per query")
    parser.add_argument("--saves", type=int, default=200, help="form saves timed per append method")
    parser.add_argument("--batch", type=int, default=50, help="rows per form save")
    parser.add_argument("--verify-max", type=int, default=10_000_000, help="run the full verify up to this many rows")
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--db", default=os.environ.get("AUDIT_BENCH_DATABASE_URL", DEFAULT_DB))
    args = parser.parse_args(argv)
    args.levels_list = [int(x) for x in args.levels.split(",") if x.strip()]
    return args


# --- helpers ------------------------------------------------------------------------------

def log(message: str) -> None:
    print(message, flush=True)


def execute(sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return list(cursor.fetchall()) if cursor.description else []


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    pos = 0.95 * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def month_start(now: datetime, months: int) -> datetime:
    index = now.year * 12 + now.month - 1 + months
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def migration() -> Any:
    return importlib.import_module("ecrf.migrations.0001_audit_trail")


# --- 1. the bulk load ---------------------------------------------------------------------

def _j(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


class _Rows(io.RawIOBase):
    """A file whose read() yields COPY text lines made on demand (streams into COPY)."""

    def __init__(self, lines: Iterator[str]) -> None:
        self._lines = lines
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            chunk = list(next(self._lines, None) for _ in range(2000))
            data = "".join(c for c in chunk if c is not None)
            if not data:
                break
            self._buffer += data.encode()
            if chunk[-1] is None:
                break
        if size < 0:
            out, self._buffer = self._buffer, b""
        else:
            out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out


class Generator:
    """Rows of one level, their chain computed exactly as ecrf_audit_row_hash does:
    sha256(prev_hash || jsonb_build_array('v1', seq, at_us, action, ...)::text). The
    values are chosen so that Python's JSON text equals PostgreSQL's jsonb output."""

    def __init__(self, *, rows: int, subjects: int, start_us: int, span_us: int, seed: int) -> None:
        self.rows, self.subjects, self.start_us, self.span_us = rows, subjects, start_us, span_us
        self.rng = random.Random(seed)
        self.last_hash = GENESIS
        self.last_at_us = start_us

    def lines(self) -> Iterator[str]:
        rng = self.rng
        pick = rng.choice
        actions = [(a, _j(a)) for a in ACTIONS]
        sources = [(s, _j(s)) for s in SOURCES]
        events = [(e, _j(e)) for e in EVENTS]
        forms = [(f, _j(f)) for f in FORMS]
        items = [(i, _j(i)) for i in ITEMS]
        texts = [(t, _j(t)) for t in TEXTS]
        users = [(u, f"user{u}@bench.example.org", _j(f"user{u}@bench.example.org"), f"User {u}", _j(f"User {u}"))
                 for u in range(1, USERS + 1)]
        h = self.last_hash
        sha = hashlib.sha256
        step = self.span_us / max(self.rows, 1)
        for n in range(self.rows):
            seq = n + 1
            at_us = self.start_us + int(n * step)
            action, action_j = pick(actions)
            source, source_j = pick(sources)
            user_id, email, email_j, name, name_j = pick(users)
            subject = rng.randrange(self.subjects) + 1
            entry = subject * 10 + rng.randrange(6)
            event, event_j = pick(events)
            form, form_j = pick(forms)
            version = 1 + (subject % 3)
            item_row = action.startswith("item_") or action.startswith("query") or action == "sdv_set"
            item, item_j = pick(items) if item_row else ("", '""')
            old = new = None
            reason = ""
            detail = "{}"
            if action == "item_create":
                new = rng.randrange(30, 200) if rng.random() < 0.7 else pick(texts)
            elif action == "item_update":
                old, new, reason = rng.randrange(30, 200), rng.randrange(30, 200), "transcription error"
            elif action == "item_delete":
                old, reason = rng.randrange(30, 200), "entered for the wrong visit"
            elif action == "entry_complete":
                detail = f'{{"entry_version": {rng.randrange(1, 9)}}}'
            old_j = "null" if old is None else f"[{old}]" if isinstance(old, int) else f"[{old[1]}]"
            new_j = "null" if new is None else f"[{new}]" if isinstance(new, int) else f"[{new[1]}]"
            canonical = (f'["v1", {seq}, {at_us}, {action_j}, {source_j}, {user_id}, {email_j}, {name_j}, '
                         f'{subject}, {entry}, {event_j}, {form_j}, {version}, {item_j}, {old_j}, {new_j}, '
                         f'{_j(reason)}, {detail}]')
            prev = h
            h = sha(prev + canonical.encode()).digest()
            at = (EPOCH + timedelta(microseconds=at_us)).isoformat()
            old_c = "\\N" if old is None else str(old) if isinstance(old, int) else old[1]
            new_c = "\\N" if new is None else str(new) if isinstance(new, int) else new[1]
            yield (f"{seq}\t{seq}\t{at}\t{user_id}\t{subject}\t{entry}\t{version}\t{action}\t{source}\t{email}\t"
                   f"{name}\t{event}\t{form}\t{item}\t{reason}\t{old_c}\t{new_c}\t{detail}\t"
                   f"\\\\x{prev.hex()}\t\\\\x{h.hex()}\n")
            self.last_at_us = at_us
        self.last_hash = h


def bulk_load(*, rows: int, subjects: int, seed: int) -> float:
    from django.db import connection, transaction

    now = datetime.now(UTC)
    first_month = month_start(now, -MONTHS)
    execute("SELECT ecrf_audit_partitions_ensure(%s, %s)", [MONTHS + 3, first_month])
    # Load without the lookup indexes and the primary key; build them afterwards.
    execute("DROP INDEX ecrf_auditevent_subject_at, ecrf_auditevent_entry_at, ecrf_auditevent_seq")
    execute("ALTER TABLE ecrf_auditevent DROP CONSTRAINT ecrf_auditevent_pkey")
    start_us = (first_month - EPOCH) // timedelta(microseconds=1)
    end_us = (now - timedelta(minutes=5) - EPOCH) // timedelta(microseconds=1)
    generator = Generator(rows=rows, subjects=subjects, start_us=start_us, span_us=end_us - start_us, seed=seed)
    started = time.perf_counter()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL synchronous_commit = off")
        cursor.copy_expert(f"COPY ecrf_auditevent ({', '.join(COLUMNS)}) FROM STDIN", _Rows(generator.lines()))
        cursor.execute("SELECT setval('ecrf_auditevent_id_seq', %s)", [rows])
        # The loader plays the append function: it moves the head to the last row.
        cursor.execute("SET LOCAL suifang.audit_append = 'on'")
        cursor.execute("UPDATE ecrf_auditchainhead SET last_seq = %s, last_hash = %s, last_at = %s WHERE id = 1",
                       [rows, generator.last_hash, EPOCH + timedelta(microseconds=generator.last_at_us)])
    copy_s = time.perf_counter() - started
    log(f"  COPY {rows:,} rows (chain computed) in {copy_s:.1f} s")
    started = time.perf_counter()
    execute("SET maintenance_work_mem = '512MB'")
    execute("ALTER TABLE ecrf_auditevent ADD CONSTRAINT ecrf_auditevent_pkey PRIMARY KEY (id, at)")
    execute(migration().CREATE_INDEXES)
    log(f"  primary key + 3 indexes on the partitioned table in {time.perf_counter() - started:.1f} s")
    (bad,) = execute("SELECT count(*) FROM ecrf_auditevent e TABLESAMPLE SYSTEM (1) "
                     "WHERE ecrf_audit_row_hash(e) <> e.hash")[0]
    if bad:
        raise SystemExit(f"{bad} sampled rows hash differently in PostgreSQL: the bench's canonical form is wrong")
    return copy_s


def make_flat_copy() -> None:
    started = time.perf_counter()
    execute("DROP TABLE IF EXISTS audit_flat")
    execute("CREATE TABLE audit_flat (LIKE ecrf_auditevent INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
    execute("INSERT INTO audit_flat SELECT * FROM ecrf_auditevent ORDER BY seq")
    execute("ALTER TABLE audit_flat ADD CONSTRAINT audit_flat_pkey PRIMARY KEY (id, at)")
    execute(migration().CREATE_INDEXES.replace("ON ecrf_auditevent", "ON audit_flat")
            .replace("INDEX ecrf_auditevent_", "INDEX audit_flat_"))
    execute("VACUUM (ANALYZE) ecrf_auditevent")
    execute("VACUUM (ANALYZE) audit_flat")
    (size_p, size_f) = execute("""SELECT
        (SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree('ecrf_auditevent')),
        pg_total_relation_size('audit_flat')""")[0]
    log(f"  unpartitioned copy + same indexes + VACUUM ANALYZE of both in {time.perf_counter() - started:.1f} s "
        f"(sizes with indexes: partitioned {size_p / 2**20:,.0f} MB, unpartitioned {size_f / 2**20:,.0f} MB)")


# --- 2. the selector ----------------------------------------------------------------------

def _selector_sql(subject_id: int, before_seq: int | None) -> tuple[str, tuple[Any, ...]]:
    from ecrf.models_audit import AuditEvent

    qs = AuditEvent.objects.filter(subject_id=subject_id)
    if before_seq is not None:
        qs = qs.filter(seq__lt=before_seq)
    qs = qs.order_by("-at", "-seq")[:PAGE]
    sql, params = qs.query.sql_with_params()
    assert audit_for_subject_matches(sql)
    return sql, params


def audit_for_subject_matches(sql: str) -> bool:
    return '"ecrf_auditevent"' in sql and "ORDER BY" in sql


def _selector(subject_id: int, before_seq: int | None) -> Callable[[], list[int]]:
    from ecrf.audit_selectors import audit_for_subject

    def run() -> list[int]:
        return [e.id for e in audit_for_subject(subject_id=subject_id, limit=PAGE, before_seq=before_seq)]

    return run


def _raw(sql: str, params: tuple[Any, ...]) -> Callable[[], list[int]]:
    def run() -> list[int]:
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return [row[0] for row in cursor.fetchall()]  # ids

    return run


def time_queries(*, subjects: int, runs: int, seed: int) -> list[list[str]]:
    from ecrf.audit_selectors import audit_for_subject

    rng = random.Random(seed + 1)
    chosen = [rng.randrange(subjects) + 1 for _ in range(runs)]
    # Page 2 starts below the last seq of page 1.
    page1 = {s: audit_for_subject(subject_id=s, limit=PAGE) for s in chosen}
    befores = {s: (page1[s][-1].seq if len(page1[s]) == PAGE else None) for s in chosen}
    out = []
    for label, before_of in (("page 1 (50 newest)", lambda s: None), ("page 2 (before_seq)", befores.get)):
        subjects_here = [s for s in chosen if label.startswith("page 1") or before_of(s) is not None]
        queries = {s: _selector_sql(s, before_of(s)) for s in subjects_here}
        sel_calls = [_selector(s, before_of(s)) for s in subjects_here]
        part_calls = [_raw(*queries[s]) for s in subjects_here]
        flat_calls = [_raw(queries[s][0].replace('"ecrf_auditevent"', '"audit_flat"'), queries[s][1])
                      for s in subjects_here]
        # The three ways run in turn for each subject (the machine is shared: interleaving
        # gives each the same conditions); a warm-up pass first, reported as "first call".
        methods: dict[str, list[Callable[[], Any]]] = {"selector": sel_calls, "partitioned": part_calls,
                                                       "flat": flat_calls}
        passes: list[dict[str, tuple[list[float], list[Any]]]] = []
        for _ in range(2):
            timings: dict[str, tuple[list[float], list[Any]]] = {name: ([], []) for name in methods}
            for index in range(len(subjects_here)):
                for name, calls in methods.items():
                    started = time.perf_counter()
                    result = calls[index]()
                    timings[name][0].append(time.perf_counter() - started)
                    timings[name][1].append(result)
            passes.append(timings)
        figures = {name: (passes[0][name][0], passes[1][name][0], passes[1][name][1]) for name in methods}
        if figures["selector"][2] != figures["partitioned"][2] or figures["partitioned"][2] != figures["flat"][2]:
            raise SystemExit(f"{label}: the selector, the partitioned and the flat query returned different rows")
        rows = sum(len(r) for r in figures["partitioned"][2]) / max(len(subjects_here), 1)
        sel, part, flat = (figures[k][1] for k in ("selector", "partitioned", "flat"))
        from bench.common import median, ratio

        out.append([label, f"{len(subjects_here)}", f"{rows:.0f}",
                    f"{ms(median(sel))} / {ms(p95(sel))}",
                    f"{ms(median(part))} / {ms(p95(part))}",
                    f"{ms(median(flat))} / {ms(p95(flat))}",
                    ratio(median(part), median(flat)),
                    f"{ms(median(figures['partitioned'][0]))} / {ms(median(figures['flat'][0]))}"])
    return out


def explain_one(subject_id: int) -> str:
    sql, params = _selector_sql(subject_id, None)
    lines = execute("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY ON) " + sql, params)
    text = [line for (line,) in lines]
    keep = [t for t in text if "Limit" in t or "Append" in t or "Sort" in t or "Execution" in t
            or "Subplans" in t or "Planning" in t]
    scans = sum(1 for t in text if "Index Scan" in t)
    return "; ".join(k.strip() for k in keep) + f"; {scans} index scans"


# --- 3. appends ---------------------------------------------------------------------------

def make_plain_twin() -> None:
    now = datetime.now(UTC)
    execute("DROP TABLE IF EXISTS audit_plain")
    execute("CREATE TABLE audit_plain (LIKE ecrf_auditevent INCLUDING DEFAULTS INCLUDING CONSTRAINTS) "
            "PARTITION BY RANGE (at)")
    execute("ALTER TABLE audit_plain ADD PRIMARY KEY (id, at)")
    execute(f"CREATE TABLE audit_plain_now PARTITION OF audit_plain FOR VALUES FROM ('{month_start(now, 0)}') "
            f"TO ('{month_start(now, 1)}')")
    execute("CREATE TABLE audit_plain_default PARTITION OF audit_plain DEFAULT")
    execute(migration().CREATE_INDEXES.replace("ON ecrf_auditevent", "ON audit_plain")
            .replace("INDEX ecrf_auditevent_", "INDEX audit_plain_"))


def _save_rows(rng: random.Random, batch: int) -> list[Any]:
    from ecrf.audit import AuditActor, AuditRow

    actor = AuditActor(user_id=rng.randrange(1, USERS), email="coordinator@bench.example.org", name="Coordinator")
    subject = rng.randrange(1, 1000)
    return [AuditRow(action="item_update", source="web", actor=actor, subject_id=subject, entry_id=subject * 10,
                     event_code="M3", form_code="VITALS", form_version=2, item=f"item{n}", old=n, new=n + 1,
                     reason="transcription error") for n in range(batch)]


def time_appends(*, saves: int, batch: int, seed: int) -> list[str]:
    from django.db import connection, transaction
    from psycopg2.extras import Json, execute_values

    from bench.common import ratio
    from ecrf.audit import audit_record_many

    rng = random.Random(seed + 2)
    plans = [_save_rows(rng, batch) for _ in range(saves)]
    zero = bytes(32)
    columns = ("id", "seq", "at", "user_id", "subject_id", "entry_id", "form_version", "action", "source",
               "user_email", "user_name", "event_code", "form_code", "item", "reason", "old_value", "new_value",
               "detail", "prev_hash", "hash")
    sql = f"INSERT INTO audit_plain ({', '.join(columns)}) VALUES %s"
    counter = 0

    def chained(rows: list[Any]) -> None:
        with transaction.atomic():
            audit_record_many(rows=rows)

    def plain(rows: list[Any]) -> None:
        nonlocal counter
        now = datetime.now(UTC)
        values = []
        for r in rows:
            counter += 1
            values.append((counter, counter, now, r.actor.user_id, r.subject_id, r.entry_id, r.form_version,
                           r.action, r.source, r.actor.email, r.actor.name, r.event_code, r.form_code, r.item,
                           r.reason, Json(r.old), Json(r.new), Json(dict(r.detail or {})), zero, zero))
        with transaction.atomic(), connection.cursor() as cursor:
            execute_values(cursor.cursor, sql, values, page_size=len(values))

    for rows in plans[:5]:  # warm-up
        chained(rows)
        plain(rows)
    chained_s = plain_s = 0.0
    for rows in plans:  # interleaved: both see the same machine
        started = time.perf_counter()
        chained(rows)
        middle = time.perf_counter()
        plain(rows)
        chained_s += middle - started
        plain_s += time.perf_counter() - middle
    total = saves * batch
    chained_rate, plain_rate = total / chained_s, total / plain_s
    return [f"{saves} x {batch}", f"{chained_rate:,.0f} rows/s ({chained_s / saves * 1000:.1f} ms/save)",
            f"{plain_rate:,.0f} rows/s ({plain_s / saves * 1000:.1f} ms/save)", ratio(plain_rate, chained_rate)]


# --- the run ------------------------------------------------------------------------------

def run_level(level: int, args: argparse.Namespace) -> dict[str, Any]:
    from django.db import connection

    from ecrf.audit import audit_chain_verify
    from tenants import schema_pool, services

    schema_pool.pool_refill(target_size=1)
    tenant = services.tenant_create(name=f"Audit {level}", slug=f"audit-{level}", kind="hospital",
                                    admin_email=f"admin@audit-{level}.example.org", admin_password=None)
    connection.set_tenant(tenant)  # type: ignore[attr-defined]
    subjects = max(1, level // args.rows_per_subject)
    log(f"level {level:,} rows, {subjects:,} subjects (schema {tenant.schema_name})")
    copy_s = bulk_load(rows=level, subjects=subjects, seed=args.seed)
    make_flat_copy()
    (partitions,) = execute("SELECT count(*) FROM pg_partition_tree('ecrf_auditevent') WHERE isleaf")[0]
    log(f"  {partitions} partitions; plan: {explain_one(1)}")
    queries = time_queries(subjects=subjects, runs=args.runs, seed=args.seed)
    for row in queries:
        log(f"  audit_for_subject {row[0]}: selector {row[3]}, partitioned {row[4]}, unpartitioned {row[5]}")
    make_plain_twin()
    appends = time_appends(saves=args.saves, batch=args.batch, seed=args.seed)
    log(f"  appends: audit_record_many {appends[1]}, plain INSERT {appends[2]}")
    verify = "-"
    if level <= args.verify_max:
        started = time.perf_counter()
        report = audit_chain_verify()
        seconds = time.perf_counter() - started
        if not report.ok:
            raise SystemExit(f"verify found problems: {report.problems[:5]}")
        verify = f"{report.rows:,} rows in {seconds:.1f} s ({report.rows / seconds:,.0f} rows/s)"
        log(f"  verify: {verify}, no problem")
    connection.set_schema_to_public()  # type: ignore[attr-defined]
    return {"level": level, "copy": copy_s, "queries": queries, "appends": appends, "verify": verify,
            "partitions": partitions}


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    os.environ["BENCH_DATABASE_URL"] = args.db
    from bench import common

    common.recreate_database()
    common.setup_django()
    common.migrate_shared()
    log(common.machine_info())
    started = time.perf_counter()
    results = [run_level(level, args) for level in args.levels_list]
    log("")
    log(f"audit_for_subject(subject_id=..., limit={PAGE}): {args.runs} random subjects, one warm-up pass then the "
        f"timed pass; median / p95. 'ratio' = partitioned / unpartitioned (median, raw SQL).")
    log(common.table(["rows", "query", "subjects", "rows returned", "selector (ORM)", "partitioned (raw SQL)",
                      "unpartitioned (raw SQL)", "ratio", "first call: part. / unpart. (median)"],
                     [[f"{r['level']:,}", *q] for r in results for q in r["queries"]]))
    log("")
    log(f"Appends: form saves of {args.batch} rows, one transaction each. 'ratio' = plain / audit_record_many.")
    log(common.table(["rows in table", "saves", "audit_record_many (chain + lock)", "plain INSERT (no chain)",
                      "ratio"], [[f"{r['level']:,}", *r["appends"]] for r in results]))
    log("")
    log(common.table(["rows", "partitions", "COPY with chain (setup)", "audit_chain_verify (whole chain)"],
                     [[f"{r['level']:,}", r["partitions"], f"{r['copy']:.1f} s", r["verify"]] for r in results]))
    log(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
