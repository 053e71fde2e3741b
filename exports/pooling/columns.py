"""One tenant's cells of a pooled run, by columns (docs/adr/0016).

The rules are those of exports.deid and exports.pooling.harmonise, which apply them value
by value. Here most values never become Python objects: the tenant's entries are listed
in the pooled order (by pseudonym, then event, occurrence and form) through COPY into
Arrow, their values are read a group of entries at a time as JSON text (COPY again), and
each consented item's values are judged and written by Arrow and numpy kernels as its
`ItemPlan` says. A value the columns cannot prove they release exactly as the rules
would (a repeating group, a multiple choice, a partial date or a date-time, a number
whose text Python would write differently, a string with escapes, anything unexpected)
goes through the rules themselves (deid.deidentify_values, then the harmoniser), so the
output never depends on which way a value went: tests/exports/test_pooling_columns.py
runs both ways over odd values and compares them with a whole-entry reference.

A part is an Arrow IPC stream, one record batch per group of entries: the pooled columns
typed as in the Parquet file, and each row's CSV line (`line`), so the combine step
filters rows by subject and writes both files without parsing or formatting again.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from django.db import connection
from psycopg2 import sql as pgsql
from pyarrow import csv as pa_csv

from exports import deid, extract
from exports.pooling import harmonise

# The pooled long rows: the CSV's columns, numbers and dates typed (also the Parquet file's).
POOLED_PARQUET_SCHEMA = pa.schema([
    ("contributor", pa.string()), ("subject", pa.string()), ("event", pa.string()), ("occurrence", pa.int32()),
    ("visit_date", pa.date32()), ("form", pa.string()), ("form_version", pa.int32()), ("item", pa.string()),
    ("item_row", pa.int32()), ("value", pa.string())])
# A part's columns: the same, with the columns an entry's rows share as dictionaries over
# the group's entries (no copy per row), and each row's CSV line.
_SHARED = ("contributor", "subject", "event", "form")
PART_SCHEMA = pa.schema([pa.field(f.name, pa.dictionary(pa.int32(), pa.string())) if f.name in _SHARED else f
                         for f in POOLED_PARQUET_SCHEMA]).append(pa.field("line", pa.string()))

# The listing is read in blocks of this many bytes (about 12,000 entries): each block is
# a group, one COPY of its values and one record batch of the part.
LISTING_BLOCK_BYTES = 1 << 20

BASES = ("drop", "text", "number", "choice", "yes_no", "date", "rules")
HARMONISE = ("none", "map", "factor", "unmapped")
_MISSING_POSITION = 1 << 30  # missing-data codes come after an entry's values, by path
_YES_NO_TEXT = ("0", "1", "Y", "N", "yes", "no")
_NUMBER_TEXT = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"  # float() reads it: kept as written
_FULL_DATE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
# date32 days of 1000-01-01 and 9999-12-31: four-digit years, written as Python writes them.
_FIRST_DAY, _LAST_DAY = (date(1000, 1, 1) - date(1970, 1, 1)).days, (date(9999, 12, 31) - date(1970, 1, 1)).days
_QUOTE_BYTES = np.frombuffer(b',"\r\n', dtype=np.uint8)


@dataclass(frozen=True)
class ItemPlan:
    """How the values of one consented item of one form version are released."""

    form: str
    path: str  # the item code (a key of the entry's values)
    position: int  # its place in the definition: the order of an entry's rows
    base: str  # one of BASES; "rules": every value by deid's rules
    mode: str = "none"  # how it is harmonised: one of HARMONISE
    codes: tuple[str, ...] = ()  # a single choice's code list
    rule: harmonise.Rule | None = None


def every_item_consented(definition: Mapping[str, Any], consented: set[str]) -> bool:
    """Whether every item of a version that holds values is consented (then no key of its
    entries needs filtering out in SQL)."""
    return all(str(item.get("code")) in consented for item in definition.get("items") or []
               if item.get("type") not in deid.VALUELESS_TYPES)


def item_plans(*, form: str, definition: Mapping[str, Any], consented: set[str], safe_items: frozenset[str],
               rules: Sequence[harmonise.Rule]) -> dict[str, ItemPlan]:
    """Item code -> plan, for the consented items of one form version. `rules`: the
    harmoniser's for this version (same-unit rules are not among them)."""
    index = deid.form_index(definition, form)
    order: dict[str, int] = {}
    for item in definition.get("items") or []:
        order.setdefault(str(item.get("code")), len(order))
        for child in item.get("items") or [] if item.get("type") == "group" else []:
            order.setdefault(str(child.get("code")), len(order))
    by_code = {rule.code: rule for rule in rules if not rule.group}
    lists = definition.get("code_lists") or {}
    plans = {}
    for code in sorted(consented):
        item = index.items.get(code)
        plan = ItemPlan(form=form, path=code, position=order.get(code, len(order)),
                        base=_base(item, safe_items, form) if item is not None else "drop")
        if plan.base == "choice" and item is not None:
            plan = replace(plan, codes=tuple(str(e.get("value")) for e in lists.get(str(item.get("code_list"))) or []))
        rule = by_code.get(code)
        if rule is not None and plan.base not in ("drop", "rules"):
            plan = _harmonised(plan, rule)
        plans[code] = plan
    return plans


def _base(item: Mapping[str, Any], safe_items: frozenset[str], form: str) -> str:
    kind = item.get("type")
    if kind == "group" or not isinstance(kind, str):
        return "rules"  # rows of children, row by row
    if not deid.item_may_leave(item, safe_items, form_code=form):
        return "drop"
    code = item.get("code")
    if kind in ("text", "long_text", "time") or (
            kind == "calculated" and (code in safe_items or f"{form}.{code}" in safe_items)):
        return "text"
    if kind in deid.NUMERIC_TYPES:
        return "number"
    return {"single_choice": "choice", "yes_no": "yes_no", "date": "date", "datetime": "date"}.get(kind, "rules")


def _harmonised(plan: ItemPlan, rule: harmonise.Rule) -> ItemPlan:
    if rule.codes is not None:
        return replace(plan, mode="map", rule=rule) if plan.base != "date" else replace(plan, base="rules")
    if rule.factor is None:
        return replace(plan, mode="unmapped", rule=rule)
    if plan.base != "number":
        return replace(plan, base="rules")
    return replace(plan, mode="factor", rule=rule)


# --- reading -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class PartEntry:
    """One entry of the part (for the values judged by deid's rules)."""

    entry_id: int
    version_id: int
    pseudonym: str
    shift: int
    subject_code: str  # for error messages (never written)
    event: str
    occurrence: int
    visit_date: date | None
    form: str
    form_version: int


_LISTING_COLUMNS = {"entry": pa.int64(), "version": pa.int64(), "pseudonym": pa.string(), "shift": pa.int32(),
                    "subject": pa.string(), "event": pa.string(), "occurrence": pa.int32(), "visit": pa.date32(),
                    "form": pa.string(), "form_version": pa.int32(), "has_missing": pa.bool_()}

_ENTRIES_SQL = """
WITH event_order(code, position) AS ({events}),
subj(code, pseudonym, shift) AS (SELECT * FROM unnest({codes}::text[], {pseudonyms}::text[], {shifts}::int[]))
SELECT x.id, x.form_version_id, sj.pseudonym, sj.shift, x.subject_code, x.event_code, x.sequence, x.visit,
       x.form, x.number, x.has_missing
  FROM (SELECT e.id, e.form_version_id, s.subject_code, t.event_code, t.sequence,
               coalesce(t.completed_on, t.target_date) AS visit, f.code AS form, v.number,
               e.missing <> '{{}}'::jsonb AS has_missing, coalesce(eo.position, 100000) AS position
       """ + extract.ENTRY_JOINS + """) x
  JOIN subj sj ON sj.code = x.subject_code
 ORDER BY sj.pseudonym COLLATE "C", x.position, x.event_code COLLATE "C", x.sequence, x.form COLLATE "C"
"""  # noqa: S608 (constant fragments; values are bound by psycopg2.sql)

# A group's values as JSON text (a string's escapes kept: no line break reaches the CSV
# reader unquoted); only of the consented items when some item is not (the filter costs
# more than it saves otherwise: keys without a plan are passed over by the columns).
_CELLS_SQL = """
SELECT e.id, kv.key, kv.value
  FROM ecrf_entry e
 CROSS JOIN LATERAL jsonb_each(e.values) kv
 WHERE e.id = ANY({ids}) {only}
"""

# The valid missing-data codes of the group's entries that have any (most have none).
_MISSING_SQL = """
SELECT e.id, km.key, km.value #>> '{{}}'
  FROM ecrf_entry e
 CROSS JOIN LATERAL jsonb_each(e.missing) km
 WHERE e.id = ANY({ids}) AND jsonb_typeof(km.value) = 'string' AND km.value #>> '{{}}' IN ('NA', 'UNK', 'ASKU', 'NASK')
"""

_CELL_COLUMNS = {"entry": pa.int64(), "key": pa.string(), "json": pa.string()}


def entry_listing(*, study_id: int, forms: Sequence[str], events: pgsql.Composable,
                  subjects: Sequence[tuple[str, str, int]]) -> Iterator[pa.RecordBatch]:
    """The part's entries in the pooled order, a block at a time; `subjects`: (subject
    code, pseudonym, shift). COPY'd to a temporary file first: memory holds one block."""
    query = pgsql.SQL(_ENTRIES_SQL).format(
        events=events, study=pgsql.Literal(study_id),
        filters=pgsql.SQL("AND f.code = ANY({})").format(pgsql.Literal(list(forms))),
        codes=pgsql.Literal([s[0] for s in subjects]), pseudonyms=pgsql.Literal([s[1] for s in subjects]),
        shifts=pgsql.Literal([s[2] for s in subjects]))
    with tempfile.TemporaryFile(prefix="suifang-pool-entries-") as listing:
        if not extract.copy_out(query, listing, header=False):
            return
        listing.seek(0)
        reader = pa_csv.open_csv(
            listing, read_options=pa_csv.ReadOptions(column_names=list(_LISTING_COLUMNS), use_threads=False,
                                                     block_size=LISTING_BLOCK_BYTES),
            convert_options=pa_csv.ConvertOptions(column_types=_LISTING_COLUMNS, strings_can_be_null=False,
                                                  true_values=["t"], false_values=["f"]),
            memory_pool=pa.system_memory_pool())
        yield from reader


def read_cells(entries: pa.RecordBatch, keys: Sequence[str] | None) -> pa.Table:
    """The group's values (and its missing-data codes, "missing" set), as text columns.
    `keys`: the consented item codes, or None when every item of every version is."""
    only = pgsql.SQL("AND kv.key = ANY({})").format(pgsql.Literal(sorted(keys))) if keys is not None else pgsql.SQL("")
    values = extract.copy_table(pgsql.SQL(_CELLS_SQL).format(ids=_id_array(entries.column("entry")), only=only),
                         _CELL_COLUMNS)
    values = values.append_column("missing", pa.nulls(values.num_rows, pa.string()))
    with_missing = pc.filter(entries.column("entry"), entries.column("has_missing")).to_pylist()
    if not with_missing:
        return values
    with connection.cursor() as cursor:
        cursor.execute(pgsql.SQL(_MISSING_SQL).format(ids=_id_array(pa.array(with_missing, pa.int64())))
                       .as_string(cursor.cursor))
        found = cursor.fetchall()
    codes = pa.table({"entry": pa.array([row[0] for row in found], pa.int64()),
                      "key": pa.array([row[1] for row in found], pa.string()),
                      "json": pa.array([row[2] for row in found], pa.string()),
                      "missing": pa.array(["m"] * len(found), pa.string())})
    return pa.concat_tables([values, codes])


def _id_array(ids: pa.Array) -> pgsql.Composable:
    """A bigint[] literal of entry keys (integers: written out directly; quoting each as
    psycopg2 does cost more than the query on a group of thousands)."""
    numbers = np.asarray(ids.to_numpy(zero_copy_only=False), dtype=np.int64)
    return pgsql.SQL("'{{{}}}'::bigint[]").format(pgsql.SQL(",".join(map(str, numbers.tolist()))))


# --- judging -------------------------------------------------------------------------------

@dataclass
class PartCounts:
    """What the manifest says of a part (never a value)."""

    entries: int = 0
    values: int = 0
    dropped: set[str] = field(default_factory=set)
    harmonised: Counter[str] = field(default_factory=Counter)
    unmapped: Counter[str] = field(default_factory=Counter)
    by_rules: int = 0  # stored values judged by deid's rules, not by columns (a diagnostic)


PythonValues = Callable[[PartEntry, str, Any], list[tuple[str, str, str]]]


class PartBuilder:
    """Turns groups of listed entries and their cells into record batches of PART_SCHEMA.

    `python_values(entry, code, value)`: the rows deid's rules and the harmoniser give
    one stored value, as (item, row, text); `vectorise=False` sends every value there."""

    def __init__(self, *, tenant: str, plans: Mapping[int, Mapping[str, ItemPlan]],
                 consented: Mapping[str, set[str]], python_values: PythonValues, counts: PartCounts,
                 vectorise: bool = True, filter_keys: bool = True) -> None:
        self.tenant = tenant
        self.consented = consented
        self.python_values = python_values
        self.counts = counts
        self.vectorise = vectorise
        # The consented codes read_cells filters on; None: not worth it (every item is).
        self.keys: list[str] | None = sorted({code for by_code in plans.values() for code in by_code}) \
            if filter_keys else None
        self._plans: list[ItemPlan] = []
        self._by_version: dict[int, tuple[pa.Array, np.ndarray]] = {}
        for version, by_code in plans.items():
            codes = sorted(by_code)
            self._by_version[version] = (pa.array(codes, pa.string()),
                                         np.arange(len(self._plans), len(self._plans) + len(codes)))
            self._plans += [by_code[code] for code in codes]
        self._base = np.array([BASES.index(p.base) for p in self._plans] + [0], dtype=np.int8)
        self._harm = np.array([HARMONISE.index(p.mode) for p in self._plans] + [0], dtype=np.int8)
        self._position = np.array([p.position for p in self._plans] + [0], dtype=np.int64)
        self._last_position = int(self._position.max())
        self._items = pa.array([p.path for p in self._plans] + [""], pa.string())
        self._item_fields = pa.array([csv_field(p.path) for p in self._plans] + [""], pa.string())

    def batch(self, entries: pa.RecordBatch, table: pa.Table) -> pa.RecordBatch:
        cells = pa.RecordBatch.from_arrays([_array(column) for column in table.columns], names=table.column_names)
        entry_pos = np.asarray(pc.index_in(cells.column("entry"), value_set=entries.column("entry"))
                               .to_numpy(zero_copy_only=False), dtype=np.int64)
        missing = _flag(pc.is_valid(cells.column("missing")))
        plan = self._plan_ids(entries, cells, entry_pos, missing)
        base = self._base[plan]  # -1 (no plan: not consented for this form) indexes the spare last slot
        base[plan < 0] = -1
        for plan_id in np.unique(plan[base == BASES.index("drop")]):
            chosen = self._plans[int(plan_id)]
            self.counts.dropped.add(f"{chosen.form}.{chosen.path}")
        rows = _Rows()
        ok, out, keep = self._judge(entries, cells, entry_pos, base, plan)
        kept = np.nonzero(keep)[0]
        rows.add_columns(entry_pos[kept], self._position[plan[kept]], self._items.take(plan[kept]),
                         self._item_fields.take(plan[kept]), out.take(kept))
        by_rules = np.nonzero((base > BASES.index("drop")) & ~ok)[0]
        self._rules_rows(entries, cells, entry_pos, plan, by_rules, rows)
        self._missing_rows(entries, cells, entry_pos, np.nonzero(missing)[0], rows)
        return self._assemble(entries, rows)

    def _plan_ids(self, entries: pa.RecordBatch, cells: pa.RecordBatch, entry_pos: np.ndarray,
                  missing: np.ndarray) -> np.ndarray:
        """Each cell's plan (by its entry's form version and its key), or -1."""
        plan = np.full(cells.num_rows, -1, dtype=np.int64)
        versions = np.asarray(entries.column("version").to_numpy(zero_copy_only=False))[entry_pos]
        for version in np.unique(versions):
            if int(version) not in self._by_version:
                continue
            codes, ids = self._by_version[int(version)]
            rows = np.nonzero((versions == version) & ~missing)[0]
            found = pc.index_in(cells.column("key").take(rows), value_set=codes)
            hit = _flag(pc.is_valid(found))
            plan[rows[hit]] = ids[np.asarray(pc.fill_null(found, 0).to_numpy(zero_copy_only=False))[hit]]
        return plan

    def _judge(self, entries: pa.RecordBatch, cells: pa.RecordBatch, entry_pos: np.ndarray, base: np.ndarray,
               plan: np.ndarray) -> tuple[np.ndarray, pa.Array, np.ndarray]:
        """(ok, out, keep): `ok` where the columns release the value exactly as deid's rules
        would, `out` the released text (null: an empty cell), `keep` where it is a row."""
        n = cells.num_rows
        raw = cells.column("json")
        # A JSON text's type is its first byte; a string with a backslash has escapes.
        offsets, data = _bytes_of(raw)
        empty = offsets[1:] == offsets[:-1]  # no JSON text is empty; guarded all the same
        first = data[np.minimum(offsets[:-1], max(len(data) - 1, 0))] if len(data) else np.zeros(n, dtype=np.uint8)
        first[empty] = 0
        is_str, is_null = first == ord('"'), first == ord("n")
        is_bool = (first == ord("t")) | (first == ord("f"))
        is_num = (first == ord("-")) | ((first >= ord("0")) & (first <= ord("9")))
        plain_str = is_str & ~_rows_holding(offsets, data, np.frombuffer(b"\\", dtype=np.uint8))
        text = pc.if_else(pa.array(plain_str), pc.utf8_slice_codeunits(raw, 1, -1), raw)
        ok = np.zeros(n, dtype=bool)
        if not self.vectorise:
            return ok, text, ok
        ok |= (base > BASES.index("drop")) & (base != BASES.index("rules")) & is_null
        patches = _Patches()
        for name in ("text", "number", "yes_no", "choice", "date"):
            rows = np.nonzero((base == BASES.index(name)) & ~is_null)[0]
            if not len(rows):
                continue
            sub = text.take(rows)
            if name == "text":
                ok[rows] = plain_str[rows] | is_bool[rows] | (is_num[rows] & _python_number_text(sub))
            elif name == "number":
                ok[rows] = (is_num[rows] & _python_number_text(sub)) | (
                    plain_str[rows] & _flag(pc.match_substring_regex(sub, _NUMBER_TEXT)))
            elif name == "yes_no":
                ok[rows] = is_bool[rows] | (plain_str[rows] & _flag(pc.is_in(sub, value_set=pa.array(_YES_NO_TEXT)))) \
                    | (is_num[rows] & _flag(pc.is_in(sub, value_set=pa.array(["0", "1"]))))
            elif name == "choice":
                for plan_id in np.unique(plan[rows]):
                    here = plan[rows] == plan_id
                    codes = pa.array(self._plans[int(plan_id)].codes, pa.string())
                    ok[rows[here]] = plain_str[rows[here]] & _flag(pc.is_in(sub.filter(pa.array(here)),
                                                                             value_set=codes))
            else:
                dated = rows[plain_str[rows] & _flag(pc.match_substring_regex(sub, _FULL_DATE))]
                if len(dated):
                    shifts = np.asarray(entries.column("shift").to_numpy(zero_copy_only=False))[entry_pos[dated]]
                    shifted, valid = _shift_dates(text.take(dated), shifts)
                    ok[dated[valid]] = True
                    patches.add(dated[valid], shifted.filter(pa.array(valid)))
        harm = self._harm[plan]
        harm[plan < 0] = 0
        self._harmonise(plan, harm, ok, is_null, text, patches)
        out = patches.applied(text)
        unmapped = (harm == HARMONISE.index("unmapped")) & ok & ~is_null
        self._count(self.counts.unmapped, plan[unmapped])
        keep = ok & ~unmapped
        return ok, pc.if_else(pa.array(is_null), pa.scalar(None, pa.string()), out), keep

    def _harmonise(self, plan: np.ndarray, harm: np.ndarray, ok: np.ndarray, is_null: np.ndarray,
                   text: pa.Array, patches: _Patches) -> None:
        """Codes and units in the consortium's terms, where `ok`; a value the rule cannot
        map is left to deid's rules and the harmoniser (which count it)."""
        mapped = np.nonzero(ok & (harm == HARMONISE.index("map")) & ~is_null)[0]
        for plan_id in np.unique(plan[mapped]):
            rows = mapped[plan[mapped] == plan_id]
            rule = self._plans[int(plan_id)].rule  # a "map" plan always has its rule's codes
            codes = rule.codes if rule is not None and rule.codes is not None else {}
            found = pc.index_in(text.take(rows), value_set=pa.array(list(codes), pa.string()))
            hit = _flag(pc.is_valid(found))
            ok[rows[~hit]] = False
            new = pc.take(pa.array(list(codes.values()), pa.string()), found).filter(pa.array(hit))
            patches.add(rows[hit], new)
            self._count(self.counts.harmonised, plan[rows[hit]])
        converted = np.nonzero(ok & (harm == HARMONISE.index("factor")) & ~is_null)[0]
        for plan_id in np.unique(plan[converted]):
            rows = converted[plan[converted] == plan_id]
            rule = self._plans[int(plan_id)].rule
            done, results = _converted(text.take(rows), rule) if rule is not None else (np.zeros(len(rows), bool), None)
            ok[rows[~done]] = False  # deid's rules and the harmoniser decide (and count) those
            if results is not None:
                patches.add(rows[done], results)
            self._count(self.counts.harmonised, plan[rows[done]])

    def _count(self, counter: Counter[str], plan_ids: np.ndarray) -> None:
        for plan_id, count in zip(*np.unique(plan_ids, return_counts=True), strict=True):
            chosen = self._plans[int(plan_id)]
            counter[f"{chosen.form}.{chosen.path}"] += int(count)

    def _entry(self, entries: pa.RecordBatch, index: int) -> PartEntry:
        row = {name: entries.column(name)[index].as_py() for name in _LISTING_COLUMNS}
        return PartEntry(entry_id=row["entry"], version_id=row["version"], pseudonym=row["pseudonym"],
                         shift=row["shift"], subject_code=row["subject"], event=row["event"],
                         occurrence=row["occurrence"], visit_date=row["visit"], form=row["form"],
                         form_version=row["form_version"])

    def _rules_rows(self, entries: pa.RecordBatch, cells: pa.RecordBatch, entry_pos: np.ndarray, plan: np.ndarray,
                    chosen: np.ndarray, rows: _Rows) -> None:
        self.counts.by_rules += len(chosen)
        if not len(chosen):
            return
        raw = cells.column("json").take(chosen).to_pylist()
        keys = cells.column("key").take(chosen).to_pylist()
        known: dict[int, PartEntry] = {}
        for index, key, text in zip(chosen.tolist(), keys, raw, strict=True):
            at = int(entry_pos[index])
            entry = known.get(at) or known.setdefault(at, self._entry(entries, at))
            position = int(self._position[plan[index]])
            for sub, (item, row, value) in enumerate(self.python_values(entry, key, json.loads(text))):
                rows.add(at, position, sub, "", item, row, value)

    def _missing_rows(self, entries: pa.RecordBatch, cells: pa.RecordBatch, entry_pos: np.ndarray,
                      chosen: np.ndarray, rows: _Rows) -> None:
        if not len(chosen):
            return
        forms = entries.column("form").to_pylist()
        paths = cells.column("key").take(chosen).to_pylist()
        codes = cells.column("json").take(chosen).to_pylist()
        for index, path, code in zip(chosen.tolist(), paths, codes, strict=True):
            at = int(entry_pos[index])
            if path.split("[", 1)[0].split(".", 1)[0] in self.consented.get(forms[at], set()):
                rows.add(at, _MISSING_POSITION, 0, path, path, "", code)

    def _assemble(self, entries: pa.RecordBatch, rows: _Rows) -> pa.RecordBatch:
        entry_pos, position, sub, order, item, item_field, item_row, value = rows.arrays()
        # An entry's rows: its values in the definition's order (a group's row by row),
        # then its missing-data codes by path; numpy sorts one composite key.
        keys = [np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.int64) for column in (entry_pos, sub)]
        ranks = np.asarray(position.to_numpy(zero_copy_only=False), dtype=np.int64)
        ranks = np.where(ranks == _MISSING_POSITION, self._last_position + 1, ranks)
        path_ranks = np.asarray(order.to_numpy(zero_copy_only=False), dtype=np.int64)
        composite = keys[0]
        for part, width in ((ranks, int(ranks.max(initial=0)) + 1), (keys[1], int(keys[1].max(initial=0)) + 1),
                            (path_ranks, int(path_ranks.max(initial=0)) + 1)):
            composite = composite * width + part
        sort = np.argsort(composite, kind="stable")
        if not np.all(sort[1:] > sort[:-1]):  # already in order (often): no copies
            at, item, item_field, item_row, value = (column.take(sort) for column in
                                                     (entry_pos, item, item_field, item_row, value))
        else:
            at = entry_pos
        empty = _bytes_of(value)[0]
        if np.any((empty[1:] == empty[:-1]) & _flag(pc.is_valid(value))):
            value = pc.if_else(pc.equal(value, ""), pa.scalar(None, pa.string()), value)
        visits = self._visits(entries)
        prefix = pc.binary_join_element_wise(
            csv_field(self.tenant), entries.column("pseudonym"), _quoted(entries.column("event")),
            pc.cast(entries.column("occurrence"), pa.string()), pc.fill_null(pc.cast(visits, pa.string()), ""),
            _quoted(entries.column("form")), pc.cast(entries.column("form_version"), pa.string()), ",")
        ending = pc.binary_join_element_wise(_quoted(value), "\n", "", null_handling="replace", null_replacement="")
        line = pc.binary_join_element_wise(pc.take(prefix, at), item_field, pc.cast(item_row, pa.string()),
                                           ending, ",", null_handling="replace", null_replacement="")
        self.counts.entries += len(np.unique(np.asarray(at.to_numpy(zero_copy_only=False))))
        self.counts.values += len(line)
        indices = pc.cast(at, pa.int32())

        def shared(name: str) -> pa.DictionaryArray:
            return pa.DictionaryArray.from_arrays(indices, entries.column(name))

        return pa.RecordBatch.from_arrays([
            pa.DictionaryArray.from_arrays(pa.array(np.zeros(len(line), dtype=np.int32)), pa.array([self.tenant])),
            shared("pseudonym"), shared("event"), pc.take(entries.column("occurrence"), at), pc.take(visits, at),
            shared("form"), pc.take(entries.column("form_version"), at), item, item_row, value, line],
            schema=PART_SCHEMA)

    def _visits(self, entries: pa.RecordBatch) -> pa.Array:
        """Each entry's visit date moved by its subject's shift; by deid.shift_date (which
        refuses what a date cannot hold) outside four-digit years."""
        visit = entries.column("visit")
        days = np.asarray(pc.fill_null(pc.cast(visit, pa.int32()), 0).to_numpy(zero_copy_only=False), dtype=np.int64)
        moved = days + np.asarray(entries.column("shift").to_numpy(zero_copy_only=False), dtype=np.int64)
        present = _flag(pc.is_valid(visit))
        inside = (days >= _FIRST_DAY) & (moved >= _FIRST_DAY) & (moved <= _LAST_DAY)
        shifted = pa.array(np.where(inside, moved, 0).astype(np.int32), pa.int32()).cast(pa.date32())
        for index in np.nonzero(present & ~inside)[0].tolist():
            entry = self._entry(entries, index)
            try:
                moved_date = deid.shift_date(entry.visit_date, entry.shift)
            except deid.DeidError as exc:
                where = f"{entry.form} of {entry.event}#{entry.occurrence}, subject {entry.subject_code}"
                raise deid.DeidError(str(exc), field=where) from exc
            shifted = _replace_rows(shifted, np.array([index]), pa.array([moved_date], pa.date32()))
        return pc.if_else(pa.array(present), shifted, pa.scalar(None, pa.date32()))


_PLAIN_DECIMAL = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)$"  # Decimal() reads it exactly, Arrow's cast too


def _converted(texts: pa.Array, rule: harmonise.Rule) -> tuple[np.ndarray, pa.Array | None]:
    """(which values, their conversion): the harmoniser's Decimal(text) * factor, rounded
    half away from zero (ROUND_HALF_UP) to the rule's places, in Arrow's exact decimals.
    Exactly Decimal's result while nothing reaches its 28-digit context: texts of at most
    16 characters (16 digits), a factor of at most 12 digits below 10**6 (so the product
    has at most 28 digits, and its integer part at most 22 beside 0-6 places, which
    quantize() keeps without raising or writing an exponent); any other factor or places
    leave every value to the rules. A negative value that rounds to zero is left to the
    rules too (Decimal writes "-0.0", a decimal array "0.0")."""
    factor = rule.factor
    places = -int(rule.quantum.as_tuple().exponent)
    if factor is None or not factor.is_finite() or not 0 <= places <= 6 or len(factor.as_tuple().digits) > 12 \
            or factor.adjusted() >= 6 or factor <= 0:
        return np.zeros(len(texts), dtype=bool), None
    _sign, digits, exponent = factor.as_tuple()
    scale = max(0, -int(exponent))
    precision = max(len(digits) + max(0, int(exponent)), scale) + 1
    eligible = _flag(pc.less_equal(pc.utf8_length(texts), 16)) & _flag(pc.match_substring_regex(texts, _PLAIN_DECIMAL))
    chosen = np.nonzero(eligible)[0]
    numbers = pc.cast(texts.take(chosen), pa.decimal256(40, 15))
    product = pc.multiply(numbers, pa.scalar(factor, pa.decimal256(precision, scale)))
    rounded = pc.round(product, ndigits=places, round_mode="half_towards_infinity")
    negative_zero = _flag(pc.equal(rounded, pa.scalar(0, rounded.type).cast(rounded.type))) & \
        _flag(pc.starts_with(texts.take(chosen), "-"))
    eligible[chosen[negative_zero]] = False
    kept = ~negative_zero
    text = pc.cast(pc.cast(rounded.filter(pa.array(kept)), pa.decimal256(76, places)), pa.string())
    return eligible, text


def _python_number_text(texts: pa.Array) -> np.ndarray:
    """Which JSON number texts (PostgreSQL's: no exponent, no leading zero, no sign but
    "-") Python writes back unchanged after reading them: integers (read as int); decimals
    with no trailing zero but a lone ".0", at most 15 significant digits (the length bound
    is stricter) and at least 1e-4 (repr() writes no exponent there). Integers of at most
    4,000 characters."""
    has_point = _flag(pc.match_substring(texts, "."))
    length = pc.utf8_length(texts)
    # Python reads no integer of more than 4,300 digits (int_max_str_digits): the rules
    # fail on one, so the columns must not release it either.
    integer = ~has_point & _flag(pc.less_equal(length, 4000))
    short = _flag(pc.less_equal(length, 16))
    trailing = _flag(pc.ends_with(texts, "0")) & ~_flag(pc.ends_with(texts, ".0"))
    tiny = _flag(pc.starts_with(texts, "0.000")) | _flag(pc.starts_with(texts, "-0.000"))
    return integer | (has_point & short & ~trailing & ~tiny)


def _flag(values: Any) -> np.ndarray:
    """An Arrow boolean result as numpy, null as False."""
    return np.asarray(pc.fill_null(values, False).to_numpy(zero_copy_only=False), dtype=bool)


def _array(column: Any) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


class _Patches:
    """Rows' new texts, gathered from each plan's work and written into the column once."""

    def __init__(self) -> None:
        self._rows: list[np.ndarray] = []
        self._values: list[pa.Array] = []

    def add(self, rows: np.ndarray, values: pa.Array) -> None:
        if len(rows):
            self._rows.append(rows)
            self._values.append(_array(values))

    def applied(self, column: pa.Array) -> pa.Array:
        if not self._rows:
            return column
        rows = np.concatenate(self._rows)
        order = np.argsort(rows, kind="stable")
        return _replace_rows(column, rows[order], pa.concat_arrays(self._values).take(order))


def _replace_rows(values: pa.Array, rows: np.ndarray, new: pa.Array) -> pa.Array:
    """`values` with the given rows (ascending) replaced by `new`, in order."""
    if not len(rows):
        return values
    mask = np.zeros(len(values), dtype=bool)
    mask[rows] = True
    return pc.replace_with_mask(values, pa.array(mask), new)


def _shift_dates(texts: pa.Array, shifts: np.ndarray) -> tuple[pa.Array, np.ndarray]:
    """("YYYY-MM-DD" moved by each shift, which were dates that stay within four-digit
    years: the others go to deid's rules)."""
    days = pc.cast(pc.cast(pc.strptime(texts, format="%Y-%m-%d", unit="s", error_is_null=True), pa.date32()),
                   pa.int32())
    same = _flag(pc.equal(pc.cast(pc.cast(days, pa.date32()), pa.string()), texts))  # no day 31 of April
    base = np.asarray(pc.fill_null(days, 0).to_numpy(zero_copy_only=False), dtype=np.int64)
    moved = base + shifts
    valid = same & (base >= _FIRST_DAY) & (moved >= _FIRST_DAY) & (moved <= _LAST_DAY)
    shifted = pa.array(np.where(valid, moved, 0).astype(np.int32), pa.int32()).cast(pa.date32())
    return pc.cast(shifted, pa.string()), valid


def text_bytes(values: pa.Array) -> memoryview:
    """The bytes of a string array's values, one after the other, without a copy."""
    return _bytes_of(values)[1].data


def _bytes_of(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets from 0, bytes) of a string array's values, without a copy."""
    values = _array(values)
    offsets = np.frombuffer(values.buffers()[1], dtype=np.int32)[values.offset:values.offset + len(values) + 1] \
        if len(values) else np.zeros(1, dtype=np.int32)
    data = values.buffers()[2]
    raw = np.frombuffer(data, dtype=np.uint8)[offsets[0]:offsets[-1]] if data is not None and len(values) else \
        np.zeros(0, dtype=np.uint8)
    return (offsets - offsets[0]).astype(np.int64), raw


def _rows_holding(offsets: np.ndarray, data: np.ndarray, chars: np.ndarray) -> np.ndarray:
    """Which values hold any of these bytes (ASCII: never inside a UTF-8 sequence)."""
    found = np.zeros(len(offsets) - 1, dtype=bool)
    hits = np.nonzero(np.isin(data, chars))[0]
    if len(hits):
        found[np.searchsorted(offsets, hits, side="right") - 1] = True
    return found


def _quoted(values: pa.Array) -> pa.Array:
    """CSV fields of texts (as csv_field): the rows holding a comma, a quote or a line
    break are found in the array's bytes with numpy, and only those are rewritten."""
    values = _array(values)
    offsets, data = _bytes_of(values)
    rows = np.nonzero(_rows_holding(offsets, data, _QUOTE_BYTES))[0]
    if not len(rows):
        return values
    chosen = values.take(rows)
    quoted = pc.binary_join_element_wise('"', pc.replace_substring(chosen, '"', '""'), '"', "")
    return _replace_rows(values, rows, quoted)


def csv_field(text: str) -> str:
    """One CSV field as the part writes it: quoted only when it holds a comma, a quote or
    a line break (an empty text and no value are both an empty field)."""
    if any(char in text for char in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


class _Rows:
    """A group's rows: arrays from the columns, Python lists for the rest."""

    _TYPES = (pa.int64(), pa.int64(), pa.int64(), pa.int64(), pa.string(), pa.string(), pa.int32(), pa.string())

    def __init__(self) -> None:
        self._arrays: list[tuple[pa.Array, ...]] = []
        self._lists: tuple[list[Any], ...] = tuple([] for _ in self._TYPES)

    def add_columns(self, entry_pos: np.ndarray, position: np.ndarray, item: pa.Array, item_field: pa.Array,
                    value: pa.Array) -> None:
        n = len(entry_pos)
        self._arrays.append((pa.array(entry_pos, pa.int64()), pa.array(position, pa.int64()),
                             pa.array(np.zeros(n, dtype=np.int64)), pa.array(np.zeros(n, dtype=np.int64)),
                             item, item_field, pa.nulls(n, pa.int32()), value))

    def add(self, entry_pos: int, position: int, sub: int, order: str, item: str, row: str, value: str) -> None:
        for target, part in zip(self._lists, (entry_pos, position, sub, order, item, csv_field(item),
                                              int(row) if row else None, value), strict=True):
            target.append(part)

    def arrays(self) -> tuple[pa.Array, ...]:
        """(entry, position, sub-row, path rank, item, item field, item row, value)."""
        paths = sorted(set(self._lists[3]))  # missing-data paths, by code point; "" for the rest
        rank = {path: number for number, path in enumerate(paths)}
        self._lists[3][:] = [rank[path] for path in self._lists[3]]
        listed = [pa.array(values, kind) for values, kind in zip(self._lists, self._TYPES, strict=True)]
        return tuple(pa.concat_arrays([*(_array(chunk[i]) for chunk in self._arrays), listed[i]])
                     for i in range(len(self._TYPES)))


def write_batches(batches: Iterator[pa.RecordBatch], out: IO[bytes]) -> None:
    with pa.ipc.new_stream(out, PART_SCHEMA) as writer:
        for batch in batches:
            writer.write_batch(batch)
