"""Checking one form's data against its definition: parse and normalise values by item
type, evaluate branching and calculations (JSON Logic, the same semantics as the
browser), then required flags, ranges and edit checks.

Three kinds of outcome, kept apart because they are treated differently:
- ``malformed``: a value that cannot be stored at all (wrong type, unknown item, a code
  not in the list, a value for a hidden or calculated item). The save is refused (400).
- ``hard``: required items left empty, hard ranges, hard edit checks. The data can be
  saved as a partial entry; completion is refused until they are fixed.
- ``soft``: soft ranges, soft-required items and soft edit checks. They never block; each
  raises a query on its item.

Item paths are the item code, or "group[row].item" inside a repeating group (row from 0).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import Any

from django.utils.translation import gettext as _

from ecrf.definition import CHOICE_TYPES, DEFAULT_MAX_LENGTH, TEXT_FORMATS, VALUELESS_TYPES
from ecrf.logic import LogicError, logic_evaluate, logic_truthy

PARTIAL_DATE_RE = re.compile(r"^\d{4}(-\d{2})?$")
MAX_PASSES = 5


@dataclass
class SoftProblem:
    path: str
    check_code: str
    message: str


@dataclass
class Evaluation:
    values: dict[str, Any] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    malformed: dict[str, list[str]] = field(default_factory=dict)
    hard: dict[str, list[str]] = field(default_factory=dict)
    soft: list[SoftProblem] = field(default_factory=list)
    visible: set[str] = field(default_factory=set)

    def add(self, bucket: dict[str, list[str]], path: str, message: str) -> None:
        bucket.setdefault(path, []).append(message)


def _label(texts: Any, language: str) -> str:
    if not isinstance(texts, dict):
        return ""
    return str(texts.get(language) or texts.get("en") or texts.get("zh-hans") or "")


def item_code_of(path: str) -> str:
    """The item code of an item path: "meds[2].dose" -> "dose", "weight" -> "weight"."""
    return path.rsplit(".", 1)[-1] if "[" in path else path


def is_empty(value: Any) -> bool:
    return value is None or value == "" or value == []


# --- parsing by type ---------------------------------------------------------------------------

def _parse(item: dict[str, Any], raw: Any, code_lists: dict[str, Any]) -> tuple[Any, str | None]:
    """(normalised value, None) or (None, message). Empty input is None."""
    kind = item["type"]
    if is_empty(raw):
        return None, None
    if kind in ("text", "long_text"):
        if not isinstance(raw, str):
            return None, _("Enter text.")
        limit = item.get("max_length", DEFAULT_MAX_LENGTH[kind])
        if len(raw) > limit:
            return None, _("At most %(max)d characters.") % {"max": limit}
        if "\x00" in raw:
            return None, _("The text contains a NUL character.")
        pattern = TEXT_FORMATS.get(item.get("format") or "")
        if pattern and not re.fullmatch(pattern, raw.strip()):
            return None, _("This is not in the expected format (%(format)s).") % {"format": item["format"]}
        return raw, None
    if kind in ("integer", "decimal", "scale"):
        return _parse_number(item, raw)
    if kind == "date":
        if not isinstance(raw, str):
            return None, _("Use the form YYYY-MM-DD.")
        if item.get("partial") and PARTIAL_DATE_RE.fullmatch(raw):
            month = int(raw[5:7]) if len(raw) == 7 else 1
            return (raw, None) if 1 <= month <= 12 else (None, _("No such month."))
        if len(raw) != 10:
            return None, _bad_date(item)
        try:
            return date.fromisoformat(raw).isoformat(), None
        except ValueError:
            return None, _bad_date(item)
    if kind == "time":
        try:
            parsed = time.fromisoformat(raw) if isinstance(raw, str) and len(raw) in (5, 8) else None
        except ValueError:
            parsed = None
        return (parsed.isoformat(timespec="seconds" if len(raw) == 8 else "minutes"), None) if parsed else (
            None, _("Use the form HH:MM."))
    if kind == "datetime":
        try:
            parsed_at = datetime.fromisoformat(raw) if isinstance(raw, str) and 16 <= len(raw) <= 19 else None
        except ValueError:
            parsed_at = None
        if parsed_at is None or parsed_at.tzinfo is not None:
            return None, _("Use the form YYYY-MM-DDTHH:MM (local time at the site).")
        return parsed_at.isoformat(timespec="seconds" if len(raw) == 19 else "minutes"), None
    if kind == "yes_no":
        # True == 1 and False == 0 as dict keys, so booleans and 1/0 share entries.
        mapping: dict[Any, str] = {1: "1", 0: "0", "1": "1", "0": "0", "yes": "1", "no": "0"}
        key = raw.lower() if isinstance(raw, str) else raw
        if isinstance(key, bool | int | str) and key in mapping:
            return mapping[key], None
        return None, _("Answer yes (1) or no (0).")
    if kind in CHOICE_TYPES:
        allowed = {entry["value"] for entry in code_lists.get(item.get("code_list", ""), [])}
        if kind == "single_choice":
            value = str(raw) if isinstance(raw, int | str) and not isinstance(raw, bool) else None
            if value is None or value not in allowed:
                return None, _("Choose one of the listed answers.")
            return value, None
        if not isinstance(raw, list) or not all(isinstance(v, str) for v in raw):
            return None, _("Give a list of the chosen answers.")
        if set(raw) - allowed:
            return None, _("Choose only among the listed answers.")
        if len(set(raw)) != len(raw):
            return None, _("An answer is chosen twice.")
        order = [entry["value"] for entry in code_lists.get(item.get("code_list", ""), [])]
        return sorted(raw, key=order.index), None
    if kind == "file":
        if not isinstance(raw, dict) or set(raw) - {"id", "name", "size", "type"} or not isinstance(
                raw.get("id"), str) or not re.fullmatch(r"[0-9a-f]{32}", raw["id"]):
            return None, _("Upload the file first, then refer to it.")
        return {k: raw[k] for k in ("id", "name", "size", "type") if k in raw}, None
    return None, _("This item takes no value.")


def _bad_date(item: dict[str, Any]) -> str:
    return _("Use the form YYYY-MM-DD, YYYY-MM or YYYY.") if item.get("partial") else _("Use the form YYYY-MM-DD.")


def _parse_number(item: dict[str, Any], raw: Any) -> tuple[Any, str | None]:
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        return None, _("Enter a number.")
    text = raw.strip() if isinstance(raw, str) else repr(raw)
    try:
        number = Decimal(text)
    except InvalidOperation:
        return None, _("Enter a number.")
    if not number.is_finite() or abs(number) >= Decimal("1e15"):
        return None, _("Enter a number.")
    exponent = number.as_tuple().exponent
    places = -exponent if isinstance(exponent, int) and exponent < 0 else 0
    if item["type"] == "integer" and number != number.to_integral_value():
        return None, _("Enter a whole number.")
    if item["type"] == "decimal" and item.get("precision") is not None and places > item["precision"]:
        return None, _("At most %(n)d digits after the decimal point.") % {"n": item["precision"]}
    if item["type"] == "scale":
        scale = item.get("scale") or {}
        low, high, step = scale.get("min", 0), scale.get("max", 100), scale.get("step", 1)
        if not low <= number <= high or (number - Decimal(str(low))) % Decimal(str(step)) != 0:
            return None, _("Choose a value from %(min)s to %(max)s in steps of %(step)s.") % {
                "min": low, "max": high, "step": step}
    as_int = int(number)
    return (as_int if number == as_int and item["type"] != "decimal" else float(number)), None


# --- evaluation ----------------------------------------------------------------------------------

def _visible(item: dict[str, Any], data: dict[str, Any]) -> bool:
    condition = item.get("show_if")
    if condition is None:
        return True
    try:
        return bool(_truthy(logic_evaluate(condition, data)))
    except LogicError:
        return True  # a definition is validated on save; a runtime failure shows the item


def _truthy(value: Any) -> bool:
    # JSON Logic truthiness (JavaScript's: [] and "" are false, "0" and {} are true).
    return logic_truthy(value)


def _calculate(item: dict[str, Any], data: dict[str, Any]) -> Any:
    try:
        result = logic_evaluate(item["calc"], data)
    except LogicError:
        return None
    if isinstance(result, float) and result != result:  # NaN
        return None
    return result


def entry_evaluate(*, definition: dict[str, Any], values: Any, missing: Any = None,
                   context: dict[str, Any] | None = None, language: str = "en") -> Evaluation:
    """Check `values` ({item: value}, groups as lists of row objects) and `missing`
    ({path: code}) against the definition. `context` holds the other forms' data
    ("FORM": {...}, "EVENT": {"FORM": {...}}) and "_today"."""
    result = Evaluation()
    items = definition.get("items") or []
    code_lists = definition.get("code_lists") or {}
    by_code = {item["code"]: item for item in items}
    if not isinstance(values, dict):
        result.add(result.malformed, "values", _("Give the values as an object by item code."))
        return result
    missing = missing if isinstance(missing, dict) else {}
    for code in values:
        item = by_code.get(code)
        if item is None:
            result.add(result.malformed, str(code)[:100], _("No such item in this form."))
        elif item["type"] in VALUELESS_TYPES - {"group"}:
            result.add(result.malformed, code, _("This item takes no value."))
        elif item["type"] == "calculated" and not is_empty(values[code]):
            result.add(result.malformed, code, _("This item is calculated; do not enter it."))
    # Parse what was given (top level and group rows).
    parsed: dict[str, Any] = {}
    for item in items:
        code = item["code"]
        if item["type"] == "group":
            parsed[code] = _parse_group(item, values.get(code), code_lists, result)
        elif item["type"] not in VALUELESS_TYPES and item["type"] != "calculated":
            value, problem = _parse(item, values.get(code), code_lists)
            if problem:
                result.add(result.malformed, code, problem)
            parsed[code] = value
    _check_missing_codes(items, missing, result)
    if result.malformed:
        return result
    # Branching and calculations to a fixed point: a calculation may use items that a
    # condition hides, and a condition may use a calculation.
    data = {**(context or {}), **parsed}
    for _pass in range(MAX_PASSES):
        before = dict(data)
        for item in items:
            code = item["code"]
            shown = _visible(item, data)
            if item["type"] == "calculated":
                data[code] = _calculate(item, data) if shown else None
            elif not shown:
                data[code] = None
        if data == before:
            break
    for item in items:
        code = item["code"]
        if not _visible(item, data):
            if not is_empty(parsed.get(code)):
                # The browser hides it too; keeping it would store data nobody can see.
                result.add(result.malformed, code, _("This item is hidden by its condition; clear it."))
            continue
        result.visible.add(code)
        if item["type"] == "group":
            _check_group(item, data.get(code) or [], data, result, language)
        elif item["type"] not in VALUELESS_TYPES:
            _check_item(item, code, data.get(code), data, missing, result, language)
    return result


def _parse_group(item: dict[str, Any], raw: Any, code_lists: dict[str, Any], result: Evaluation) -> list[Any]:
    code = item["code"]
    if is_empty(raw):
        return []
    if not isinstance(raw, list) or not all(isinstance(row, dict) for row in raw):
        result.add(result.malformed, code, _("Give the rows as a list of objects."))
        return []
    if len(raw) > item.get("max_rows", 50):
        result.add(result.malformed, code, _("At most %(max)d rows.") % {"max": item.get("max_rows", 50)})
        return []
    children = {child["code"]: child for child in item.get("items") or []}
    rows = []
    for index, row in enumerate(raw):
        clean: dict[str, Any] = {}
        for child_code, child_raw in row.items():
            child = children.get(child_code)
            path = f"{code}[{index}].{str(child_code)[:64]}"
            if child is None:
                result.add(result.malformed, path, _("No such item in this group."))
                continue
            if child["type"] == "calculated" or child["type"] in VALUELESS_TYPES:
                if not is_empty(child_raw):
                    result.add(result.malformed, path, _("This item takes no entered value."))
                continue
            value, problem = _parse(child, child_raw, code_lists)
            if problem:
                result.add(result.malformed, path, problem)
            clean[child_code] = value
        rows.append(clean)
    return rows


def _check_missing_codes(items: list[dict[str, Any]], missing: dict[str, Any], result: Evaluation) -> None:
    allowed_by_code = {item["code"]: item.get("missing_codes") or [] for item in items}
    for group in (i for i in items if i["type"] == "group"):
        for child in group.get("items") or []:
            allowed_by_code[child["code"]] = child.get("missing_codes") or []
    for path, code in missing.items():
        item_code = item_code_of(str(path))
        if item_code not in allowed_by_code:
            result.add(result.malformed, str(path)[:100], _("No such item in this form."))
        elif code not in allowed_by_code[item_code]:
            result.add(result.malformed, str(path), _("This missing-data code is not allowed here."))
        else:
            result.missing[str(path)] = code


def _check_group(item: dict[str, Any], rows: list[dict[str, Any]], data: dict[str, Any], result: Evaluation,
                 language: str) -> None:
    code = item["code"]
    kept_rows = []
    for index, row in enumerate(rows):
        row_data = {**data, **row}
        kept: dict[str, Any] = {}
        for child in item.get("items") or []:
            path = f"{code}[{index}].{child['code']}"
            if not _visible(child, row_data):
                if not is_empty(row.get(child["code"])):
                    result.add(result.malformed, path, _("This item is hidden by its condition; clear it."))
                continue
            if child["type"] == "calculated":
                row_data[child["code"]] = _calculate(child, row_data)
            if child["type"] in VALUELESS_TYPES:
                continue
            _check_item(child, path, row_data.get(child["code"]), row_data, result.missing, result, language,
                        store=False)
            if not is_empty(row_data.get(child["code"])):
                kept[child["code"]] = row_data[child["code"]]
        kept_rows.append(kept)
    if kept_rows:
        result.values[code] = kept_rows


def _check_item(item: dict[str, Any], path: str, value: Any, data: dict[str, Any], missing: dict[str, Any],
                result: Evaluation, language: str, *, store: bool = True) -> None:
    if store and not is_empty(value):
        result.values[path] = value
    given_missing = path in result.missing
    if given_missing and not is_empty(value):
        result.add(result.malformed, path, _("Give either a value or a missing-data code, not both."))
        return
    required = item.get("required", "no")
    if is_empty(value) and not given_missing:
        if required == "hard":
            result.add(result.hard, path, _("This item is required."))
        elif required == "soft":
            result.soft.append(SoftProblem(path, "REQUIRED", _("This item is empty: confirm, or give a "
                                                               "missing-data code.")))
    if not is_empty(value):
        _check_range(item, path, value, result)
    for check in item.get("checks") or []:
        try:
            passed = _truthy(logic_evaluate(check["rule"], data))
        except LogicError:
            passed = True
        if not passed:
            message = _label(check.get("message"), language) or check["code"]
            if check.get("severity") == "hard":
                result.add(result.hard, path, message)
            else:
                result.soft.append(SoftProblem(path, check["code"], message))


def _check_range(item: dict[str, Any], path: str, value: Any, result: Evaluation) -> None:
    ranges = item.get("range") or {}
    comparable = value if item["type"] not in ("date", "datetime", "time") else str(value)
    if item["type"] == "date" and len(comparable) < 10:
        return  # a partial date is not compared with full-date bounds
    for level in ("hard", "soft"):
        bounds = ranges.get(level) or {}
        low, high = bounds.get("min"), bounds.get("max")
        if (low is not None and comparable < low) or (high is not None and comparable > high):
            if low is not None and high is not None:
                message = _("Expected between %(min)s and %(max)s.") % {"min": low, "max": high}
            elif low is not None:
                message = _("Expected at least %(min)s.") % {"min": low}
            else:
                message = _("Expected at most %(max)s.") % {"max": high}
            if level == "hard":
                result.add(result.hard, path, message)
            else:
                result.soft.append(SoftProblem(path, "RANGE", message))
            return


def flatten_values(values: dict[str, Any]) -> dict[str, Any]:
    """Item paths -> values; a group's rows become "group[i].item"."""
    flat: dict[str, Any] = {}
    for code, value in values.items():
        if isinstance(value, list) and value and all(isinstance(row, dict) for row in value):
            for index, row in enumerate(value):
                for child, child_value in row.items():
                    flat[f"{code}[{index}].{child}"] = child_value
        else:
            flat[code] = value
    return flat
