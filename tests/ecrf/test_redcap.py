"""REDCap data-dictionary import and export (ecrf.redcap, ecrf.redcap_logic).

The sample dictionaries are public files kept outside the repository, in
../shared/data/redcap relative to the repository root; the tests fail (not skip) when
that folder is missing. Pure tests: no database."""

from __future__ import annotations

import copy
import csv
import io
import os
from pathlib import Path
from typing import Any

import pytest

from config.errors import DomainError
from ecrf import redcap
from ecrf.definition import definition_validate, iter_items
from ecrf.logic import logic_evaluate, logic_validate
from ecrf.redcap import (
    FILE_TYPES,
    MAX_DICTIONARY_BYTES,
    REDCAP_HEADER,
    RedcapImport,
    redcap_dictionary_export,
    redcap_dictionary_import,
)
from ecrf.redcap_logic import FieldRef, RedcapLogicError, logic_to_redcap, redcap_to_logic

REPO_ROOT = Path(__file__).resolve().parents[2]


def _samples_dir() -> Path:
    """../shared/data/redcap beside the checkout; REDCAP_SAMPLES_DIR overrides it (a CI
    clone made elsewhere), and the workplace's shared folder is the last resort."""
    candidates = [Path(os.environ["REDCAP_SAMPLES_DIR"])] if os.environ.get("REDCAP_SAMPLES_DIR") else []
    candidates += [REPO_ROOT.parent / "shared" / "data" / "redcap", Path("/work/shared/data/redcap")]
    return next((c for c in candidates if c.is_dir()), candidates[0])


DATA_DIR = _samples_dir()
SAMPLES = (
    "heartland-hf-risk-calctext.csv",
    "redcap-cypress-project1-action-tags.csv",
    "redcap2omop-test-dictionary.csv",
    "redcapr-longitudinal.csv",
    "redcapr-validation-types.csv",
    "tb-crossform-uvassert.csv",
    "tlfb-scoring-module.csv",
)
# file -> (forms, dictionary fields)
EXPECTED_SIZES = {
    "heartland-hf-risk-calctext.csv": (1, 13),
    "redcap-cypress-project1-action-tags.csv": (4, 54),
    "redcap2omop-test-dictionary.csv": (4, 18),
    "redcapr-longitudinal.csv": (9, 95),
    "redcapr-validation-types.csv": (1, 50),
    "tb-crossform-uvassert.csv": (4, 30),
    "tlfb-scoring-module.csv": (1, 22),
}


def sample_bytes(name: str) -> bytes:
    if not DATA_DIR.is_dir():
        pytest.fail(f"The REDCap sample dictionaries are missing: expected the folder {DATA_DIR} "
                    "(../shared/data/redcap relative to the repository root).")
    path = DATA_DIR / name
    if not path.is_file():
        pytest.fail(f"The REDCap sample dictionary {path} is missing.")
    return path.read_bytes()


_cache: dict[str, RedcapImport] = {}


def imported(name: str) -> RedcapImport:
    if name not in _cache:
        _cache[name] = redcap_dictionary_import(content=sample_bytes(name), file_name=name)
    return _cache[name]


def form(result: RedcapImport, code: str) -> dict[str, Any]:
    return next(doc for doc in result.forms if doc["code"] == code)


def item(result: RedcapImport, code: str) -> dict[str, Any]:
    for doc in result.forms:
        for entry in iter_items(doc["items"]):
            if entry["code"] == code:
                return entry
    raise AssertionError(f"no item {code}")


def form_of(result: RedcapImport, code: str) -> dict[str, Any]:
    return next(doc for doc in result.forms if any(entry["code"] == code for entry in iter_items(doc["items"])))


def code_values(result: RedcapImport, code: str) -> list[str]:
    entry = item(result, code)
    return [choice["value"] for choice in form_of(result, code)["code_lists"][entry["code_list"]]]


def entries(result: RedcapImport, *, field: str | None = None, severity: str | None = None,
            contains: str = "") -> list[dict[str, Any]]:
    return [entry for entry in result.report
            if (field is None or entry["field"] == field) and (severity is None or entry["severity"] == severity)
            and contains in entry["message"]]


def rewrite(name: str, *, drop: str | None = None, quoting: int = csv.QUOTE_MINIMAL, terminator: str = "\r\n",
            header: list[str] | None = None) -> bytes:
    rows = list(csv.reader(io.StringIO(sample_bytes(name).decode("utf-8-sig"), newline="")))
    if drop is not None:
        index = rows[0].index(drop)
        rows = [row[:index] + row[index + 1:] for row in rows]
    if header is not None:
        rows[0] = header
    buffer = io.StringIO()
    csv.writer(buffer, quoting=quoting, lineterminator=terminator).writerows(rows)
    return buffer.getvalue().encode("utf-8")


def dictionary(*rows: str, header: tuple[str, ...] = REDCAP_HEADER) -> bytes:
    """A small dictionary CSV; each row is "key=value;;key=value" with the column keys below."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(header)
    keys = ("field_name", "form_name", "section_header", "field_type", "field_label", "choices", "field_note",
            "validation", "validation_min", "validation_max", "identifier", "branching", "required", "alignment",
            "question_number", "matrix_group", "matrix_ranking", "annotation")
    for row in rows:
        cells = dict(part.split("=", 1) for part in row.split(";;"))
        writer.writerow([cells.get(key, "") for key in keys][:len(header)])
    return buffer.getvalue().encode("utf-8")


def all_logic(doc: dict[str, Any]) -> list[Any]:
    return [entry[key] for entry in iter_items(doc["items"]) for key in ("show_if", "calc") if key in entry]


# --- the sample folder -------------------------------------------------------------------------

def test_the_sample_folder_has_all_seven_dictionaries() -> None:
    if not DATA_DIR.is_dir():
        pytest.fail(f"The REDCap sample dictionaries are missing: expected the folder {DATA_DIR}.")
    present = {path.name for path in DATA_DIR.glob("*.csv")}
    assert set(SAMPLES) <= present, f"missing: {sorted(set(SAMPLES) - present)}"


def test_a_missing_sample_folder_fails_with_a_clear_message(monkeypatch: pytest.MonkeyPatch, tmp_path: Path
                                                              ) -> None:
    monkeypatch.setattr(__import__(__name__, fromlist=["DATA_DIR"]), "DATA_DIR", tmp_path / "nowhere")
    with pytest.raises(pytest.fail.Exception, match="REDCap sample dictionaries are missing"):
        sample_bytes(SAMPLES[0])


@pytest.mark.parametrize("name", SAMPLES)
def test_every_sample_imports_into_valid_forms(name: str) -> None:
    result = imported(name)
    forms, fields = EXPECTED_SIZES[name]
    assert result.forms_ok, result.problems
    assert (result.form_count, result.field_count) == (forms, fields)
    assert result.item_count == sum(len(iter_items(doc["items"])) for doc in result.forms) >= fields - 1
    for doc in result.forms:
        assert definition_validate(doc) == {}, doc["code"]
        for expr in all_logic(doc):
            assert logic_validate(expr) == []
    # Every report entry is well formed and points at the physical line of its field.
    lines = sample_bytes(name).decode("utf-8-sig").splitlines()
    for entry in result.report:
        assert set(entry) == {"line", "row", "field", "column", "message", "severity"}
        assert entry["severity"] in ("error", "warning") and entry["message"] and entry["column"]
        assert 1 <= entry["line"] <= len(lines)
        if entry["field"]:
            assert lines[entry["line"] - 1].lstrip('"').startswith((entry["field"] + ",", entry["field"] + '"')), entry
    assert result.error_count + result.warning_count == len(result.report)


@pytest.mark.parametrize("name", SAMPLES)
def test_every_sample_round_trips(name: str) -> None:
    first = imported(name)
    content, report = redcap_dictionary_export(forms=first.forms)
    assert report == []  # everything the importer produces can be written back
    second = redcap_dictionary_import(content=content)
    assert second.forms_ok
    assert second.forms == first.forms
    # Lossy parts are reported once, on the first import; the export adds no new problems.
    assert {(e["field"], e["message"]) for e in second.report} <= {(e["field"], e["message"]) for e in first.report}


# --- redcapr-longitudinal.csv ---------------------------------------------------------------------

def test_longitudinal_forms_types_and_code_lists() -> None:
    result = imported("redcapr-longitudinal.csv")
    assert [doc["code"] for doc in result.forms] == [
        "DEMOGRAPHICS", "CONTACT_INFO", "BASELINE_DATA", "VISIT_LAB_DATA", "PATIENT_MORALE_QUESTIONNAIRE",
        "VISIT_BLOOD_WORKUP", "VISIT_OBSERVED_BEHAVIOR", "COMPLETION_DATA", "COMPLETION_PROJECT_QUESTIONNAI"]
    assert form(result, "COMPLETION_PROJECT_QUESTIONNAI")["title"] == {"en": "Completion project questionnaire"}
    assert entries(result, field="cpq1", contains="COMPLETION_PROJECT_QUESTIONNAI")
    assert item(result, "date_enrolled")["type"] == "date"
    assert item(result, "patient_document")["type"] == "file"
    assert item(result, "telephone_1") == {
        "code": "telephone_1", "type": "text", "label": {"en": "Phone number"}, "help": {"en": "Include Area Code"},
        "format": "phone", "identifier": True}
    assert item(result, "email")["format"] == "email"
    assert item(result, "ethnicity")["widget"] == "radio"
    assert item(result, "race")["type"] == "single_choice" and item(result, "race")["widget"] == "dropdown"
    assert item(result, "given_birth")["type"] == "yes_no"
    assert item(result, "comments")["type"] == "long_text"
    assert item(result, "height")["range"] == {"hard": {"min": 130, "max": 215}}
    assert item(result, "num_children")["range"] == {"hard": {"min": 0}}
    gym = item(result, "gym")
    assert (gym["type"], gym["widget"], gym["matrix_group"]) == ("multiple_choice", "checkbox", "weekly_schedule")
    # The four checkbox rows of the matrix share one code list; the two "Confirmed?" radios too.
    demographics = form(result, "DEMOGRAPHICS")
    assert {item(result, code)["code_list"] for code in ("gym", "aerobics", "eat", "drink")} == {"gym"}
    assert item(result, "next_of_kin_confirmed")["code_list"] == item(result, "ec_confirmed")["code_list"]
    assert code_values(result, "meds") == ["1", "2", "3", "4", "5"]
    # Section headers become section items just before their field.
    codes = [entry["code"] for entry in demographics["items"]]
    assert codes[codes.index("gym") - 1] == "sh_gym"
    assert item(result, "sh_gym") == {"code": "sh_gym", "type": "section", "label": {
        "en": "Please provide the patient's weekly schedule for the activities below."}}
    mood = item(result, "specify_mood")
    assert mood["scale"] == {"min": 0, "max": 100, "step": 1, "min_label": {"en": "Very sad"},
                             "max_label": {"en": "Very happy"}}
    assert [e["line"] for e in entries(result, field="specify_mood")] == [20, 20]


def test_longitudinal_branching_is_json_logic_that_evaluates_like_redcap() -> None:
    result = imported("redcapr-longitudinal.csv")
    condition = item(result, "num_children")["show_if"]
    assert condition == {"and": [{"==": [{"var": "sex"}, "0"]}, {"==": [{"var": "given_birth"}, "1"]}]}
    assert logic_evaluate(condition, {"sex": "0", "given_birth": "1"}) is True
    assert logic_evaluate(condition, {"sex": "1", "given_birth": "1"}) is False
    assert logic_evaluate(condition, {"sex": "0", "given_birth": "0"}) is False
    assert logic_evaluate(condition, {"sex": "0"}) is False
    assert logic_evaluate(item(result, "given_birth")["show_if"], {"sex": "0"}) is True


def test_longitudinal_bmi_calculation() -> None:
    result = imported("redcapr-longitudinal.csv")
    bmi = item(result, "bmi")
    assert bmi["type"] == "calculated"
    assert bmi["calc"] == {"round": [{"/": [{"*": [{"var": "weight"}, 10000]},
                                            {"*": [{"var": "height"}, {"var": "height"}]}]}, 1]}
    assert logic_evaluate(bmi["calc"], {"weight": 70, "height": 175}) == 22.9
    assert logic_evaluate(item(result, "bmi2")["calc"], {"weight2": 80, "height2": 180}) == 24.7


# --- redcapr-validation-types.csv ---------------------------------------------------------------

@pytest.mark.parametrize(("code", "expected"), [
    ("f_text", {"type": "text"}),
    ("f_notes", {"type": "long_text"}),
    ("f_dropdown", {"type": "single_choice", "widget": "dropdown", "code_list": "f_checkbox"}),
    ("f_radio", {"type": "single_choice", "widget": "radio"}),
    ("f_checkbox", {"type": "multiple_choice", "widget": "checkbox"}),
    ("f_yes_no", {"type": "yes_no"}),
    ("f_true_false", {"type": "single_choice", "code_list": "TF", "widget": "radio"}),
    ("f_file_upload", {"type": "file", "file": {"types": FILE_TYPES}}),
    ("f_signature", {"type": "file", "file": {"types": ["image/png"]}}),
    ("f_descriptive", {"type": "section", "label": {"en": "Descriptive Text"}}),
    ("f_slider", {"type": "scale", "scale": {"min": -1, "max": 101, "step": 1, "min_label": {"en": "-1"},
                                             "max_label": {"en": "101"}}}),
    ("v_alpha_only", {"type": "text", "format": "alpha_only"}),
    ("v_date_dmy", {"type": "date"}), ("v_date_mdy", {"type": "date"}), ("v_date_ymd", {"type": "date"}),
    ("v_datetime_dmy", {"type": "datetime"}), ("v_datetime_seconds_ymd", {"type": "datetime"}),
    ("v_email", {"type": "text", "format": "email"}),
    ("v_integer", {"type": "integer"}),
    ("v_mrn_generic", {"type": "text", "format": "mrn"}), ("v_mrn_10d", {"type": "text", "format": "mrn"}),
    ("v_number", {"type": "decimal"}),
    ("v_number_1dp", {"type": "decimal", "precision": 1}),
    ("v_number_4dp", {"type": "decimal", "precision": 4}),
    ("v_number_comma_decimal", {"type": "decimal"}),
    ("v_number_2dp_comma_decimal", {"type": "decimal", "precision": 2}),
    ("v_phone", {"type": "text", "format": "phone"}),
    ("v_phone_australia", {"type": "text"}),
    ("v_ssn", {"type": "text"}),
    ("v_time_hh_mm", {"type": "time"}), ("v_time_hh_mm_ss", {"type": "time"}), ("v_time_mm_ss", {"type": "time"}),
    ("v_zipcode", {"type": "text", "format": "zipcode"}),
])
def test_validation_types_translate(code: str, expected: dict[str, Any]) -> None:
    entry = item(imported("redcapr-validation-types.csv"), code)
    assert {key: entry.get(key) for key in expected} == expected
    if entry["type"] == "text":
        assert entry.get("format") == expected.get("format")


def test_validation_types_report_what_is_lost() -> None:
    result = imported("redcapr-validation-types.csv")
    doc = form(result, "FORM_1")
    assert doc["code_lists"]["TF"] == [{"value": "1", "labels": {"en": "True"}},
                                       {"value": "0", "labels": {"en": "False"}}]
    assert logic_evaluate(item(result, "f_calculated")["calc"], {}) == 7
    assert "f_sql" not in {entry["code"] for entry in doc["items"]}
    (sql,) = entries(result, field="f_sql")
    assert (sql["line"], sql["severity"], sql["column"]) == (12, "error", "Field Type")
    assert "sql" in sql["message"]
    assert entries(result, field="f_signature", contains="PNG")[0]["line"] == 10
    assert entries(result, field="f_slider", contains="middle slider label '50'")
    for code in ("v_phone_australia", "v_postalcode_australia", "v_postalcode_canada", "v_postalcode_french",
                 "v_postalcode_germany", "v_ssn", "v_time_mm_ss", "v_mrn_10d", "v_vmrn", "v_date_dmy",
                 "v_datetime_seconds_mdy", "v_number_comma_decimal"):
        assert entries(result, field=code, severity="warning"), code
    for code in ("v_date_ymd", "v_integer", "v_number_2dp", "v_email", "v_zipcode", "f_radio"):
        assert not entries(result, field=code), code


# --- redcap2omop-test-dictionary.csv -------------------------------------------------------------

def test_redcap2omop_codes_html_and_piping() -> None:
    result = imported("redcap2omop-test-dictionary.csv")
    assert code_values(result, "hcw") == ["1", "99", "0"]  # out of order, kept in the given order
    assert code_values(result, "smoking_product") == ["722495000", "UNK", "OTH", "722496004", "722498003",
                                                      "722497008"]
    assert code_values(result, "race")[-1] == "99"
    assert item(result, "smoking_product")["label"] == {
        "en": "Types of inhaled smoking products. Check all that apply."}
    (markup,) = entries(result, field="smoking_product")
    assert (markup["line"], markup["severity"]) == (10, "warning") and "HTML" in markup["message"]
    (piping,) = entries(result, field="blah1")
    assert piping["line"] == 13 and piping["column"] == "Field Label"
    assert "[phone_follow_up_arm_1][v_d][1]" in piping["message"] and "across events" in piping["message"]
    test_calc = item(result, "test_calc")
    assert test_calc["calc"] == {"+": [{"var": "moca"}, {"var": "mood"}]}
    assert logic_evaluate(test_calc["calc"], {"moca": 25, "mood": 50}) == 75


# --- tlfb-scoring-module.csv ---------------------------------------------------------------------

def test_tlfb_readonly_and_html_descriptive() -> None:
    result = imported("tlfb-scoring-module.csv")
    intro = item(result, "tlfb_screen_instructions")
    assert intro["type"] == "section"
    assert intro["label"]["en"] == ("Administering RA:\nThis form will be filled automatically after completing "
                                    "the timeline follow-back.")
    assert entries(result, field="tlfb_screen_instructions", contains="HTML")[0]["line"] == 2
    days = item(result, "tlfb_days")
    assert (days["readonly"], days["required"], days["annotation"]) == (True, "hard", " @READONLY ")
    assert days["range"] == {"hard": {"min": 0}}
    assert item(result, "tlfb_etoh_avg_days")["range"] == {"hard": {"min": 0, "max": 7}}
    assert item(result, "tlfb_date")["type"] == "datetime" and item(result, "tlfb_date")["readonly"] is True
    assert sum(1 for entry in iter_items(result.forms[0]["items"]) if entry.get("readonly")) == 21
    assert [entry["code"] for entry in result.forms[0]["items"] if entry["type"] == "section"] == [
        "tlfb_screen_instructions", "sh_tlfb_etoh_total_days", "sh_tlfb_mj_total_days", "sh_tlfb_nic_total_days"]


# --- heartland-hf-risk-calctext.csv (every cell quoted) -----------------------------------------

def test_heartland_nested_if_calc_and_calctext() -> None:
    result = imported("heartland-hf-risk-calctext.csv")
    score = item(result, "hl_risk_score_sc")
    assert score["type"] == "calculated"
    patient = {"hl_age_sc": 80, "hl_hosp6m_sc": "1", "hl_egfr_sc": 40, "hl_np_type_sc": "1", "hl_np_value_sc": 600,
               "hl_sbp_sc": 120, "hl_diabetes_sc": "0", "hl_lvef_sc": 25, "hl_ckm_sc": "3",
               "hl_cardio_distance_sc": 60, "hl_limited_support_sc": "1"}
    assert logic_evaluate(score["calc"], patient) == 2 + 3 + 2 + 2 + 0 + 0 + 2 + 2 + 1 + 1
    assert logic_evaluate(score["calc"], {**patient, "hl_np_type_sc": "2"}) == 15 - 2  # NT-proBNP 600 < 1500
    tier = item(result, "hl_risk_tier_sc")
    assert tier["type"] == "calculated" and tier["annotation"].startswith("@CALCTEXT(")
    assert [logic_evaluate(tier["calc"], {"hl_risk_score_sc": s}) for s in (3, 6, 12)] == ["low", "moderate", "high"]
    assert item(result, "hl_age_sc")["range"] == {"hard": {"min": 18, "max": 110}}
    assert item(result, "hl_age_sc")["required"] == "hard"
    assert result.report == []


# --- tb-crossform-uvassert.csv ----------------------------------------------------------------

def test_tb_crossform_json_annotations_are_kept_and_reported() -> None:
    result = imported("tb-crossform-uvassert.csv")
    assert [doc["code"] for doc in result.forms] == ["TB_SCREENING", "TB_DIAGNOSIS", "TB_TREATMENT", "TB_OUTCOME"]
    annotation = item(result, "dx_cd4")["annotation"]
    assert annotation.startswith('@UVASSERT={"assert":"[dx_cd4]>\'0\'","when":"[scr_hiv_status]=\'1\'"')
    assert item(result, "record_id")["label"] == {"en": "Record ID"}
    assert "—" in item(result, "sh_record_id")["label"]["en"]
    lines = {entry["line"] for entry in entries(result, contains="@UVASSERT")}
    assert lines == {13, 14, 15, 16, 17, 20, 21, 23, 24, 25, 27, 28, 30, 31}
    assert all(entry["severity"] == "warning" for entry in result.report)


# --- redcap-cypress-project1-action-tags.csv ---------------------------------------------------

def test_cypress_action_tags_codes_and_comma_decimals() -> None:
    result = imported("redcap-cypress-project1-action-tags.csv")
    assert code_values(result, "radio") == ["9..9", "100", "101"]
    assert item(result, "radio_button_manual")["default"] == "100"
    assert code_values(result, "multiple_dropdown_manual") == ["5", "7", "6"]
    assert item(result, "multiple_dropdown_manual")["default"] == "5"
    assert item(result, "checkbox")["default"] == ["1"]
    assert item(result, "name")["default"] == "Name "
    assert item(result, "integer")["default"] == 1 and item(result, "integer")["range"] == {
        "hard": {"min": 0, "max": 2}}
    comma = item(result, "number_1_comma")
    assert (comma["type"], comma["precision"], comma["range"], comma["default"]) == (
        "decimal", 1, {"hard": {"min": 0.0, "max": 3.0}}, 2.0)
    when = item(result, "datetime_ymd_hm")
    assert when["range"] == {"hard": {"min": "2023-08-01T01:01", "max": "2023-08-31T01:59"}}
    assert when["default"] == "2023-08-01T01:02"
    assert item(result, "signature")["file"] == {"types": ["image/png"]}
    assert item(result, "required")["required"] == "hard"
    assert item(result, "identifier")["identifier"] is True
    assert item(result, "calc_test")["calc"] == {"*": [3, 2]}
    assert "default" not in item(result, "ptname")
    (piped,) = entries(result, field="ptname")
    assert piped["line"] == 5 and "piping" in piped["message"]
    now_lines = [entry["line"] for entry in entries(result, contains="@NOW")]
    today_lines = [entry["line"] for entry in entries(result, contains="@TODAY")]
    assert now_lines == [28, 29, 30, 31, 33, 34] and today_lines == [25, 26, 27, 54]
    assert entries(result, field="number_1_comma", contains="comma")
    # A whitespace-only section header is nothing, not an empty section.
    data_types = form(result, "DATA_TYPES")
    assert "sh_descriptive_text_file" not in {entry["code"] for entry in iter_items(data_types["items"])}


# --- reading variants ----------------------------------------------------------------------------

def test_the_17_column_variant_without_field_annotation() -> None:
    content = rewrite("redcapr-longitudinal.csv", drop="Field Annotation")
    assert next(csv.reader(io.StringIO(content.decode()))).__len__() == 17
    result = redcap_dictionary_import(content=content)
    assert result.forms == imported("redcapr-longitudinal.csv").forms
    cypress = redcap_dictionary_import(content=rewrite("redcap-cypress-project1-action-tags.csv",
                                                       drop="Field Annotation"))
    assert cypress.forms_ok and not any("annotation" in entry or "default" in entry
                                        for doc in cypress.forms for entry in doc["items"])


def test_every_cell_quoted_and_crlf_records_with_lf_inside_cells() -> None:
    quoted = rewrite("redcapr-longitudinal.csv", quoting=csv.QUOTE_ALL)
    assert quoted.startswith(b'"Variable / Field Name"') and b',"",' in quoted
    assert redcap_dictionary_import(content=quoted).forms == imported("redcapr-longitudinal.csv").forms
    # CRLF between records, LF inside a quoted label (line 3 spans two lines).
    text = sample_bytes("redcapr-validation-types.csv").decode()
    text = text.replace('"Calculated Field"', '"Calculated\nField"').replace("\n", "\r\n").replace(
        '"Calculated\r\nField"', '"Calculated\nField"')
    assert text.count("\r\n") == 51 and text.count("\n") == 52
    result = redcap_dictionary_import(content=text.encode())
    assert item(result, "f_calculated")["label"] == {"en": "Calculated\nField"}
    (sql,) = entries(result, field="f_sql")
    assert (sql["line"], sql["row"]) == (13, 12)  # one physical line further down, same record
    assert text.splitlines()[sql["line"] - 1].startswith("f_sql,")


def test_lf_only_and_cr_only_files() -> None:
    for terminator in ("\n", "\r"):
        content = rewrite("redcapr-validation-types.csv", terminator=terminator)
        result = redcap_dictionary_import(content=content)
        assert result.forms == imported("redcapr-validation-types.csv").forms
        assert entries(result, field="f_sql")[0]["line"] == 12


def test_header_spellings_bom_and_gb18030() -> None:
    machine = ["field_name", "form_name", "section_header", "field_type", "field_label",
               "select_choices_or_calculations", "field_note", "text_validation_type_or_show_slider_number",
               "text_validation_min", "text_validation_max", "identifier", "branching_logic", "required_field",
               "custom_alignment", "question_number", "matrix_group_name", "matrix_ranking", "field_annotation"]
    expected = imported("redcapr-longitudinal.csv").forms
    assert redcap_dictionary_import(content=rewrite("redcapr-longitudinal.csv", header=machine)).forms == expected
    shouting = [h.upper() for h in REDCAP_HEADER]
    assert redcap_dictionary_import(content=rewrite("redcapr-longitudinal.csv", header=shouting)).forms == expected
    with_bom = b"\xef\xbb\xbf" + sample_bytes("redcapr-longitudinal.csv")
    assert redcap_dictionary_import(content=with_bom).forms == expected
    rows = list(csv.reader(io.StringIO(sample_bytes("redcapr-longitudinal.csv").decode(), newline="")))
    buffer = io.StringIO()
    csv.writer(buffer, delimiter=";").writerows(rows)
    assert redcap_dictionary_import(content=buffer.getvalue().encode()).forms == expected

    chinese = dictionary(
        "field_name=record_id;;form_name=随访_visit;;field_type=text;;field_label=编号",
        "field_name=weight;;form_name=随访_visit;;field_type=text;;field_label=<b>体重</b> (kg)&nbsp;;;"
        "validation=number;;field_note=称重前脱鞋",
        "field_name=sex;;form_name=随访_visit;;field_type=radio;;field_label=Sex;;choices=1, 男 | 2, Female",
    ).decode().encode("gb18030")
    result = redcap_dictionary_import(content=chinese)
    doc = result.forms[0]
    assert doc["code"] == "F____VISIT" and doc["title"] == {"en": "随访 visit", "zh-hans": "随访 visit"}
    assert item(result, "weight")["label"] == {"en": "体重 (kg)", "zh-hans": "体重 (kg)"}
    assert item(result, "weight")["help"] == {"en": "称重前脱鞋", "zh-hans": "称重前脱鞋"}
    assert doc["code_lists"]["sex"] == [{"value": "1", "labels": {"en": "男", "zh-hans": "男"}},
                                        {"value": "2", "labels": {"en": "Female"}}]
    assert entries(result, field="weight", contains="HTML")
    assert entries(result, field="record_id", contains="does not fit form codes")


def test_unknown_columns_names_and_types_are_reported() -> None:
    content = dictionary(
        "field_name=record_id;;form_name=f;;field_type=text;;field_label=ID",
        "field_name=Weight-KG;;form_name=f;;field_type=text;;field_label=W;;validation=integer",
        "field_name=x;;form_name=f;;field_type=barcode;;field_label=X",
        "field_name=record_id;;form_name=f;;field_type=text;;field_label=again",
        "field_name=;;form_name=f;;field_type=text;;field_label=nameless",
        "field_name=y;;form_name=f;;field_type=text;;field_label=;;required=maybe;;question_number=3a;;"
        "matrix_ranking=y;;validation_min=1",
        header=(*REDCAP_HEADER, "Colour"),
    )
    result = redcap_dictionary_import(content=content)
    assert result.forms_ok
    assert [entry["code"] for entry in result.forms[0]["items"]] == ["record_id", "weight_kg", "y"]
    assert item(result, "y")["label"] == {"en": "y"}
    messages = [(entry["line"], entry["severity"], entry["column"]) for entry in result.report]
    assert (1, "warning", "Colour") in messages
    assert (3, "warning", "Variable / Field Name") in messages  # Weight-KG imported as weight_kg
    assert (4, "error", "Field Type") in messages
    assert (5, "error", "Variable / Field Name") in messages
    assert (6, "error", "Variable / Field Name") in messages
    assert {entry["column"] for entry in entries(result, field="y")} == {
        "Field Label", "Required Field?", "Question Number (surveys only)", "Matrix Ranking?", "Text Validation Min"}


# --- branching and calculations --------------------------------------------------------------------

LOGIC_DICTIONARY = (
    "field_name=record_id;;form_name=visit;;field_type=text;;field_label=ID",
    "field_name=age;;form_name=visit;;field_type=text;;field_label=Age;;validation=integer",
    "field_name=symptoms;;form_name=visit;;field_type=checkbox;;field_label=S;;choices=1, Cough | 2, Fever | UNK, ?",
    "field_name=fever_days;;form_name=visit;;field_type=text;;field_label=Days;;validation=integer;;"
    "branching=[symptoms(2)] = '1'",
    "field_name=no_cough;;form_name=visit;;field_type=text;;field_label=N;;branching=[symptoms(1)] = \"0\"",
    "field_name=visit_date;;form_name=visit;;field_type=text;;field_label=D;;validation=date_ymd",
    "field_name=dob;;form_name=baseline;;field_type=text;;field_label=DOB;;validation=date_ymd",
    "field_name=adult;;form_name=visit;;field_type=text;;field_label=A;;"
    "branching=datediff([dob], [visit_date], 'y', true) >= 18",
    "field_name=baseline_weight_shown;;form_name=visit;;field_type=text;;field_label=W;;"
    "branching=[baseline_arm_1][dob] <> \"\" and not([age] < 18 or isblankormissingcode([age]))",
    "field_name=instance;;form_name=visit;;field_type=text;;field_label=I;;branching=[age][2] > 3",
    "field_name=event_var;;form_name=visit;;field_type=text;;field_label=E;;branching=[event-name] = 'x'",
    "field_name=absolute;;form_name=visit;;field_type=calc;;field_label=Abs;;choices=abs([age])",
    "field_name=status;;form_name=visit;;field_type=text;;field_label=St;;branching=[visit_complete] = '2'",
    "field_name=score;;form_name=visit;;field_type=calc;;field_label=Score;;"
    "choices=sum([symptoms(1)], [symptoms(2)]) + mean([age], 10) + max(1, 2) - min(3, 4)",
    "field_name=typed;;form_name=visit;;field_type=text;;field_label=T;;branching=[age] = '' or [age] = 'It''s'",
    "field_name=broken;;form_name=visit;;field_type=text;;field_label=B;;branching=([age] > 3",
    "field_name=unsigned;;form_name=visit;;field_type=calc;;field_label=U;;"
    "choices=datediff([dob], 'today', 'd', 'ymd')",
)


def test_branching_translations_and_their_evaluation() -> None:
    result = redcap_dictionary_import(content=dictionary(*LOGIC_DICTIONARY))
    assert result.forms_ok, result.problems
    show = {entry["code"]: entry.get("show_if") for doc in result.forms for entry in doc["items"]}
    assert show["fever_days"] == {"in": ["2", {"var": "symptoms"}]}
    assert logic_evaluate(show["fever_days"], {"symptoms": ["1", "2"]}) is True
    assert logic_evaluate(show["fever_days"], {"symptoms": ["1"]}) is False
    assert show["no_cough"] == {"!": [{"in": ["1", {"var": "symptoms"}]}]}
    assert logic_evaluate(show["no_cough"], {"symptoms": ["2"]}) is True
    assert show["adult"] == {">=": [{"date_diff": ["years", {"var": "BASELINE.dob"}, {"var": "visit_date"}]}, 18]}
    data = {"BASELINE": {"dob": "2000-05-01"}, "visit_date": "2024-04-30"}
    assert logic_evaluate(show["adult"], data) is True
    assert logic_evaluate(show["adult"], {**data, "visit_date": "2018-04-30"}) is False
    shown = show["baseline_weight_shown"]
    assert shown == {"and": [
        {"!": [{"is_empty": [{"var": "BASELINE_ARM_1.BASELINE.dob"}]}]},
        {"!": [{"or": [{"<": [{"var": "age"}, 18]}, {"is_empty": [{"var": "age"}]}]}]}]}
    assert logic_evaluate(shown, {"BASELINE_ARM_1": {"BASELINE": {"dob": "2000-01-01"}}, "age": 30}) is True
    assert logic_evaluate(shown, {"BASELINE_ARM_1": {"BASELINE": {"dob": "2000-01-01"}}, "age": 12}) is False
    assert show["typed"] == {"or": [{"is_empty": [{"var": "age"}]}, {"==": [{"var": "age"}, "It's"]}]}
    score = item(result, "score")
    assert logic_evaluate(score["calc"], {"symptoms": ["2"], "age": 30}) == 1 + 20 + 2 - 3
    # Untranslatable logic: the field stays, without show_if, and the report says so.
    for code, needle in (("instance", "[age][2]"), ("event_var", "[event-name]"), ("status", "form status"),
                         ("broken", "expected ')' but the expression ends")):
        assert show[code] is None
        (problem,) = entries(result, field=code)
        assert problem["severity"] == "error" and problem["column"] == "Branching Logic (Show field only if...)"
        assert needle in problem["message"] and "always shown" in problem["message"], problem
        assert problem["line"] == LOGIC_DICTIONARY.index(
            next(row for row in LOGIC_DICTIONARY if row.startswith(f"field_name={code};;"))) + 2
    absolute = item(result, "absolute")
    assert absolute == {"code": "absolute", "type": "decimal", "label": {"en": "Abs"}, "readonly": True}
    assert "abs()" in entries(result, field="absolute")[0]["message"]
    assert entries(result, field="score", contains="mean()") and entries(result, field="score", contains="sum()")
    assert entries(result, field="unsigned", contains="absolute difference")


@pytest.mark.parametrize("source", [
    '[sex] = "0" and [given_birth] = "1"',
    "round(([weight]*10000)/(([height])^(2)),1)",
    "if([a] >= 75, 2, 0) + if(([a] = \"1\" and [b] >= 500) or ([a] = \"2\" and [b] >= 1500), 2, 0)",
    "[cb(1)] = '1' or [cb(UNK)] <> \"1\" or [cb(2)] = 0",
    "[a] - ([b] - 3) - -2 * [c] / ([a] / 2)",
    "datediff([a], \"today\", \"M\", true) > 6 and [b] <> ''",
    "[ev_1][a] > 1.5 or min([a], [b]) <= max(1, 2)",
    "if([a] < 5, 'low', if([a] < 9, 'mid', \"it's high\"))",
])
def test_parse_print_parse_is_stable(source: str) -> None:
    def resolve(ref: FieldRef) -> tuple[str, bool]:
        path = f"{ref.event.upper()}.VISIT.{ref.field}" if ref.event else ref.field
        return path, ref.field == "cb"

    expr, _warnings = redcap_to_logic(source, resolve=resolve)
    assert logic_validate(expr) == []
    printed = logic_to_redcap(expr)
    assert redcap_to_logic(printed, resolve=resolve)[0] == expr, printed


def test_deeply_nested_or_huge_logic_is_reported_not_crashing() -> None:
    result = redcap_dictionary_import(content=dictionary(
        "field_name=a;;form_name=f;;field_type=text;;field_label=A;;validation=integer",
        "field_name=b;;form_name=f;;field_type=text;;field_label=B;;branching=" + "(" * 3000 + "[a]" + ")" * 3000,
        "field_name=c;;form_name=f;;field_type=text;;field_label=C;;branching=" + " or ".join(["[a] = 1"] * 4000)))
    assert result.forms_ok
    assert "nested too deeply" in entries(result, field="b")[0]["message"]
    assert "longer than" in entries(result, field="c")[0]["message"]


def test_printer_negations_and_unsupported_operations() -> None:
    assert logic_to_redcap({"!": [{"==": [{"var": "a"}, 1]}]}) == "[a] <> 1"
    assert logic_to_redcap({"!": [{"and": [{"<": [{"var": "a"}, 1]}, {"is_empty": [{"var": "b"}]}]}]}) == (
        '[a] >= 1 or [b] <> ""')
    assert logic_to_redcap({"<": [1, {"var": "a"}, 5]}) == "1 < [a] and [a] < 5"
    assert logic_to_redcap({"if": [{"var": "a"}, 1, {"var": "b"}, 2, 3]}) == "if([a], 1, if([b], 2, 3))"
    assert logic_to_redcap({"!": [{"var": "a"}]}) == "if([a], 0, 1) = 1"
    assert logic_to_redcap({"!": [""]}) == "true"
    for unsupported in ({"cat": ["a", "b"]}, {"%": [{"var": "a"}, 2]}, {"var": ["a", 0]}, {"var": "a.b.c.d"},
                        {"map": [{"var": "a"}, {"var": ""}]}):
        with pytest.raises(RedcapLogicError):
            logic_to_redcap(unsupported)


# --- export ----------------------------------------------------------------------------------------

def test_export_writes_the_standard_header_and_reports_suifang_only_properties() -> None:
    doc: dict[str, Any] = {
        "code": "VITALS", "title": {"en": "Vital signs", "zh-hans": "生命体征"}, "patient_reported": True,
        "code_lists": {"SEX": [{"value": "1", "labels": {"en": "Male", "zh-hans": "男"}}]},
        "items": [
            {"code": "weight", "type": "decimal", "label": {"en": "Weight", "zh-hans": "体重"}, "unit": "kg",
             "precision": 1, "range": {"hard": {"min": 20, "max": 300}, "soft": {"min": 35}}, "required": "soft",
             "checks": [{"code": "W", "severity": "soft", "rule": {">": [{"var": "weight"}, 0]},
                         "message": {"en": "?"}}]},
            {"code": "sex", "type": "single_choice", "label": {"en": "Sex"}, "code_list": "SEX", "default": "1",
             "readonly": True, "show_if": {"!": [{"is_empty": [{"var": "weight"}]}]}},
            {"code": "ae", "type": "group", "label": {"en": "AE"}, "items": [
                {"code": "term", "type": "text", "label": {"en": "Term"}, "max_length": 200}]},
            {"code": "bad", "type": "text", "label": {"en": "Bad"}, "show_if": {"cat": ["a", {"var": "weight"}]}},
        ],
    }
    assert definition_validate(doc) == {}
    content, report = redcap_dictionary_export(forms=[doc])
    rows = list(csv.reader(io.StringIO(content.decode("utf-8"), newline="")))
    assert tuple(rows[0]) == REDCAP_HEADER and len(rows[0]) == 18
    assert rows[1][:10] == ["weight", "vitals", "", "text", "Weight", "", "", "number_1dp", "20", "300"]
    assert rows[1][12] == "y"
    assert rows[2][5] == "1, Male" and rows[2][11] == '[weight] <> ""'
    assert rows[2][17] == '@READONLY @DEFAULT="1"'
    assert [row[0] for row in rows[1:]] == ["weight", "sex", "term", "bad"]
    lost = {(entry["field"], entry["column"]) for entry in report}
    assert {("", "Form Name"), ("weight", "Field Label"), ("weight", "Field Annotation"),
            ("weight", "Required Field?"), ("weight", "Text Validation Min"), ("ae", "Field Type"),
            ("term", "Text Validation Type OR Show Slider Number"),
            ("bad", "Branching Logic (Show field only if...)")} <= lost
    assert all(entry["severity"] in ("error", "warning") and entry["form"] == "VITALS" for entry in report)
    again = redcap_dictionary_import(content=content)
    assert again.forms_ok and item(again, "sex")["default"] == "1" and item(again, "sex")["readonly"] is True


def test_export_renames_codes_repeated_across_forms_and_follows_references() -> None:
    first = {"code": "A", "title": {"en": "A"}, "items": [{"code": "visit_date", "type": "date", "label": {"en": "D"}}]}
    second = {"code": "B", "title": {"en": "B"}, "items": [
        {"code": "visit_date", "type": "date", "label": {"en": "D"}},
        {"code": "late", "type": "yes_no", "label": {"en": "L"},
         "show_if": {">": [{"var": "visit_date"}, {"var": "A.visit_date"}]}}]}
    content, report = redcap_dictionary_export(forms=[first, second])
    rows = list(csv.reader(io.StringIO(content.decode())))
    assert [row[0] for row in rows[1:]] == ["visit_date", "visit_date_2", "late"]
    assert rows[3][11] == "[visit_date_2] > [visit_date]"
    assert report[0]["field"] == "visit_date" and report[0]["form"] == "B"
    again = redcap_dictionary_import(content=content)
    assert item(again, "late")["show_if"] == {">": [{"var": "visit_date_2"}, {"var": "A.visit_date"}]}


def test_round_trip_of_a_suifang_form_keeps_sections_and_calctext() -> None:
    result = imported("heartland-hf-risk-calctext.csv")
    forms = copy.deepcopy(result.forms)
    tier = next(entry for entry in forms[0]["items"] if entry["code"] == "hl_risk_tier_sc")
    tier["calc"] = {"if": [{"<": [{"var": "hl_risk_score_sc"}, 7]}, "low", "high"]}
    content, report = redcap_dictionary_export(forms=forms)
    assert report == []
    assert '@CALCTEXT(if([hl_risk_score_sc] < 7, ""low"", ""high""))' in content.decode()
    again = redcap_dictionary_import(content=content)
    tier["annotation"] = '@CALCTEXT(if([hl_risk_score_sc] < 7, "low", "high"))'  # the edited calc, written back
    assert again.forms == forms


# --- malformed input -------------------------------------------------------------------------------

def _domain_error(content: bytes, file_name: str = "") -> DomainError:
    with pytest.raises(DomainError) as caught:
        redcap_dictionary_import(content=content, file_name=file_name)
    error = caught.value
    assert error.status_code == 400 and list(error.fields) == ["file"] and error.fields["file"][0]
    return error


def test_malformed_input_gives_clear_domain_errors() -> None:
    assert _domain_error(b"").code == "redcap_empty"
    assert _domain_error(b"\xef\xbb\xbf \r\n\r\n").code == "redcap_empty"
    assert _domain_error(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00").code == "redcap_not_csv"
    assert _domain_error(b"PK\x03\x04rest-of-a-zip", "dictionary.xlsx").code == "redcap_not_csv"
    error = _domain_error(b'{"this": "is json, not a dictionary"}\n')
    assert error.code == "redcap_not_dictionary" and '"Variable / Field Name"' in error.fields["file"][0]
    no_type = rewrite("redcapr-longitudinal.csv", drop="Field Type")
    error = _domain_error(no_type)
    assert error.code == "redcap_not_dictionary" and '"Field Type"' in error.fields["file"][0]
    assert "Field Label" not in error.fields["file"][0]


def test_a_30_mb_file_is_refused_before_it_is_read() -> None:
    assert MAX_DICTIONARY_BYTES == 5 * 1024 * 1024
    header = ",".join(f'"{h}"' for h in REDCAP_HEADER).encode() + b"\r\n"
    row = b"field,form,,text,Label,,,,,,,,,,,,,\r\n"
    content = header + row * (30 * 1024 * 1024 // len(row))
    assert len(content) > 29 * 1024 * 1024
    error = _domain_error(content)
    assert error.code == "redcap_too_large" and "5 MB" in error.fields["file"][0]


def test_more_than_5000_fields_are_refused() -> None:
    assert redcap.MAX_FIELDS == 5000
    rows = [f"field_name=f{index};;form_name=form_{index // 900};;field_type=text;;field_label=F{index}"
            for index in range(5001)]
    error = _domain_error(dictionary(*rows))
    assert error.code == "redcap_too_many_fields" and "5000" in error.fields["file"][0]
    accepted = redcap_dictionary_import(content=dictionary(*rows[:5000]))
    assert accepted.forms_ok and accepted.field_count == 5000 and accepted.form_count == 6


def test_a_form_without_any_importable_field_is_reported_not_created() -> None:
    result = redcap_dictionary_import(content=dictionary(
        "field_name=record_id;;form_name=main;;field_type=text;;field_label=ID",
        "field_name=q;;form_name=queries;;field_type=sql;;field_label=Q;;choices=select 1"))
    assert [doc["code"] for doc in result.forms] == ["MAIN"]
    assert [entry["line"] for entry in result.report if entry["severity"] == "error"] == [3]
