"""exports.deid: pseudonyms, date shifts, age/birth rules, free text, k-anonymity.

Expectations are computed independently here (literal dates, pandas group sizes, pycanon
on the produced frame), never copied from the module's output."""

from __future__ import annotations

import re
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pycanon import anonymity

from exports.deid import (
    DeidError,
    DeidPolicy,
    Hierarchy,
    age_hierarchy,
    birth_year_rule,
    deidentify_entries,
    deidentify_entry,
    deidentify_subject,
    item_may_leave,
    k_anonymize,
    mapping_hierarchy,
    pseudonym,
    rules_applied,
    shift_date,
    shift_days,
    study_day,
    suppression_hierarchy,
    top_code_age,
)
from exports.records import EntryRecord, SubjectRecord

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
SHIFT_KEY = bytes(range(100, 132))
PSEUDONYM_RE = re.compile(r"^P-[A-Z2-7]{16}$")


def policy(**overrides: Any) -> DeidPolicy:
    values: dict[str, Any] = {"tenant": "acme", "pseudonym_key": KEY, "shift_key": SHIFT_KEY, "max_shift_days": 180,
                              "safe_items": frozenset({"AE.ae_outcome_text"})}
    values.update(overrides)
    return DeidPolicy(**values)


# --- pseudonyms ---------------------------------------------------------------------------

def test_pseudonym_is_stable_fixed_length_and_readable() -> None:
    first = pseudonym(KEY, tenant="acme", site="BJ01", subject="BJ01-0042")
    second = pseudonym(bytes(KEY), tenant="acme", site="BJ01", subject="BJ01-0042")
    assert first == second
    assert PSEUDONYM_RE.fullmatch(first)


def test_pseudonym_differs_per_tenant_site_and_subject() -> None:
    parts = [("acme", "BJ01", "0042"), ("beta", "BJ01", "0042"), ("acme", "SH02", "0042"), ("acme", "BJ01", "0043")]
    made = {pseudonym(KEY, tenant=t, site=s, subject=c) for t, s, c in parts}
    assert len(made) == len(parts)
    many = {pseudonym(KEY, tenant="acme", site="BJ01", subject=f"BJ01-{n:04d}") for n in range(5000)}
    assert len(many) == 5000


def test_pseudonym_parts_are_length_prefixed() -> None:
    assert pseudonym(KEY, tenant="t", site="ab", subject="c") != pseudonym(KEY, tenant="t", site="a", subject="bc")
    assert pseudonym(KEY, tenant="ab", site="c", subject="x") != pseudonym(KEY, tenant="a", site="bc", subject="x")


def test_pseudonym_depends_on_the_key_and_refuses_short_keys() -> None:
    args = {"tenant": "acme", "site": "BJ01", "subject": "BJ01-0042"}
    assert pseudonym(KEY, **args) != pseudonym(OTHER_KEY, **args)
    with pytest.raises(DeidError, match="at least 32"):
        pseudonym(b"x" * 31, **args)
    with pytest.raises(DeidError, match="subject"):
        pseudonym(KEY, tenant="acme", site="BJ01", subject="")


def test_pseudonym_never_contains_the_subject_code() -> None:
    # Realistic codes hold digits 0, 1, 8, 9 and "-", none of which is in the base32 body.
    for number in range(2000):
        code = f"BJ01-{number:04d}"
        made = pseudonym(KEY, tenant="acme", site="BJ01", subject=code)
        assert code not in made
        assert "BJ01" not in made


# --- date shifts --------------------------------------------------------------------------

def test_shift_days_is_within_range_and_never_zero() -> None:
    for max_days in (1, 7, 180):
        shifts = [shift_days(SHIFT_KEY, f"P-{n}", max_days=max_days) for n in range(2000)]
        assert all(-max_days <= s <= max_days and s != 0 for s in shifts)
        assert min(shifts) == -max_days and max(shifts) == max_days  # the whole range is reachable
    with pytest.raises(DeidError, match="max_days"):
        shift_days(SHIFT_KEY, "P-1", max_days=0)
    with pytest.raises(DeidError, match="at least 32"):
        shift_days(b"short", "P-1", max_days=10)


def test_shifts_differ_between_subjects() -> None:
    keys = [pseudonym(KEY, tenant="acme", site="BJ01", subject=f"S{n}") for n in range(1000)]
    shifts = np.array([shift_days(SHIFT_KEY, k, max_days=180) for k in keys])
    # 1,000 draws over 360 values: about 337 distinct expected; a broken derivation gives few.
    assert len(set(shifts.tolist())) > 280
    assert abs(shifts.mean()) < 15  # standard error is about 3.3 days
    counts = np.histogram(shifts, bins=6, range=(-180.5, 180.5))[0]
    assert counts.min() > 110 and counts.max() < 230  # about 167 per 60-day bin
    other = np.array([shift_days(OTHER_KEY, k, max_days=180) for k in keys])
    assert (other != shifts).mean() > 0.95  # a different shift key gives different shifts


def test_shift_date_types_and_formats() -> None:
    assert shift_date(date(2024, 2, 28), 1) == date(2024, 2, 29)
    assert shift_date("2024-02-28", 2) == "2024-03-01"
    assert shift_date("2024-03-01T23:30", 1) == "2024-03-02T23:30"
    assert shift_date("2024-03-01T23:30:15", -1) == "2024-02-29T23:30:15"
    aware = datetime(2024, 1, 1, 8, 0, tzinfo=UTC)
    assert shift_date(aware, -1) == datetime(2023, 12, 31, 8, 0, tzinfo=UTC)
    assert shift_date(None, 5) is None and shift_date("", 5) == ""
    for bad in ("2024-13-01", "2024-02-30", "yesterday", "2024-05-01X", "2024-00", 20240101):
        with pytest.raises(DeidError):
            shift_date(bad, 3)


def test_partial_dates_keep_precision_and_move_with_their_mid_point() -> None:
    # May 2024 is taken as 16 May: +20 -> 5 June, -10 -> 6 May, +16 -> 1 June, +15 -> 31 May.
    assert shift_date("2024-05", 20) == "2024-06"
    assert shift_date("2024-05", -10) == "2024-05"
    assert shift_date("2024-05", 16) == "2024-06"
    assert shift_date("2024-05", 15) == "2024-05"
    # The year 2024 (leap) is taken as 1 July: +183 -> 31 Dec, +184 -> 1 Jan 2025; -182 -> 1 Jan.
    assert shift_date("2024", 183) == "2024"
    assert shift_date("2024", 184) == "2025"
    assert shift_date("2024", -182) == "2024"
    assert shift_date("2024", -183) == "2023"


def test_study_day_has_no_day_zero() -> None:
    start = date(2024, 5, 10)
    assert study_day(date(2024, 5, 10), start) == 1
    assert study_day("2024-05-11", start) == 2
    assert study_day("2024-05-09", start) == -1
    assert study_day(datetime(2024, 5, 20, 9, 0), start) == 11
    assert study_day("2024-05", start) is None  # partial: no exact day, as in SDTM --DY
    # A common shift cancels out.
    shifted = study_day(shift_date("2024-06-01", -37), shift_date(start, -37))
    assert shifted == study_day("2024-06-01", start) == 23


# --- age and birth date -------------------------------------------------------------------

def test_age_is_top_coded_at_90() -> None:
    assert top_code_age(89).age == 89 and not top_code_age(89).top_coded and top_code_age(89).label == "89"
    for age in (90, 91, 104):
        coded = top_code_age(age)
        assert (coded.age, coded.top_coded, coded.label) == (90, True, "90+")
    assert top_code_age(None).age is None
    with pytest.raises(DeidError, match="age"):
        top_code_age(-3)


def test_birth_year_rule() -> None:
    assert birth_year_rule(date(1950, 7, 3), top_coded=False) == 1950
    assert birth_year_rule("1950-07", top_coded=False) == 1950
    assert birth_year_rule(1950, top_coded=False) == 1950
    assert birth_year_rule(date(1930, 7, 3), top_coded=True) is None
    assert birth_year_rule(date(1950, 7, 3), top_coded=False, rule="remove") is None
    with pytest.raises(DeidError, match="birth_year_rule"):
        birth_year_rule(1950, top_coded=False, rule="month")


def subject(code: str, **overrides: Any) -> SubjectRecord:
    values: dict[str, Any] = {"subject_key": code, "site_code": "BJ01", "status": "withdrawn",
                              "enrolment_date": date(2024, 3, 1), "sex": "F", "birth_year": 1960, "age": 63,
                              "country": "CN", "status_date": date(2024, 9, 15),
                              "status_reason": "Moved to Shanghai to live with daughter Li Na"}
    values.update(overrides)
    return SubjectRecord(**values)


def test_deidentify_subject_applies_every_rule() -> None:
    original = subject("BJ01-0007")
    out = deidentify_subject(original, policy=policy())
    assert PSEUDONYM_RE.fullmatch(out.subject_key)
    assert out.subject_key == pseudonym(KEY, tenant="acme", site="BJ01", subject="BJ01-0007")
    assert out.status_reason == ""
    assert out.enrolment_date is not None and out.status_date is not None
    offset = (out.enrolment_date - date(2024, 3, 1)).days
    assert offset != 0 and abs(offset) <= 180
    assert (out.status_date - out.enrolment_date).days == (date(2024, 9, 15) - date(2024, 3, 1)).days
    assert (out.age, out.birth_year, out.sex, out.country) == (63, 1960, "F", "CN")

    old = deidentify_subject(subject("BJ01-0008", age=93, birth_year=1930), policy=policy())
    assert (old.age, old.birth_year) == (90, None)
    assert deidentify_subject(original, policy=policy(birth_year_rule="remove")).birth_year is None
    # Without an age the birth year next to the enrolment year would reveal 90+.
    no_age = deidentify_subject(subject("BJ01-0009", age=None, birth_year=1932), policy=policy())
    assert no_age.birth_year is None
    assert deidentify_subject(subject("BJ01-0010", age=None, birth_year=1990), policy=policy()).birth_year == 1990


def test_policy_refuses_shared_or_short_keys() -> None:
    with pytest.raises(DeidError, match="shift_key"):
        policy(shift_key=KEY)
    with pytest.raises(DeidError, match="pseudonym_key"):
        policy(pseudonym_key=b"k" * 16)
    with pytest.raises(DeidError, match="max_days"):
        policy(max_shift_days=0)


# --- entries: free text, dates, groups ----------------------------------------------------

AE_FORM: dict[str, Any] = {
    "code": "AE",
    "title": {"en": "Adverse events"},
    "code_lists": {"SEV": [{"value": "1", "labels": {"en": "Mild"}}, {"value": "2", "labels": {"en": "Severe"}}],
                   "SYM": [{"value": "HEAD", "labels": {"en": "Headache"}},
                           {"value": "NAUS", "labels": {"en": "Nausea"}}]},
    "items": [
        {"code": "mrn", "type": "text", "identifier": True, "label": {"en": "MRN"}},
        {"code": "comment", "type": "long_text", "label": {"en": "Comment"}},
        {"code": "weight", "type": "decimal", "label": {"en": "Weight"}, "unit": "kg"},
        {"code": "severity", "type": "single_choice", "code_list": "SEV", "label": {"en": "Severity"}},
        {"code": "symptoms", "type": "multiple_choice", "code_list": "SYM", "label": {"en": "Symptoms"}},
        {"code": "onset", "type": "date", "partial": True, "label": {"en": "Onset"}},
        {"code": "seen_at", "type": "datetime", "label": {"en": "Seen at"}},
        {"code": "serious", "type": "yes_no", "label": {"en": "Serious"}},
        {"code": "scan", "type": "file", "label": {"en": "Scan"}},
        {"code": "bmi", "type": "calculated", "calc": {"var": "weight"}, "label": {"en": "BMI"}},
        {"code": "initials", "type": "calculated", "calc": {"cat": ["x"]}, "label": {"en": "Initials"}},
        {"code": "ae_outcome_text", "type": "text", "label": {"en": "Outcome"}},
        {"code": "events", "type": "group", "label": {"en": "Events"}, "items": [
            {"code": "ae_term", "type": "text", "label": {"en": "Term"}},
            {"code": "ae_grade", "type": "single_choice", "code_list": "SEV", "label": {"en": "Grade"}},
            {"code": "ae_start", "type": "date", "label": {"en": "Start"}},
            {"code": "ae_dose", "type": "integer", "label": {"en": "Dose"}},
        ]},
    ],
}


def entry(code: str = "BJ01-0007", **overrides: Any) -> EntryRecord:
    values: dict[str, Any] = {
        "subject_key": code, "site_code": "BJ01", "event_code": "V1", "sequence": 1, "form_code": "AE",
        "form_version": 1, "status": "complete",
        "values": {
            "mrn": "MRN-889123", "comment": "Patient Zhang Wei, phone 13800138000", "weight": 71.5,
            "severity": "2", "symptoms": ["HEAD", "NAUS"], "onset": "2024-05", "seen_at": "2024-03-05T10:30",
            "serious": "1", "scan": {"id": "0" * 32, "name": "zhang_wei_ct.pdf"}, "bmi": 24.1,
            "initials": "ZW", "ae_outcome_text": "recovered", "undeclared": "leaked?",
            "events": [
                {"ae_term": "headache after visiting Dr Liu", "ae_grade": "1", "ae_start": "2024-03-02", "ae_dose": 5},
                {"ae_term": "nausea", "ae_grade": "other: fainted at home", "ae_start": "2024-03-20",
                 "ae_dose": "12"},
            ],
        },
        "missing": {"events[1].ae_dose": "UNK", "weight": "asked his wife"},
        "visit_date": date(2024, 3, 1),
        "updated": datetime(2024, 3, 6, 9, 0, tzinfo=UTC),
    }
    values.update(overrides)
    return EntryRecord(**values)


def test_item_may_leave() -> None:
    items = {item["code"]: item for item in AE_FORM["items"]}
    safe = {"AE.ae_outcome_text", "comment_unused"}
    assert not item_may_leave(items["comment"], safe, form_code="AE")
    assert not item_may_leave(items["mrn"], {"mrn", "AE.mrn"}, form_code="AE")  # identifiers never
    assert not item_may_leave(items["scan"], safe, form_code="AE")
    assert item_may_leave(items["ae_outcome_text"], safe, form_code="AE")
    assert not item_may_leave(items["ae_outcome_text"], safe, form_code="CM")  # qualified by form
    assert item_may_leave(items["comment"], {"comment"}, form_code="AE")  # bare code: every form
    for code in ("weight", "severity", "symptoms", "onset", "seen_at", "serious", "bmi", "events"):
        assert item_may_leave(items[code], safe, form_code="AE"), code


def test_deidentify_entry_drops_free_text_keeps_codes_and_shifts_dates() -> None:
    dropped: set[str] = set()
    out = deidentify_entry(entry(), policy=policy(), definition=AE_FORM, dropped=dropped)
    key = pseudonym(KEY, tenant="acme", site="BJ01", subject="BJ01-0007")
    days = shift_days(SHIFT_KEY, key, max_days=180)
    assert out.subject_key == key
    values = out.values
    assert set(values) == {"weight", "severity", "symptoms", "onset", "seen_at", "serious", "bmi",
                           "ae_outcome_text", "events"}
    assert (values["weight"], values["severity"], values["symptoms"], values["serious"], values["bmi"]) == (
        71.5, "2", ["HEAD", "NAUS"], "1", 24.1)
    assert values["ae_outcome_text"] == "recovered"  # marked safe
    expected_seen = datetime(2024, 3, 5, 10, 30) + timedelta(days=days)
    assert values["seen_at"] == expected_seen.strftime("%Y-%m-%dT%H:%M")
    mid_may = date(2024, 5, 16) + timedelta(days=days)
    assert values["onset"] == f"{mid_may.year:04d}-{mid_may.month:02d}"
    rows = values["events"]
    assert [set(row) for row in rows] == [{"ae_grade", "ae_start", "ae_dose"}, {"ae_start", "ae_dose"}]
    assert rows[0]["ae_grade"] == "1" and rows[0]["ae_dose"] == 5 and rows[1]["ae_dose"] == "12"
    assert rows[0]["ae_start"] == (date(2024, 3, 2) + timedelta(days=days)).isoformat()
    assert rows[1]["ae_start"] == (date(2024, 3, 20) + timedelta(days=days)).isoformat()
    assert out.visit_date == date(2024, 3, 1) + timedelta(days=days)
    assert out.updated == datetime(2024, 3, 6, 9, 0, tzinfo=UTC) + timedelta(days=days)
    assert out.missing == {"events[1].ae_dose": "UNK"}
    assert dropped == {"AE.mrn", "AE.comment", "AE.scan", "AE.initials", "AE.undeclared", "AE.ae_term",
                       "AE.ae_grade"}
    text = repr(out)
    for secret in ("Zhang", "13800138000", "MRN-889123", "Liu", "fainted", "BJ01-0007", "leaked"):
        assert secret not in text


def test_dates_of_one_subject_move_together_across_records() -> None:
    subj = deidentify_subject(subject("BJ01-0007"), policy=policy())
    ent = deidentify_entry(entry(), policy=policy(), definition=AE_FORM)
    assert subj.subject_key == ent.subject_key
    assert subj.enrolment_date is not None and ent.visit_date is not None
    # Enrolment 2024-03-01 and the visit 2024-03-01: still the same day; the AE 19 days later.
    assert ent.visit_date == subj.enrolment_date
    assert (date.fromisoformat(ent.values["events"][1]["ae_start"]) - subj.enrolment_date).days == 19
    other = deidentify_entry(entry("BJ01-0099"), policy=policy(), definition=AE_FORM)
    assert other.subject_key != ent.subject_key


def test_deidentify_entry_names_the_bad_value() -> None:
    bad = entry(values={"seen_at": "next tuesday"})
    with pytest.raises(DeidError, match=r"AE of V1#1.*item seen_at"):
        deidentify_entry(bad, policy=policy(), definition=AE_FORM)
    with pytest.raises(DeidError, match="no definition for form AE version 2"):
        list(deidentify_entries(iter([entry(form_version=2)]), policy=policy(), definitions={("AE", 1): AE_FORM}))


def test_deidentify_entries_streams_in_flat_memory() -> None:
    small_form = {"code": "VS", "items": [{"code": "weight", "type": "decimal"}, {"code": "visit", "type": "date"},
                                          {"code": "note", "type": "text"}]}

    def many(count: int) -> Iterator[EntryRecord]:
        for n in range(count):
            yield EntryRecord(subject_key=f"S{n // 4:06d}", site_code="BJ01", event_code="V1", sequence=n % 4 + 1,
                              form_code="VS", form_version=1, status="complete",
                              values={"weight": 50 + n % 40, "visit": "2024-01-15", "note": "x" * 50})

    def peak(count: int) -> tuple[int, int]:
        tracemalloc.start()
        seen = 0
        for record in deidentify_entries(many(count), policy=policy(), definitions={("VS", 1): small_form}):
            seen += len(record.values)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return seen, top

    seen_small, peak_small = peak(1_000)
    seen_large, peak_large = peak(100_000)  # 200k values kept (the note is dropped)
    assert seen_small == 2_000 and seen_large == 200_000
    assert peak_large < 2 * 1024 * 1024
    assert peak_large < peak_small * 3 + 256 * 1024  # 100x the rows, not 100x the memory


# --- k-anonymity --------------------------------------------------------------------------

CITIES = {"Beijing": "Beijing", "Haidian": "Beijing", "Shanghai": "Shanghai", "Pudong": "Shanghai",
          "Guangzhou": "Guangdong", "Shenzhen": "Guangdong", "Zhuhai": "Guangdong", "Lhasa": "Tibet",
          "Hong Kong": "Hong Kong", "Kowloon": "Hong Kong"}
PROVINCES = {"Beijing": "CN", "Shanghai": "CN", "Guangdong": "CN", "Tibet": "CN", "Hong Kong": "HK"}


def hierarchies() -> dict[str, Hierarchy]:
    return {"age": age_hierarchy(),
            "region": mapping_hierarchy("region", [("province", CITIES), ("country", PROVINCES)], first_level="city"),
            "sex": suppression_hierarchy("sex")}


def skewed_frame(rows: int = 1000, seed: int = 7) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    city_weights = np.array([30, 12, 25, 8, 10, 6, 2, 0.5, 5, 1.5])
    cities = rng.choice(list(CITIES), size=rows, p=city_weights / city_weights.sum())
    ages = np.clip(rng.normal(58, 13, size=rows), 18, 89).astype(int)
    old = rng.random(rows) < 0.03
    ages[old] = rng.integers(90, 103, size=int(old.sum()))
    sexes = rng.choice(["F", "M", "U"], size=rows, p=[0.55, 0.44, 0.01])
    diagnosis = rng.choice(["HTN", "T2D", "CKD", "COPD", "HF"], size=rows, p=[0.4, 0.3, 0.15, 0.1, 0.05])
    frame = pd.DataFrame({"row_id": np.arange(rows), "age": ages, "region": cities, "sex": sexes,
                          "diagnosis": diagnosis, "sbp": rng.normal(135, 15, size=rows).round(1)})
    if rows > 5:
        frame.loc[5, "sex"] = None  # a missing quasi-identifier value
    return frame


def class_sizes(frame: pd.DataFrame, columns: list[str]) -> pd.Series:
    return frame.groupby(columns, dropna=False)[columns[0]].transform("size")


def test_age_hierarchy_levels() -> None:
    age = age_hierarchy()
    assert [age.generalise(47, level) for level in range(5)] == ["47", "45-49", "40-49", "<60", "*"]
    assert [age.generalise(93, level) for level in range(5)] == ["90+", "90+", "90+", ">=60", "*"]
    assert [age.generalise("90+", level) for level in range(4)] == ["90+", "90+", "90+", ">=60"]
    assert age.generalise(None, 1) == "" and age.generalise(None, 4) == "*"


@pytest.mark.parametrize("k", [5, 10])
def test_k_anonymize_reaches_k_measured_independently(k: int) -> None:
    frame = skewed_frame()
    qis = ["age", "region", "sex"]
    assert anonymity.k_anonymity(frame.astype({"sex": str}), qis) < k  # the raw data is not k-anonymous
    out, report = k_anonymize(frame, quasi_identifiers=hierarchies(), k=k)

    measured = anonymity.k_anonymity(out, qis)
    assert measured >= k
    assert report.achieved_k == measured
    assert class_sizes(out, qis).min() >= k
    assert report.records_in == 1000 and report.records_out == len(out)
    assert report.records_suppressed == 1000 - len(out) <= 50
    assert report.requested_k == k and report.achieved_l is None

    # Rows that stay are unchanged outside the quasi-identifiers, in their input order,
    # and their generalised values agree with their original values.
    assert out["row_id"].is_monotonic_increasing
    original = frame.set_index("row_id").loc[out["row_id"]]
    assert np.allclose(original["sbp"].to_numpy(), out["sbp"].to_numpy())
    assert (original["diagnosis"].to_numpy() == out["diagnosis"].to_numpy()).all()
    levels = {name: level for name, level, _ in report.levels}
    for name, hierarchy in hierarchies().items():
        expected = [hierarchy.generalise(value, levels[name]) for value in original[name]]
        assert out[name].tolist() == expected

    # Least generalisation: lowering any one quasi-identifier by one level breaks the bound.
    allowed = int(0.05 * 1000)
    for name in hierarchies():
        if levels[name] == 0:
            continue
        lower = frame.copy()
        for other, h in hierarchies().items():
            level = levels[other] - (other == name)
            lower[other] = [h.generalise(value, level) for value in frame[other]]
        assert int((class_sizes(lower, qis) < k).sum()) > allowed, name


def test_k_anonymize_reports_l_and_rules() -> None:
    frame = skewed_frame()
    rules = rules_applied(policy(), dropped={"AE.comment", "AE.ae_term"})
    out, report = k_anonymize(frame, quasi_identifiers=hierarchies(), k=5, sensitive="diagnosis", rules=rules)
    measured_l = anonymity.l_diversity(out, ["age", "region", "sex"], ["diagnosis"])
    assert report.achieved_l == measured_l
    assert report.achieved_l == out.groupby(["age", "region", "sex"])["diagnosis"].nunique().min()
    assert report.rules[: len(rules)] == rules
    assert any("AE.ae_term" in rule and "AE.comment" in rule for rule in report.rules)
    assert any("180" in rule for rule in report.rules) and any("90" in rule for rule in report.rules)
    assert "k=5" in report.rules[-1]
    assert all(KEY.hex() not in rule for rule in report.rules)


def test_k_anonymize_bad_input_is_named() -> None:
    frame = skewed_frame(100)
    with pytest.raises(DeidError, match=r"quasi_identifiers\.postcode"):
        k_anonymize(frame, quasi_identifiers={"postcode": suppression_hierarchy("postcode")})
    frame.loc[17, "region"] = "Atlantis"
    with pytest.raises(DeidError, match=r"region, row 17: 'Atlantis' has no province"):
        k_anonymize(frame, quasi_identifiers=hierarchies())
    no_top = {"age": Hierarchy("age", (str,), ("age",))}
    with pytest.raises(DeidError, match="no generalisation reaches k=5"):
        k_anonymize(skewed_frame(100), quasi_identifiers=no_top, max_suppression=0.0)
    with pytest.raises(DeidError, match="sensitive"):
        k_anonymize(skewed_frame(100), quasi_identifiers=hierarchies(), sensitive="age")


def test_k_anonymize_refuses_fewer_records_than_k() -> None:
    with pytest.raises(DeidError, match="4 records cannot be 5-anonymous"):
        k_anonymize(skewed_frame(4), quasi_identifiers=hierarchies(), k=5, max_suppression=0.99)
    out, report = k_anonymize(skewed_frame(5), quasi_identifiers=hierarchies(), k=5)
    assert len(out) == 5 and report.achieved_k == 5
    assert class_sizes(out, ["age", "region", "sex"]).tolist() == [5] * 5


# --- the whole pipeline -------------------------------------------------------------------

def pipeline() -> tuple[bytes, bytes, Any]:
    subjects = [subject(f"BJ01-{n:04d}", age=int(a), sex=s, enrolment_date=date(2023, 1, 1) + timedelta(days=n))
                for n, (a, s) in enumerate(zip(skewed_frame(400)["age"], skewed_frame(400)["sex"].fillna("U"),
                                                strict=True))]
    dropped: set[str] = set()
    pol = policy()
    out_subjects = [deidentify_subject(s, policy=pol) for s in subjects]
    entries = list(deidentify_entries((entry(s.subject_key) for s in subjects), policy=pol,
                                      definitions={("AE", 1): AE_FORM}, dropped=dropped))
    frame = pd.DataFrame({"key": [s.subject_key for s in out_subjects], "age": [s.age for s in out_subjects],
                          "region": ["Beijing" if n % 3 else "Pudong" for n in range(len(out_subjects))],
                          "sex": [s.sex for s in out_subjects],
                          "enrolled": [s.enrolment_date for s in out_subjects]})
    out, report = k_anonymize(frame, quasi_identifiers=hierarchies(), k=5, rules=rules_applied(pol, dropped=dropped))
    return out.to_csv(index=False).encode(), repr(entries).encode(), report


def test_pipeline_is_reproducible() -> None:
    first, second = pipeline(), pipeline()
    assert first[0] == second[0]
    assert first[1] == second[1]
    assert first[2] == second[2]
    assert b"BJ01-" not in first[0] and b"BJ01-" not in first[1]
