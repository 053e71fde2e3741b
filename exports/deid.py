"""De-identification of records before they leave a tenant for a pooled, cross-tenant dataset.

Pure and deterministic: no database, no Django settings; keys arrive as bytes. The
aggregation service extracts a tenant's consented fields as exports.records objects,
passes subjects through `deidentify_subject`, entries through `deidentify_entries`, and
the flat analysis frame through `k_anonymize`, whose `DeidReport` documents what was done.

Rules, in short:
- subject keys become `pseudonym()` = "P-" + 16 base32 characters of
  HMAC-SHA256(consortium key, len‖tenant ‖ len‖site ‖ len‖subject);
- every date of a subject moves by the same `shift_days()` (never 0), so intervals hold;
  partial dates keep their precision and move with their mid-point;
- ages ≥ 90 become 90 ("90+"); the birth date is reduced to its year, and removed when the
  age is top-coded (the year would reveal the age) or when the consortium says so;
- free text (text, long_text, file, string results of calculations) leaves only when the
  consortium listed the item as safe; identifier items and values the definition does not
  describe never leave;
- `k_anonymize` generalises declared quasi-identifiers along their `Hierarchy` as little as
  possible, suppresses the rest, and measures k (and l) on its output with pycanon.
"""

from __future__ import annotations

import base64
import calendar
import hmac
import itertools
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from pycanon import anonymity

from exports.records import EntryRecord, SubjectRecord

MIN_KEY_BYTES = 32
PSEUDONYM_PREFIX = "P-"
PSEUDONYM_CHARS = 16  # 80 bits of base32: collisions are negligible for any consortium size
AGE_TOP_CODE = 90
BIRTH_YEAR_RULES = ("year", "remove")
MAX_SHIFT_DAYS_LIMIT = 3650
MAX_LATTICE_NODES = 100_000

# Kept in step with ecrf.definition, not imported from it: this module must stay importable
# (and auditable) without Django, and the meaning of a type for disclosure is decided here.
FREE_TEXT_TYPES = frozenset({"text", "long_text", "file"})
DATE_TYPES = frozenset({"date", "datetime"})
CHOICE_TYPES = frozenset({"single_choice", "multiple_choice"})
NUMERIC_TYPES = frozenset({"integer", "decimal", "scale"})
VALUELESS_TYPES = frozenset({"section"})
MISSING_CODES = frozenset({"NA", "UNK", "ASKU", "NASK"})

# Domain separation: the two HMACs never share an input even if a key were reused.
_PSEUDONYM_CONTEXT = b"suifang/deid/pseudonym/v1"
_SHIFT_CONTEXT = b"suifang/deid/date-shift/v1"
_ISO_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?(.*)$")


class DeidError(ValueError):
    """Bad input for de-identification; `field` names what was wrong (for a 4xx later)."""

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


# --- pseudonyms and date shifts ---------------------------------------------------------

def _check_key(key: bytes, name: str) -> None:
    if not isinstance(key, bytes | bytearray) or len(key) < MIN_KEY_BYTES:
        raise DeidError(f"the key must be at least {MIN_KEY_BYTES} random bytes", field=name)


def _length_prefixed(*parts: str) -> bytes:
    # Each part as 4-byte big-endian length + UTF-8, so ("ab", "c") and ("a", "bc") differ.
    out = bytearray()
    for part in parts:
        raw = part.encode("utf-8")
        out += len(raw).to_bytes(4, "big") + raw
    return bytes(out)


def pseudonym(key: bytes, *, tenant: str, site: str, subject: str) -> str:
    """The pooled subject key: "P-" + 16 upper-case base32 characters. Stable for the same
    key and (tenant, site, subject); unlinkable to the subject without the key. The site
    must be the subject's own site (not that of one entry), or a subject's records split."""
    _check_key(key, "pseudonym_key")
    for name, part in (("tenant", tenant), ("site", site), ("subject", subject)):
        if not isinstance(part, str) or not part:
            raise DeidError("give a non-empty text", field=name)
    digest = hmac.digest(bytes(key), _PSEUDONYM_CONTEXT + _length_prefixed(tenant, site, subject), "sha256")
    return PSEUDONYM_PREFIX + base64.b32encode(digest[:10]).decode("ascii")[:PSEUDONYM_CHARS]


def shift_days(key: bytes, pseudonym: str, *, max_days: int) -> int:
    """The subject's date offset, in [-max_days, -1] or [1, max_days] (0 is excluded: it
    would release true dates). It comes from a separate key, not the pseudonym key: the
    pseudonym key is shared with every tenant (each must compute the same pseudonyms),
    so anything derived from it could be recomputed by any tenant to undo the shift of
    another tenant's subjects; the shift key stays with the aggregation step."""
    _check_key(key, "shift_key")
    if isinstance(max_days, bool) or not isinstance(max_days, int) or not 1 <= max_days <= MAX_SHIFT_DAYS_LIMIT:
        raise DeidError(f"give a whole number of days from 1 to {MAX_SHIFT_DAYS_LIMIT}", field="max_days")
    if not isinstance(pseudonym, str) or not pseudonym:
        raise DeidError("give the subject's pseudonym", field="pseudonym")
    digest = hmac.digest(bytes(key), _SHIFT_CONTEXT + _length_prefixed(pseudonym), "sha256")
    # 64 bits modulo at most 7300: the bias is below 1e-15.
    draw = int.from_bytes(digest[:8], "big") % (2 * max_days)
    return draw - max_days if draw < max_days else draw - max_days + 1


def _mid_month(year: int, month: int) -> date:
    return date(year, month, (calendar.monthrange(year, month)[1] + 1) // 2)


def _mid_year(year: int) -> date:
    return date(year, 1, 1) + timedelta(days=(365 + calendar.isleap(year) - 1) // 2)


def shift_date(value: Any, days: int) -> Any:
    """`value` moved by `days`, in the same type and precision.

    date / datetime objects: moved by whole days (a datetime keeps its time and tzinfo).
    ISO text: "YYYY-MM-DD" and "YYYY-MM-DDThh:mm[:ss][±hh:mm|Z]" have their date part
    moved and the rest kept verbatim. Partial dates cannot move exactly, so they keep
    their precision and move with their mid-point: "2024-05" is taken as 2024-05-16,
    moved, and written back as year-month; "2024" is taken as 2 July. The interval to a
    full date of the same subject is then preserved to within half the precision, as it
    was before the shift. None and "" pass through."""
    if value is None or value == "":
        return value
    try:
        if isinstance(value, datetime | date):  # datetime is a date subclass
            return value + timedelta(days=days)
        if not isinstance(value, str):
            raise DeidError(f"expected a date, got {type(value).__name__}")
        match = _ISO_DATE.match(value)
        if match is None:
            raise DeidError(f"{value!r} is not an ISO date")
        year, month, day, rest = match.groups()
        if day is not None:
            if rest and rest[0] not in "T ":
                raise DeidError(f"{value!r} is not an ISO date")
            if rest:
                datetime.fromisoformat(value)  # only validates the time part; the date moves below
            moved = date(int(year), int(month), int(day)) + timedelta(days=days)
            return moved.isoformat() + rest
        if rest:
            raise DeidError(f"{value!r} is not an ISO date")
        if month is not None:
            if not 1 <= int(month) <= 12:
                raise DeidError(f"{value!r} is not an ISO date")
            moved = _mid_month(int(year), int(month)) + timedelta(days=days)
            return f"{moved.year:04d}-{moved.month:02d}"
        moved = _mid_year(int(year)) + timedelta(days=days)
        return f"{moved.year:04d}"
    except DeidError:
        raise
    except (ValueError, OverflowError) as exc:
        raise DeidError(f"{value!r} cannot be shifted: {exc}") from exc


def study_day(value: Any, reference: date) -> int | None:
    """The SDTM --DY of `value` relative to `reference` (day 1 = the reference date; the
    day before is -1; there is no day 0). A date shift cancels out, so study days may
    replace dates entirely. Partial dates have no exact study day: None, as in SDTM."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        when = value.date()
    elif isinstance(value, date):
        when = value
    elif isinstance(value, str):
        match = _ISO_DATE.match(value)
        if match is None or match.group(3) is None:
            if match is None:
                raise DeidError(f"{value!r} is not an ISO date")
            return None
        try:
            when = date(int(match.group(1)), int(match.group(2)), int(match.group(3)))
        except ValueError as exc:
            raise DeidError(f"{value!r} is not an ISO date") from exc
    else:
        raise DeidError(f"expected a date, got {type(value).__name__}")
    delta = (when - reference).days
    return delta + 1 if delta >= 0 else delta


# --- age and birth date -----------------------------------------------------------------

@dataclass(frozen=True)
class TopCodedAge:
    age: int | None
    top_coded: bool
    label: str  # "47", "90+", or "" when unknown


def top_code_age(age: int | float | None, *, limit: int = AGE_TOP_CODE) -> TopCodedAge:
    """Ages ≥ `limit` become `limit`, labelled "90+". SubjectRecord has no label field, so
    in a de-identified record an age equal to the limit always means "limit or older"."""
    if age is None or (isinstance(age, float) and math.isnan(age)):
        return TopCodedAge(None, False, "")
    if isinstance(age, bool) or not isinstance(age, int | float) or age < 0:
        raise DeidError(f"{age!r} is not an age in years", field="age")
    years = int(age)
    if years >= limit:
        return TopCodedAge(limit, True, f"{limit}+")
    return TopCodedAge(years, False, str(years))


def birth_year_rule(birth: date | str | int | None, *, top_coded: bool, rule: str = "year") -> int | None:
    """The birth date reduced to its year; None when the age was top-coded (the year
    would give the age back) or when the consortium's rule is "remove"."""
    if rule not in BIRTH_YEAR_RULES:
        raise DeidError(f"choose one of {', '.join(BIRTH_YEAR_RULES)}", field="birth_year_rule")
    if birth is None or birth == "" or top_coded or rule == "remove":
        return None
    if isinstance(birth, date):
        return birth.year
    if isinstance(birth, int) and not isinstance(birth, bool):
        return birth
    if isinstance(birth, str) and (match := _ISO_DATE.match(birth)) is not None and not match.group(4):
        return int(match.group(1))
    raise DeidError(f"{birth!r} is not a birth date or year", field="birth_date")


# --- policy -----------------------------------------------------------------------------

@dataclass(frozen=True)
class DeidPolicy:
    """What the consortium decided. `safe_items` lists free-text items that may leave, as
    "FORM.item" or a bare "item" (then in every form)."""

    tenant: str
    pseudonym_key: bytes = field(repr=False)
    shift_key: bytes = field(repr=False)
    max_shift_days: int = 180
    safe_items: frozenset[str] = frozenset()
    birth_year_rule: str = "year"
    age_limit: int = AGE_TOP_CODE

    def __post_init__(self) -> None:
        _check_key(self.pseudonym_key, "pseudonym_key")
        _check_key(self.shift_key, "shift_key")
        if hmac.compare_digest(bytes(self.pseudonym_key), bytes(self.shift_key)):
            raise DeidError("use a different key for date shifts than for pseudonyms", field="shift_key")
        if not self.tenant:
            raise DeidError("give the tenant", field="tenant")
        if self.birth_year_rule not in BIRTH_YEAR_RULES:
            raise DeidError(f"choose one of {', '.join(BIRTH_YEAR_RULES)}", field="birth_year_rule")
        shift_days(self.shift_key, "P-CHECK", max_days=self.max_shift_days)  # validates max_shift_days


def subject_keys(subject: SubjectRecord, *, policy: DeidPolicy) -> tuple[str, int]:
    """(the subject's pseudonym, the shift of its dates in days)."""
    key = pseudonym(policy.pseudonym_key, tenant=policy.tenant, site=subject.site_code, subject=subject.subject_key)
    return key, shift_days(policy.shift_key, key, max_days=policy.max_shift_days)


def deidentify_subject(subject: SubjectRecord, *, policy: DeidPolicy,
                       keys: tuple[str, int] | None = None) -> SubjectRecord:
    """Pseudonym for the key, shifted enrolment/status dates, top-coded age, the birth-year
    rule, and no status_reason (free text). Sex, arm, status and country stay: they are
    quasi-identifiers for `k_anonymize`, not direct identifiers. `keys`: subject_keys()
    when the caller has them already."""
    where = f"subject {subject.subject_key}"
    key, days = keys or subject_keys(subject, policy=policy)
    try:
        coded = top_code_age(subject.age, limit=policy.age_limit)
    except DeidError as exc:
        raise DeidError(str(exc), field=f"{where}.age") from exc
    top_coded = coded.top_coded
    if subject.age is None and subject.birth_year is not None and subject.enrolment_date is not None:
        # Without an age, the birth year next to the enrolment year is the age.
        top_coded = subject.enrolment_date.year - subject.birth_year >= policy.age_limit
    try:
        # Field by field, not dataclasses.replace (several times slower per subject): a
        # field added to SubjectRecord later is left at its default here until a rule for
        # it is written, so nothing new leaves by accident.
        return SubjectRecord(
            subject_key=key, site_code=subject.site_code, status=subject.status,
            enrolment_date=shift_date(subject.enrolment_date, days), arm=subject.arm, sex=subject.sex,
            birth_year=birth_year_rule(subject.birth_year, top_coded=top_coded, rule=policy.birth_year_rule),
            age=coded.age, country=subject.country, status_date=shift_date(subject.status_date, days),
            status_reason="",
        )
    except DeidError as exc:
        raise DeidError(str(exc), field=where) from exc


# --- entries ----------------------------------------------------------------------------

def item_may_leave(item: Mapping[str, Any], safe_items: Iterable[str], *, form_code: str = "") -> bool:
    """Whether values of this item (a definition ITEM, see ecrf/definition.py) may leave
    the tenant. Identifier items never; free text (text, long_text, file) only when listed
    as safe; codes, numbers, dates, times and groups (whose rows are checked item by item)
    yes. A calculated item may yield text; its string values are checked by the caller."""
    kind = item.get("type")
    code = item.get("code", "")
    if item.get("identifier"):
        return False
    if kind in FREE_TEXT_TYPES:
        safe = safe_items if isinstance(safe_items, set | frozenset) else set(safe_items)
        return code in safe or f"{form_code}.{code}" in safe
    return kind not in VALUELESS_TYPES and isinstance(kind, str)


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return False
        return True
    return False


@dataclass(frozen=True)
class _Form:
    code: str
    items: Mapping[str, Mapping[str, Any]]  # every item by code, groups' items included
    code_lists: Mapping[str, frozenset[str]]


def _form_index(definition: Mapping[str, Any], form_code: str) -> _Form:
    items: dict[str, Mapping[str, Any]] = {}
    for item in definition.get("items") or []:
        items[item["code"]] = item
        if item.get("type") == "group":
            for child in item.get("items") or []:
                items[child["code"]] = child
    lists = {name: frozenset(str(entry.get("value")) for entry in entries)
             for name, entries in (definition.get("code_lists") or {}).items()}
    return _Form(form_code, items, lists)


def _clean_value(value: Any, item: Mapping[str, Any], form: _Form, days: int, safe: frozenset[str],
                 where: str) -> tuple[bool, Any]:
    """(keep, new value) of one non-group value."""
    kind = item.get("type")
    if not item_may_leave(item, safe, form_code=form.code):
        return False, None
    if value is None:
        return True, None
    if kind in DATE_TYPES:
        try:
            return True, shift_date(value, days)
        except DeidError as exc:
            raise DeidError(str(exc), field=where) from exc
    if kind in CHOICE_TYPES:
        # A value outside its code list is text in disguise ("other: ..."): fail closed.
        codes = form.code_lists.get(str(item.get("code_list")), frozenset())
        chosen = value if isinstance(value, list) else [value]
        return all(str(code) in codes for code in chosen), value
    if kind in NUMERIC_TYPES:
        return _is_number(value), value
    if kind == "yes_no":
        return isinstance(value, bool) or value in ("0", "1", 0, 1, "Y", "N", "yes", "no"), value
    if kind == "calculated" and isinstance(value, str) and not _is_number(value):
        return item.get("code") in safe or f"{form.code}.{item.get('code')}" in safe, value
    return True, value


def deidentify_entry(entry: EntryRecord, *, policy: DeidPolicy, definition: Mapping[str, Any],
                     dropped: set[str] | None = None) -> EntryRecord:
    """The entry with the pseudonym as subject_key, date/datetime items, visit_date and
    updated shifted by the subject's offset, unsafe free text dropped (inside repeating
    groups too), and every value the form definition does not describe dropped. Item
    paths dropped are added to `dropped` as "FORM.item" (bounded by the number of items,
    not of rows). `entry.site_code` must be the subject's site (see `pseudonym`)."""
    return _deidentify_entry(entry, policy, _form_index(definition, entry.form_code), dropped)


def _deidentify_entry(entry: EntryRecord, policy: DeidPolicy, form: _Form, dropped: set[str] | None) -> EntryRecord:
    key = pseudonym(policy.pseudonym_key, tenant=policy.tenant, site=entry.site_code, subject=entry.subject_key)
    days = shift_days(policy.shift_key, key, max_days=policy.max_shift_days)
    where = f"{entry.form_code} of {entry.event_code}#{entry.sequence}, subject {entry.subject_key}"
    values = _clean_values(entry.values, form, days, policy.safe_items, where, dropped)
    missing = {path: reason for path, reason in entry.missing.items() if reason in MISSING_CODES}
    try:
        visit_date = shift_date(entry.visit_date, days)
        updated = shift_date(entry.updated, days)
    except DeidError as exc:
        raise DeidError(str(exc), field=where) from exc
    return replace(entry, subject_key=key, values=values, missing=missing, visit_date=visit_date, updated=updated)


def _clean_values(raw: Mapping[str, Any], form: _Form, days: int, safe: frozenset[str], where: str,
                  dropped: set[str] | None) -> dict[str, Any]:
    """The values of one entry (or some of them) as they may leave: see deidentify_entry."""
    values: dict[str, Any] = {}
    for code, value in raw.items():
        item = form.items.get(code)
        if item is None:
            _note(dropped, form.code, code)
            continue
        if item.get("type") == "group":
            if item.get("identifier"):
                _note(dropped, form.code, code)
                continue
            values[code] = _clean_rows(value, item, form, days, safe, f"{where}, item {code}", dropped)
            continue
        keep, new = _clean_value(value, item, form, days, safe, f"{where}, item {code}")
        if keep:
            values[code] = new
        else:
            _note(dropped, form.code, code)
    return values


def _clean_rows(rows: Any, group: Mapping[str, Any], form: _Form, days: int, safe: frozenset[str], where: str,
                dropped: set[str] | None) -> list[dict[str, Any]]:
    if not isinstance(rows, list) or not all(isinstance(row, Mapping) for row in rows):
        raise DeidError("a repeating group holds a list of row objects", field=where)
    children = {child["code"]: child for child in group.get("items") or []}
    cleaned: list[dict[str, Any]] = []
    for index, row in enumerate(rows):
        out: dict[str, Any] = {}
        for code, value in row.items():
            item = children.get(code)
            keep, new = (False, None) if item is None or item.get("type") == "group" else _clean_value(
                value, item, form, days, safe, f"{where}[{index}].{code}")
            if keep:
                out[code] = new
            else:
                _note(dropped, form.code, code)
        cleaned.append(out)
    return cleaned


def _note(dropped: set[str] | None, form_code: str, code: str) -> None:
    if dropped is not None:
        dropped.add(f"{form_code}.{code}")


def form_index(definition: Mapping[str, Any], form_code: str) -> _Form:
    """The form's items (groups' items included) and code lists, for deidentify_values."""
    return _form_index(definition, form_code)


def deidentify_values(values: Mapping[str, Any], *, form: _Form, days: int, safe_items: frozenset[str], where: str,
                      dropped: set[str] | None = None) -> dict[str, Any]:
    """Some values of one entry as deidentify_entry releases them, the subject's shift
    (`days`) already known: the same rules, value by value (exports.pooling.columns uses
    it for the values its columns do not cover)."""
    return _clean_values(values, form, days, safe_items, where, dropped)


def deidentify_entries(entries: Iterable[EntryRecord], *, policy: DeidPolicy,
                       definitions: Mapping[tuple[str, int], Mapping[str, Any]],
                       dropped: set[str] | None = None) -> Iterator[EntryRecord]:
    """`deidentify_entry` over a stream; `definitions` by (form code, version). Lazy: one
    entry at a time, so memory does not grow with the number of entries."""
    indexes: dict[tuple[str, int], _Form] = {}
    for entry in entries:
        version = (entry.form_code, entry.form_version)
        if version not in indexes:
            if version not in definitions:
                raise DeidError(f"no definition for form {entry.form_code} version {entry.form_version}",
                                field=f"{entry.form_code}.v{entry.form_version}")
            indexes[version] = _form_index(definitions[version], entry.form_code)
        yield _deidentify_entry(entry, policy, indexes[version], dropped)


def rules_applied(policy: DeidPolicy, *, dropped: Iterable[str] = ()) -> tuple[str, ...]:
    """The record-level rules, worded for the DeidReport (never the keys)."""
    return (
        f"pseudonyms: HMAC-SHA256 of tenant, site and subject code -> {PSEUDONYM_PREFIX}"
        f" + {PSEUDONYM_CHARS} base32 characters",
        f"dates shifted per subject by -{policy.max_shift_days}..+{policy.max_shift_days} days (never 0);"
        " partial dates shifted at their mid-point",
        f"age top-coded at {policy.age_limit} ({policy.age_limit} means {policy.age_limit}+)",
        "birth date: removed" if policy.birth_year_rule == "remove"
        else "birth date: year only; removed when the age is top-coded",
        "status reason (free text) dropped",
        "free text dropped: " + (", ".join(sorted(set(dropped))) or "none"),
    )


# --- k-anonymity ------------------------------------------------------------------------

def _is_missing(value: Any) -> bool:
    try:
        return value is None or bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


@dataclass(frozen=True)
class Hierarchy:
    """How one quasi-identifier is generalised: `levels[0]` is the finest (usually the
    value as text), each next level coarser, the last usually "*". Missing values stay ""
    below the top level."""

    name: str
    levels: tuple[Callable[[Any], str], ...]
    level_names: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.levels or len(self.levels) != len(self.level_names):
            raise DeidError("give at least one level, each with a name", field=f"hierarchy {self.name}")

    @property
    def top(self) -> int:
        return len(self.levels) - 1

    def generalise(self, value: Any, level: int) -> str:
        if _is_missing(value):
            return "*" if level == self.top else ""
        return self.levels[level](value)


def _age_years(value: Any) -> int:
    if isinstance(value, str) and value.endswith("+"):
        value = value[:-1]  # "90+" as written by top_code_age labels
    try:
        years = int(float(value))
    except (TypeError, ValueError) as exc:
        raise DeidError(f"{value!r} is not an age") from exc
    if years < 0:
        raise DeidError(f"{value!r} is not an age")
    return years


def age_hierarchy(*, top: int = AGE_TOP_CODE, split: int = 60) -> Hierarchy:
    """age -> 5-year band -> 10-year band -> "<60" / ">=60" -> "*"; ages ≥ `top` are
    "90+" in every band. ASCII ">=" because the pooled data also goes to XPT (ASCII)."""

    def band(width: int) -> Callable[[Any], str]:
        def level(value: Any) -> str:
            years = _age_years(value)
            if years >= top:
                return f"{top}+"
            low = years // width * width
            return f"{low}-{min(low + width - 1, top - 1)}"
        return level

    def exact(value: Any) -> str:
        years = _age_years(value)
        return f"{top}+" if years >= top else str(years)

    def halves(value: Any) -> str:
        return f">={split}" if _age_years(value) >= split else f"<{split}"

    return Hierarchy("age", (exact, band(5), band(10), halves, _star),
                     ("age", "5-year band", "10-year band", f"<{split} / >={split}", "*"))


def mapping_hierarchy(name: str, steps: Sequence[tuple[str, Mapping[str, str]]], *,
                      first_level: str = "value") -> Hierarchy:
    """A value, then each mapping in turn (e.g. ("province", city -> province), ("country",
    province -> country)), then "*". A value missing from a mapping is an error, not a
    silent "*": the hierarchy would otherwise hide a data problem."""

    def chain(depth: int) -> Callable[[Any], str]:
        def level(value: Any) -> str:
            current = str(value)
            for step_name, mapping in steps[:depth]:
                if current not in mapping:
                    raise DeidError(f"{current!r} has no {step_name} in the hierarchy")
                current = mapping[current]
            return current
        return level

    levels = (*(chain(depth) for depth in range(len(steps) + 1)), _star)
    return Hierarchy(name, levels, (first_level, *(step for step, _ in steps), "*"))


def _star(value: Any) -> str:
    return "*"


def suppression_hierarchy(name: str) -> Hierarchy:
    """Kept, or "*" (e.g. sex)."""
    return Hierarchy(name, (str, _star), (name, "*"))


@dataclass(frozen=True)
class DeidReport:
    requested_k: int
    achieved_k: int  # measured with pycanon on the output
    achieved_l: int | None  # idem, only when a sensitive attribute is given
    records_in: int
    records_out: int
    records_suppressed: int
    max_suppression: float
    levels: tuple[tuple[str, int, str], ...]  # (quasi-identifier, level, level name)
    rules: tuple[str, ...]


def _generalised(column: pd.Series, hierarchy: Hierarchy, level: int, name: str) -> list[str]:
    cache: dict[Any, str] = {}
    out: list[str] = []
    for position, value in enumerate(column.tolist()):
        token = None if _is_missing(value) else value
        try:
            if token not in cache:
                cache[token] = hierarchy.generalise(token, level)
        except DeidError as exc:
            raise DeidError(str(exc), field=f"{name}, row {column.index[position]}") from exc
        except TypeError as exc:  # unhashable (lists, dicts): not a quasi-identifier value
            raise DeidError(f"{value!r} cannot be generalised", field=f"{name}, row {column.index[position]}") \
                from exc
        out.append(cache[token])
    return out


def k_anonymize(frame: pd.DataFrame, *, quasi_identifiers: Mapping[str, Hierarchy], k: int = 5,
                sensitive: str | None = None, max_suppression: float = 0.05,
                rules: Sequence[str] = ()) -> tuple[pd.DataFrame, DeidReport]:
    """The frame with its quasi-identifiers generalised as little as possible and the
    records of equivalence classes smaller than k removed, and a report of it.

    Full lattice search over the hierarchies' levels (small: a few levels each). A node is
    feasible when the records in classes smaller than k are at most `max_suppression` of
    the input. Among feasible nodes the least generalised wins: smallest sum of level /
    top level (Sweeney's precision loss), then fewest suppressed, then the lexicographically
    smallest levels, so the choice is deterministic. Other columns pass through; rows keep
    their input order; the index is renumbered. k and l in the report are measured on the
    output with pycanon, not taken from the search."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise DeidError("k must be a whole number of at least 1", field="k")
    if not 0 <= max_suppression < 1:
        raise DeidError("give a share from 0 to below 1", field="max_suppression")
    names = list(quasi_identifiers)
    if not names:
        raise DeidError("declare at least one quasi-identifier", field="quasi_identifiers")
    for name in names:
        if name not in frame.columns:
            raise DeidError("no such column", field=f"quasi_identifiers.{name}")
    if sensitive is not None and (sensitive not in frame.columns or sensitive in quasi_identifiers):
        raise DeidError("name a column that is not a quasi-identifier", field="sensitive")

    records_in = len(frame)
    if records_in < k:
        # Nothing could be released; say so instead of returning an empty dataset.
        raise DeidError(f"{records_in} records cannot be {k}-anonymous; at least {k} are needed", field="frame")
    tops = [quasi_identifiers[name].top for name in names]
    nodes = math.prod(top + 1 for top in tops)
    if nodes > MAX_LATTICE_NODES:
        raise DeidError(f"the hierarchies give {nodes} combinations; at most {MAX_LATTICE_NODES}",
                        field="quasi_identifiers")
    # Each (quasi-identifier, level) once, as strings and as integer codes for fast grouping.
    texts = {(name, level): _generalised(frame[name], quasi_identifiers[name], level, name)
             for name, top in zip(names, tops, strict=True) for level in range(top + 1)}
    codes = {key: pd.factorize(np.asarray(values, dtype=object))[0] for key, values in texts.items()}

    allowed = math.floor(max_suppression * records_in)
    best: tuple[float, int, tuple[int, ...]] | None = None
    best_small: np.ndarray | None = None
    for levels in itertools.product(*(range(top + 1) for top in tops)):
        small = _small_classes([codes[(name, level)] for name, level in zip(names, levels, strict=True)], k,
                               records_in)
        suppressed = int(small.sum())
        if suppressed > allowed:
            continue
        loss = sum(level / top if top else 0.0 for level, top in zip(levels, tops, strict=True))
        rank = (loss, suppressed, levels)
        if best is None or rank < best:
            best, best_small = rank, small
    if best is None or best_small is None:
        raise DeidError(f"no generalisation reaches k={k} with at most {max_suppression:.0%} of records suppressed;"
                        " add a coarser level ending in '*'", field="quasi_identifiers")

    chosen = best[2]
    out = frame.copy()
    for name, level in zip(names, chosen, strict=True):
        out[name] = pd.Series(texts[(name, level)], index=frame.index, dtype=object)
    out = out.loc[~best_small].reset_index(drop=True)

    # Never empty: the top node of a hierarchy ending in "*" keeps every record, and a
    # node suppressing them all exceeds max_suppression < 1.
    # pycanon groups by index label then selects with iloc: the index must be 0..n-1.
    achieved_k = int(anonymity.k_anonymity(out, names))
    achieved_l: int | None = None
    if sensitive is not None:
        measured = out[[*names, sensitive]].astype(str)  # None/NaN count as one value
        achieved_l = int(anonymity.l_diversity(measured, names, [sensitive]))
    levels_report = tuple((name, level, quasi_identifiers[name].level_names[level])
                          for name, level in zip(names, chosen, strict=True))
    report = DeidReport(
        requested_k=k, achieved_k=achieved_k, achieved_l=achieved_l, records_in=records_in,
        records_out=len(out), records_suppressed=records_in - len(out), max_suppression=max_suppression,
        levels=levels_report,
        rules=(*rules, f"k-anonymity: k={k} over {', '.join(names)}; classes smaller than k suppressed"),
    )
    return out, report


def _small_classes(columns: list[np.ndarray], k: int, rows: int) -> np.ndarray:
    """Boolean mask of the records whose equivalence class has fewer than k records."""
    if rows == 0:
        return np.zeros(0, dtype=bool)
    combined = np.zeros(rows, dtype=np.int64)
    for codes in columns:
        # Mixed-radix combination of the factor codes: one integer per equivalence class.
        width = int(codes.max()) + 1
        combined = combined * width + codes
        combined = pd.factorize(combined)[0].astype(np.int64)  # keep the numbers small
    sizes = np.bincount(combined)
    return np.asarray(sizes[combined] < k)
