"""The findings domains (VS, LB, QS) of an SDTM build by columns, from cells the database
flattened (exports.records.SdtmSource), instead of value by value from the entries.

Nearly every row of an SDTM export is a finding, and building them in Python, one item
value at a time, was most of the export's time (docs/BENCHMARKS.md §6, ADR 0015). Here:

- while ``sdtm_build`` walks the subjects in USUBJID order (DM, SV, DS, AE and the visit
  numbers, as before, from the entries of AE forms only), the cells are read from the
  database beside it (exports.extract.SqlSdtmSource: the entries listed in USUBJID order
  in groups of whole subjects, each group's cells on other connections in the run's
  snapshot): a plain number already as its SDTM text; anything else (text, codes, a
  missing-data code, a number PostgreSQL would not write as Python does) as JSON, mapped
  here by the Python path's own ``_finding_columns``;
- each group's entries get their VISITNUM, VISIT, --DTC and --DY once per distinct
  subject, visit and date; its rows are sorted with numpy in the order the Python path
  sorts them (USUBJID; QSCAT or --TESTCD, --TESTCD; VISITNUM; --DTC; then as the walk met
  them), numbered (--SEQ), measured (Char widths, the 200-byte limit) and spooled;
- the XPT writer takes each group as columns of cells (exports.xpt.xpt_write_columns).

The files are byte for byte those of the Python path (tests/exports/test_sdtm_columns.py
builds both from the same data). Memory holds a few groups' cells, the subjects' USUBJIDs
and the visits numbered otherwise than by the schedule, whatever the number of values.
"""

from __future__ import annotations

import json
import math
import pickle
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, Any

import numpy as np
from django.utils.translation import gettext

from exports.records import CellChunk, CellItem, DatasetSpec, EventMeta, SdtmSource, SubjectRecord
from exports.sdtm import (
    FINDINGS,
    MAX_CHAR,
    Domain,
    FindingItem,
    FormPlan,
    SdtmError,
    _finding_columns,
    _usubjid,
    domain_spec,
    iso_dtc_valid,
    unknown_form,
    unknown_subject,
)
from exports.xpt import _char_cells

# Rows encoded for the XPT writer at a time.
XPT_BATCH = 10_000


def _text_size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


class Strings:
    """Text values by number (the low-cardinality columns: units, visit names, dates)."""

    def __init__(self) -> None:
        self.values: list[str] = []
        self._codes: dict[str, int] = {}

    def code(self, text: str) -> int:
        found = self._codes.get(text)
        if found is None:
            found = self._codes[text] = len(self.values)
            self.values.append(text)
        return found

    def sizes(self) -> np.ndarray:
        return np.array([_text_size(text) for text in self.values], dtype=np.int64)

    def ranks(self) -> np.ndarray:
        """Each code's rank in Python's string order."""
        order = sorted(range(len(self.values)), key=self.values.__getitem__)
        ranks = np.empty(len(order), dtype=np.int64)
        ranks[order] = np.arange(len(order))
        return ranks


class ColumnFindings:
    """The findings domains of one build; see the module's docstring for the steps."""

    def __init__(self, studyid: str, plans: Mapping[tuple[str, int], FormPlan], domains: Mapping[str, Domain],
                 events: Mapping[str, EventMeta], subjects: Sequence[SubjectRecord], cells: SdtmSource) -> None:
        self.studyid = studyid
        self.domains = {name: domain for name, domain in domains.items() if name in FINDINGS}
        self.names = list(self.domains)
        self.items: list[tuple[FormPlan, FindingItem]] = []
        cell_items: list[CellItem] = []
        for (form, version), plan in plans.items():
            for finding in plan.findings:
                precision = finding.item.get("precision")
                if precision is not None and not (isinstance(precision, int) and not isinstance(precision, bool)
                                                  and 0 <= precision <= 10):
                    precision = -1
                cell_items.append(CellItem(form, version, finding.code, len(self.items), precision))
                self.items.append((plan, finding))
        self.strings = Strings()
        self.empty = self.strings.code("")
        self.item_domain = np.array([self.names.index(f.domain) for _, f in self.items], dtype=np.int64)
        self.item_unit = np.array([self.strings.code(f.unit) for _, f in self.items], dtype=np.int64)
        self.item_head = self._head_ranks()
        # USUBJID by rank (the datasets' order); a subject's rank by its key.
        usubjids = {subject.subject_key: _usubjid(studyid, subject) for subject in subjects}
        self.usubjids = sorted(set(usubjids.values()))
        rank_of = {usubjid: rank for rank, usubjid in enumerate(self.usubjids)}
        self.subject_rank = {key: rank_of[usubjid] for key, usubjid in usubjids.items()}
        self._last_rank = -1  # the chunks' subjects come in USUBJID order
        # Visits numbered otherwise than by the schedule (repeats, unscheduled), from the walk.
        self.visit_numbers: dict[tuple[str, str, int], tuple[float, str]] = {}
        self.events = events
        self.plans = plans
        self._walked = 0  # entries met so far: their order within a subject
        self._dtc_ranks = np.empty(0, dtype=np.int64)
        self.spools = {name: _DomainSpool(domain) for name, domain in self.domains.items()}
        # Last: the reading starts here (close() stops it).
        self._chunks: Iterator[CellChunk] | None = cells.chunks(cell_items) if self.items else None

    def _head_ranks(self) -> np.ndarray:
        heads = [finding.sort_head for _, finding in self.items]
        order = sorted(set(heads))
        return np.array([order.index(head) for head in heads], dtype=np.int64)

    def add_visits(self, subject_key: str, numbers: Mapping[tuple[str, int], tuple[float, str]]) -> None:
        """The subject's visit numbers (exports.sdtm._visit_numbers), kept where they differ
        from what _visit_of gives a visit missing from them (the event's own)."""
        for (event_code, sequence), number in numbers.items():
            event = self.events.get(event_code)
            if event is None or sequence != 1 or number != (float(event.visit_num), event.name):
                self.visit_numbers[(subject_key, event_code, sequence)] = number

    def close(self) -> None:
        if self._chunks is not None:
            close = getattr(self._chunks, "close", None)
            if close is not None:
                close()
            self._chunks = None
        for spool in self.spools.values():
            spool.close()

    # --- after the walk ------------------------------------------------------------------------

    def build(self) -> None:
        """Read, map, sort, number and spool every group's cells; raises SdtmError for a
        value too long for XPT."""
        if self._chunks is None:
            return
        for chunk in self._chunks:
            self._chunk(chunk)
        self._chunks = None
        self.sizes = self.strings.sizes()
        self.usubjid_sizes = np.array([_text_size(text) for text in self.usubjids], dtype=np.int64)
        for spool in self.spools.values():
            spool.finish(self)

    def _entries(self, chunk: CellChunk) -> dict[str, np.ndarray]:
        """The group's entries (in the walk's order) as columns: key, USUBJID rank, VISITNUM,
        VISIT, --DTC, --DY, and their order; worked out as exports.sdtm._subject does, once
        per distinct subject, visit and date (map() over dicts: no Python frame per entry)."""
        count = len(chunk.entry_key)
        subjects, dates = chunk.entry_subject, chunk.entry_date
        ranks: dict[str, int] = {}
        for subject in dict.fromkeys(subjects):
            rank = self.subject_rank.get(subject)
            if rank is None:
                raise unknown_subject("Entries", subject)
            ranks[subject] = rank
        for form, version in set(zip(chunk.entry_form, chunk.entry_version, strict=True)):
            if (form, version) not in self.plans:
                subject = next(s for s, f, v in zip(subjects, chunk.entry_form, chunk.entry_version, strict=True)
                               if (f, v) == (form, version))
                raise unknown_form(subject, form, version)
        usub = np.fromiter(map(ranks.__getitem__, subjects), dtype=np.int64, count=count)
        # VISITNUM and VISIT by (event, occurrence), as _visit_of gives them, then the
        # subjects' own numbering where it differs (repeats, unscheduled visits).
        pairs = list(zip(chunk.entry_event, chunk.entry_sequence, strict=True))
        visits: list[Any] = list(pairs)
        found: dict[Any, tuple[float, int]] = {}
        for event_code, sequence in set(pairs):
            event = self.events.get(event_code)
            number, name = (float(event.visit_num), event.name) if event is not None and sequence == 1 else (
                math.nan, "")
            found[(event_code, sequence)] = (number, self.strings.code(name))
        if self.visit_numbers:
            for at, subject in enumerate(subjects):
                own = self.visit_numbers.get((subject, *visits[at]))
                if own is not None:
                    visits[at] = (subject, *visits[at])
                    found[visits[at]] = (own[0], self.strings.code(own[1]))
        numbered = list(map(found.__getitem__, visits))
        visitnum = np.fromiter((number for number, _ in numbered), dtype=np.float64, count=count)
        visit = np.fromiter((name for _, name in numbered), dtype=np.int64, count=count)
        codes = {text: self.strings.code(text or "") for text in set(dates)}
        for text in codes:
            if text and not iso_dtc_valid(text):  # a date Python could not hold (year 10000 on, BC)
                subject = subjects[dates.index(text)]
                raise SdtmError(gettext("%(where)s: the value is not an ISO 8601 date.") % {
                    "where": f"USUBJID {self.usubjids[ranks[subject]]}, visit date"})
        dtc = np.fromiter(map(codes.__getitem__, dates), dtype=np.int64, count=count)
        # --DY: day 1 is the enrolment date, the day before -1 (exports.sdtm.study_day).
        days = np.array(chunk.entry_days, dtype=np.float64)  # None: NaN
        day = np.where(days >= 0, days + 1, days)
        if count:
            if usub[0] <= self._last_rank or (np.diff(usub) < 0).any():
                raise RuntimeError("SDTM findings: entries out of USUBJID order (the database's and Python's "
                                   "orders of the codes differ).")
            self._last_rank = int(usub[-1])
        order = np.arange(self._walked, self._walked + count)
        self._walked += count
        keys = chunk.entry_key
        by_key = np.argsort(keys, kind="stable")
        return {"keys": keys[by_key], "by_key": by_key, "usub": usub, "visitnum": visitnum, "visit": visit,
                "dtc": dtc, "day": day, "order": order}

    def _chunk(self, chunk: CellChunk) -> None:
        entries = self._entries(chunk)  # checked even when they hold no findings cells
        count = len(chunk.entry)
        if not count:
            return
        at = np.searchsorted(entries["keys"], chunk.entry)
        at[at >= len(entries["keys"])] = 0
        if not np.array_equal(entries["keys"][at], chunk.entry):
            raise RuntimeError("SDTM findings: cells of an entry the group did not list (snapshot mismatch).")
        entry = entries["by_key"][at]  # the entry's row in `entries`
        index = chunk.index.astype(np.int64)
        orres = np.array(chunk.orres, dtype=object)  # written to below; Arrow's may be read-only
        stresc = orres.copy()
        stresn = chunk.stresn.copy()
        orresu = self.item_unit[index]
        stresu = orresu.copy()
        stat = np.full(count, self.empty, dtype=np.int64)
        reasnd = stat.copy()
        keep = np.ones(count, dtype=bool)
        others = np.flatnonzero(orres == None)  # noqa: E711 - element-wise on an object array
        # A missing-data code row is read with its item's value row when there is one (the
        # value wins, as in the Python path), or alone as a value of None.
        is_code = np.zeros(count, dtype=bool)
        is_code[others] = [chunk.raw[at_row] is None for at_row in others]
        codes = {(int(chunk.entry[at_row]), int(index[at_row])): chunk.missing[at_row]
                 for at_row in np.flatnonzero(is_code)}
        valued = set(zip(chunk.entry[~is_code].tolist(), index[~is_code].tolist(), strict=True)) if codes else set()
        for at_row in others:
            plan, finding = self.items[index[at_row]]
            key = (int(chunk.entry[at_row]), int(index[at_row]))
            raw = chunk.raw[at_row]
            if is_code[at_row] and key in valued:
                keep[at_row] = False
                continue
            value = None if raw is None else json.loads(raw)
            missing = codes.get(key)
            code = "" if missing is None else json.loads(missing)
            columns = _finding_columns(plan, finding, value, code, ())
            if not columns:
                keep[at_row] = False
                continue
            (orres[at_row], unit_out, stresc[at_row], number, unit_std, status,
             reason) = columns[len(finding.topic):len(finding.topic) + 7]
            if not all(isinstance(text, str) for text in (orres[at_row], unit_out, stresc[at_row], unit_std, status,
                                                          reason)):
                # A missing-data code stored as other than text: the Python path's XPT
                # writer refuses it too ("give text or None").
                raise SdtmError(f"{finding.domain}: item {finding.code} holds a missing-data code that is not text.")
            stresn[at_row] = math.nan if number is None else number
            orresu[at_row] = self.strings.code(str(unit_out))  # (text: checked above)
            stresu[at_row] = self.strings.code(str(unit_std))
            stat[at_row] = self.strings.code(str(status))
            reasnd[at_row] = self.strings.code(str(reason))
        if not keep.all():
            rows = np.flatnonzero(keep)
            entry, index, orres, stresc, stresn, orresu, stresu, stat, reasnd = (
                column[rows] for column in (entry, index, orres, stresc, stresn, orresu, stresu, stat, reasnd))
        domain_of = self.item_domain[index]
        for number, name in enumerate(self.names):
            rows = np.flatnonzero(domain_of == number)
            if not len(rows):
                continue
            rows_entry = entry[rows]
            usub = entries["usub"][rows_entry]
            visitnum = entries["visitnum"][rows_entry]
            # np.lexsort: the last key sorts first. Ties keep the walk's order (entry, then
            # the item's place in its form), as the Python path's stable sort does.
            order = np.lexsort((index[rows], entries["order"][rows_entry],
                                self.dtc_ranks()[entries["dtc"][rows_entry]],
                                np.where(np.isnan(visitnum), np.inf, visitnum), self.item_head[index[rows]], usub))
            rows, usub, rows_entry = rows[order], usub[order], rows_entry[order]
            firsts = np.ones(len(rows), dtype=bool)
            firsts[1:] = usub[1:] != usub[:-1]
            starts = np.maximum.accumulate(np.where(firsts, np.arange(len(rows)), 0))
            seq = (np.arange(len(rows)) - starts + 1).astype(np.float64)
            self.spools[name].add({
                "usub": usub, "seq": seq, "index": index[rows], "orres": orres[rows], "stresc": stresc[rows],
                "stresn": stresn[rows], "orresu": orresu[rows], "stresu": stresu[rows], "stat": stat[rows],
                "reasnd": reasnd[rows], "visitnum": entries["visitnum"][rows_entry],
                "visit": entries["visit"][rows_entry], "dtc": entries["dtc"][rows_entry],
                "day": entries["day"][rows_entry]})

    def dtc_ranks(self) -> np.ndarray:
        """Each text code's rank in Python's order (for --DTC), again when texts were added."""
        if len(self._dtc_ranks) != len(self.strings.values):
            self._dtc_ranks = self.strings.ranks()
        return self._dtc_ranks

    def results(self) -> Iterator[tuple[DatasetSpec, ColumnRows]]:
        for spool in self.spools.values():
            yield spool.spec(), ColumnRows(self, spool)


class _DomainSpool:
    """One findings domain's sorted groups on disk, and its Char widths."""

    def __init__(self, domain: Domain) -> None:
        self.domain = domain
        self.file: IO[bytes] = tempfile.TemporaryFile(prefix=f"sdtm-{domain.name}-")  # noqa: SIM115 - close()
        self.blocks: list[tuple[int, int, int]] = []  # (offset, size, rows)
        self.count = 0
        self.widths = [0] * len(domain.variables)

    def add(self, columns: dict[str, np.ndarray]) -> None:
        block = pickle.dumps(columns, protocol=pickle.HIGHEST_PROTOCOL)
        self.blocks.append((self.file.tell(), len(block), len(columns["seq"])))
        self.file.write(block)
        self.count += len(columns["seq"])

    def groups(self) -> Iterator[dict[str, np.ndarray]]:
        for offset, size, _ in self.blocks:
            self.file.seek(offset)
            # Our own temporary file, written above in this process: not untrusted input.
            yield pickle.loads(self.file.read(size))  # noqa: S301

    def finish(self, findings: ColumnFindings) -> None:
        """Measure every Char column; the first row (in the dataset's order) with a value
        over 200 bytes is an error, worded as the Python path words it."""
        variables = self.domain.variables
        for group in self.groups():
            sizes = _char_sizes(findings, self.domain, group)
            for position, variable in enumerate(variables):
                if variable.type != "Char":
                    continue
                column = sizes[variable.name]
                if len(column):
                    self.widths[position] = max(self.widths[position], int(column.max()))
            over = np.zeros(len(group["seq"]), dtype=bool)
            for column in sizes.values():
                over |= column > MAX_CHAR
            if over.any():
                row = int(np.flatnonzero(over)[0])
                name = next(variable.name for variable in variables
                            if variable.type == "Char" and sizes[variable.name][row] > MAX_CHAR)
                raise SdtmError(gettext("%(dataset)s, USUBJID %(usubjid)s, %(variable)s: the value is %(size)d "
                                        "bytes; XPT allows %(max)d (shorten it or split it to SUPP--).") % {
                    "dataset": self.domain.name, "usubjid": findings.usubjids[int(group["usub"][row])],
                    "variable": name, "size": int(sizes[name][row]), "max": MAX_CHAR})

    def spec(self) -> DatasetSpec:
        return domain_spec(self.domain, self.widths, self.count)

    def close(self) -> None:
        self.file.close()


def _roles(domain: Domain) -> list[str]:
    """Each variable's part of a findings row: the name without the domain's prefix."""
    prefix = domain.name
    return [variable.name[len(prefix):] if variable.name.startswith(prefix) and variable.name != "DOMAIN"
            else variable.name for variable in domain.variables]


# TESTCD, TEST, QSCAT: their place in FindingItem.topic.
_TOPIC = {"TESTCD": 0, "TEST": 1, "CAT": 2}


def _object_sizes(texts: np.ndarray) -> np.ndarray:
    values = [text or "" for text in texts.tolist()]
    if "".join(values).isascii():
        return np.fromiter(map(len, values), dtype=np.int64, count=len(values))
    return np.fromiter((len(text.encode("utf-8")) for text in values), dtype=np.int64, count=len(values))


def _char_sizes(findings: ColumnFindings, domain: Domain, group: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every Char column's value sizes in bytes, row by row."""
    count = len(group["seq"])
    index = group["index"]
    sizes: dict[str, np.ndarray] = {}
    topic_sizes = [np.array([_text_size(finding.topic[position]) if position < len(finding.topic) else 0
                             for _, finding in findings.items], dtype=np.int64) for position in range(3)]
    for variable, role in zip(domain.variables, _roles(domain), strict=True):
        if variable.type != "Char":
            continue
        if role == "STUDYID":
            column = np.full(count, _text_size(findings.studyid), dtype=np.int64)
        elif role == "DOMAIN":
            column = np.full(count, len(domain.name), dtype=np.int64)
        elif role == "USUBJID":
            column = findings.usubjid_sizes[group["usub"]]
        elif role in ("TESTCD", "TEST", "CAT"):
            column = topic_sizes[_TOPIC[role]][index]
        elif role in ("ORRES", "STRESC"):
            column = _object_sizes(group[role.lower()])
        elif role in ("ORRESU", "STRESU", "STAT", "REASND") or role in ("VISIT", "DTC"):
            column = findings.sizes[group[role.lower()]]
        else:
            raise SdtmError(f"{domain.name}: no column for {variable.name}.")
        sizes[variable.name] = column
    return sizes


class ColumnRows:
    """A findings domain's rows: iterated, tuples in ``spec.variables`` order (as the
    Python path yields them); ``batches()``, the groups for exports.xpt.xpt_write_columns."""

    def __init__(self, findings: ColumnFindings, spool: _DomainSpool) -> None:
        self.findings = findings
        self.spool = spool

    def __iter__(self) -> Iterator[tuple[object, ...]]:
        for batch in self.batches():
            yield from batch.rows()

    def batches(self) -> Iterator[ColumnBatch]:
        for group in self.spool.groups():
            count = len(group["seq"])
            for start in range(0, count, XPT_BATCH):  # the encoded rows of a batch are held at once
                part = group if count <= XPT_BATCH else {
                    name: column[start:start + XPT_BATCH] for name, column in group.items()}
                yield ColumnBatch(self.findings, self.spool.domain, part)


class ColumnBatch:
    """One group of a findings domain, as XPT cells or as row tuples."""

    def __init__(self, findings: ColumnFindings, domain: Domain, group: dict[str, np.ndarray]) -> None:
        self.findings = findings
        self.domain = domain
        self.group = group
        self.count = len(group["seq"])

    def rows(self) -> list[tuple[object, ...]]:
        findings, group = self.findings, self.group
        strings = findings.strings.values
        columns: list[Sequence[object]] = []
        index = group["index"]
        for role in _roles(self.domain):
            if role == "STUDYID":
                columns.append([findings.studyid] * self.count)
            elif role == "DOMAIN":
                columns.append([self.domain.name] * self.count)
            elif role == "USUBJID":
                columns.append([findings.usubjids[at] for at in group["usub"].tolist()])
            elif role == "SEQ":
                columns.append([int(seq) for seq in group["seq"].tolist()])
            elif role in ("TESTCD", "TEST", "CAT"):
                position = _TOPIC[role]
                columns.append([findings.items[at][1].topic[position] for at in index.tolist()])
            elif role in ("ORRES", "STRESC"):
                columns.append(group[role.lower()].tolist())
            elif role in ("ORRESU", "STRESU", "STAT", "REASND"):
                columns.append([strings[at] for at in group[role.lower()].tolist()])
            elif role == "STRESN":
                columns.append(_numbers(group["stresn"]))
            elif role == "VISITNUM":
                columns.append(_numbers(group["visitnum"]))
            elif role in ("VISIT", "DTC"):
                columns.append([strings[at] for at in group[role.lower()].tolist()])
            elif role == "DY":
                columns.append([None if day is None else int(day) for day in _numbers(group["day"])])
            else:
                raise SdtmError(f"{self.domain.name}: no column for {role}.")
        return list(zip(*columns, strict=True))

    def cells(self, spec: DatasetSpec) -> list[np.ndarray] | None:
        """Each variable's cells: Char as (rows or 1, width) bytes, Num as float64 (NaN:
        missing); None when some text cannot be written so (a NUL): then rows()."""
        findings, group = self.findings, self.group
        index = group["index"]
        strings = findings.strings.values
        out: list[np.ndarray] = []
        for variable, role in zip(spec.variables, _roles(self.domain), strict=True):
            width = variable.length
            cells: np.ndarray | None
            if role == "STUDYID":
                cells = _char_cells([findings.studyid], width)
            elif role == "DOMAIN":
                cells = _char_cells([self.domain.name], width)
            elif role == "USUBJID":
                cells = _table(findings.usubjids, width, group["usub"])
            elif role == "SEQ":
                out.append(group["seq"])
                continue
            elif role in ("TESTCD", "TEST", "CAT"):
                position = _TOPIC[role]
                cells = _table([finding.topic[position] if position < len(finding.topic) else ""
                                for _, finding in findings.items], width, index)
            elif role in ("ORRES", "STRESC"):
                cells = _char_cells(group[role.lower()].tolist(), width)
            elif role in ("ORRESU", "STRESU", "STAT", "REASND"):
                cells = _table(strings, width, group[role.lower()])
            elif role == "STRESN":
                out.append(group["stresn"])
                continue
            elif role in ("VISITNUM", "DY"):
                out.append(group["visitnum" if role == "VISITNUM" else "day"])
                continue
            elif role in ("VISIT", "DTC"):
                cells = _table(strings, width, group[role.lower()])
            else:
                return None
            if cells is None:
                return None
            out.append(cells)
        return out


def _table(texts: Sequence[str], width: int, codes: np.ndarray) -> np.ndarray | None:
    """Cells of coded text: the distinct values encoded once, then taken by code. A
    value longer than the width (never used by these rows) is left blank."""
    used = np.unique(codes)
    table = np.full((max(len(texts), 1), width), 0x20, dtype=np.uint8)
    fitting = [int(code) for code in used if _text_size(texts[int(code)]) <= width]
    if len(fitting) != len(used):
        return None
    encoded = _char_cells([texts[code] for code in fitting], width)
    if encoded is None:
        return None
    table[fitting] = encoded
    return table[codes]


def _numbers(values: np.ndarray) -> list[float | None]:
    return [None if math.isnan(value) else value for value in values.tolist()]


def column_findings(studyid: str, plans: Mapping[tuple[str, int], FormPlan], domains: Mapping[str, Domain],
                    events: Mapping[str, EventMeta], subjects: Sequence[SubjectRecord], cells: SdtmSource | None,
                    ) -> ColumnFindings | None:
    """The column path when the study data offers cells and the study has findings."""
    if cells is None or not any(name in FINDINGS for name in domains):
        return None
    return ColumnFindings(studyid, plans, domains, events, subjects, cells)


