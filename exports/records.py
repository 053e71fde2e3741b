"""What the export writers consume: plain, immutable records, with no Django models and
no database access. The extraction (exports.extract, per tenant) reads the tenant's
tables into these; the writers (CSV, XLSX, Parquet, ODM, SDTM/XPT, Define-XML) only
see records, so the same writer serves a study export and a pooled, de-identified one.

Everything that arrives in bulk (entries, audit rows) comes as an iterator, in a stable
order, so that writers stream: memory stays flat whatever the study size, and the same
data gives the same bytes.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Protocol


@dataclass(frozen=True)
class FormMeta:
    """One published version of a form: its definition document is exactly the JSON
    described in ecrf/definition.py (items, code lists, labels, units, CDISC annotation)."""

    code: str
    version: int
    definition: Mapping[str, Any]


@dataclass(frozen=True)
class EventMeta:
    """A scheduled event of the study's schedule, in schedule order. `visit_num` is its
    1-based position (SDTM VISITNUM); `forms` the form codes collected at it."""

    code: str
    name: str
    visit_num: float
    forms: tuple[str, ...] = ()
    offset_days: int | None = None  # planned study day of the target date, when known


@dataclass(frozen=True)
class StudyMeta:
    oid: str  # e.g. "ST.ACME.CRF" (unique per export; pooled: per consortium)
    code: str
    title: str
    protocol: str = ""
    language: str = "en"  # labels are written in this language first ("en" or "zh-hans")
    events: tuple[EventMeta, ...] = ()
    forms: tuple[FormMeta, ...] = ()


@dataclass(frozen=True, slots=True)
class SubjectRecord:
    """A subject as it may leave the tenant: `subject_key` is the study-level key (the
    subject code, or the pooled pseudonym). Dates are already shifted when de-identified."""

    subject_key: str
    site_code: str
    # studies.models.SubjectStatus: screening | enrolled | completed | withdrawn | lost_to_follow_up | deceased
    status: str
    enrolment_date: date | None
    arm: str = ""
    sex: str = ""  # "M" | "F" | "U" | "" (SDTM SEX)
    birth_year: int | None = None
    age: int | None = None  # at enrolment, years (top-coded when de-identified)
    country: str = ""
    status_date: date | None = None  # when the current status began (DS)
    status_reason: str = ""


@dataclass(frozen=True, slots=True)
class VisitRecord:
    """An event occurrence that happened (SV): the task completed, or with data."""

    subject_key: str
    event_code: str
    sequence: int  # occurrence of a repeating event, 1-based
    start: date | None
    end: date | None = None
    unscheduled: bool = False


@dataclass(frozen=True, slots=True)
class EntryRecord:
    """One form of one event occurrence of one subject. `values` is the entry's values
    document (item code -> value; a repeating group: code -> list of row objects);
    `missing` item path -> missing-data code."""

    subject_key: str
    site_code: str
    event_code: str
    sequence: int
    form_code: str
    form_version: int
    status: str  # in_progress | complete
    values: Mapping[str, Any]
    missing: Mapping[str, str] = field(default_factory=dict)
    visit_date: date | None = None  # the occurrence's actual date, when known
    updated: datetime | None = None


@dataclass(frozen=True)
class AuditRecord:
    """One audit row of an item (ODM AuditRecord)."""

    subject_key: str
    event_code: str
    form_code: str
    item: str  # item path, e.g. "weight" or "meds[0].med_name"
    action: str
    at: datetime  # UTC
    user: str  # a user id or e-mail as the export may show it
    source: str
    reason: str = ""
    old: Any = None
    new: Any = None


@dataclass(frozen=True)
class StudyData:
    """Everything one writer run needs. The iterators are consumed once, in order:
    subjects by subject_key; visits and entries by (subject_key, visit order, event
    code, sequence, form code); audit by (subject_key, at, item)."""

    study: StudyMeta
    snapshot_at: datetime
    subjects: Sequence[SubjectRecord] | Iterator[SubjectRecord]
    visits: Iterator[VisitRecord]
    entries: Iterator[EntryRecord]
    audit: Iterator[AuditRecord] | None = None
    # A study read from a schema also offers the SDTM writer its rows in USUBJID order and
    # its findings cells flattened by the database (exports.sdtm_columns); None: the
    # writer takes everything from the iterators above.
    sdtm_source: SdtmSource | None = None


@dataclass(frozen=True)
class CellItem:
    """One item annotated to a findings domain, as the database flattens it: `index` is
    the item's place in the build's list of findings items; `precision` the decimal's
    digits (None: as entered; -1: a precision the database does not format)."""

    form_code: str
    form_version: int
    item: str
    index: int
    precision: int | None


@dataclass(frozen=True)
class CellChunk:
    """The findings cells of some subjects as columns: a row per (entry, item) value and
    a row per missing-data code. A plain number comes as `orres` (its SDTM text, as the
    Python path writes it) and `stresn`; any other value as `raw` (its JSON text), with
    `orres` None, for the Python path to map; a missing-data code as `missing` (its JSON
    text), with `orres` and `raw` None."""

    entry: Any  # numpy int64 array: the entry's key (entry_key)
    index: Any  # numpy int64 array: CellItem.index
    orres: Any  # numpy object array: str | None
    stresn: Any  # numpy float64 array (NaN where orres is None)
    raw: Any  # numpy object array: str | None
    missing: Any  # numpy object array: str | None
    # The group's entries, in StudyData.entries' order: a key each (the entry's id in its
    # schema), subject key, event code, occurrence, form code and version, visit date
    # as ISO text (None when unknown).
    entry_key: Any  # numpy int64 array
    entry_subject: Sequence[str]
    entry_event: Sequence[str]
    entry_sequence: Sequence[int]
    entry_form: Sequence[str]
    entry_version: Sequence[int]
    entry_date: Sequence[str | None]
    entry_days: Sequence[int | None]  # from the subject's enrolment date to the visit date


class SdtmSource(Protocol):
    """What exports.extract offers the SDTM writer beside the records: the same records in
    USUBJID order (site code, "-", subject key, as Python orders the text), so that the
    datasets are written as they are built, and the findings cells by columns."""

    def visits(self) -> Iterator[VisitRecord]:
        """StudyData.visits, in USUBJID order."""

    def entries(self, forms: Collection[tuple[str, int]] | None) -> Iterator[EntryRecord]:
        """StudyData.entries in USUBJID order: of these (form code, version) only, or all (None)."""

    def chunks(self, items: Sequence[CellItem]) -> Iterator[CellChunk]:
        """The entries (all forms) and their cells of `items` in groups of whole subjects,
        in USUBJID order (as Python orders the text). May start reading at once, beside
        the caller; close the iterator to stop early."""


# --- SDTM dataset metadata (exports.sdtm produces it; the XPT and Define-XML writers use it) ---

@dataclass(frozen=True)
class VariableSpec:
    """One SDTM variable. `type` is "Char" or "Num"; `length` in bytes for Char (the XPT
    width, at most 200), 8 for Num. `origin`: "CRF" (with the form/item it came from),
    "Derived", "Assigned" or "Protocol"; `codelist`: (code, decode) pairs when the values
    come from a code list."""

    name: str  # ^[A-Z][A-Z0-9_]{0,7}$
    label: str  # at most 40 characters
    type: str
    length: int
    role: str = ""  # Identifier, Topic, Timing, Result Qualifier, ...
    origin: str = "CRF"
    source: str = ""  # "FORM.item" for CRF origins
    codelist: tuple[tuple[str, str], ...] = ()
    mandatory: bool = False


@dataclass(frozen=True)
class DatasetSpec:
    """One SDTM dataset (domain): DM, SV, DS, VS, LB, QS, AE, or a SUPP-- split."""

    name: str  # "DM"
    label: str  # "Demographics"
    domain_class: str  # "SPECIAL PURPOSE", "FINDINGS", "EVENTS", "INTERVENTIONS", "TRIAL DESIGN", "RELATIONSHIP"
    structure: str  # "One record per subject", ...
    keys: tuple[str, ...]  # e.g. ("STUDYID", "USUBJID", "VSTESTCD", "VISITNUM")
    variables: tuple[VariableSpec, ...]
    rows: int = 0
    file_name: str = ""  # "dm.xpt"
