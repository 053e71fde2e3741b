"""A sample form (every item type but file upload: branching, a calculation, ranges,
hard and soft edit checks, missing-data codes, a repeating group). The demo tenant, the
tests and the benchmarks use it."""

from __future__ import annotations

from typing import Any


def label(text: str, zh: str | None = None) -> dict[str, str]:
    return {"en": text, "zh-hans": zh or text}


VITALS: dict[str, Any] = {
    "code": "VITALS",
    "title": {"en": "Vital signs", "zh-hans": "生命体征"},
    "code_lists": {
        "SEX": [{"value": "1", "labels": {"en": "Male", "zh-hans": "男"}},
                {"value": "2", "labels": {"en": "Female", "zh-hans": "女"}}],
        "SYM": [{"value": "a", "labels": label("Cough")}, {"value": "b", "labels": label("Fever")},
                {"value": "c", "labels": label("Dyspnoea")}],
    },
    "items": [
        {"code": "hdr", "type": "section", "label": label("Measurements")},
        {"code": "visit_date", "type": "date", "label": label("Visit date"), "required": "hard"},
        {"code": "sex", "type": "single_choice", "label": label("Sex"), "code_list": "SEX", "required": "hard"},
        {"code": "pregnant", "type": "yes_no", "label": label("Pregnant"), "required": "hard",
         "show_if": {"==": [{"var": "sex"}, "2"]}},
        {"code": "weight", "type": "decimal", "label": label("Weight"), "unit": "kg", "precision": 1,
         "range": {"hard": {"min": 20, "max": 300}, "soft": {"min": 35, "max": 200}},
         "missing_codes": ["UNK", "NA"]},
        {"code": "height", "type": "integer", "label": label("Height"), "unit": "cm",
         "range": {"hard": {"min": 100, "max": 250}}},
        {"code": "bmi", "type": "calculated", "label": label("BMI"),
         "calc": {"if": [{"and": [{"var": "weight"}, {"var": "height"}]},
                         {"round": [{"/": [{"var": "weight"}, {"*": [{"/": [{"var": "height"}, 100]},
                                                                       {"/": [{"var": "height"}, 100]}]}]}, 1]},
                         None]}},
        {"code": "pain", "type": "scale", "label": label("Pain"), "scale": {"min": 0, "max": 10, "step": 1}},
        {"code": "symptoms", "type": "multiple_choice", "label": label("Symptoms"), "code_list": "SYM"},
        {"code": "diag_date", "type": "date", "label": label("Diagnosis"), "partial": True},
        {"code": "dose_time", "type": "time", "label": label("Dose time")},
        {"code": "seen_at", "type": "datetime", "label": label("Seen at")},
        {"code": "notes", "type": "long_text", "label": label("Notes"), "max_length": 500},
        {"code": "email", "type": "text", "label": label("Email"), "format": "email"},
        {"code": "sbp", "type": "integer", "label": label("Systolic"), "required": "soft"},
        {"code": "dbp", "type": "integer", "label": label("Diastolic"),
         "checks": [{"code": "DBP_LT_SBP", "severity": "hard",
                     "rule": {"or": [{"is_empty": [{"var": "dbp"}]}, {"is_empty": [{"var": "sbp"}]},
                                     {"<": [{"var": "dbp"}, {"var": "sbp"}]}]},
                     "message": label("Diastolic must be below systolic.")},
                    {"code": "DBP_HIGH", "severity": "soft", "rule": {"or": [{"is_empty": [{"var": "dbp"}]},
                                                                             {"<=": [{"var": "dbp"}, 110]}]},
                     "message": label("Diastolic above 110: please confirm.")}]},
        {"code": "meds", "type": "group", "label": label("Medications"), "max_rows": 5, "items": [
            {"code": "med_name", "type": "text", "label": label("Name"), "required": "hard"},
            {"code": "med_dose", "type": "decimal", "label": label("Dose"), "unit": "mg"}]},
    ],
}


