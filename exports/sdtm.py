"""SDTM domains built from the eCRF's CDISC annotations (exports.records -> DatasetSpec + rows).

``sdtm_build`` reads StudyData once, subject by subject: subjects, visits and entries come
in the same subject order, so one subject's visits and entries are merged, numbered
(--SEQ, VISITNUM) and spooled to one temporary file per domain as a block. Memory holds
one subject's rows, the rows whose widths are not measured yet (Spool.CHECK_ROWS per
domain at most) and a small index per domain (one tuple per subject). The domains are
then yielded one after the other, rows sorted by USUBJID, each with its final DatasetSpec
(Char widths = longest value in bytes, row count), ready for exports.xpt.

Domains: DM, SV, DS always; AE when a repeating group's items are annotated AE; VS, LB
and QS when items are annotated with those domains.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import math
import pickle
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from itertools import groupby
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Generic, TypeVar

from django.utils.translation import gettext

from exports.records import (
    DatasetSpec,
    EntryRecord,
    EventMeta,
    StudyData,
    StudyMeta,
    SubjectRecord,
    VariableSpec,
    VisitRecord,
)

if TYPE_CHECKING:
    from exports.sdtm_columns import ColumnFindings

MAX_CHAR = 200
FINDINGS = ("VS", "LB", "QS")
DTC_RE = re.compile(r"^\d{4}(-\d{2}(-\d{2}(T\d{2}(:\d{2}(:\d{2}(\.\d+)?)?)?)?)?)?$")
TESTCD_RE = re.compile(r"^[A-Z][A-Z0-9_]{0,7}$")
# studies.models.SubjectStatus -> DSDECOD (CDISC NCOMPLT / disposition terms).
DISPOSITION = {
    "completed": "COMPLETED",
    "withdrawn": "WITHDRAWAL BY SUBJECT",
    "lost_to_follow_up": "LOST TO FOLLOW-UP",
    "deceased": "DEATH",
}
MISSING_CODE_TEXT = {"NA": "NOT APPLICABLE", "UNK": "UNKNOWN", "ASKU": "ASKED BUT UNKNOWN", "NASK": "NOT ASKED"}


class SdtmError(ValueError):
    """The study data cannot be mapped; the message names the domain, variable and subject."""


@dataclass(frozen=True)
class Var:
    """A variable before its width is known: (name, label, type, role, origin)."""

    name: str
    label: str
    type: str = "Char"
    role: str = ""
    origin: str = "CRF"
    source: str = ""


@dataclass(frozen=True)
class Domain:
    name: str
    label: str
    domain_class: str
    structure: str
    keys: tuple[str, ...]
    variables: tuple[Var, ...]


def _id(name: str, label: str, origin: str = "Assigned") -> Var:
    return Var(name, label, "Char", "Identifier", origin)


STUDYID = _id("STUDYID", "Study Identifier", "Protocol")
DOMAIN = _id("DOMAIN", "Domain Abbreviation")
USUBJID = _id("USUBJID", "Unique Subject Identifier", "Derived")


def _seq(prefix: str) -> Var:
    return Var(f"{prefix}SEQ", "Sequence Number", "Num", "Identifier", "Derived")


VISITNUM = Var("VISITNUM", "Visit Number", "Num", "Timing", "Derived")
VISIT = Var("VISIT", "Visit Name", "Char", "Timing", "Derived")

DM = Domain("DM", "Demographics", "SPECIAL PURPOSE", "One record per subject", ("STUDYID", "USUBJID"), (
    STUDYID, DOMAIN, USUBJID,
    Var("SUBJID", "Subject Identifier for the Study", "Char", "Topic"),
    Var("RFSTDTC", "Subject Reference Start Date/Time", "Char", "Record Qualifier", "Derived"),
    Var("SITEID", "Study Site Identifier", "Char", "Record Qualifier"),
    Var("BRTHDTC", "Date/Time of Birth", "Char", "Record Qualifier"),
    Var("AGE", "Age", "Num", "Record Qualifier"),
    Var("AGEU", "Age Units", "Char", "Variable Qualifier", "Assigned"),
    Var("SEX", "Sex", "Char", "Record Qualifier"),
    Var("ARMCD", "Planned Arm Code", "Char", "Record Qualifier", "Assigned"),
    Var("ARM", "Description of Planned Arm", "Char", "Synonym Qualifier", "Assigned"),
    Var("COUNTRY", "Country", "Char", "Record Qualifier"),
))
SV = Domain("SV", "Subject Visits", "SPECIAL PURPOSE", "One record per subject per actual visit",
            ("STUDYID", "USUBJID", "VISITNUM"), (
    STUDYID, DOMAIN, USUBJID, VISITNUM, VISIT,
    Var("SVSTDTC", "Start Date/Time of Visit", "Char", "Timing"),
    Var("SVENDTC", "End Date/Time of Visit", "Char", "Timing"),
    Var("SVSTDY", "Study Day of Start of Visit", "Num", "Timing", "Derived"),
    Var("SVENDY", "Study Day of End of Visit", "Num", "Timing", "Derived"),
))
DS = Domain("DS", "Disposition", "EVENTS", "One record per disposition status or protocol milestone per subject",
            ("STUDYID", "USUBJID", "DSDECOD", "DSSTDTC"), (
    STUDYID, DOMAIN, USUBJID, _seq("DS"),
    Var("DSTERM", "Reported Term for the Disposition Event", "Char", "Topic"),
    Var("DSDECOD", "Standardized Disposition Term", "Char", "Synonym Qualifier", "Assigned"),
    Var("DSCAT", "Category for Disposition Event", "Char", "Grouping Qualifier", "Assigned"),
    Var("DSSTDTC", "Start Date/Time of Disposition Event", "Char", "Timing"),
    Var("DSSTDY", "Study Day of Start of Disposition Event", "Num", "Timing", "Derived"),
))
FINDINGS_META = {
    "VS": ("Vital Signs", "One record per vital sign measurement per visit per subject",
           "Vital Signs Test Short Name", "Vital Signs Test Name", "Date/Time of Measurements",
           "Study Day of Vital Signs"),
    "LB": ("Laboratory Test Results", "One record per lab test per visit per subject",
           "Lab Test or Examination Short Name", "Lab Test or Examination Name", "Date/Time of Specimen Collection",
           "Study Day of Specimen Collection"),
    "QS": ("Questionnaires", "One record per questionnaire per question per visit per subject",
           "Question Short Name", "Question Name", "Date/Time of Finding", "Study Day of Finding"),
}
# SDTMIG AE variables an item may be annotated with, in SDTMIG order, with their labels.
AE_VARIABLES = {
    "AETERM": ("Reported Term for the Adverse Event", "Topic"),
    "AEDECOD": ("Dictionary-Derived Term", "Synonym Qualifier"),
    "AECAT": ("Category for Adverse Event", "Grouping Qualifier"),
    "AELOC": ("Location of Event", "Record Qualifier"),
    "AESEV": ("Severity/Intensity", "Record Qualifier"),
    "AESER": ("Serious Event", "Record Qualifier"),
    "AEACN": ("Action Taken with Study Treatment", "Record Qualifier"),
    "AEACNOTH": ("Other Action Taken", "Record Qualifier"),
    "AEREL": ("Causality", "Record Qualifier"),
    "AEPATT": ("Pattern of Adverse Event", "Record Qualifier"),
    "AEOUT": ("Outcome of Adverse Event", "Record Qualifier"),
    "AESCONG": ("Congenital Anomaly or Birth Defect", "Record Qualifier"),
    "AESDISAB": ("Persist or Signif Disability/Incapacity", "Record Qualifier"),
    "AESDTH": ("Results in Death", "Record Qualifier"),
    "AESHOSP": ("Requires or Prolongs Hospitalization", "Record Qualifier"),
    "AESLIFE": ("Is Life Threatening", "Record Qualifier"),
    "AESMIE": ("Other Medically Important Serious Event", "Record Qualifier"),
    "AETOXGR": ("Standard Toxicity Grade", "Record Qualifier"),
    "AESTDTC": ("Start Date/Time of Adverse Event", "Timing"),
    "AEENDTC": ("End Date/Time of Adverse Event", "Timing"),
}


def _findings_domain(prefix: str) -> Domain:
    label, structure, testcd, test, dtc, dy = FINDINGS_META[prefix]
    qscat = Var("QSCAT", "Category of Question", "Char", "Grouping Qualifier", "Assigned")
    category = (qscat,) if prefix == "QS" else ()
    keys = ("STUDYID", "USUBJID", *(("QSCAT",) if prefix == "QS" else ()), f"{prefix}TESTCD", "VISITNUM")
    return Domain(prefix, label, "FINDINGS", structure, keys, (
        STUDYID, DOMAIN, USUBJID, _seq(prefix),
        Var(f"{prefix}TESTCD", testcd, "Char", "Topic"),
        Var(f"{prefix}TEST", test, "Char", "Synonym Qualifier"),
        *category,
        Var(f"{prefix}ORRES", "Result or Finding in Original Units", "Char", "Result Qualifier"),
        Var(f"{prefix}ORRESU", "Original Units", "Char", "Variable Qualifier"),
        Var(f"{prefix}STRESC", "Character Result/Finding in Std Format", "Char", "Result Qualifier", "Derived"),
        Var(f"{prefix}STRESN", "Numeric Result/Finding in Standard Units", "Num", "Result Qualifier", "Derived"),
        Var(f"{prefix}STRESU", "Standard Units", "Char", "Variable Qualifier", "Derived"),
        Var(f"{prefix}STAT", "Completion Status", "Char", "Record Qualifier", "Derived"),
        Var(f"{prefix}REASND", "Reason Not Done", "Char", "Record Qualifier"),
        VISITNUM, VISIT,
        Var(f"{prefix}DTC", dtc, "Char", "Timing"),
        Var(f"{prefix}DY", dy, "Num", "Timing", "Derived"),
    ))


def _ae_domain(annotated: Iterable[str]) -> Domain:
    present = set(annotated)
    chosen = [name for name in AE_VARIABLES if name in present]
    days = [Var(day, label, "Num", "Timing", "Derived") for dtc, day, label in (
        ("AESTDTC", "AESTDY", "Study Day of Start of Adverse Event"),
        ("AEENDTC", "AEENDY", "Study Day of End of Adverse Event")) if dtc in present]
    return Domain("AE", "Adverse Events", "EVENTS", "One record per adverse event per subject",
                  ("STUDYID", "USUBJID", "AETERM", "AESTDTC"), (
        STUDYID, DOMAIN, USUBJID, _seq("AE"),
        *(Var(name, AE_VARIABLES[name][0], "Char", AE_VARIABLES[name][1]) for name in chosen),
        *days,
    ))


# --- the annotation plan: which items feed which domain ---------------------------------------

@dataclass(frozen=True)
class FindingItem:
    domain: str
    code: str
    item: Mapping[str, Any]
    testcd: str
    test: str
    unit: str
    # Worked out once per item for the rows: (--TESTCD, --TEST[, QSCAT]), the start of the
    # sort key (QSCAT or --TESTCD, --TESTCD), and whether a decimal is written as entered.
    topic: tuple[str, ...] = ()
    sort_head: tuple[str, str] = ("", "")
    as_entered: bool = True


@dataclass(frozen=True)
class AeGroup:
    code: str
    children: tuple[tuple[str, str, Mapping[str, Any]], ...]  # (child code, AE variable, item)


@dataclass(frozen=True)
class FormPlan:
    code_lists: Mapping[str, Any]
    category: str  # QSCAT: the form's title
    findings: tuple[FindingItem, ...]
    ae_groups: tuple[AeGroup, ...]


def _text_of(labels: Any, fallback: str) -> str:
    if isinstance(labels, Mapping):
        for language in ("en", "zh-hans"):
            text = labels.get(language)
            if isinstance(text, str) and text.strip():
                return text.strip()
    return fallback


def _plan_form(code: str, version: int, definition: Mapping[str, Any]) -> FormPlan:
    findings: list[FindingItem] = []
    groups: list[AeGroup] = []
    category = _text_of(definition.get("title"), code).upper()
    for item in definition.get("items", ()):
        where = gettext("Form %(form)s v%(version)s, item %(item)s") % {"form": code, "version": version,
                                                                   "item": item.get("code")}
        cdisc = item.get("cdisc") or {}
        if item.get("type") == "group":
            children = tuple(
                (child["code"], _ae_variable(child, gettext("Form %(form)s v%(version)s, item %(item)s") % {
                    "form": code, "version": version, "item": f"{item['code']}.{child['code']}"}),
                 child)
                for child in item.get("items", ()) if (child.get("cdisc") or {}).get("domain") == "AE")
            if children:
                groups.append(AeGroup(item["code"], children))
            continue
        domain = cdisc.get("domain")
        if domain not in FINDINGS:
            continue
        testcd = cdisc.get("testcd") or item["code"].upper()
        if not TESTCD_RE.fullmatch(testcd):
            raise SdtmError(gettext("%(where)s: %(variable)s %(value)r is not 1-8 capital letters, digits or _; give "
                              "cdisc.testcd.") % {"where": where, "variable": f"{domain}TESTCD", "value": testcd})
        test = cdisc.get("test") or _text_of(item.get("label"), testcd)
        if len(test) > 40:
            raise SdtmError(gettext("%(where)s: %(variable)s is %(n)d characters; give cdisc.test of at most 40.")
                            % {"where": where, "variable": f"{domain}TEST", "n": len(test)})
        findings.append(FindingItem(domain, item["code"], item, testcd, test, cdisc.get("orresu") or
                                    item.get("unit") or "", (testcd, test, category) if domain == "QS" else
                                    (testcd, test), (category if domain == "QS" else testcd, testcd),
                                    item.get("precision") is None))
    return FormPlan(definition.get("code_lists") or {}, category, tuple(findings), tuple(groups))


def _ae_variable(child: Mapping[str, Any], where: str) -> str:
    variable = (child.get("cdisc") or {}).get("variable", "")
    if variable not in AE_VARIABLES:
        raise SdtmError(gettext("%(where)s: AE variable %(value)r is not one of %(allowed)s.")
                        % {"where": where, "value": variable, "allowed": ", ".join(AE_VARIABLES)})
    return str(variable)


# --- values ------------------------------------------------------------------------------------

def _number_text(value: int | float, item: Mapping[str, Any]) -> str:
    if isinstance(value, int):
        return str(value)
    if item.get("precision") is not None:
        return f"{value:.{item['precision']}f}"
    text = repr(value)
    if "." in text and "e" not in text:  # plain notation: what Decimal.normalize() gives, without it
        return text.rstrip("0").rstrip(".")
    return format(Decimal(text).normalize(), "f")


def _decode(item: Mapping[str, Any], code_lists: Mapping[str, Any], code: str) -> str:
    for entry in code_lists.get(item.get("code_list", ""), ()):
        if entry.get("value") == code:
            return _text_of(entry.get("labels"), code)
    return code


def _value_text(item: Mapping[str, Any], code_lists: Mapping[str, Any], value: Any) -> str:
    """The collected value as SDTM text: numbers as entered, codes decoded (English first)."""
    kind = item.get("type")
    if value is None:
        return ""
    if isinstance(value, bool):
        return "Y" if value else "N"
    if isinstance(value, int | float):
        return _number_text(value, item)
    if kind == "yes_no":
        return {"1": "Y", "0": "N"}.get(str(value), str(value))
    if kind == "single_choice":
        return _decode(item, code_lists, str(value))
    if isinstance(value, list):
        return "; ".join(_decode(item, code_lists, str(code)) for code in value)
    if isinstance(value, Mapping):  # a file: its name
        return str(value.get("name", ""))
    return str(value)


def _as_number(text: str) -> float | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def study_day(dtc: str, reference: date | None) -> int | None:
    """--DY: day 1 is RFSTDTC, the day before is -1; none for partial dates."""
    if reference is None or len(dtc) < 10:
        return None
    delta = (date.fromisoformat(dtc[:10]) - reference).days
    return delta + 1 if delta >= 0 else delta


def _dtc(value: Any, where: str) -> str:
    text = "" if value is None else str(value)
    if text and not iso_dtc_valid(text):
        raise SdtmError(gettext("%(where)s: the value is not an ISO 8601 date.") % {"where": where})  # never the value
    return text


def iso_dtc_valid(text: str) -> bool:
    if not DTC_RE.fullmatch(text):
        return False
    try:
        if len(text) >= 10:
            date.fromisoformat(text[:10])
        elif len(text) == 7 and not 1 <= int(text[5:7]) <= 12:
            return False
    except ValueError:
        return False
    return True


# --- one subject -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Context:
    studyid: str
    events: Mapping[str, EventMeta]
    plans: Mapping[tuple[str, int], FormPlan]
    domains: Mapping[str, Domain]


def _usubjid(studyid: str, subject: SubjectRecord) -> str:
    return f"{studyid}-{subject.site_code}-{subject.subject_key}"


def _arm_code(arm: str, where: str) -> str:
    code = re.sub(r"[^A-Z0-9]+", "_", arm.upper()).strip("_")
    if len(code) > 20:
        raise SdtmError(gettext("%(where)s: ARMCD derived from arm %(arm)r is longer than 20 characters.")
                        % {"where": where, "arm": arm})
    return code


def _dm_row(ctx: Context, subject: SubjectRecord, usubjid: str) -> tuple[object, ...]:
    where = f"DM, USUBJID {usubjid}"
    return (ctx.studyid, "DM", usubjid, subject.subject_key,
            subject.enrolment_date.isoformat() if subject.enrolment_date else "", subject.site_code,
            str(subject.birth_year) if subject.birth_year else "",
            subject.age, "YEARS" if subject.age is not None else "",
            subject.sex or "U",  # SEX is required; an unknown or removed sex is "U"
            _arm_code(subject.arm, where) if subject.arm else "", subject.arm,
            subject.country.upper())


def _ds_rows(ctx: Context, subject: SubjectRecord, usubjid: str) -> list[tuple[object, ...]]:
    decod = DISPOSITION.get(subject.status)
    if decod is None:
        return []
    dtc = subject.status_date.isoformat() if subject.status_date else ""
    return [(ctx.studyid, "DS", usubjid, 1, subject.status_reason or decod, decod, "DISPOSITION EVENT", dtc,
             study_day(dtc, subject.enrolment_date))]


def _visit_numbers(ctx: Context, visits: Sequence[VisitRecord], usubjid: str
                   ) -> dict[tuple[str, int], tuple[float, str]]:
    """(event code, occurrence) -> (VISITNUM, VISIT). Unscheduled visits, and repeats of a
    scheduled event, take the previous scheduled VISITNUM + .1, + .2, ... in visit order."""
    numbers: dict[tuple[str, int], tuple[float, str]] = {}
    last, extra = 0.0, 0
    for visit in visits:
        event = ctx.events.get(visit.event_code)
        if event is not None and not visit.unscheduled and visit.sequence == 1:
            last, extra = float(event.visit_num), 0
            numbers[(visit.event_code, visit.sequence)] = (last, event.name)
            continue
        extra += 1
        if extra > 9:
            raise SdtmError(gettext("SV, USUBJID %(usubjid)s: more than 9 unscheduled visits after VISITNUM "
                                    "%(visitnum)s.") % {"usubjid": usubjid, "visitnum": f"{last:g}"})
        number = round(last + extra / 10, 1)
        name = f"UNSCHEDULED {number:.1f}" if event is None or visit.unscheduled else f"{event.name} {visit.sequence}"
        numbers[(visit.event_code, visit.sequence)] = (number, name)
    return numbers


def _sv_rows(ctx: Context, visits: Sequence[VisitRecord], numbers: Mapping[tuple[str, int], tuple[float, str]],
             usubjid: str, reference: date | None) -> list[tuple[object, ...]]:
    rows: list[tuple[object, ...]] = []
    for visit in visits:
        number, name = numbers[(visit.event_code, visit.sequence)]
        start = visit.start.isoformat() if visit.start else ""
        end = visit.end.isoformat() if visit.end else ""
        rows.append((ctx.studyid, "SV", usubjid, number, name, start, end, study_day(start, reference),
                     study_day(end, reference)))
    rows.sort(key=lambda row: _num_key(row[3]))
    return rows


def _visit_of(ctx: Context, entry: EntryRecord, numbers: Mapping[tuple[str, int], tuple[float, str]]
              ) -> tuple[float | None, str]:
    found = numbers.get((entry.event_code, entry.sequence))
    if found is not None:
        return found
    event = ctx.events.get(entry.event_code)
    if event is not None and entry.sequence == 1:
        return float(event.visit_num), event.name
    return None, ""


FindingKey = tuple[str, str, float, str]


def _entry_findings(plan: FormPlan, entry: EntryRecord, visit: tuple[float | None, str], reference: date | None,
                    found: Mapping[str, list[tuple[FindingKey, tuple[object, ...]]]]) -> None:
    """The entry's findings rows (from --TESTCD on; STUDYID to --SEQ are added when the
    subject's rows are numbered), each with its sort key: (QSCAT or --TESTCD, --TESTCD,
    VISITNUM, --DTC). Nearly every item value of a study passes through here: the visit's
    columns and sort key are worked out once per entry, and a number has a short path."""
    values, missing = entry.values, entry.missing
    dtc = entry.visit_date.isoformat() if entry.visit_date else ""
    visitnum, visit_name = visit
    timing = (visitnum, visit_name, dtc, study_day(dtc, reference))
    key_tail = (_num_key(visitnum), dtc)
    for finding in plan.findings:
        value: Any = values.get(finding.code)
        kind = type(value)
        if kind is float or kind is int:  # ORRES as entered, STRESC the same, STRESN the number
            text = repr(value)
            if kind is int:
                orres = text
            elif finding.as_entered and "." in text and "e" not in text:
                orres = text.rstrip("0").rstrip(".")  # what Decimal(text).normalize() gives, faster
            else:
                orres = _number_text(value, finding.item)
            unit = finding.unit
            # Tuple concatenation: a third faster than unpacking, once per item value.
            columns = (orres, unit, orres, float(value), unit, "", "")
            row: tuple[object, ...] = finding.topic + columns + timing
        else:
            row = _finding_columns(plan, finding, value, missing.get(finding.code, "") if missing else "", timing)
            if not row:
                continue  # not collected (hidden by branching, or left empty)
        found[finding.domain].append((finding.sort_head + key_tail, row))


def _finding_columns(plan: FormPlan, finding: FindingItem, value: Any, missing_code: str,
                     timing: tuple[object, ...]) -> tuple[object, ...]:
    """A finding's columns from --TESTCD on, for a value other than a number (or for a
    missing-data code); empty when the item was not collected."""
    if value is None and not missing_code:
        return ()
    orres = _value_text(finding.item, plan.code_lists, value)
    stresn: float | None
    if isinstance(value, int | float) and not isinstance(value, bool):
        stresc, stresn = orres, float(value)
    elif finding.item.get("type") == "single_choice" and value is not None and _as_number(str(value)) is not None:
        stresc, stresn = str(value), _as_number(str(value))  # a scored answer: the score
    else:
        stresc, stresn = orres, None
    stat, reasnd = ("NOT DONE", MISSING_CODE_TEXT.get(missing_code, missing_code)) if value is None else ("", "")
    unit = finding.unit
    return (*finding.topic, orres, unit if orres else "", stresc, stresn, unit if stresn is not None else "", stat,
            reasnd, *timing)


def _numbered_findings(studyid: str, domain: str, usubjid: str,
                       keyed: list[tuple[FindingKey, tuple[object, ...]]]) -> list[tuple[object, ...]]:
    """--SEQ 1..n within the subject, in the domain's key order (stable for ties)."""
    keyed.sort(key=_first)
    head = (studyid, domain, usubjid)
    return [head + (number,) + row for number, (_, row) in enumerate(keyed, 1)]  # noqa: RUF005 - faster, see above


def _first(pair: tuple[FindingKey, tuple[object, ...]]) -> FindingKey:
    return pair[0]


def _ae_rows(ctx: Context, plan: FormPlan, entry: EntryRecord, usubjid: str, reference: date | None
             ) -> list[tuple[object, ...]]:
    domain = ctx.domains["AE"]
    names = [variable.name for variable in domain.variables]
    rows = []
    for group in plan.ae_groups:
        for index, group_row in enumerate(entry.values.get(group.code) or ()):
            values: dict[str, object] = {}
            for code, variable, item in group.children:
                where = f"AE, USUBJID {usubjid}, {entry.form_code}.{group.code}[{index}].{code}"
                raw = group_row.get(code) if isinstance(group_row, Mapping) else None
                text = _value_text(item, plan.code_lists, raw)
                values[variable] = _dtc(text, where) if variable.endswith("DTC") else text
            if not any(values.values()):
                continue
            values.update(STUDYID=ctx.studyid, DOMAIN="AE", USUBJID=usubjid)
            values["AESTDY"] = study_day(str(values.get("AESTDTC", "")), reference)
            values["AEENDY"] = study_day(str(values.get("AEENDTC", "")), reference)
            rows.append(tuple(values.get(name) for name in names))
    return rows


def _numbered(rows: list[tuple[object, ...]], seq_index: int, key: Any) -> list[tuple[object, ...]]:
    """--SEQ 1..n within the subject, in the domain's key order (stable for ties)."""
    ordered = sorted(rows, key=key)
    return [(*row[:seq_index], number, *row[seq_index + 1:]) for number, row in enumerate(ordered, 1)]


def _text_key(value: object) -> str:
    return "" if value is None else str(value)


def _num_key(value: object) -> float:
    return float(value) if isinstance(value, int | float) else math.inf


# --- spooling ----------------------------------------------------------------------------------

SpoolError = tuple[int, SdtmError]  # (the place of the block in the build, the error)


class Spool:
    """One domain's rows on disk, one pickled block per subject; read back in USUBJID order.

    The Char widths (and the 200-byte limit) are measured a few thousand rows at a time,
    column by column (measuring each subject's block alone cost a tenth of an export).
    A block that is measured late keeps its place in the build (``clock``, shared by the
    spools of a build), so that ``sdtm_build`` still raises the error that came first."""

    CHECK_ROWS = 8192
    RECORD_ROWS = 4096

    def __init__(self, domain: Domain, clock: Iterator[int], *, ordered: bool = False) -> None:
        self.domain = domain
        # Subjects added in USUBJID order: rows go to disk a record of many subjects at a
        # time and come back as they were written (no block per subject, no sort).
        self.ordered = ordered
        self._pending: list[tuple[object, ...]] = []
        self._records: list[tuple[int, int]] = []
        self._last = ""
        self.file: IO[bytes] = tempfile.TemporaryFile(prefix=f"sdtm-{domain.name}-")  # noqa: SIM115 - closed by close()
        self.index: list[tuple[str, int, int]] = []
        self._end = 0
        self.count = 0
        self.widths = [0] * len(domain.variables)
        self.char_indexes = [index for index, variable in enumerate(domain.variables) if variable.type == "Char"]
        self._clock = clock
        self._unmeasured: list[tuple[int, str, list[tuple[object, ...]]]] = []
        self._unmeasured_rows = 0
        self.error: SpoolError | None = None  # the first too-long value measured

    def add(self, usubjid: str, rows: list[tuple[object, ...]]) -> None:
        if not rows:
            return
        if self.ordered:
            if usubjid <= self._last:
                raise RuntimeError(f"SDTM {self.domain.name}: subjects out of USUBJID order.")
            self._last = usubjid
            self._pending.extend(rows)
            if len(self._pending) >= self.RECORD_ROWS:
                self._flush()
        else:
            block = pickle.dumps(rows, protocol=pickle.HIGHEST_PROTOCOL)
            self.index.append((usubjid, self._end, len(block)))
            self.file.write(block)
            self._end += len(block)  # tell() costs more than the write on a buffered file
        self.count += len(rows)
        self._unmeasured.append((next(self._clock), usubjid, rows))
        self._unmeasured_rows += len(rows)
        if self._unmeasured_rows >= self.CHECK_ROWS:
            self.measure()

    def measure(self) -> None:
        """Widen the Char widths to the unmeasured rows; keep the first too-long value's error."""
        blocks, self._unmeasured, self._unmeasured_rows = self._unmeasured, [], 0
        if not blocks or self.error is not None or self._widen([row for _, _, rows in blocks for row in rows]):
            return
        for place, usubjid, rows in blocks:
            try:
                self._widen_by_value(usubjid, rows)
            except SdtmError as error:
                self.error = (place, error)
                return

    def _widen(self, rows: list[tuple[object, ...]]) -> bool:
        """Widen the Char widths to the block's longest values a column at a time (C loops);
        False, widening nothing, when a column holds other than text or a value is too
        long: then ``_widen_by_value`` does it, and words the error."""
        columns = list(zip(*rows, strict=True))
        widths = list(self.widths)
        for index in self.char_indexes:
            texts = columns[index]
            if None in texts:
                texts = tuple(text or "" for text in texts)
            try:
                joined = "".join(texts)
            except TypeError:  # not all text
                return False
            longest = max(map(len, texts)) if joined.isascii() else max(
                len(text.encode("utf-8")) for text in texts)
            if longest > MAX_CHAR:
                return False
            widths[index] = max(widths[index], longest)
        self.widths = widths
        return True

    def _widen_by_value(self, usubjid: str, rows: list[tuple[object, ...]]) -> None:
        for row in rows:
            for index, (variable, value) in enumerate(zip(self.domain.variables, row, strict=True)):
                if variable.type == "Char" and value:
                    size = len(str(value).encode("utf-8"))
                    if size > MAX_CHAR:
                        raise SdtmError(gettext("%(dataset)s, USUBJID %(usubjid)s, %(variable)s: the value is %(size)d "
                                          "bytes; XPT allows %(max)d (shorten it or split it to SUPP--).") % {
                            "dataset": self.domain.name, "usubjid": usubjid, "variable": variable.name,
                            "size": size, "max": MAX_CHAR})
                    self.widths[index] = max(self.widths[index], size)

    def spec(self) -> DatasetSpec:
        return domain_spec(self.domain, self.widths, self.count)

    def _flush(self) -> None:
        if self._pending:
            record = pickle.dumps(self._pending, protocol=pickle.HIGHEST_PROTOCOL)
            self._records.append((self._end, len(record)))
            self.file.write(record)
            self._end += len(record)
            self._pending = []

    def rows(self) -> Iterator[tuple[object, ...]]:
        if self.ordered:
            self._flush()
            for offset, size in self._records:
                self.file.seek(offset)
                yield from pickle.loads(self.file.read(size))  # noqa: S301 - our own file, as below
            return
        for _, offset, size in sorted(self.index):
            self.file.seek(offset)
            # Our own temporary file, written above in this process: not untrusted input.
            yield from pickle.loads(self.file.read(size))  # noqa: S301

    def close(self) -> None:
        self.file.close()


def domain_spec(domain: Domain, widths: Sequence[int], rows: int) -> DatasetSpec:
    """A domain's DatasetSpec once its Char widths (bytes, measured) and rows are known."""
    variables = tuple(
        VariableSpec(name=var.name, label=var.label, type=var.type,
                     length=8 if var.type == "Num" else max(1, width), role=var.role, origin=var.origin,
                     source=var.source, mandatory=var.name in ("STUDYID", "DOMAIN", "USUBJID"))
        for var, width in zip(domain.variables, widths, strict=True))
    return DatasetSpec(name=domain.name, label=domain.label, domain_class=domain.domain_class,
                       structure=domain.structure, keys=domain.keys, variables=variables, rows=rows,
                       file_name=f"{domain.name.lower()}.xpt")


def unknown_subject(what: str, subject_key: str) -> SdtmError:
    return SdtmError(f"{what} of subject {subject_key!r}: no such subject, or not in the subjects' order "
                     f"(subject_key).")


def unknown_form(subject_key: str, form: str, version: int) -> SdtmError:
    return SdtmError(f"Entry of subject {subject_key}: form {form} v{version} is not in the study's forms.")


R = TypeVar("R", VisitRecord, EntryRecord)


class Cursor(Generic[R]):
    """Records grouped by subject, taken in the subjects' order."""

    def __init__(self, records: Iterator[R], what: str) -> None:
        self._groups: Iterator[tuple[str, list[R]]] = (
            (key, list(group)) for key, group in groupby(records, key=lambda r: r.subject_key))
        self._what = what
        self._current: tuple[str, list[R]] | None = next(self._groups, None)

    def take(self, subject_key: str) -> list[R]:
        if self._current is None or self._current[0] != subject_key:
            return []
        found = self._current[1]
        self._current = next(self._groups, None)
        return found

    def finish(self) -> None:
        if self._current is not None:
            raise unknown_subject(self._what, self._current[0])


def _plan(study: StudyMeta) -> tuple[dict[tuple[str, int], FormPlan], dict[str, Domain]]:
    plans = {(form.code, form.version): _plan_form(form.code, form.version, form.definition) for form in study.forms}
    domains = {"DM": DM, "SV": SV, "DS": DS}
    ae_variables = {variable for plan in plans.values() for group in plan.ae_groups
                    for _, variable, _ in group.children}
    if ae_variables:
        domains["AE"] = _ae_domain(ae_variables)
    used = {finding.domain for plan in plans.values() for finding in plan.findings}
    for prefix in FINDINGS:
        if prefix in used:
            domains[prefix] = _findings_domain(prefix)
    return plans, domains


def _subject(ctx: Context, subject: SubjectRecord, visits: list[VisitRecord], entries: list[EntryRecord],
             spools: Mapping[str, Spool], columns: ColumnFindings | None) -> None:
    usubjid = _usubjid(ctx.studyid, subject)
    reference = subject.enrolment_date
    spools["DM"].add(usubjid, [_dm_row(ctx, subject, usubjid)])
    spools["DS"].add(usubjid, _ds_rows(ctx, subject, usubjid))
    numbers = _visit_numbers(ctx, visits, usubjid)
    if columns is not None:
        columns.add_visits(subject.subject_key, numbers)
    spools["SV"].add(usubjid, _sv_rows(ctx, visits, numbers, usubjid, reference))
    if not entries:
        return
    findings: dict[str, list[tuple[FindingKey, tuple[object, ...]]]] = {
        name: [] for name in ctx.domains if name in FINDINGS} if columns is None else {}
    found: dict[str, list[tuple[object, ...]]] = {name: [] for name in ctx.domains if name == "AE"}
    for entry in entries:
        plan = ctx.plans.get((entry.form_code, entry.form_version))
        if plan is None:
            raise unknown_form(subject.subject_key, entry.form_code, entry.form_version)
        visit = _visit_of(ctx, entry, numbers)
        if plan.findings and columns is None:  # else they come by columns (exports.sdtm_columns)
            _entry_findings(plan, entry, visit, reference, findings)
        if plan.ae_groups:
            found["AE"].extend(_ae_rows(ctx, plan, entry, usubjid, reference))
    for name, rows in found.items():
        if name == "AE":
            names = [variable.name for variable in ctx.domains["AE"].variables]
            start = names.index("AESTDTC") if "AESTDTC" in names else None
            term = names.index("AETERM") if "AETERM" in names else None
            spools["AE"].add(usubjid, _numbered(rows, 3, lambda row, start=start, term=term: (
                _text_key(row[start]) if start is not None else "", _text_key(row[term]) if term is not None else "")))
    for name, keyed in findings.items():
        spools[name].add(usubjid, _numbered_findings(ctx.studyid, name, usubjid, keyed))


def _first_error(spools: Mapping[str, Spool]) -> SdtmError | None:
    """The spools' error that came first in the build, once every row is measured."""
    for spool in spools.values():
        spool.measure()
    found = [spool.error for spool in spools.values() if spool.error is not None]
    return min(found, key=lambda error: error[0])[1] if found else None


def sdtm_build(data: StudyData, *, studyid: str) -> Iterator[tuple[DatasetSpec, Iterable[tuple[object, ...]]]]:
    """Yield (spec, rows) per domain: DM, SV, DS, then AE, VS, LB, QS when annotated. Consume
    each domain's rows before asking for the next domain; the temporary files are removed
    when this generator ends. Raises SdtmError for data that cannot be mapped."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_\-.]{0,39}", studyid):
        raise SdtmError(gettext("STUDYID %(value)r: use 1-40 letters, digits, '-', '_' or '.'.") % {"value": studyid})
    from exports.sdtm_columns import column_findings

    plans, domains = _plan(data.study)
    ctx = Context(studyid, {event.code: event for event in data.study.events}, plans, domains)
    clock = itertools.count()
    # From a schema, subjects are walked in USUBJID order (the datasets' order): rows are
    # spooled as they come; the findings come by columns, their cells read beside this walk.
    source = data.sdtm_source if isinstance(data.subjects, Sequence) else None
    spools = {name: Spool(domain, clock, ordered=source is not None) for name, domain in domains.items()}
    columns = None
    try:
        subjects: Iterable[SubjectRecord] = data.subjects
        visit_records, entry_records = data.visits, data.entries
        if source is not None:
            subjects = sorted(data.subjects, key=lambda subject: _usubjid(studyid, subject))
            for one, other in itertools.pairwise(subjects):
                if _usubjid(studyid, one) == _usubjid(studyid, other) and one.subject_key != other.subject_key:
                    raise SdtmError(gettext("USUBJID %(usubjid)s would be the same for subjects %(one)s and "
                                            "%(other)s (site and subject codes joined by '-').") % {
                        "usubjid": _usubjid(studyid, one), "one": one.subject_key, "other": other.subject_key})
            columns = column_findings(studyid, plans, domains, ctx.events, subjects, source)
            visit_records = source.visits()
            # With the findings by columns, the walk needs only the AE forms' entries.
            entry_records = source.entries([key for key, plan in plans.items() if plan.ae_groups]
                                           if columns is not None else None)
        visits = Cursor(visit_records, "Visits")
        entries = Cursor(entry_records, "Entries")
        seen: set[str] = set()
        try:
            for subject in subjects:
                if subject.subject_key in seen:
                    raise SdtmError(f"DM: subject {subject.subject_key!r} is listed twice.")
                seen.add(subject.subject_key)
                _subject(ctx, subject, visits.take(subject.subject_key), entries.take(subject.subject_key), spools,
                         columns)
                if any(spool.error is not None for spool in spools.values()):
                    break
        except Exception:
            # A too-long value spooled before this error, but not measured yet, came first.
            if (first := _first_error(spools)) is not None:
                raise first from None
            raise
        if (first := _first_error(spools)) is not None:
            raise first
        visits.finish()
        entries.finish()
        by_columns: dict[str, tuple[DatasetSpec, Iterable[tuple[object, ...]]]] = {}
        if columns is not None:
            columns.build()
            by_columns = {spec.name: (spec, rows) for spec, rows in columns.results()}
        for name, spool in spools.items():
            yield by_columns.get(name) or (spool.spec(), spool.rows())
    finally:
        if columns is not None:
            columns.close()
        for spool in spools.values():
            spool.close()


def sdtm_write(data: StudyData, *, studyid: str, directory: Path, ascii_only: bool = False) -> list[DatasetSpec]:
    """Every domain as <directory>/<domain>.xpt; returns the written specs (row counts set)."""
    return sdtm_write_to(data, studyid=studyid, opener=lambda name: open(directory / name, "wb"),
                         ascii_only=ascii_only)


def sdtm_write_to(data: StudyData, *, studyid: str, opener: Callable[[str], contextlib.AbstractContextManager[Any]],
                  ascii_only: bool = False) -> list[DatasetSpec]:
    """Every domain as an XPT written to ``opener(file name)``, one after the other, as
    each is built; returns the written specs (row counts set)."""
    from exports.sdtm_columns import ColumnRows
    from exports.xpt import xpt_write, xpt_write_columns

    written = []
    created = data.snapshot_at.replace(tzinfo=None)
    with _no_cycle_collection():
        for spec, rows in sdtm_build(data, studyid=studyid):
            with opener(spec.file_name) as out:
                if isinstance(rows, ColumnRows):
                    written.append(xpt_write_columns(out, spec, rows.batches(), created=created,
                                                     ascii_only=ascii_only))
                else:
                    written.append(xpt_write(out, spec, rows, created=created, ascii_only=ascii_only))
    return written


@contextlib.contextmanager
def _no_cycle_collection() -> Iterator[None]:
    """The cyclic garbage collector off while a build runs: its rows (tuples of text and
    numbers) form no cycles, yet each full pass walks every live tuple, a fifth of the
    build's time at a million values. Memory is freed by reference counting as before."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# --- checks ------------------------------------------------------------------------------------

def _blank(value: object) -> bool:
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


def _dtc_for_day(day: str, names: Sequence[str]) -> str | None:
    """AESTDY -> AESTDTC, VSDY -> VSDTC, SVENDY -> SVENDTC."""
    candidate = day[:-2] + "DTC"
    return candidate if candidate in names else None


def sdtm_check(domains: Iterable[tuple[DatasetSpec, Iterable[Sequence[object]]]]) -> list[str]:
    """Conformance problems, one message each (empty: none). DM must come first (as
    sdtm_build yields it). Rows of a domain must be grouped by USUBJID (sorted by keys)."""
    problems: list[str] = []
    reference: dict[str, str] | None = None
    for spec, rows in domains:
        names = [variable.name for variable in spec.variables]
        if "USUBJID" not in names:
            problems.append(f"{spec.name}: there is no USUBJID variable.")
            continue
        is_dm = spec.name == "DM"
        if is_dm:
            reference = {}
        elif reference is None:
            problems.append(f"{spec.name}: DM must come before the other domains.")
        usubjid_at = names.index("USUBJID")
        seq_at = names.index(f"{spec.name}SEQ") if f"{spec.name}SEQ" in names else None
        dtcs = [(name, names.index(name)) for name in names if name.endswith("DTC")]
        days = [(name, names.index(name), names.index(dtc)) for name in names
                if name.endswith("DY") and (dtc := _dtc_for_day(name, names))]
        seen: set[str] = set()
        current: str | None = None
        seqs: set[float] = set()
        for number, row in enumerate(rows, 1):
            where = f"{spec.name} row {number}"
            usubjid = "" if _blank(row[usubjid_at]) else str(row[usubjid_at])
            if is_dm:
                assert reference is not None
                if usubjid in reference:
                    problems.append(f"{where}: USUBJID {usubjid} has more than one DM row.")
                rfst = row[names.index("RFSTDTC")] if "RFSTDTC" in names else None
                reference[usubjid] = "" if _blank(rfst) else str(rfst)
            elif reference is not None and usubjid not in reference:
                problems.append(f"{where}: USUBJID {usubjid} is not in DM.")
            if usubjid != current:
                if usubjid in seen and not is_dm:
                    problems.append(f"{where}: rows of USUBJID {usubjid} are not together (sort by the keys).")
                seen.add(usubjid)
                current, seqs = usubjid, set()
            if seq_at is not None:
                seq = row[seq_at]
                if _blank(seq) or not isinstance(seq, int | float):
                    problems.append(f"{where}: {spec.name}SEQ is missing.")
                elif float(seq) in seqs:
                    problems.append(f"{where}: {spec.name}SEQ {seq:g} is used twice for USUBJID {usubjid}.")
                else:
                    seqs.add(float(seq))
            for name, at in dtcs:
                if not _blank(row[at]) and not iso_dtc_valid(str(row[at])):
                    problems.append(f"{where}: {name} {row[at]!r} is not ISO 8601.")
            rfst_text = (reference or {}).get(usubjid, "")
            complete = len(rfst_text) >= 10 and iso_dtc_valid(rfst_text)
            rfst_date = date.fromisoformat(rfst_text[:10]) if complete else None
            for name, at, dtc_at in days:
                problems.extend(_day_problems(where, name, row[at], row[dtc_at], rfst_date))
    if reference is None:
        problems.append("DM: the dataset is missing.")
    return problems


def _day_problems(where: str, name: str, day: object, dtc: object, reference: date | None) -> list[str]:
    dtc_text = "" if _blank(dtc) else str(dtc)
    expected = study_day(dtc_text, reference) if iso_dtc_valid(dtc_text) else None
    if _blank(day):
        return [f"{where}: {name} is missing but the date and RFSTDTC give {expected}."] if expected else []
    if not isinstance(day, int | float):
        return [f"{where}: {name} {day!r} is not a number."]
    if day == 0:
        return [f"{where}: {name} is 0; there is no study day 0."]
    if expected is None:
        return [f"{where}: {name} is {day:g} but the date {dtc_text!r} or RFSTDTC is partial or missing."]
    if day != expected:
        return [f"{where}: {name} is {day:g} but the date and RFSTDTC give {expected}."]
    return []
