"""Harmonisation of code lists and units (the consortium's common data elements), and the
text of a de-identified value in the pooled rows. No database access.

A tenant's form version gets `Rule`s from its definition (each item's own unit) and the
consortium's declaration; `Harmoniser` applies them to de-identified values and counts,
per "FORM.item", the values changed and those left out (never a value).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from exports.pooling.models import DEFAULT_PRECISION, Consortium
from exports.records import EntryRecord


def with_values(entry: EntryRecord, values: Mapping[str, Any], missing: Mapping[str, str]) -> EntryRecord:
    # Direct construction: dataclasses.replace costs several times more, once per entry.
    return EntryRecord(subject_key=entry.subject_key, site_code=entry.site_code, event_code=entry.event_code,
                       sequence=entry.sequence, form_code=entry.form_code, form_version=entry.form_version,
                       status=entry.status, values=values, missing=missing, visit_date=entry.visit_date,
                       updated=entry.updated)


def value_cells(code: str, value: Any) -> Iterator[tuple[str, str, str]]:
    """(item, row, text) of one de-identified value: a repeating group's cells row by row
    (from 1), each row's items by code; anything else one cell."""
    if isinstance(value, list) and value and isinstance(value[0], dict):
        for index, row in enumerate(value, start=1):
            for child in sorted(row):
                yield f"{code}.{child}", str(index), text_of(row[child])
    else:
        yield code, "", text_of(value)


def text_of(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ";".join(str(v) for v in value)
    if isinstance(value, dict):
        return str(value.get("name", ""))
    return "" if value is None else str(value)


@dataclass(frozen=True)
class Rule:
    """How one item of one form version of one tenant becomes the consortium's: `codes`
    (tenant code -> consortium code), or a unit `factor` rounded to `quantum`; neither
    (and not `same_unit`): the tenant's item has no unit, or one without a factor, so
    none of its values can be mapped."""

    path: str  # the cell's item path: "weight", or "meds.med_dose" in a repeating group
    group: str
    code: str
    codes: Mapping[str, str] | None = None
    factor: Decimal | None = None
    same_unit: bool = False
    quantum: Decimal = Decimal(1)


def declared(consortium: Consortium) -> dict[str, dict[str, dict[str, Any]]]:
    """Form code -> item code -> its harmonise declaration."""
    return {str(e["form"]): dict(e.get("harmonise") or {}) for e in consortium.common_data_elements or []
            if e.get("harmonise")}


def declared_summary(declared: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> dict[str, dict[str, Any]]:
    """What the pooled values are in, for the manifest: the unit, or the consortium codes."""
    summary: dict[str, dict[str, Any]] = {}
    for form, items in sorted(declared.items()):
        for code, rule in sorted(items.items()):
            if "unit" in rule:
                summary[f"{form}.{code}"] = {"unit": rule["unit"]}
            else:
                codes = set((rule.get("codes") or {}).values())
                for mapping in (rule.get("codes_by_tenant") or {}).values():
                    codes |= set(mapping.values())
                summary[f"{form}.{code}"] = {"codes": sorted(codes)}
    return summary


def rules_of(definition: Mapping[str, Any], declared: Mapping[str, Mapping[str, Any]], tenant: str) -> list[Rule]:
    """The rules for one form version of one tenant, from its definition (each item's own
    unit) and the consortium's declaration."""
    found: list[tuple[str, Mapping[str, Any]]] = []
    for item in definition.get("items") or []:
        if item.get("type") == "group":
            found += [(str(item["code"]), child) for child in item.get("items") or []]
        else:
            found.append(("", item))
    rules = []
    for group, item in found:
        rule = declared.get(str(item.get("code")))
        if rule is None:
            continue
        code = str(item["code"])
        path = f"{group}.{code}" if group else code
        if "unit" not in rule:
            by_tenant = rule.get("codes_by_tenant") or {}
            codes = by_tenant[tenant] if tenant in by_tenant else (rule.get("codes") or {})
            rules.append(Rule(path=path, group=group, code=code, codes=dict(codes)))
            continue
        unit = str(item.get("unit") or "").strip()
        quantum = Decimal(1).scaleb(-int(rule.get("precision", DEFAULT_PRECISION)))
        if unit and unit == rule["unit"]:
            rules.append(Rule(path=path, group=group, code=code, same_unit=True))
        elif unit and unit in (rule.get("factors") or {}):
            rules.append(Rule(path=path, group=group, code=code, factor=Decimal(str(rule["factors"][unit])),
                               quantum=quantum))
        else:
            rules.append(Rule(path=path, group=group, code=code))  # no unit, or no factor for it
    return rules


def harmonised_value(value: Any, rule: Rule) -> tuple[bool, Any]:
    """(mapped, the value in the consortium's codes or unit)."""
    if rule.codes is not None:
        if isinstance(value, list):
            mapped = [rule.codes.get(str(code)) for code in value]
            return (True, mapped) if all(code is not None for code in mapped) else (False, None)
        code = rule.codes.get(text_of(value))
        return (code is not None), code
    if rule.factor is None or isinstance(value, bool):
        return False, None
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        return False, None
    if not number.is_finite():
        return False, None
    return True, (number * rule.factor).quantize(rule.quantum, rounding=ROUND_HALF_UP)


class Harmoniser:
    """Applies the consortium's declarations to one tenant's de-identified entries and
    counts, per "FORM.item", the values changed and those left out (never a value)."""

    def __init__(self, declared: Mapping[str, Mapping[str, Mapping[str, Any]]], *, tenant: str,
                 definitions: Mapping[tuple[str, int], Mapping[str, Any]], changed: Counter[str] | None = None,
                 unmapped: Counter[str] | None = None) -> None:
        self.rules = {version: [rule for rule in rules_of(definition, declared.get(version[0]) or {}, tenant)
                                if not rule.same_unit]
                      for version, definition in definitions.items()}
        # Counted into the caller's counters when given (a part counts by columns too).
        self.changed: Counter[str] = changed if changed is not None else Counter()
        self.unmapped: Counter[str] = unmapped if unmapped is not None else Counter()

    def apply(self, entry: EntryRecord) -> EntryRecord:
        if not self.rules.get((entry.form_code, entry.form_version)):
            return entry
        return with_values(entry, self.apply_values(entry.form_code, entry.form_version, entry.values),
                            entry.missing)

    def apply_values(self, form: str, version: int, values: Mapping[str, Any]) -> Mapping[str, Any]:
        """De-identified values of one entry (or some of them) in the consortium's terms."""
        rules = self.rules.get((form, version))
        if not rules:
            return values
        values = dict(values)
        for rule in rules:
            if rule.group:
                rows = values.get(rule.group)
                if isinstance(rows, list) and rows:
                    values[rule.group] = rows = [dict(row) for row in rows]
                    for row in rows:
                        self._one(row, rule, form)
            elif rule.code in values:
                self._one(values, rule, form)
        return values

    def _one(self, values: dict[str, Any], rule: Rule, form: str) -> None:
        if rule.code not in values or values[rule.code] is None:
            return
        mapped, new = harmonised_value(values[rule.code], rule)
        if mapped:
            values[rule.code] = new
            self.changed[f"{form}.{rule.path}"] += 1
        else:
            del values[rule.code]
            self.unmapped[f"{form}.{rule.path}"] += 1
