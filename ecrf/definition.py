"""The form definition document: what a versioned eCRF form is, and its validation.

A form version's ``definition`` is this JSON document (validated in full before a draft
is saved, so a draft can always be published)::

    {
      "code": "VITALS",                         # ^[A-Z][A-Z0-9_]{0,29}$
      "title": {"en": "Vital signs", "zh-hans": "生命体征"},
      "patient_reported": false,                # may be sent to the patient (ePRO)
      "code_lists": {"SEX": [{"value": "1", "labels": {"en": "Male", "zh-hans": "男"}}, ...]},
      "items": [ITEM, ...]
    }

    ITEM = {
      "code": "weight",                         # ^[a-z][a-z0-9_]{0,63}$, unique in the form
      "type": "decimal",                        # one of ITEM_TYPES
      "label": {"en": "...", "zh-hans": "..."}, # at least one language
      "help": {"en": "...", "zh-hans": "..."},
      "required": "no" | "hard" | "soft",       # soft: may stay empty with a reason
      "show_if": JSON Logic,                    # branching; hidden items are not stored
      "calc": JSON Logic,                       # type "calculated" only
      "checks": [{"code": "BMI_RANGE", "severity": "hard" | "soft", "rule": JSON Logic,
                  "message": {"en": "...", "zh-hans": "..."}}],   # rule truthy = passes
      "missing_codes": ["NA", "UNK", "ASKU", "NASK"],            # allowed instead of a value
      "unit": "kg", "precision": 1,             # decimal: digits after the point
      "range": {"hard": {"min": 20, "max": 300}, "soft": {"min": 35, "max": 200}},
      "max_length": 200,                        # text / long_text
      "format": "email",                        # text: one of TEXT_FORMATS
      "partial": true,                          # date: "2024" or "2024-05" allowed
      "code_list": "SEX", "widget": "radio",    # single_choice / multiple_choice
      "scale": {"min": 0, "max": 10, "step": 1, "min_label": {...}, "max_label": {...}},
      "file": {"types": ["application/pdf", "image/jpeg"], "max_bytes": 10485760},
      "items": [ITEM, ...], "max_rows": 50,     # group: a repeating group (AE log, meds)
      "readonly": false, "identifier": false, "default": VALUE,
      "matrix_group": "qol",                    # REDCap matrix grouping, kept for round trips
      "annotation": "...",                      # free text (REDCap field annotation)
      "cdisc": {"domain": "VS", "variable": "VSORRES", "testcd": "WEIGHT", "test": "Weight",
                "orresu": "kg"}
    }

JSON Logic variables (ecrf.logic) name items of the same form by code ("weight"), inside
a repeating group the row's own items by code first, items of another form of the same
event as "FORM.item", and of another event as "EVENT.FORM.item" (codes of forms and
events are upper case, items lower case, so the paths never clash).
"""

from __future__ import annotations

import re
from typing import Any

from django.utils.translation import gettext as _

FORM_CODE_RE = re.compile(r"^[A-Z][A-Z0-9_]{0,29}$")
ITEM_CODE_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
LIST_CODE_RE = re.compile(r"^[A-Za-z0-9_]{1,40}$")
CHECK_CODE_RE = re.compile(r"^[A-Z0-9_]{1,40}$")
LANGUAGES = ("en", "zh-hans")

ITEM_TYPES = ("text", "long_text", "integer", "decimal", "date", "time", "datetime", "single_choice",
              "multiple_choice", "yes_no", "scale", "calculated", "file", "group", "section")
# Items that hold no value of their own.
VALUELESS_TYPES = frozenset({"section", "group"})
NUMERIC_TYPES = frozenset({"integer", "decimal", "scale"})
CHOICE_TYPES = frozenset({"single_choice", "multiple_choice"})
MISSING_CODES = ("NA", "UNK", "ASKU", "NASK")
REQUIRED_LEVELS = ("no", "hard", "soft")
TEXT_FORMATS: dict[str, str] = {
    "email": r"[^@\s]+@[^@\s]+\.[^@\s]+",
    "phone": r"\+?[0-9 ()\-]{5,30}",
    "alpha_only": r"[A-Za-z]+",
    "number_string": r"-?[0-9]+(\.[0-9]+)?",
    "postal_code_cn": r"[0-9]{6}",
    "zipcode": r"[0-9]{5}(-[0-9]{4})?",
    "mrn": r"[A-Za-z0-9\-]{1,30}",
}
DEFAULT_MAX_LENGTH = {"text": 2000, "long_text": 20000}
MAX_ITEMS = 1000
MAX_CODE_LIST = 1000
MAX_GROUP_ROWS = 500
MAX_FILE_BYTES = 50 * 1024 * 1024
MAX_LABEL = 4000
ITEM_KEYS = frozenset({
    "code", "type", "label", "help", "required", "show_if", "calc", "checks", "missing_codes", "unit", "precision",
    "range", "max_length", "format", "partial", "code_list", "widget", "scale", "file", "items", "max_rows",
    "readonly", "identifier", "default", "matrix_group", "annotation", "cdisc",
})
FORM_KEYS = frozenset({"code", "title", "patient_reported", "code_lists", "items"})
CDISC_KEYS = frozenset({"domain", "variable", "testcd", "test", "orresu", "origin"})

Problems = dict[str, list[str]]


def _add(problems: Problems, path: str, message: str) -> None:
    problems.setdefault(path, []).append(message)


def _texts(value: Any, path: str, problems: Problems, *, required: bool) -> None:
    """A {"en": ..., "zh-hans": ...} label."""
    if value is None and not required:
        return
    if not isinstance(value, dict) or set(value) - set(LANGUAGES):
        _add(problems, path, _("Give an object with the keys en and zh-hans."))
        return
    if any(not isinstance(text, str) or len(text) > MAX_LABEL for text in value.values()):
        _add(problems, path, _("Each text must be a string of at most %(max)d characters.") % {"max": MAX_LABEL})
    elif required and not any(text.strip() for text in value.values()):
        _add(problems, path, _("Give the text in at least one language."))


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _logic(value: Any, path: str, problems: Problems, references: list[tuple[str, str]]) -> None:
    from ecrf.logic import LogicError, logic_validate, logic_variables

    try:
        issues = logic_validate(value)
    except LogicError as exc:
        issues = [str(exc)]
    for issue in issues:
        _add(problems, path, issue)
    if not issues:
        references.extend((path, variable) for variable in logic_variables(value))


def _range(item: dict[str, Any], path: str, problems: Problems) -> None:
    ranges = item.get("range")
    if ranges is None:
        return
    if not isinstance(ranges, dict) or set(ranges) - {"hard", "soft"}:
        _add(problems, f"{path}.range", _("Give hard and/or soft, each with min and/or max."))
        return
    date_like = item["type"] in ("date", "datetime", "time")
    for level, bounds in ranges.items():
        if not isinstance(bounds, dict) or set(bounds) - {"min", "max"}:
            _add(problems, f"{path}.range.{level}", _("Give min and/or max."))
            continue
        for side, bound in bounds.items():
            ok = isinstance(bound, str) if date_like else _number(bound)
            if not ok:
                _add(problems, f"{path}.range.{level}.{side}",
                     _("Give an ISO date or time.") if date_like else _("Give a number."))
        low, high = bounds.get("min"), bounds.get("max")
        if low is not None and high is not None and type(low) is type(high) and low > high:
            _add(problems, f"{path}.range.{level}", _("min is greater than max."))


def _item(item: Any, path: str, *, doc: dict[str, Any], seen: set[str], problems: Problems,
          references: list[tuple[str, str]], in_group: bool) -> None:
    if not isinstance(item, dict):
        _add(problems, path, _("Each item must be an object."))
        return
    unknown = sorted(set(item) - ITEM_KEYS)
    if unknown:
        _add(problems, path, _("Unknown keys: %(keys)s.") % {"keys": ", ".join(unknown)})
    code, kind = item.get("code"), item.get("type")
    if not isinstance(code, str) or not ITEM_CODE_RE.fullmatch(code):
        _add(problems, f"{path}.code", _("Use a lower-case letter, then up to 63 lower-case letters, digits or _."))
    elif code in seen:
        _add(problems, f"{path}.code", _("%(code)s is used twice in this form.") % {"code": code})
    else:
        seen.add(code)
    if kind not in ITEM_TYPES:
        _add(problems, f"{path}.type", _("Choose one of: %(choices)s.") % {"choices": ", ".join(ITEM_TYPES)})
        return
    _texts(item.get("label"), f"{path}.label", problems, required=kind != "section")
    _texts(item.get("help"), f"{path}.help", problems, required=False)
    if item.get("required", "no") not in REQUIRED_LEVELS:
        _add(problems, f"{path}.required", _("Choose no, hard or soft."))
    if kind in VALUELESS_TYPES and item.get("required", "no") != "no":
        _add(problems, f"{path}.required", _("This kind of item holds no value."))
    if item.get("show_if") is not None:
        _logic(item["show_if"], f"{path}.show_if", problems, references)
    if kind == "calculated":
        if item.get("calc") is None:
            _add(problems, f"{path}.calc", _("A calculated item needs its calculation."))
        else:
            _logic(item["calc"], f"{path}.calc", problems, references)
    elif item.get("calc") is not None:
        _add(problems, f"{path}.calc", _("Only calculated items have a calculation."))
    _checks(item.get("checks"), path, problems, references)
    missing = item.get("missing_codes", [])
    if not isinstance(missing, list) or any(m not in MISSING_CODES for m in missing) or len(set(missing)) != len(
            missing):
        _add(problems, f"{path}.missing_codes", _("Choose among NA, UNK, ASKU and NASK, each once."))
    if kind in NUMERIC_TYPES or kind in ("date", "datetime", "time"):
        _range(item, path, problems)
    elif item.get("range") is not None:
        _add(problems, f"{path}.range", _("Only numbers, dates and times have ranges."))
    if kind == "decimal" and item.get("precision") is not None:
        precision = item["precision"]
        if not isinstance(precision, int) or isinstance(precision, bool) or not 0 <= precision <= 10:
            _add(problems, f"{path}.precision", _("Give 0 to 10 digits."))
    if item.get("unit") is not None and (not isinstance(item["unit"], str) or len(item["unit"]) > 40):
        _add(problems, f"{path}.unit", _("At most %(max)d characters.") % {"max": 40})
    if kind in ("text", "long_text"):
        limit = item.get("max_length", DEFAULT_MAX_LENGTH[kind])
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= DEFAULT_MAX_LENGTH[kind]:
            _add(problems, f"{path}.max_length", _("Between 1 and %(max)d.") % {"max": DEFAULT_MAX_LENGTH[kind]})
        if item.get("format") is not None and item["format"] not in TEXT_FORMATS:
            _add(problems, f"{path}.format", _("Choose one of: %(choices)s.") % {"choices": ", ".join(TEXT_FORMATS)})
    if kind in CHOICE_TYPES:
        if item.get("code_list") not in (doc.get("code_lists") or {}):
            _add(problems, f"{path}.code_list", _("Name one of the form's code lists."))
        if item.get("widget", "radio") not in ("radio", "dropdown", "checkbox"):
            _add(problems, f"{path}.widget", _("Choose radio, dropdown or checkbox."))
    if kind == "scale":
        scale = item.get("scale")
        if not isinstance(scale, dict) or not _number(scale.get("min")) or not _number(scale.get("max")) \
                or scale["min"] >= scale["max"] or not _number(scale.get("step", 1)) or scale.get("step", 1) <= 0:
            _add(problems, f"{path}.scale", _("Give min < max and a positive step."))
    if kind == "file":
        spec = item.get("file") or {}
        types, size = spec.get("types", []), spec.get("max_bytes", 10 * 1024 * 1024)
        if not isinstance(types, list) or not types or not all(isinstance(t, str) and "/" in t for t in types):
            _add(problems, f"{path}.file.types", _("List the accepted media types, such as application/pdf."))
        if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= MAX_FILE_BYTES:
            _add(problems, f"{path}.file.max_bytes", _("Between 1 byte and %(max)d MB.")
                 % {"max": MAX_FILE_BYTES // (1024 * 1024)})
    if kind == "group":
        if in_group:
            _add(problems, f"{path}.type", _("Repeating groups cannot be nested."))
        rows = item.get("items")
        if not isinstance(rows, list) or not rows:
            _add(problems, f"{path}.items", _("A repeating group needs items."))
        else:
            for index, child in enumerate(rows):
                _item(child, f"{path}.items.{index}", doc=doc, seen=seen, problems=problems,
                      references=references, in_group=True)
        max_rows = item.get("max_rows", 50)
        if not isinstance(max_rows, int) or isinstance(max_rows, bool) or not 1 <= max_rows <= MAX_GROUP_ROWS:
            _add(problems, f"{path}.max_rows", _("Between 1 and %(max)d.") % {"max": MAX_GROUP_ROWS})
    elif item.get("items") is not None:
        _add(problems, f"{path}.items", _("Only repeating groups contain items."))
    cdisc = item.get("cdisc")
    if cdisc is not None:
        if not isinstance(cdisc, dict) or set(cdisc) - CDISC_KEYS or not all(
                isinstance(v, str) and len(v) <= 200 for v in cdisc.values()):
            _add(problems, f"{path}.cdisc", _("Give domain, variable, testcd, test and orresu as text."))
        elif cdisc.get("domain") and not re.fullmatch(r"[A-Z]{2}", cdisc["domain"]):
            _add(problems, f"{path}.cdisc.domain", _("An SDTM domain is two capital letters."))


def _checks(checks: Any, path: str, problems: Problems, references: list[tuple[str, str]]) -> None:
    if checks is None:
        return
    if not isinstance(checks, list) or len(checks) > 50:
        _add(problems, f"{path}.checks", _("Give a list of at most 50 checks."))
        return
    codes: set[str] = set()
    for index, check in enumerate(checks):
        where = f"{path}.checks.{index}"
        if not isinstance(check, dict) or set(check) - {"code", "severity", "rule", "message"}:
            _add(problems, where, _("A check has code, severity, rule and message."))
            continue
        code = check.get("code")
        if not isinstance(code, str) or not CHECK_CODE_RE.fullmatch(code) or code in codes:
            _add(problems, f"{where}.code", _("Use a unique code of capital letters, digits or _."))
        else:
            codes.add(code)
        if check.get("severity") not in ("hard", "soft"):
            _add(problems, f"{where}.severity", _("Choose hard or soft."))
        if check.get("rule") is None:
            _add(problems, f"{where}.rule", _("Give the rule."))
        else:
            _logic(check["rule"], f"{where}.rule", problems, references)
        _texts(check.get("message"), f"{where}.message", problems, required=True)


def _code_lists(lists: Any, problems: Problems) -> None:
    if lists is None:
        return
    if not isinstance(lists, dict):
        _add(problems, "code_lists", _("Give an object of code lists by name."))
        return
    for name, entries in lists.items():
        path = f"code_lists.{name}"
        if not LIST_CODE_RE.fullmatch(str(name)):
            _add(problems, path, _("Name code lists with letters, digits or _."))
        if not isinstance(entries, list) or not entries or len(entries) > MAX_CODE_LIST:
            _add(problems, path, _("Give 1 to %(max)d codes.") % {"max": MAX_CODE_LIST})
            continue
        values: set[str] = set()
        for index, entry in enumerate(entries):
            if not isinstance(entry, dict) or set(entry) - {"value", "labels"}:
                _add(problems, f"{path}.{index}", _("A code has a value and labels."))
                continue
            value = entry.get("value")
            if not isinstance(value, str) or not value.strip() or len(value) > 100:
                _add(problems, f"{path}.{index}.value", _("Give the code as text of at most 100 characters."))
            elif value in values:
                _add(problems, f"{path}.{index}.value", _("%(value)s appears twice.") % {"value": value})
            else:
                values.add(value)
            _texts(entry.get("labels"), f"{path}.{index}.labels", problems, required=True)


def iter_items(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every item, groups' items included (after their group), in form order."""
    flat: list[dict[str, Any]] = []
    for item in items:
        flat.append(item)
        if item.get("type") == "group":
            flat.extend(item.get("items") or [])
    return flat


def definition_validate(doc: Any) -> Problems:
    """Problems by path ("items.3.range.hard.min"); empty when the definition is sound.
    References in logic to items of this form must exist; references to other forms
    ("FORM.item", "EVENT.FORM.item") are checked when the schedule links the forms."""
    problems: Problems = {}
    if not isinstance(doc, dict):
        return {"definition": [_("The definition must be an object.")]}
    unknown = sorted(set(doc) - FORM_KEYS)
    if unknown:
        _add(problems, "definition", _("Unknown keys: %(keys)s.") % {"keys": ", ".join(unknown)})
    if not isinstance(doc.get("code"), str) or not FORM_CODE_RE.fullmatch(doc["code"]):
        _add(problems, "code", _("Use a capital letter, then up to 29 capital letters, digits or _."))
    _texts(doc.get("title"), "title", problems, required=True)
    if not isinstance(doc.get("patient_reported", False), bool):
        _add(problems, "patient_reported", _("Give true or false."))
    _code_lists(doc.get("code_lists"), problems)
    items = doc.get("items")
    if not isinstance(items, list) or not items:
        _add(problems, "items", _("Add at least one item."))
        return problems
    if len(iter_items([i for i in items if isinstance(i, dict)])) > MAX_ITEMS:
        _add(problems, "items", _("A form may have at most %(max)d items.") % {"max": MAX_ITEMS})
        return problems
    seen: set[str] = set()
    references: list[tuple[str, str]] = []
    for index, item in enumerate(items):
        _item(item, f"items.{index}", doc=doc, seen=seen, problems=problems, references=references, in_group=False)
    if doc.get("patient_reported") is True:
        # The patient's page has no upload (its link carries no session to upload with): a
        # file question there could never be answered, and a required one would block Submit.
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                continue  # reported above
            children: list[Any] = item["items"] if isinstance(item.get("items"), list) else []
            if any(isinstance(part, dict) and part.get("type") == "file" for part in [item, *children]):
                _add(problems, f"items.{index}.type",
                     _("A form sent to patients cannot ask for a file; collect it at the visit instead."))
    for path, variable in references:
        head = variable.split(".", 1)[0]
        if head.startswith("_") or head[:1].isupper():
            continue  # "_today" and other forms / events
        if head not in seen:
            _add(problems, path, _("%(name)s is not an item of this form.") % {"name": head})
    return problems
