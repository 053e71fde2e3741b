"""CDISC ODM 1.3.2 snapshot writer: study metadata (from the form definitions) and clinical data.

Representation choices (all valid against the official ODM 1.3.2 schema):

* OIDs: Study = StudyMeta.oid; MetaDataVersion "MDV.1"; events "SE.<EVENT>"; a FormDef per
  published form version "F.<FORM>.<version>", its ItemGroupDefs "IG.<FORM>.<version>" (top-level
  items) and "IG.<FORM>.<version>.<group>" (a repeating group, Repeating="Yes"). An ItemDef
  "I.<FORM>.<item>" is shared by every version in which the item (and its code list) is the same;
  a version that changed the item gets "I.<FORM>.<item>.V<version>". Code lists likewise
  ("CL.<FORM>.<LIST>"). Entries against older versions therefore stay valid.
* multiple_choice: ODM has no multi-select type, so (as REDCap does) each answer becomes a boolean
  ItemDef "<item OID>.<code>" whose Value is "1" when the answer was chosen and "0" when not.
* yes_no and the answers above are boolean "1"/"0". time and datetime values without seconds get
  ":00" (xs:time / xs:dateTime need seconds); datetimes stay local site time, as entered.
* Missing-data codes (NA/UNK/ASKU/NASK): ItemData IsNull="Yes" without Value, and an Annotation
  whose Flag carries the code: FlagValue CodeListOID="CL.MISSING" (a CodeList of the four codes).
* Audit (with_audit=True): ODM 1.3.2 allows one AuditRecord per ItemData, so a snapshot carries
  the latest audit row of the item (preferring the latest whose new value is the value written,
  as audit rows do not say which occurrence of a repeating event they belong to). AdminData has a
  User per distinct audit user and a Location per site seen ("LOC.<site_code>").
* Text: values are written as they are (lxml escapes <, &, quotes; zh-Hans as UTF-8). Characters
  that XML 1.0 cannot carry (most C0 controls, U+FFFE/U+FFFF, lone surrogates) are refused with
  CdiscInputError naming subject/event/form/item: clinical data is never silently altered.

Streaming: clinical data is written first, one subject at a time, into a spooled temporary file
(memory up to _SPOOL_BYTES, then disk) while the sites, users and event/form pairs seen are
collected; then the document is written to `out`: ODM > Study (metadata, bounded by the study
design) > AdminData > the spooled ClinicalData. ODM puts AdminData before ClinicalData, and the
users are only known from the audit stream; the spool keeps one pass over the iterators.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import IO, Any, BinaryIO, Generic, TypeVar

from django.utils.translation import gettext
from lxml import etree

from exports.records import AuditRecord, EntryRecord, FormMeta, StudyData, StudyMeta, SubjectRecord

ODM_NS = "http://www.cdisc.org/ns/odm/v1.3"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
SOURCE_SYSTEM = "Suifang"
MDV_OID = "MDV.1"
MISSING_CL_OID = "CL.MISSING"
LANG_TAGS = {"en": "en", "zh-hans": "zh-Hans"}
MISSING_DECODES = {
    "NA": {"en": "Not applicable", "zh-hans": "不适用"},
    "UNK": {"en": "Unknown", "zh-hans": "未知"},
    "ASKU": {"en": "Asked but unknown", "zh-hans": "已询问但未知"},
    "NASK": {"en": "Not asked", "zh-hans": "未询问"},
}
DEFAULT_MAX_LENGTH = {"text": 2000, "long_text": 20000}
_SPOOL_BYTES = 1024 * 1024
_FLUSH_EVERY = 200  # ItemData between flushes inside a large subject
# XML 1.0 Char production; anything else cannot be written, even escaped.
_NOT_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_OID_UNSAFE = re.compile(r"[^A-Za-z0-9_]")
_PARTIAL_DATE = re.compile(r"\d{4}(-\d{2}(-\d{2})?)?")
_GROUP_PATH = re.compile(r"([a-z][a-z0-9_]*)\[(\d+)\]\.([a-z][a-z0-9_]*)")


class CdiscInputError(ValueError):
    """Input a CDISC writer cannot write; `where` names the dataset/variable/row (or subject/item)."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message


@dataclass(frozen=True)
class OdmCounts:
    subjects: int
    forms: int  # FormData written
    items: int  # ItemData written (values and nulls)
    nulls: int  # of which IsNull="Yes" (missing-data codes)
    audit_records: int


def xml_safe(text: str, where: str) -> str:
    """`text` unchanged, or CdiscInputError when XML 1.0 cannot carry one of its characters."""
    bad = _NOT_XML_CHAR.search(text)
    if bad:
        raise CdiscInputError(where, gettext("character U+%(code)04X at position %(at)d cannot be written in XML 1.0; "
                                       "correct the value at its source.") % {"code": ord(bad.group()),
                                                                              "at": bad.start()})
    return text


def iso_with_offset(moment: datetime, where: str) -> str:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise CdiscInputError(where, "give a timezone-aware datetime (ODM datetimes carry their offset).")
    return moment.isoformat()


# --- metadata plan ------------------------------------------------------------------------------

@dataclass(frozen=True)
class _ItemPlan:
    oid: str
    code: str  # key in the values document (or in a group row)
    kind: str
    spec: Mapping[str, Any]
    option: str | None = None  # multiple_choice: the answer code this boolean stands for
    option_labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _GroupPlan:
    oid: str
    code: str | None  # None: the form's top-level items
    spec: Mapping[str, Any]
    items: tuple[_ItemPlan, ...]


@dataclass(frozen=True)
class _FormPlan:
    oid: str
    meta: FormMeta
    top: _GroupPlan
    groups: tuple[_GroupPlan, ...]
    codelist_oids: Mapping[str, str]  # list name -> CodeList OID

    def item_codes(self) -> set[str]:
        return {plan.code for plan in self.top.items} | {group.code for group in self.groups if group.code}


@dataclass(frozen=True)
class _StudyPlan:
    forms: Mapping[tuple[str, int], _FormPlan]
    units: Mapping[str, str]  # unit -> MeasurementUnit OID


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def _token(text: str) -> str:
    return _OID_UNSAFE.sub("_", text) or "_"


class _VersionedOids:
    """OIDs shared across form versions while the thing they name is unchanged."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], dict[str, str]] = {}

    def oid(self, base: str, name: str, canonical: str, version: int) -> str:
        known = self._seen.setdefault((base, name), {})
        if canonical not in known:
            known[canonical] = base if not known else f"{base}.V{version}"
        return known[canonical]


def _study_plan(study: StudyMeta) -> _StudyPlan:
    units = sorted({str(item["unit"]) for form in study.forms
                    for item in _flat_items(form) if item.get("unit")})
    unit_oids: dict[str, str] = {}
    for unit in units:
        oid, n = f"MU.{_token(unit)}", 1
        while oid in unit_oids.values():
            n += 1
            oid = f"MU.{_token(unit)}.{n}"
        unit_oids[unit] = oid
    item_oids, list_oids = _VersionedOids(), _VersionedOids()
    forms: dict[tuple[str, int], _FormPlan] = {}
    for form in sorted(study.forms, key=lambda f: (f.code, f.version)):
        key = (form.code, form.version)
        if key in forms:
            raise CdiscInputError(f"form {form.code} v{form.version}", "the study lists this form version twice.")
        code_lists = form.definition.get("code_lists") or {}
        codelist_oids = {name: list_oids.oid(f"CL.{form.code}.{_token(name)}", name, _canonical(entries),
                                             form.version) for name, entries in sorted(code_lists.items())}

        def plan_items(items: Iterable[Mapping[str, Any]], form: FormMeta = form,
                       code_lists: Mapping[str, Any] = code_lists) -> tuple[_ItemPlan, ...]:
            plans: list[_ItemPlan] = []
            for item in items:
                kind = item.get("type")
                if kind in ("section", "group"):
                    continue
                code = str(item.get("code"))
                entries = code_lists.get(item.get("code_list", ""), []) if kind in (
                    "single_choice", "multiple_choice") else []
                base = item_oids.oid(f"I.{form.code}.{code}", code, _canonical([item, entries]), form.version)
                if kind == "multiple_choice":
                    for entry in entries:
                        value = str(entry["value"])
                        token = value if re.fullmatch(r"[A-Za-z0-9_\-]+", value) else f"C{entries.index(entry) + 1}"
                        plans.append(_ItemPlan(f"{base}.{token}", code, "multiple_choice", item, value,
                                               entry.get("labels") or {}))
                else:
                    plans.append(_ItemPlan(base, code, str(kind), item))
            return tuple(plans)

        items = list(form.definition.get("items") or [])
        top = _GroupPlan(f"IG.{form.code}.{form.version}", None, {"label": form.definition.get("title") or {}},
                         plan_items(items))
        groups = tuple(_GroupPlan(f"IG.{form.code}.{form.version}.{item['code']}", str(item["code"]), item,
                                  plan_items(item.get("items") or []))
                       for item in items if item.get("type") == "group")
        forms[key] = _FormPlan(f"F.{form.code}.{form.version}", form, top, groups, codelist_oids)
    return _StudyPlan(forms, unit_oids)


def _flat_items(form: FormMeta) -> list[Mapping[str, Any]]:
    flat: list[Mapping[str, Any]] = []
    for item in form.definition.get("items") or []:
        flat.append(item)
        if item.get("type") == "group":
            flat.extend(item.get("items") or [])
    return flat


# --- metadata elements (bounded by the study design, built in memory) -------------------------------

def _el(parent: etree._Element | None, tag: str, attrs: Mapping[str, str] | None = None, *,
        where: str = "metadata", text: str | None = None) -> etree._Element:
    safe = {key: xml_safe(value, f"{where} @{key.rsplit('}', 1)[-1]}") for key, value in (attrs or {}).items()}
    qname = f"{{{ODM_NS}}}{tag}"
    element = etree.Element(qname, safe, nsmap={None: ODM_NS}) if parent is None else etree.SubElement(
        parent, qname, safe)
    if text is not None:
        element.text = xml_safe(text, f"{where} {tag}")
    return element


def _languages(primary: str) -> list[str]:
    return sorted(LANG_TAGS, key=lambda lang: lang != primary)


def _translated(parent: etree._Element, tag: str, labels: Mapping[str, Any] | None, primary: str, *,
                fallback: str, where: str) -> etree._Element:
    holder = _el(parent, tag)
    texts = labels or {}
    for lang in _languages(primary):
        text = texts.get(lang)
        if isinstance(text, str) and text.strip():
            _el(holder, "TranslatedText", {XML_LANG: LANG_TAGS[lang]}, text=text, where=where)
    if not len(holder):
        _el(holder, "TranslatedText", text=fallback, where=where)
    return holder


def _label(labels: Mapping[str, Any] | None, primary: str, fallback: str) -> str:
    for lang in _languages(primary):
        text = (labels or {}).get(lang)
        if isinstance(text, str) and text.strip():
            return text
    return fallback


def _data_type(plan: _ItemPlan) -> dict[str, str]:
    kind, spec = plan.kind, plan.spec
    if kind in ("text", "long_text"):
        return {"DataType": "text", "Length": str(spec.get("max_length") or DEFAULT_MAX_LENGTH[kind])}
    if kind == "integer":
        return {"DataType": "integer"}
    if kind == "decimal":
        precision = spec.get("precision")
        return {"DataType": "float"} | ({"SignificantDigits": str(precision)} if precision is not None else {})
    if kind == "scale":
        return {"DataType": _scale_type(spec)}
    if kind == "date":
        return {"DataType": "partialDate" if spec.get("partial") else "date"}
    if kind in ("time", "datetime"):
        return {"DataType": kind}
    if kind == "single_choice":
        return {"DataType": "text"}
    if kind in ("multiple_choice", "yes_no"):
        return {"DataType": "boolean"}
    if kind == "calculated":
        return {"DataType": _calculated_type(spec)}
    if kind == "file":
        return {"DataType": "text", "Length": "200"}  # the stored file name (ecrf.files keeps 200 characters)
    raise CdiscInputError(f"item {plan.code}", f"unknown item type {kind!r}.")


def _scale_type(spec: Mapping[str, Any]) -> str:
    scale = spec.get("scale") or {}
    numbers = (scale.get("min", 0), scale.get("step", 1))
    return "integer" if all(float(n).is_integer() for n in numbers) else "float"


def _calculated_type(spec: Mapping[str, Any]) -> str:
    # A calculation's result type is not declared; a unit, precision or range says it is a number.
    return "float" if any(spec.get(key) is not None for key in ("unit", "precision", "range")) else "text"


def _number_text(value: Any) -> str:
    number = Decimal(value) if isinstance(value, str) else Decimal(repr(value))
    if not number.is_finite():
        raise ValueError("not a finite number")
    text = format(number, "f")
    return "0" if text in ("-0", "-0.0") else text


def _item_def(mdv: etree._Element, plan: _ItemPlan, form: _FormPlan, units: Mapping[str, str],
              primary: str) -> None:
    spec = plan.spec
    where = f"form {form.meta.code} v{form.meta.version}, item {plan.code}"
    name = plan.code if plan.option is None else f"{plan.code}={plan.option}"
    item_def = _el(mdv, "ItemDef", {"OID": plan.oid, "Name": name} | _data_type(plan), where=where)
    labels: Mapping[str, Any] = spec.get("label") or {}
    if plan.option is not None:
        labels = {lang: f"{_label(labels, lang, plan.code)}: {_label(plan.option_labels, lang, plan.option)}"
                  for lang in LANG_TAGS}
    _translated(item_def, "Question", labels, primary, fallback=name, where=where)
    unit = spec.get("unit")
    if unit and plan.option is None:
        _el(item_def, "MeasurementUnitRef", {"MeasurementUnitOID": units[str(unit)]})
    ranges = spec.get("range") or {}
    if plan.option is None:
        for level in ("hard", "soft"):
            for side, comparator in (("min", "GE"), ("max", "LE")):
                bound = (ranges.get(level) or {}).get(side)
                if bound is None:
                    continue
                check = _el(item_def, "RangeCheck", {"Comparator": comparator, "SoftHard": level.capitalize()})
                text = bound if isinstance(bound, str) else _number_text(bound)
                _el(check, "CheckValue", text=text, where=where)
    if plan.kind == "single_choice":
        _el(item_def, "CodeListRef", {"CodeListOID": form.codelist_oids[str(spec.get("code_list"))]})
    cdisc = spec.get("cdisc") or {}
    if cdisc.get("domain") or cdisc.get("variable"):
        sdtm = ".".join(part for part in (cdisc.get("domain"), cdisc.get("variable")) if part)
        if plan.option is not None:
            sdtm = f"{sdtm}={plan.option}"
        _el(item_def, "Alias", {"Context": "SDTM", "Name": sdtm}, where=where)
    # ODM allows one Alias per Context in an ItemDef, hence the qualified contexts.
    for key, context in (("testcd", "SDTM.TESTCD"), ("test", "SDTM.TEST"), ("orresu", "SDTM.ORRESU")):
        if cdisc.get(key):
            _el(item_def, "Alias", {"Context": context, "Name": str(cdisc[key])}, where=where)


def _study_element(data: StudyData, plan: _StudyPlan, event_forms: Mapping[str, set[str]],
                   extra_events: Sequence[str], description: str) -> etree._Element:
    study, primary = data.study, data.study.language
    root = _el(None, "Study", {"OID": study.oid}, where="study")
    global_vars = _el(root, "GlobalVariables")
    _el(global_vars, "StudyName", text=study.code, where="study")
    _el(global_vars, "StudyDescription", text=description or study.title, where="study")
    _el(global_vars, "ProtocolName", text=study.protocol or study.code, where="study")
    basic = _el(root, "BasicDefinitions")
    for unit, oid in plan.units.items():
        unit_el = _el(basic, "MeasurementUnit", {"OID": oid, "Name": unit}, where=f"unit {unit}")
        _el(_el(unit_el, "Symbol"), "TranslatedText", text=unit, where=f"unit {unit}")
    mdv = _el(root, "MetaDataVersion", {"OID": MDV_OID, "Name": f"{study.code} eCRF metadata"}, where="study")
    protocol = _el(mdv, "Protocol")
    event_codes = [event.code for event in study.events] + list(extra_events)
    for order, code in enumerate(event_codes, start=1):
        _el(protocol, "StudyEventRef", {"StudyEventOID": f"SE.{code}", "OrderNumber": str(order),
                                        "Mandatory": "No"}, where=f"event {code}")
    names = {event.code: event.name for event in study.events}
    for code in event_codes:
        event_def = _el(mdv, "StudyEventDef", {
            "OID": f"SE.{code}", "Name": names.get(code) or code, "Repeating": "Yes",
            "Type": "Scheduled" if code in names else "Unscheduled"}, where=f"event {code}")
        for order, oid in enumerate(sorted(event_forms.get(code, ()), key=_form_oid_order), start=1):
            _el(event_def, "FormRef", {"FormOID": oid, "OrderNumber": str(order), "Mandatory": "No"})
    forms = list(plan.forms.values())
    for form in forms:
        form_def = _el(mdv, "FormDef", {"OID": form.oid, "Name": _label(
            form.meta.definition.get("title"), primary, form.meta.code), "Repeating": "No"},
            where=f"form {form.meta.code}")
        _translated(form_def, "Description", form.meta.definition.get("title"), primary,
                    fallback=form.meta.code, where=f"form {form.meta.code}")
        refs = [group for group in (form.top, *form.groups) if group.items]
        for order, group in enumerate(refs, start=1):
            _el(form_def, "ItemGroupRef", {"ItemGroupOID": group.oid, "OrderNumber": str(order), "Mandatory": "No"})
    for form in forms:
        for group in (form.top, *form.groups):
            if not group.items:
                continue
            where = f"form {form.meta.code}, group {group.code or '(top)'}"
            group_def = _el(mdv, "ItemGroupDef", {
                "OID": group.oid, "Name": f"{form.meta.code} {group.code}" if group.code else form.meta.code,
                "Repeating": "Yes" if group.code else "No"}, where=where)
            _translated(group_def, "Description", group.spec.get("label"), primary,
                        fallback=group.code or form.meta.code, where=where)
            for order, item in enumerate(group.items, start=1):
                _el(group_def, "ItemRef", {"ItemOID": item.oid, "OrderNumber": str(order), "Mandatory": (
                    "Yes" if item.spec.get("required") == "hard" and item.option is None else "No")})
    written: set[str] = set()
    for form in forms:
        for group in (form.top, *form.groups):
            for item in group.items:
                if item.oid not in written:
                    written.add(item.oid)
                    _item_def(mdv, item, form, plan.units, primary)
    for form in forms:
        for name, entries in sorted((form.meta.definition.get("code_lists") or {}).items()):
            oid = form.codelist_oids[name]
            if oid in written:
                continue
            written.add(oid)
            where = f"form {form.meta.code}, code list {name}"
            code_list = _el(mdv, "CodeList", {"OID": oid, "Name": name, "DataType": "text"}, where=where)
            for order, entry in enumerate(entries, start=1):
                item_el = _el(code_list, "CodeListItem", {"CodedValue": str(entry["value"]),
                                                          "OrderNumber": str(order)}, where=where)
                _translated(item_el, "Decode", entry.get("labels"), primary, fallback=str(entry["value"]),
                            where=where)
    missing = _el(mdv, "CodeList", {"OID": MISSING_CL_OID, "Name": "Missing data codes", "DataType": "text"})
    for order, (code, decodes) in enumerate(MISSING_DECODES.items(), start=1):
        item_el = _el(missing, "CodeListItem", {"CodedValue": code, "OrderNumber": str(order)})
        _translated(item_el, "Decode", decodes, primary, fallback=code, where="missing codes")
    return root


def _form_oid_order(oid: str) -> tuple[str, int]:
    code, _, version = oid[2:].rpartition(".")
    return code, int(version)


def _admin_element(study: StudyMeta, sites: Iterable[str], users: Iterable[str], effective: date) -> etree._Element:
    admin = _el(None, "AdminData", {"StudyOID": study.oid})
    for user in sorted(users):
        user_el = _el(admin, "User", {"OID": f"USR.{user}"}, where=f"audit user {user}")
        _el(user_el, "LoginName", text=user, where=f"audit user {user}")
    for site in sorted(sites):
        location = _el(admin, "Location", {"OID": f"LOC.{site}", "Name": site, "LocationType": "Site"},
                       where=f"site {site}")
        _el(location, "MetaDataVersionRef", {"StudyOID": study.oid, "MetaDataVersionOID": MDV_OID,
                                             "EffectiveDate": effective.isoformat()})
    return admin


# --- clinical data (streamed) ------------------------------------------------------------------

T = TypeVar("T")


class _Peek(Generic[T]):
    def __init__(self, items: Iterable[T]) -> None:
        self._items: Iterator[T] = iter(items)
        self._head: list[T] = []

    def peek(self) -> T | None:
        if not self._head:
            try:
                self._head.append(next(self._items))
            except StopIteration:
                return None
        return self._head[0]

    def pop(self) -> T:
        head = self.peek()
        assert head is not None
        return self._head.pop()


@dataclass
class _Tally:
    subjects: int = 0
    forms: int = 0
    items: int = 0
    nulls: int = 0
    audit_records: int = 0
    sites: set[str] = field(default_factory=set)
    users: set[str] = field(default_factory=set)
    event_forms: dict[str, set[str]] = field(default_factory=dict)
    extra_events: list[str] = field(default_factory=list)


def _value_text(plan: _ItemPlan, raw: Any, code_lists: Mapping[str, Any], where: str) -> str:
    kind = plan.kind
    try:
        if kind in ("text", "long_text"):
            if not isinstance(raw, str):
                raise ValueError("expected text")
            return raw
        if kind in ("integer", "decimal", "scale") or (kind == "calculated" and _calculated_type(plan.spec) == "float"):
            if isinstance(raw, bool) or not isinstance(raw, int | float | str):
                raise ValueError("expected a number")
            text = _number_text(raw)
            if _data_type(plan)["DataType"] == "integer" and not Decimal(text) == Decimal(text).to_integral_value():
                raise ValueError("expected a whole number")
            return str(int(Decimal(text))) if _data_type(plan)["DataType"] == "integer" else text
        if kind == "date":
            if not isinstance(raw, str):
                raise ValueError("expected an ISO date")
            if plan.spec.get("partial") and _PARTIAL_DATE.fullmatch(raw) and len(raw) < 10:
                return raw
            return date.fromisoformat(raw).isoformat() if len(raw) == 10 else _fail("expected YYYY-MM-DD")
        if kind == "time":
            if not isinstance(raw, str) or len(raw) not in (5, 8):
                raise ValueError("expected HH:MM or HH:MM:SS")
            return time.fromisoformat(raw).isoformat(timespec="seconds")
        if kind == "datetime":
            if not isinstance(raw, str) or not 16 <= len(raw) <= 19:
                raise ValueError("expected YYYY-MM-DDTHH:MM[:SS]")
            moment = datetime.fromisoformat(raw)
            if moment.tzinfo is not None:
                raise ValueError("expected local site time without an offset")
            return moment.isoformat(timespec="seconds")
        if kind == "single_choice":
            value = str(raw) if isinstance(raw, int | str) and not isinstance(raw, bool) else _fail("expected a code")
            if value not in {str(e["value"]) for e in code_lists.get(plan.spec.get("code_list", ""), [])}:
                raise ValueError(f"{value!r} is not in code list {plan.spec.get('code_list')}")
            return value
        if kind == "multiple_choice":
            allowed = {str(e["value"]) for e in code_lists.get(plan.spec.get("code_list", ""), [])}
            if not isinstance(raw, list) or not all(isinstance(v, str) and v in allowed for v in raw):
                raise ValueError(f"expected a list of codes of code list {plan.spec.get('code_list')}")
            return "1" if plan.option in raw else "0"
        if kind == "yes_no":
            mapping: dict[Any, str] = {1: "1", 0: "0", "1": "1", "0": "0", "yes": "1", "no": "0",
                                       "true": "1", "false": "0"}
            key = raw.lower() if isinstance(raw, str) else raw
            if isinstance(key, bool | int | str) and key in mapping:
                return mapping[key]
            raise ValueError("expected yes (1) or no (0)")
        if kind == "calculated":
            if isinstance(raw, bool):
                return "true" if raw else "false"
            return raw if isinstance(raw, str) else _number_text(raw) if isinstance(raw, int | float) else _canonical(
                raw)
        if kind == "file":
            name = raw.get("name") if isinstance(raw, dict) else raw
            if not isinstance(name, str) or not name:
                raise ValueError("expected an uploaded file with a name")
            return name
    except (ValueError, InvalidOperation) as exc:
        # Never the value (nor the parser's message, which may quote it): the job's page shows this.
        raise CdiscInputError(where, gettext("the value cannot be written as %(kind)s.") % {"kind": kind}) from exc
    raise CdiscInputError(where, f"unknown item type {kind!r}.")


def _fail(message: str) -> str:
    raise ValueError(message)


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == []


def _audit_pick(rows: list[AuditRecord], raw: Any) -> AuditRecord:
    matching = [row for row in rows if row.new == raw]
    return (matching or rows)[-1]


def _utc_stamp(moment: datetime) -> str:
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.isoformat().replace("+00:00", "Z")


class _ClinicalWriter:
    def __init__(self, xf: Any, data: StudyData, plan: _StudyPlan, with_audit: bool) -> None:
        self.xf, self.data, self.plan, self.with_audit = xf, data, plan, with_audit
        self.tally = _Tally()
        self.scheduled = {event.code for event in data.study.events}

    def tag(self, name: str) -> str:
        return f"{{{ODM_NS}}}{name}"

    def leaf(self, name: str, attrs: Mapping[str, str], text: str | None = None, *, where: str) -> None:
        safe = {key: xml_safe(value, where) for key, value in attrs.items()}
        with self.xf.element(self.tag(name), safe):
            if text is not None:
                self.xf.write(xml_safe(text, where))

    def run(self) -> None:
        entries: _Peek[EntryRecord] = _Peek(self.data.entries)
        audit: _Peek[AuditRecord] = _Peek(self.data.audit if self.with_audit and self.data.audit else ())
        previous: str | None = None
        for subject in self.data.subjects:
            if previous is not None and subject.subject_key <= previous:
                raise CdiscInputError(f"subject {subject.subject_key}",
                                      f"subjects must come sorted by subject_key, each once (after {previous}).")
            head = entries.peek()
            if head is not None and head.subject_key < subject.subject_key:
                raise CdiscInputError(f"subject {head.subject_key}", "an entry's subject is not among the "
                                      "subjects, or entries are not sorted by subject_key.")
            previous = subject.subject_key
            while (row := audit.peek()) is not None and row.subject_key < subject.subject_key:
                audit.pop()  # audit rows of subjects not in this export
            rows: dict[tuple[str, str, str], list[AuditRecord]] = {}
            while (row := audit.peek()) is not None and row.subject_key == subject.subject_key:
                audit.pop()
                rows.setdefault((row.event_code, row.form_code, row.item), []).append(row)
            self.subject(subject, entries, rows)
            self.xf.flush()
        head = entries.peek()
        if head is not None:
            raise CdiscInputError(f"subject {head.subject_key}", "an entry's subject is not among the subjects, "
                                  "or entries are not sorted by subject_key.")

    def subject(self, subject: SubjectRecord, entries: _Peek[EntryRecord],
                audit: Mapping[tuple[str, str, str], list[AuditRecord]]) -> None:
        where = f"subject {subject.subject_key}"
        self.tally.subjects += 1
        self.tally.sites.add(subject.site_code)
        with self.xf.element(self.tag("SubjectData"), {"SubjectKey": xml_safe(subject.subject_key, where)}):
            self.leaf("SiteRef", {"LocationOID": f"LOC.{subject.site_code}"}, where=where)
            opened: set[tuple[str, int]] = set()
            while (entry := entries.peek()) is not None and entry.subject_key == subject.subject_key:
                occurrence = (entry.event_code, entry.sequence)
                if occurrence in opened:
                    raise CdiscInputError(f"{where}, event {entry.event_code}#{entry.sequence}",
                                          "entries of one event occurrence must come together.")
                opened.add(occurrence)
                self.event(subject, entries, occurrence, audit)
        self.xf.write("\n")

    def event(self, subject: SubjectRecord, entries: _Peek[EntryRecord], occurrence: tuple[str, int],
              audit: Mapping[tuple[str, str, str], list[AuditRecord]]) -> None:
        event_code, sequence = occurrence
        where = f"subject {subject.subject_key}, event {event_code}#{sequence}"
        if event_code not in self.scheduled and event_code not in self.tally.extra_events:
            self.tally.extra_events.append(event_code)
        forms_here: set[str] = set()
        attrs = {"StudyEventOID": f"SE.{event_code}", "StudyEventRepeatKey": str(sequence)}
        with self.xf.element(self.tag("StudyEventData"), {k: xml_safe(v, where) for k, v in attrs.items()}):
            while (entry := entries.peek()) is not None and entry.subject_key == subject.subject_key and (
                    entry.event_code, entry.sequence) == occurrence:
                entries.pop()
                if entry.form_code in forms_here:
                    raise CdiscInputError(f"{where}, form {entry.form_code}", "the form appears twice in one "
                                          "event occurrence.")
                forms_here.add(entry.form_code)
                self.form(entry, audit)

    def form(self, entry: EntryRecord, audit: Mapping[tuple[str, str, str], list[AuditRecord]]) -> None:
        where = (f"subject {entry.subject_key}, event {entry.event_code}#{entry.sequence}, "
                 f"form {entry.form_code} v{entry.form_version}")
        form = self.plan.forms.get((entry.form_code, entry.form_version))
        if form is None:
            raise CdiscInputError(where, "this form version is not among the study's forms.")
        self.tally.event_forms.setdefault(entry.event_code, set()).add(form.oid)
        unknown = sorted(set(entry.values) - form.item_codes())
        if unknown:
            raise CdiscInputError(f"{where}, item {unknown[0]}", "not an item with a value in this form version.")
        missing = self.missing_index(entry, form, where)
        code_lists = form.meta.definition.get("code_lists") or {}
        self.tally.forms += 1
        with self.xf.element(self.tag("FormData"), {"FormOID": form.oid}):
            self.group(entry, form.top, entry.values, None, missing, code_lists, audit, where)
            for group in form.groups:
                rows = entry.values.get(group.code or "")
                if rows is not None and (not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows)):
                    raise CdiscInputError(f"{where}, item {group.code}", "a repeating group holds a list of rows.")
                count = max([len(rows or [])] + [index + 1 for (name, index, _code) in missing
                                                 if name == group.code and index is not None])
                for index in range(count):
                    row = (rows or [])[index] if index < len(rows or []) else {}
                    allowed = {plan.code for plan in group.items}
                    extra = sorted(set(row) - allowed)
                    if extra:
                        raise CdiscInputError(f"{where}, item {group.code}[{index}].{extra[0]}",
                                              "not an item of this repeating group.")
                    self.group(entry, group, row, index, missing, code_lists, audit, where)
        self.xf.write("\n")

    def missing_index(self, entry: EntryRecord, form: _FormPlan, where: str) -> dict[tuple[str | None, int | None,
                                                                                         str], str]:
        index: dict[tuple[str | None, int | None, str], str] = {}
        top = {plan.code for plan in form.top.items}
        grouped = {group.code: {plan.code for plan in group.items} for group in form.groups}
        for path, code in sorted(entry.missing.items()):
            if code not in MISSING_DECODES:
                raise CdiscInputError(f"{where}, item {path}", f"unknown missing-data code {code!r} "
                                      f"(use one of {', '.join(MISSING_DECODES)}).")
            match = _GROUP_PATH.fullmatch(path)
            if match and match.group(3) in grouped.get(match.group(1), ()):
                index[(match.group(1), int(match.group(2)), match.group(3))] = code
            elif path in top:
                index[(None, None, path)] = code
            else:
                raise CdiscInputError(f"{where}, item {path}", "a missing-data code for an item this form "
                                      "version does not have.")
        return index

    def group(self, entry: EntryRecord, group: _GroupPlan, values: Mapping[str, Any], index: int | None,
              missing: Mapping[tuple[str | None, int | None, str], str], code_lists: Mapping[str, Any],
              audit: Mapping[tuple[str, str, str], list[AuditRecord]], where: str) -> None:
        cells: list[tuple[_ItemPlan, str, str | None, str | None]] = []  # plan, path, value, missing code
        for plan in group.items:
            path = plan.code if index is None else f"{group.code}[{index}].{plan.code}"
            raw = values.get(plan.code)
            code = missing.get((group.code, index, plan.code))
            if not _empty(raw) and code is not None:
                raise CdiscInputError(f"{where}, item {path}", f"has both a value and the missing-data code {code}.")
            if not _empty(raw):
                cells.append((plan, path, _value_text(plan, raw, code_lists, f"{where}, item {path}"), None))
            elif code is not None:
                cells.append((plan, path, None, code))
        if not cells:
            return
        attrs = {"ItemGroupOID": group.oid}
        if index is not None:
            attrs["ItemGroupRepeatKey"] = str(index + 1)
        with self.xf.element(self.tag("ItemGroupData"), attrs):
            for plan, path, text, code in cells:
                self.item(entry, plan, path, text, code, values.get(plan.code),
                          audit.get((entry.event_code, entry.form_code, path)), where)

    def item(self, entry: EntryRecord, plan: _ItemPlan, path: str, text: str | None, code: str | None, raw: Any,
             audit_rows: list[AuditRecord] | None, where: str) -> None:
        where = f"{where}, item {path}"
        attrs = {"ItemOID": plan.oid}
        if text is not None:
            attrs["Value"] = xml_safe(text, where)
        else:
            attrs["IsNull"] = "Yes"
        self.tally.items += 1
        with self.xf.element(self.tag("ItemData"), attrs):
            if audit_rows:
                row = _audit_pick(audit_rows, raw)
                self.tally.audit_records += 1
                self.tally.users.add(row.user)
                with self.xf.element(self.tag("AuditRecord")):
                    self.leaf("UserRef", {"UserOID": f"USR.{row.user}"}, where=f"{where}, audit user")
                    self.leaf("LocationRef", {"LocationOID": f"LOC.{entry.site_code}"}, where=where)
                    self.leaf("DateTimeStamp", {}, _utc_stamp(row.at), where=where)
                    if row.reason:
                        self.leaf("ReasonForChange", {}, row.reason, where=f"{where}, audit reason")
                    if row.source:
                        self.leaf("SourceID", {}, row.source, where=f"{where}, audit source")
                self.tally.sites.add(entry.site_code)
            if code is not None:
                self.tally.nulls += 1
                with self.xf.element(self.tag("Annotation"), {"SeqNum": "1"}), self.xf.element(self.tag("Flag")):
                    self.leaf("FlagValue", {"CodeListOID": MISSING_CL_OID}, code, where=where)
        self.xf.write("\n")
        if self.tally.items % _FLUSH_EVERY == 0:
            self.xf.flush()


def odm_write(out: BinaryIO, data: StudyData, *, file_oid: str, with_audit: bool = False,
              description: str = "") -> OdmCounts:
    """Write `data` as one ODM 1.3.2 Snapshot document (UTF-8) to `out`, streaming.

    The same data gives the same bytes. Raises CdiscInputError (a ValueError naming the subject,
    event, form and item) for input that cannot be written faithfully; `out` then holds a partial
    document and must be discarded."""
    if not file_oid:
        raise CdiscInputError("file_oid", "give the file's OID.")
    created = iso_with_offset(data.snapshot_at, "snapshot_at")
    plan = _study_plan(data.study)
    with tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES) as spool:
        with etree.xmlfile(spool, encoding="UTF-8") as xf, xf.element(
                f"{{{ODM_NS}}}ClinicalData", {"StudyOID": xml_safe(data.study.oid, "study oid"),
                                              "MetaDataVersionOID": MDV_OID}, nsmap={None: ODM_NS}):
            xf.write("\n")
            writer = _ClinicalWriter(xf, data, plan, with_audit)
            writer.run()
        tally = writer.tally
        event_forms = {event.code: {plan.forms[key].oid for key in plan.forms if key[0] in event.forms}
                       for event in data.study.events}
        for code, oids in tally.event_forms.items():
            event_forms.setdefault(code, set()).update(oids)
        spool.seek(0)
        attrs = {"FileType": "Snapshot", "Granularity": "All", "FileOID": file_oid, "CreationDateTime": created,
                 "ODMVersion": "1.3.2", "Originator": SOURCE_SYSTEM, "SourceSystem": SOURCE_SYSTEM}
        if description:
            attrs = {"Description": description} | attrs
        with etree.xmlfile(out, encoding="UTF-8") as xf:
            xf.write_declaration()
            with xf.element(f"{{{ODM_NS}}}ODM", {k: xml_safe(v, f"ODM @{k}") for k, v in attrs.items()},
                            nsmap={None: ODM_NS}):
                xf.write("\n")
                xf.write(_study_element(data, plan, event_forms, tally.extra_events, description),
                         pretty_print=True)
                xf.write(_admin_element(data.study, tally.sites, tally.users, data.snapshot_at.date()),
                         pretty_print=True)
                xf.flush()
                _copy(spool, out)
                xf.write("\n")
    return OdmCounts(tally.subjects, tally.forms, tally.items, tally.nulls, tally.audit_records)


def _copy(source: IO[bytes], out: BinaryIO) -> None:
    # The spooled ClinicalData is a complete element; the XML declaration was never written to it.
    shutil.copyfileobj(source, out, 64 * 1024)
