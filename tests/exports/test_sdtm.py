"""exports.sdtm: SDTM domains from CDISC annotations, written to XPT v5 and read back."""

from __future__ import annotations

import math
import re
import tracemalloc
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyreadstat
import pytest

from exports.records import (
    DatasetSpec,
    EntryRecord,
    EventMeta,
    FormMeta,
    StudyData,
    StudyMeta,
    SubjectRecord,
    VariableSpec,
    VisitRecord,
)
from exports.sdtm import SdtmError, sdtm_build, sdtm_check, sdtm_write

STUDYID = "SF01"
SITES = ("01", "02", "03")
STATUSES = ("screening", "enrolled", "completed", "withdrawn", "lost_to_follow_up", "deceased")
EXPECTED_DS = {"completed": "COMPLETED", "withdrawn": "WITHDRAWAL BY SUBJECT",
               "lost_to_follow_up": "LOST TO FOLLOW-UP", "deceased": "DEATH"}
# (event code, occurrence, unscheduled, days after enrolment, VISITNUM, VISIT) of an enrolled subject.
VISITS = (("SCREEN", 1, False, -14, 1.0, "Screening"), ("BASE", 1, False, 0, 2.0, "Baseline"),
          ("UNS", 1, True, 10, 2.1, "UNSCHEDULED 2.1"), ("W4", 1, False, 28, 3.0, "Week 4"),
          ("UNS", 2, True, 40, 3.1, "UNSCHEDULED 3.1"))


def _label(en: str, zh: str = "") -> dict[str, str]:
    return {"en": en, "zh-hans": zh} if zh else {"en": en}


FORMS = (
    FormMeta("VITALS", 1, {"code": "VITALS", "title": _label("Vital signs", "生命体征"), "items": [
        {"code": "weight", "type": "decimal", "label": _label("Weight"), "unit": "kg", "precision": 1,
         "missing_codes": ["NA"], "cdisc": {"domain": "VS", "variable": "VSORRES", "testcd": "WEIGHT",
                                            "test": "Weight", "orresu": "kg"}},
        {"code": "sbp", "type": "integer", "label": _label("Systolic blood pressure"), "unit": "mmHg",
         "cdisc": {"domain": "VS", "variable": "VSORRES", "testcd": "SYSBP", "test": "Systolic Blood Pressure"}},
        {"code": "note", "type": "text", "label": _label("Note")},
    ]}),
    FormMeta("LAB", 1, {"code": "LAB", "title": _label("Laboratory"), "code_lists": {
        "POSNEG": [{"value": "NEG", "labels": _label("NEGATIVE")}, {"value": "POS", "labels": _label("POSITIVE")}]},
        "items": [
            {"code": "hgb", "type": "decimal", "label": _label("Haemoglobin"), "unit": "g/dL", "precision": 1,
             "cdisc": {"domain": "LB", "testcd": "HGB", "test": "Hemoglobin"}},
            {"code": "prot", "type": "single_choice", "code_list": "POSNEG", "label": _label("Urine protein"),
             "cdisc": {"domain": "LB", "testcd": "PROT", "test": "Protein"}},
        ]}),
    FormMeta("QOL", 1, {"code": "QOL", "title": _label("Quality of life"), "code_lists": {
        "Q2": [{"value": "1", "labels": _label("Poor", "差")}, {"value": "2", "labels": {"zh-hans": "一般"}},
               {"value": "3", "labels": _label("Good")}]},
        "items": [
            {"code": "q1", "type": "scale", "scale": {"min": 0, "max": 10}, "label": _label("Pain today"),
             "cdisc": {"domain": "QS", "testcd": "QOL01", "test": "Pain Today"}},
            {"code": "q2", "type": "single_choice", "code_list": "Q2", "label": _label("General health"),
             "cdisc": {"domain": "QS", "testcd": "QOL02", "test": "General Health"}},
        ]}),
    FormMeta("AE", 1, {"code": "AE", "title": _label("Adverse events"), "code_lists": {
        "SEV": [{"value": "1", "labels": _label("MILD")}, {"value": "2", "labels": _label("MODERATE")}]},
        "items": [{"code": "ae", "type": "group", "label": _label("Adverse events"), "items": [
            {"code": "term", "type": "text", "label": _label("Term"), "cdisc": {"domain": "AE", "variable": "AETERM"}},
            {"code": "start", "type": "date", "partial": True, "label": _label("Start"),
             "cdisc": {"domain": "AE", "variable": "AESTDTC"}},
            {"code": "end", "type": "date", "partial": True, "label": _label("End"),
             "cdisc": {"domain": "AE", "variable": "AEENDTC"}},
            {"code": "sev", "type": "single_choice", "code_list": "SEV", "label": _label("Severity"),
             "cdisc": {"domain": "AE", "variable": "AESEV"}},
            {"code": "ser", "type": "yes_no", "label": _label("Serious"),
             "cdisc": {"domain": "AE", "variable": "AESER"}},
        ]}]}),
)
EVENTS = (EventMeta("SCREEN", "Screening", 1, ("VITALS", "LAB")), EventMeta("BASE", "Baseline", 2, ("VITALS", "QOL")),
          EventMeta("W4", "Week 4", 3, ("VITALS", "LAB", "AE")))
STUDY = StudyMeta(oid="ST.SF01", code="SF01", title="Follow-up", events=EVENTS, forms=FORMS)
SNAPSHOT = datetime(2024, 12, 31, 23, 59, 58, tzinfo=UTC)


def _subject(i: int) -> SubjectRecord:
    status = STATUSES[i % 6]
    enrolled = None if status == "screening" else date(2024, 1, 1) + timedelta(days=i)
    return SubjectRecord(subject_key=f"S{i:03d}", site_code=SITES[i % 3], status=status, enrolment_date=enrolled,
                         arm="Drug A" if enrolled and i % 2 else ("Placebo" if enrolled else ""),
                         sex=("M", "F", "")[i % 3], birth_year=1984 - i if i % 5 else None, age=40 + i,
                         country="chn", status_date=enrolled + timedelta(days=100) if status in EXPECTED_DS
                         and enrolled else None)


def _visits_of(i: int) -> list[tuple[str, int, bool, date, float, str]]:
    subject = _subject(i)
    if subject.enrolment_date is None:
        return [("SCREEN", 1, False, date(2024, 3, 1), 1.0, "Screening")]
    return [(code, seq, uns, subject.enrolment_date + timedelta(days=days), num, name)
            for code, seq, uns, days, num, name in VISITS]


def _weight(i: int, visit: int) -> float:
    return round(60 + i + visit * 0.5, 1)


def _ae_rows(i: int) -> list[dict[str, Any]]:
    start = (date(2024, 1, 1) + timedelta(days=i + 30)).isoformat()
    end = (date(2024, 1, 1) + timedelta(days=i + 35)).isoformat()
    return [{"term": "Headache", "start": "2024-05", "sev": "1", "ser": "0"},
            {"term": "头痛", "start": start, "end": end, "sev": "2", "ser": "1"},
            {"term": "Nausea", "start": "2023", "end": None, "sev": None, "ser": "0"}]


def _entries_of(i: int) -> Iterator[EntryRecord]:
    subject = _subject(i)
    for index, (code, seq, _, when, _, _) in enumerate(_visits_of(i)):
        if code == "UNS" and seq == 2:
            continue  # a visit without data
        values: dict[str, Any] = {"weight": _weight(i, index), "sbp": 120 + i, "note": "ok"}
        missing = {}
        if code == "BASE" and i % 4 == 0:
            del values["weight"]
            missing = {"weight": "NA"}
        forms = [("VITALS", values, missing)]
        if code in ("SCREEN", "W4"):
            forms.append(("LAB", {"hgb": 13.0 + (i % 5) / 10, "prot": "POS" if i % 2 else "NEG"}, {}))
        if code == "BASE":
            forms.append(("QOL", {"q1": i % 11, "q2": str(i % 3 + 1)}, {}))
        if code == "W4":
            forms.append(("AE", {"ae": _ae_rows(i)}, {}))
        for form, form_values, form_missing in sorted(forms, key=lambda f: f[0]):
            yield EntryRecord(subject.subject_key, subject.site_code, code, seq, form, 1, "complete", form_values,
                              form_missing, visit_date=when)


def _study(count: int = 30) -> StudyData:
    subjects = [_subject(i) for i in range(count)]
    visits = (VisitRecord(f"S{i:03d}", code, seq, when, when, uns)
              for i in range(count) for code, seq, uns, when, _, _ in _visits_of(i))
    entries = (entry for i in range(count) for entry in _entries_of(i))
    return StudyData(study=STUDY, snapshot_at=SNAPSHOT, subjects=subjects, visits=visits, entries=entries)


def _usubjid(i: int) -> str:
    return f"{STUDYID}-{SITES[i % 3]}-S{i:03d}"


def _built() -> dict[str, tuple[DatasetSpec, list[tuple[object, ...]]]]:
    return {spec.name: (spec, list(rows)) for spec, rows in sdtm_build(_study(), studyid=STUDYID)}


def _frame_rows(spec: DatasetSpec, rows: list[tuple[object, ...]]) -> list[dict[str, object]]:
    return [dict(zip([v.name for v in spec.variables], row, strict=True)) for row in rows]


def _same(value: object, read: object) -> bool:
    """XPT has no None: a missing Char reads back as "", a missing Num as NaN."""
    if value is None or value == "":
        return read == "" or (isinstance(read, float) and math.isnan(read))
    if isinstance(value, int | float):
        return isinstance(read, float) and read == float(value)
    return value == read


# --- end to end --------------------------------------------------------------------------------

def test_every_domain_is_written_as_xpt_v5_and_reads_back_identical(tmp_path: Path) -> None:
    built = _built()
    assert list(built) == ["DM", "SV", "DS", "AE", "VS", "LB", "QS"]
    written = sdtm_write(_study(), studyid=STUDYID, directory=tmp_path)
    assert [spec.name for spec in written] == list(built)
    for spec in written:
        source_spec, rows = built[spec.name]
        path = tmp_path / f"{spec.name.lower()}.xpt"
        data = path.read_bytes()
        assert data.startswith(b"HEADER RECORD*******LIBRARY HEADER RECORD!!!!!!!")  # v5 (v8 says LIBV8)
        assert b"31DEC24:23:59:58" in data[:800]  # the snapshot time, not the clock
        assert spec.rows == len(rows) == source_spec.rows
        _, meta = pyreadstat.read_xport(str(path), metadataonly=True)
        assert meta.table_name == spec.name and meta.file_label == spec.label
        assert meta.column_names == [v.name for v in source_spec.variables]
        assert meta.column_labels == [v.label for v in source_spec.variables]
        assert meta.variable_storage_width == {v.name: v.length for v in source_spec.variables}
        assert all(len(v.label) <= 40 and len(v.name) <= 8 for v in source_spec.variables)
        frame, _ = pyreadstat.read_xport(str(path))
        assert len(frame) == len(rows)
        for number, (row, read) in enumerate(zip(rows, frame.itertuples(index=False), strict=True), 1):
            for variable, value, got in zip(source_spec.variables, row, read, strict=True):
                assert _same(value, got), (spec.name, number, variable.name, value, got)


def test_the_read_back_domains_pass_every_check(tmp_path: Path) -> None:
    sdtm_write(_study(), studyid=STUDYID, directory=tmp_path)
    domains = []
    for name in ("DM", "SV", "DS", "AE", "VS", "LB", "QS"):
        frame, meta = pyreadstat.read_xport(str(tmp_path / f"{name.lower()}.xpt"))
        spec = DatasetSpec(name, meta.file_label, "", "", (), tuple(
            VariableSpec(n, lbl, "Char", 1) for n, lbl in zip(meta.column_names, meta.column_labels, strict=True)))
        domains.append((spec, [tuple(row) for row in frame.itertuples(index=False)]))
    assert sdtm_check(domains) == []
    assert sdtm_check((spec, rows) for spec, rows in sdtm_build(_study(), studyid=STUDYID)) == []


def test_a_second_run_gives_the_same_bytes(tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    sdtm_write(_study(), studyid=STUDYID, directory=tmp_path / "one")
    sdtm_write(_study(), studyid=STUDYID, directory=tmp_path / "two")
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == ["ae.xpt", "dm.xpt", "ds.xpt", "lb.xpt", "qs.xpt", "sv.xpt", "vs.xpt"]
    for name in names:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


# --- content, against expectations computed from the synthetic study ---------------------------

def test_dm_has_one_row_per_subject_sorted_by_usubjid() -> None:
    spec, rows = _built()["DM"]
    dm = _frame_rows(spec, rows)
    assert [row["USUBJID"] for row in dm] == sorted(_usubjid(i) for i in range(30))
    assert spec.keys == ("STUDYID", "USUBJID") and spec.domain_class == "SPECIAL PURPOSE"
    by_id = {row["USUBJID"]: row for row in dm}
    for i in range(30):
        row = by_id[_usubjid(i)]
        subject = _subject(i)
        assert row["SUBJID"] == f"S{i:03d}" and row["SITEID"] == SITES[i % 3] and row["DOMAIN"] == "DM"
        assert row["RFSTDTC"] == (subject.enrolment_date.isoformat() if subject.enrolment_date else "")
        assert row["AGE"] == 40 + i and row["AGEU"] == "YEARS"
        assert row["SEX"] == ("M", "F", "U")[i % 3]
        assert row["BRTHDTC"] == (str(1984 - i) if i % 5 else "")
        assert row["COUNTRY"] == "CHN"
        assert (row["ARMCD"], row["ARM"]) == (("DRUG_A", "Drug A") if subject.arm == "Drug A" else
                                              ("PLACEBO", "Placebo") if subject.arm else ("", ""))


def test_sv_numbers_unscheduled_visits_after_the_previous_scheduled_one() -> None:
    spec, rows = _built()["SV"]
    sv = _frame_rows(spec, rows)
    for i in (1, 2, 7):
        got = [(r["VISITNUM"], r["VISIT"], r["SVSTDY"]) for r in sv if r["USUBJID"] == _usubjid(i)]
        assert got == [(1.0, "Screening", -14), (2.0, "Baseline", 1), (2.1, "UNSCHEDULED 2.1", 11),
                       (3.0, "Week 4", 29), (3.1, "UNSCHEDULED 3.1", 41)]
    screening = [r for r in sv if r["USUBJID"] == _usubjid(0)]
    assert [(r["VISITNUM"], r["SVSTDTC"], r["SVSTDY"]) for r in screening] == [(1.0, "2024-03-01", None)]
    assert len(sv) == 25 * 5 + 5


def test_ds_maps_every_disposition() -> None:
    spec, rows = _built()["DS"]
    ds = _frame_rows(spec, rows)
    expected = {_usubjid(i): EXPECTED_DS[STATUSES[i % 6]] for i in range(30) if STATUSES[i % 6] in EXPECTED_DS}
    assert {r["USUBJID"]: r["DSDECOD"] for r in ds} == expected
    assert set(expected.values()) == set(EXPECTED_DS.values())
    for r in ds:
        assert r["DSCAT"] == "DISPOSITION EVENT" and r["DSSEQ"] == 1 and r["DSSTDY"] == 101
        i = int(str(r["USUBJID"])[-3:])
        assert r["DSSTDTC"] == (date(2024, 1, 1) + timedelta(days=i + 100)).isoformat()


def test_vs_results_units_visits_and_study_days() -> None:
    spec, rows = _built()["VS"]
    vs = _frame_rows(spec, rows)
    assert spec.keys == ("STUDYID", "USUBJID", "VSTESTCD", "VISITNUM") and spec.domain_class == "FINDINGS"
    for i in (3, 4):
        mine = [r for r in vs if r["USUBJID"] == _usubjid(i)]
        assert [r["VSSEQ"] for r in mine] == list(range(1, len(mine) + 1))
        weights = [(r["VISITNUM"], r["VSORRES"], r["VSSTRESN"], r["VSORRESU"], r["VSSTAT"], r["VSDY"])
                   for r in mine if r["VSTESTCD"] == "WEIGHT"]
        expected = []
        for index, (code, seq, _, days, num, _) in enumerate(VISITS):
            if (code, seq) == ("UNS", 2):
                continue
            if code == "BASE" and i % 4 == 0:
                expected.append((num, "", None, "", "NOT DONE", days + 1 if days >= 0 else days))
            else:
                value = _weight(i, index)
                expected.append((num, f"{value:.1f}", value, "kg", "", days + 1 if days >= 0 else days))
        assert weights == expected
        sbp = {r["VSORRES"] for r in mine if r["VSTESTCD"] == "SYSBP"}
        assert sbp == {str(120 + i)}
    assert {r["VSTEST"] for r in vs} == {"Weight", "Systolic Blood Pressure"}
    assert next(r for r in vs if r["VSSTAT"] == "NOT DONE")["VSREASND"] == "NOT APPLICABLE"


def test_lb_and_qs_decode_code_lists() -> None:
    built = _built()
    lb = _frame_rows(*built["LB"])
    protein = {(r["USUBJID"], r["VISITNUM"]): r["LBORRES"] for r in lb if r["LBTESTCD"] == "PROT"}
    assert protein[(_usubjid(1), 3.0)] == "POSITIVE" and protein[(_usubjid(2), 1.0)] == "NEGATIVE"
    hgb = next(r for r in lb if r["LBTESTCD"] == "HGB" and r["USUBJID"] == _usubjid(3))
    assert (hgb["LBORRES"], hgb["LBSTRESN"], hgb["LBORRESU"]) == ("13.3", 13.3, "g/dL")
    qs = _frame_rows(*built["QS"])
    q2 = {r["USUBJID"]: (r["QSORRES"], r["QSSTRESC"], r["QSSTRESN"]) for r in qs if r["QSTESTCD"] == "QOL02"}
    assert q2[_usubjid(9)] == ("Poor", "1", 1.0)
    assert q2[_usubjid(7)] == ("一般", "2", 2.0)  # no English label: the Chinese one, intact
    assert {r["QSCAT"] for r in qs} == {"QUALITY OF LIFE"}


def test_ae_rows_sequence_and_partial_dates() -> None:
    spec, rows = _built()["AE"]
    ae = _frame_rows(spec, rows)
    assert [v.name for v in spec.variables] == ["STUDYID", "DOMAIN", "USUBJID", "AESEQ", "AETERM", "AESEV", "AESER",
                                                "AESTDTC", "AEENDTC", "AESTDY", "AEENDY"]
    mine = [r for r in ae if r["USUBJID"] == _usubjid(1)]
    # key order: AESTDTC, then AETERM: "2023" < "2024-02-01" < "2024-05"; RFSTDTC is 2024-01-02
    assert [(r["AESEQ"], r["AETERM"], r["AESTDTC"], r["AESTDY"], r["AEENDY"], r["AESEV"], r["AESER"])
            for r in mine] == [(1, "Nausea", "2023", None, None, "", "N"),
                               (2, "头痛", "2024-02-01", 31, 36, "MODERATE", "Y"),
                               (3, "Headache", "2024-05", None, None, "MILD", "N")]
    assert len(ae) == 25 * 3


# --- errors of mapping -------------------------------------------------------------------------

def test_an_unusable_testcd_is_refused_with_the_form_and_item() -> None:
    form = FormMeta("VITALS", 2, {"code": "VITALS", "items": [
        {"code": "heart_rate", "type": "integer", "label": _label("HR"), "cdisc": {"domain": "VS"}}]})
    study = StudyMeta(oid="X", code="X", title="X", forms=(form,))
    data = StudyData(study=study, snapshot_at=SNAPSHOT, subjects=[], visits=iter(()), entries=iter(()))
    with pytest.raises(SdtmError, match=re.escape("Form VITALS v2, item heart_rate: VSTESTCD 'HEART_RATE'")):
        next(sdtm_build(data, studyid=STUDYID))


def test_entries_out_of_subject_order_are_refused() -> None:
    data = _study(3)
    entries = sorted(data.entries, key=lambda e: e.subject_key, reverse=True)
    shuffled = StudyData(study=STUDY, snapshot_at=SNAPSHOT, subjects=data.subjects, visits=data.visits,
                         entries=iter(entries))
    message = "Entries of subject 'S001': no such subject, or not in the subjects' order"
    with pytest.raises(SdtmError, match=re.escape(message)):
        next(sdtm_build(shuffled, studyid=STUDYID))


def test_a_value_over_200_bytes_is_refused_naming_domain_and_subject() -> None:
    data = _study(2)
    entries = [EntryRecord(e.subject_key, e.site_code, e.event_code, e.sequence, e.form_code, 1, "complete",
                           {"ae": [{"term": "头" * 67}]} if e.form_code == "AE" else e.values, e.missing,
                           visit_date=e.visit_date) for e in data.entries]
    data = StudyData(study=STUDY, snapshot_at=SNAPSHOT, subjects=data.subjects, visits=data.visits,
                     entries=iter(entries))
    with pytest.raises(SdtmError, match=re.escape(f"AE, USUBJID {_usubjid(1)}, AETERM: the value is 201 bytes")):
        next(sdtm_build(data, studyid=STUDYID))



def _with_entries(data: StudyData, entries: list[EntryRecord]) -> StudyData:
    return StudyData(study=STUDY, snapshot_at=SNAPSHOT, subjects=data.subjects, visits=data.visits,
                     entries=iter(entries))


def _unknown_form(entry: EntryRecord) -> EntryRecord:
    return EntryRecord(entry.subject_key, entry.site_code, entry.event_code, entry.sequence, "NOFORM", 1,
                       "complete", {}, visit_date=entry.visit_date)


def _long_term(entry: EntryRecord) -> EntryRecord:
    return EntryRecord(entry.subject_key, entry.site_code, entry.event_code, entry.sequence, entry.form_code, 1,
                       "complete", {"ae": [{"term": "头" * 67}]}, visit_date=entry.visit_date)


@pytest.mark.parametrize(("long_in", "unknown_in", "message"), [
    ("S001", "S004", f"AE, USUBJID {_usubjid(1)}, AETERM: the value is 201 bytes"),
    ("S004", "S001", "Entry of subject S001: form NOFORM v1 is not in the study's forms."),
])
def test_the_first_of_two_errors_is_the_one_raised(long_in: str, unknown_in: str, message: str) -> None:
    # Widths are measured a few thousand rows at a time: a too-long value seen before
    # another error must still win over it, and one seen after must not.
    data = _study(6)
    entries = [_long_term(e) if e.subject_key == long_in and e.form_code == "AE"
               else _unknown_form(e) if e.subject_key == unknown_in and e.form_code == "LAB" else e
               for e in data.entries]
    with pytest.raises(SdtmError, match=re.escape(message)):
        next(sdtm_build(_with_entries(data, entries), studyid=STUDYID))


def test_a_too_long_dm_value_wins_over_a_later_error_of_the_same_subject() -> None:
    data = _study(4)
    subjects = [replace(subject, country="x" * 201) if subject.subject_key == "S001" else subject
                for subject in data.subjects]
    entries = [_unknown_form(e) if e.subject_key == "S001" and e.form_code == "LAB" else e for e in data.entries]
    data = StudyData(study=STUDY, snapshot_at=SNAPSHOT, subjects=subjects, visits=data.visits, entries=iter(entries))
    with pytest.raises(SdtmError, match=re.escape(f"DM, USUBJID {_usubjid(1)}, COUNTRY: the value is 201 bytes")):
        next(sdtm_build(data, studyid=STUDYID))


@pytest.mark.parametrize(("subject", "usubjid"), [("S00050", "BIG-03-S00050"), ("S00140", "BIG-03-S00140")])
def test_a_too_long_value_anywhere_in_a_large_study_is_found(subject: str, usubjid: str) -> None:
    study = _big_study(150)  # 15,000 LB rows: more than one batch of measured rows
    entries = [EntryRecord(e.subject_key, e.site_code, e.event_code, e.sequence, e.form_code, 1, "complete",
                           {**e.values, "v3": "x" * 201} if (e.subject_key, e.event_code) == (subject, "V2")
                           else e.values, visit_date=e.visit_date) for e in study.entries]
    data = StudyData(study=study.study, snapshot_at=SNAPSHOT, subjects=study.subjects, visits=study.visits,
                     entries=iter(entries))
    with pytest.raises(SdtmError, match=re.escape(f"LB, USUBJID {usubjid}, LBORRES: the value is 201 bytes")):
        next(sdtm_build(data, studyid="BIG"))


def test_decimals_without_a_precision_are_written_as_entered() -> None:
    # (value as JSON gives it, the text a reader expects: no exponent, no trailing zeros)
    cases = [(100.0, "100"), (2.5, "2.5"), (1e-05, "0.00001"), (123456789.125, "123456789.125"),
             (1e16, "10000000000000000"), (-0.75, "-0.75"), (7, "7"), (0.1 + 0.2, "0.30000000000000004")]
    entries = [EntryRecord("S00000", "01", f"V{n}", 1, "BIG", 1, "complete", {"v0": value},
                           visit_date=date(2024, 1, 1)) for n, (value, _) in enumerate(cases)]
    study = StudyMeta(oid="BIG", code="BIG", title="Big",
                      events=tuple(EventMeta(f"V{n}", f"Visit {n}", n + 1, ("BIG",)) for n in range(len(cases))),
                      forms=(BIG_FORM,))
    data = StudyData(study=study, snapshot_at=SNAPSHOT, visits=iter(()), entries=iter(entries),
                     subjects=[SubjectRecord("S00000", "01", "enrolled", date(2024, 1, 1))])
    lb = next((spec, list(rows)) for spec, rows in sdtm_build(data, studyid="BIG") if spec.name == "LB")
    found = [(row["LBORRES"], row["LBSTRESN"]) for row in _frame_rows(*lb)]
    assert found == [(text, float(value)) for value, text in cases]

# --- sdtm_check, one violation each ------------------------------------------------------------

DM_SPEC = DatasetSpec("DM", "Demographics", "SPECIAL PURPOSE", "", ("USUBJID",), (
    VariableSpec("USUBJID", "Unique Subject Identifier", "Char", 10),
    VariableSpec("RFSTDTC", "Subject Reference Start Date/Time", "Char", 10)))
VS_SPEC = DatasetSpec("VS", "Vital Signs", "FINDINGS", "", ("USUBJID",), (
    VariableSpec("USUBJID", "Unique Subject Identifier", "Char", 10),
    VariableSpec("VSSEQ", "Sequence Number", "Num", 8),
    VariableSpec("VSDTC", "Date/Time of Measurements", "Char", 10),
    VariableSpec("VSDY", "Study Day of Vital Signs", "Num", 8)))
DM_ROWS = [("A", "2024-01-10"), ("B", "2024-02-01")]


def _check(dm: list[tuple[object, ...]], vs: list[tuple[object, ...]]) -> list[str]:
    return sdtm_check([(DM_SPEC, dm), (VS_SPEC, vs)])


def test_check_accepts_consistent_rows() -> None:
    assert _check(DM_ROWS, [("A", 1, "2024-01-10", 1), ("A", 2, "2024-01-09", -1), ("A", 3, "2024-01", None),
                            ("B", 1, "2024-02-11T08:30", 11.0), ("B", 2.0, "", float("nan"))]) == []


def test_check_one_dm_row_per_usubjid() -> None:
    assert _check([*DM_ROWS, ("A", "2024-01-10")], []) == ["DM row 3: USUBJID A has more than one DM row."]


def test_check_usubjid_must_be_in_dm() -> None:
    assert _check(DM_ROWS, [("C", 1, "", None)]) == ["VS row 1: USUBJID C is not in DM."]


def test_check_seq_unique_within_usubjid() -> None:
    assert _check(DM_ROWS, [("A", 1, "", None), ("A", 1.0, "", None), ("B", 1, "", None)]) == [
        "VS row 2: VSSEQ 1 is used twice for USUBJID A."]


def test_check_dtc_is_iso_8601() -> None:
    assert _check(DM_ROWS, [("A", 1, "10/01/2024", None), ("A", 2, "2024-13", None), ("A", 3, "2024-02-30", None)]) \
        == ["VS row 1: VSDTC '10/01/2024' is not ISO 8601.", "VS row 2: VSDTC '2024-13' is not ISO 8601.",
            "VS row 3: VSDTC '2024-02-30' is not ISO 8601."]


def test_check_dy_is_never_zero() -> None:
    assert _check(DM_ROWS, [("A", 1, "2024-01-10", 0)]) == ["VS row 1: VSDY is 0; there is no study day 0."]


def test_check_dy_agrees_with_rfstdtc() -> None:
    assert _check(DM_ROWS, [("A", 1, "2024-01-09", 0.0 + -2), ("A", 2, "2024-01-12", None),
                            ("A", 3, "2024-05", 5)]) == [
        "VS row 1: VSDY is -2 but the date and RFSTDTC give -1.",
        "VS row 2: VSDY is missing but the date and RFSTDTC give 3.",
        "VS row 3: VSDY is 5 but the date '2024-05' or RFSTDTC is partial or missing."]


def test_check_needs_dm_first() -> None:
    assert sdtm_check([(VS_SPEC, []), (DM_SPEC, DM_ROWS)]) == ["VS: DM must come before the other domains."]


# --- memory --------------------------------------------------------------------------------------

BIG_FORM = FormMeta("BIG", 1, {"code": "BIG", "items": [
    {"code": f"v{n}", "type": "decimal", "label": _label(f"Value {n}"), "unit": "mg/L",
     "cdisc": {"domain": "LB", "testcd": f"T{n:02d}", "test": f"Test {n}"}} for n in range(20)]})
BIG_EVENTS = tuple(EventMeta(f"V{n}", f"Visit {n}", n + 1, ("BIG",)) for n in range(5))


def _big_study(subjects: int) -> StudyData:
    def subject(i: int) -> SubjectRecord:
        return SubjectRecord(f"S{i:05d}", SITES[i % 3], "enrolled", date(2024, 1, 1))

    def visits() -> Iterator[VisitRecord]:
        for i in range(subjects):
            for n in range(5):
                yield VisitRecord(f"S{i:05d}", f"V{n}", 1, date(2024, 1, 1) + timedelta(days=7 * n))

    def entries() -> Iterator[EntryRecord]:
        for i in range(subjects):
            for n in range(5):
                yield EntryRecord(f"S{i:05d}", SITES[i % 3], f"V{n}", 1, "BIG", 1, "complete",
                                  {f"v{k}": i + k / 4 for k in range(20)},
                                  visit_date=date(2024, 1, 1) + timedelta(days=7 * n))

    study = StudyMeta(oid="BIG", code="BIG", title="Big", events=BIG_EVENTS, forms=(BIG_FORM,))
    return StudyData(study=study, snapshot_at=SNAPSHOT, subjects=(subject(i) for i in range(subjects)),
                     visits=visits(), entries=entries())


def test_memory_stays_flat_for_200k_values(tmp_path: Path) -> None:
    tracemalloc.start()
    try:
        written = sdtm_write(_big_study(2000), studyid="BIG", directory=tmp_path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    counts = {spec.name: spec.rows for spec in written}
    assert counts == {"DM": 2000, "SV": 10_000, "DS": 0, "LB": 200_000}
    # The 200k LB rows as Python tuples would take well over 100 MB; the spools keep them on disk.
    assert peak < 40 * 1024 * 1024, peak
    frame, _ = pyreadstat.read_xport(str(tmp_path / "lb.xpt"), row_offset=199_999)
    # The last row in USUBJID order: the highest subject of site 03, its last LBSEQ.
    assert frame[["USUBJID", "LBSEQ"]].values.tolist() == [["BIG-03-S01997", 100.0]]


def test_whole_lb_dataset_is_sorted_and_complete_after_streaming(tmp_path: Path) -> None:
    sdtm_write(_big_study(60), studyid="BIG", directory=tmp_path)
    frame, _ = pyreadstat.read_xport(str(tmp_path / "lb.xpt"))
    assert len(frame) == 60 * 100
    assert frame["USUBJID"].tolist() == sorted(frame["USUBJID"].tolist())
    first = frame[frame["USUBJID"] == "BIG-02-S00001"]
    assert first["LBSEQ"].tolist() == [float(n) for n in range(1, 101)]
    assert sorted(first["LBSTRESN"].tolist()) == sorted(1 + k / 4 for k in range(20) for _ in range(5))
