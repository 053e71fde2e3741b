"""ODM 1.3.2 writer: schema-valid, faithful (parsed back and compared with the input records),
deterministic and streaming."""

from __future__ import annotations

import io
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from lxml import etree

from exports.cdisc.odm import CdiscInputError, odm_write
from exports.cdisc.xsd import odm_problems
from exports.records import AuditRecord, EntryRecord, EventMeta, FormMeta, StudyData, StudyMeta, SubjectRecord

NS = {"odm": "http://www.cdisc.org/ns/odm/v1.3"}
LANG = "{http://www.w3.org/XML/1998/namespace}lang"
NASTY = "<script>alert(1)</script> & \"quoted\" 'single' 中文"
SNAPSHOT = datetime(2025, 3, 1, 9, 30, tzinfo=timezone(timedelta(hours=8)))


def label(en: str, zh: str) -> dict[str, str]:
    return {"en": en, "zh-hans": zh}


VITALS_V1 = {
    "code": "VITALS", "title": label("Vital signs", "生命体征"),
    "code_lists": {"POS": [{"value": "SIT", "labels": label("Sitting", "坐位")},
                           {"value": "STAND", "labels": label("Standing", "站立")}]},
    "items": [
        {"code": "vs_head", "type": "section", "label": label("Measurements", "测量")},
        {"code": "weight", "type": "decimal", "label": label("Weight", "体重"), "unit": "kg", "precision": 1,
         "required": "hard", "missing_codes": ["UNK", "NA"],
         "range": {"hard": {"min": 20, "max": 300}, "soft": {"min": 35, "max": 200}},
         "cdisc": {"domain": "VS", "variable": "VSORRES", "testcd": "WEIGHT", "test": "Weight", "orresu": "kg"}},
        {"code": "pulse", "type": "integer", "label": label("Pulse", "脉搏"), "unit": "beats/min",
         "cdisc": {"domain": "VS", "variable": "VSORRES", "testcd": "PULSE"}},
        {"code": "position", "type": "single_choice", "label": label("Position", "体位"), "code_list": "POS"},
    ],
}
# Version 2 changes the position list (new code) and adds a time: position gets a new OID, weight keeps its own.
VITALS_V2 = {
    **VITALS_V1,
    "code_lists": {"POS": [*VITALS_V1["code_lists"]["POS"], {"value": "SUP", "labels": label("Supine", "仰卧")}]},
    "items": [*VITALS_V1["items"], {"code": "vs_time", "type": "time", "label": label("Time", "时间")}],
}
BASELINE = {
    "code": "BASE", "title": label("Baseline", "基线"),
    "code_lists": {"SYM": [{"value": "FEVER", "labels": label("Fever", "发热")},
                           {"value": "COUGH", "labels": label("Cough", "咳嗽")},
                           {"value": "x y", "labels": label("Other", "其他")}]},
    "items": [
        {"code": "initials", "type": "text", "label": label("Initials", "姓名缩写"), "max_length": 200},
        {"code": "history", "type": "long_text", "label": label("History", "病史")},
        {"code": "visit_date", "type": "date", "label": label("Visit date", "访视日期")},
        {"code": "onset", "type": "date", "partial": True, "label": label("Onset", "发病日期")},
        {"code": "seen_at", "type": "datetime", "label": label("Seen at", "就诊时间")},
        {"code": "symptoms", "type": "multiple_choice", "label": label("Symptoms", "症状"), "code_list": "SYM"},
        {"code": "smoker", "type": "yes_no", "label": label("Smoker", "吸烟")},
        {"code": "pain", "type": "scale", "label": label("Pain", "疼痛"), "scale": {"min": 0, "max": 10}},
        {"code": "bmi", "type": "calculated", "label": label("BMI", "体重指数"), "calc": {"var": "x"}, "precision": 1},
        {"code": "consent", "type": "file", "label": label("Consent", "知情同意书"),
         "file": {"types": ["application/pdf"]}},
        {"code": "meds", "type": "group", "label": label("Medications", "合并用药"), "items": [
            {"code": "med_name", "type": "text", "label": label("Medication", "药物")},
            {"code": "dose", "type": "decimal", "label": label("Dose", "剂量"), "unit": "mg",
             "missing_codes": ["UNK"]},
        ]},
    ],
}
STUDY = StudyMeta(
    oid="ST.ACME.CRF", code="ACME", title="ACME follow-up 随访", protocol="ACME-001", language="en",
    events=(EventMeta("SCREEN", "Screening", 1, ("BASE", "VITALS")), EventMeta("M3", "Month 3", 2, ("VITALS",))),
    forms=(FormMeta("VITALS", 1, VITALS_V1), FormMeta("VITALS", 2, VITALS_V2), FormMeta("BASE", 1, BASELINE)),
)
SUBJECTS = (
    SubjectRecord("S001", "BJ01", "enrolled", date(2024, 1, 5)),
    SubjectRecord("S002", "BJ01", "enrolled", date(2024, 1, 6)),
    SubjectRecord("S003", "SH02", "withdrawn", date(2024, 2, 1)),
    SubjectRecord("S004", "SH02", "screening", None),  # no entries yet
)


def entries() -> list[EntryRecord]:
    return [
        EntryRecord("S001", "BJ01", "SCREEN", 1, "BASE", 1, "complete", {
            "initials": NASTY, "history": "line 1\nline 2\ttab\r\n", "visit_date": "2024-01-05",
            "onset": "2023-11", "seen_at": "2024-01-05T09:15", "symptoms": ["FEVER", "x y"], "smoker": "0",
            "pain": 3, "bmi": 22.456, "consent": {"id": "a" * 32, "name": "同意书 v2.pdf", "size": 10,
                                                 "type": "application/pdf"},
            "meds": [{"med_name": "Aspirin & co", "dose": 100.5}, {"med_name": "Metformin"}],
        }, missing={"meds[1].dose": "UNK"}),
        EntryRecord("S001", "BJ01", "SCREEN", 1, "VITALS", 1, "complete",
                    {"weight": 70.25, "pulse": 72, "position": "SIT"}),
        EntryRecord("S001", "BJ01", "M3", 1, "VITALS", 2, "complete",
                    {"pulse": 80, "position": "SUP", "vs_time": "08:05"}, missing={"weight": "NA"}),
        EntryRecord("S001", "BJ01", "M3", 2, "VITALS", 2, "in_progress", {"weight": 1e-05}),
        EntryRecord("S002", "BJ01", "SCREEN", 1, "BASE", 1, "complete", {
            "symptoms": [], "smoker": True, "history": "", "meds": []}, missing={"visit_date": "ASKU"}),
        EntryRecord("S003", "SH02", "SCREEN", 1, "VITALS", 1, "complete", {"weight": 55, "position": "STAND"}),
    ]


def audit() -> list[AuditRecord]:
    at = datetime(2024, 1, 5, 1, 0, tzinfo=UTC)
    return [
        AuditRecord("S000", "SCREEN", "BASE", "initials", "create", at, "ghost@x.org", "web"),  # not exported
        AuditRecord("S001", "SCREEN", "VITALS", "weight", "create", at, "nurse@bj.cn", "web", new=70.2),
        AuditRecord("S001", "SCREEN", "VITALS", "weight", "update", at + timedelta(hours=1), "dr.li@bj.cn", "api",
                    reason="Typo <fixed> & checked", old=70.2, new=70.25),
        AuditRecord("S001", "SCREEN", "BASE", "meds[0].dose", "create", at + timedelta(hours=2), "nurse@bj.cn",
                    "import", new=100.5),
        AuditRecord("S003", "SCREEN", "VITALS", "position", "create", at, "crc@sh.cn", "epro", new="STAND"),
    ]


def study_data(with_audit: bool = True) -> StudyData:
    return StudyData(study=STUDY, snapshot_at=SNAPSHOT, subjects=SUBJECTS, visits=iter(()),
                     entries=iter(entries()), audit=iter(audit()) if with_audit else None)


def write(data: StudyData, **kwargs: Any) -> tuple[bytes, Any]:
    buffer = io.BytesIO()
    counts = odm_write(buffer, data, file_oid="F.ACME.1", **kwargs)
    return buffer.getvalue(), counts


def parse(blob: bytes) -> etree._Element:
    return etree.fromstring(blob, etree.XMLParser(no_network=True, resolve_entities=False))


def item_values(root: etree._Element) -> dict[tuple[str, str, str, str, str, str], etree._Element]:
    """(subject, event, event repeat, form, group repeat, item OID) -> ItemData."""
    found = {}
    for item in root.iterfind(".//odm:ItemData", NS):
        group = item.getparent()
        form = group.getparent()
        event = form.getparent()
        subject = event.getparent()
        key = (subject.get("SubjectKey"), event.get("StudyEventOID"), event.get("StudyEventRepeatKey"),
               form.get("FormOID"), group.get("ItemGroupRepeatKey") or "", item.get("ItemOID"))
        assert key not in found
        found[key] = item
    return found


def test_output_is_schema_valid_with_and_without_audit() -> None:
    for with_audit in (True, False):
        blob, _counts = write(study_data(with_audit), with_audit=with_audit, description="Test export")
        assert odm_problems(blob) == []


def test_validator_reports_a_broken_document() -> None:
    blob, _counts = write(study_data())
    root = parse(blob)
    # An ItemData without ItemOID, and an unknown element: both must be reported with a line.
    item = root.find(".//odm:ItemData", NS)
    del item.attrib["ItemOID"]
    etree.SubElement(root.find(".//odm:SubjectData", NS), "{http://www.cdisc.org/ns/odm/v1.3}Bogus")
    problems = odm_problems(etree.tostring(root))
    assert any("ItemOID" in problem for problem in problems)
    assert any("Bogus" in problem for problem in problems)
    assert all(problem.startswith("line ") for problem in problems)
    assert odm_problems(b"<ODM") and odm_problems(b"<ODM")[0].startswith("line 1: not well-formed")


def test_root_study_and_metadata() -> None:
    blob, _counts = write(study_data(), description="Test export")
    assert blob.startswith(b"<?xml version='1.0' encoding='UTF-8'?>")
    root = parse(blob)
    assert root.get("FileType") == "Snapshot" and root.get("Granularity") == "All"
    assert root.get("ODMVersion") == "1.3.2" and root.get("FileOID") == "F.ACME.1"
    assert datetime.fromisoformat(root.get("CreationDateTime")) == SNAPSHOT
    assert root.get("CreationDateTime").endswith("+08:00")
    assert root.get("Originator") == root.get("SourceSystem") == "Suifang"
    assert root.findtext("odm:Study/odm:GlobalVariables/odm:StudyDescription", namespaces=NS) == "Test export"
    mdv = root.find("odm:Study/odm:MetaDataVersion", NS)
    units = {u.get("Name"): u.get("OID") for u in root.iterfind(".//odm:MeasurementUnit", NS)}
    assert set(units) == {"kg", "beats/min", "mg"}
    refs = [(r.get("StudyEventOID"), r.get("OrderNumber")) for r in mdv.iterfind("odm:Protocol/odm:StudyEventRef", NS)]
    assert refs == [("SE.SCREEN", "1"), ("SE.M3", "2")]
    screen = mdv.find("odm:StudyEventDef[@OID='SE.SCREEN']", NS)
    assert screen.get("Repeating") == "Yes" and screen.get("Type") == "Scheduled"
    assert {r.get("FormOID") for r in screen.iterfind("odm:FormRef", NS)} == {"F.BASE.1", "F.VITALS.1", "F.VITALS.2"}
    assert {f.get("OID") for f in mdv.iterfind("odm:FormDef", NS)} == {"F.BASE.1", "F.VITALS.1", "F.VITALS.2"}
    meds = mdv.find("odm:ItemGroupDef[@OID='IG.BASE.1.meds']", NS)
    assert meds.get("Repeating") == "Yes"
    assert [r.get("ItemOID") for r in meds.iterfind("odm:ItemRef", NS)] == ["I.BASE.med_name", "I.BASE.dose"]
    assert mdv.find("odm:ItemGroupDef[@OID='IG.VITALS.1']", NS).get("Repeating") == "No"

    items = {i.get("OID"): i for i in mdv.iterfind("odm:ItemDef", NS)}
    assert "I.BASE.vs_head" not in items  # sections hold no value
    expected_types = {
        "I.BASE.initials": "text", "I.BASE.history": "text", "I.BASE.visit_date": "date",
        "I.BASE.onset": "partialDate", "I.BASE.seen_at": "datetime", "I.BASE.smoker": "boolean",
        "I.BASE.pain": "integer", "I.BASE.bmi": "float", "I.BASE.consent": "text", "I.VITALS.weight": "float",
        "I.VITALS.pulse": "integer", "I.VITALS.position": "text", "I.VITALS.vs_time": "time",
        "I.BASE.symptoms.FEVER": "boolean", "I.BASE.symptoms.C3": "boolean",
    }
    assert {oid: items[oid].get("DataType") for oid in expected_types} == expected_types
    assert items["I.BASE.initials"].get("Length") == "200" and items["I.BASE.history"].get("Length") == "20000"
    weight = items["I.VITALS.weight"]
    assert weight.get("SignificantDigits") == "1"
    question = {t.get(LANG): t.text for t in weight.iterfind("odm:Question/odm:TranslatedText", NS)}
    assert question == {"en": "Weight", "zh-Hans": "体重"}
    assert weight.find("odm:MeasurementUnitRef", NS).get("MeasurementUnitOID") == units["kg"]
    checks = {(c.get("SoftHard"), c.get("Comparator"), c.findtext("odm:CheckValue", namespaces=NS))
              for c in weight.iterfind("odm:RangeCheck", NS)}
    assert checks == {("Hard", "GE", "20"), ("Hard", "LE", "300"), ("Soft", "GE", "35"), ("Soft", "LE", "200")}
    aliases = {a.get("Context"): a.get("Name") for a in weight.iterfind("odm:Alias", NS)}
    assert aliases["SDTM"] == "VS.VSORRES" and aliases["SDTM.TESTCD"] == "WEIGHT"
    # The changed code list gives version 2 its own position item and list; version 1 keeps the first.
    assert items["I.VITALS.position.V2"].find("odm:CodeListRef", NS).get("CodeListOID") == "CL.VITALS.POS.V2"
    assert items["I.VITALS.position"].find("odm:CodeListRef", NS).get("CodeListOID") == "CL.VITALS.POS"
    v2_refs = [r.get("ItemOID") for r in mdv.iterfind("odm:ItemGroupDef[@OID='IG.VITALS.2']/odm:ItemRef", NS)]
    assert v2_refs[:3] == ["I.VITALS.weight", "I.VITALS.pulse", "I.VITALS.position.V2"]
    pos = mdv.find("odm:CodeList[@OID='CL.VITALS.POS.V2']", NS)
    assert [i.get("CodedValue") for i in pos.iterfind("odm:CodeListItem", NS)] == ["SIT", "STAND", "SUP"]
    decode = {t.get(LANG): t.text for t in pos[2].iterfind("odm:Decode/odm:TranslatedText", NS)}
    assert decode == {"en": "Supine", "zh-Hans": "仰卧"}
    missing = mdv.find("odm:CodeList[@OID='CL.MISSING']", NS)
    assert [i.get("CodedValue") for i in missing] == ["NA", "UNK", "ASKU", "NASK"]


def expected_cells() -> dict[tuple[str, str, str, str, str, str], tuple[str | None, str | None]]:
    """Independent expectation of every ItemData: key -> (Value, missing code)."""
    cells: dict[tuple[str, str, str, str, str, str], tuple[str | None, str | None]] = {}

    def put(subject: str, event: str, seq: int, form: str, item: str, value: str | None, code: str | None = None,
            row: str = "") -> None:
        cells[(subject, f"SE.{event}", str(seq), form, row, item)] = (value, code)

    put("S001", "SCREEN", 1, "F.BASE.1", "I.BASE.initials", NASTY)
    put("S001", "SCREEN", 1, "F.BASE.1", "I.BASE.history", "line 1\nline 2\ttab\r\n")
    put("S001", "SCREEN", 1, "F.BASE.1", "I.BASE.visit_date", "2024-01-05")
    put("S001", "SCREEN", 1, "F.BASE.1", "I.BASE.onset", "2023-11")
    put("S001", "SCREEN", 1, "F.BASE.1", "I.BASE.seen_at", "2024-01-05T09:15:00")
    put("S001", "SCREEN", 1, "F.BASE.1", "I.BASE.symptoms.FEVER", "1")
    put("S001", "SCREEN", 1, "F.BASE.1", "I.BASE.symptoms.COUGH", "0")
    put("S001", "SCREEN", 1, "F.BASE.1", "I.BASE.symptoms.C3", "1")
    put("S001", "SCREEN", 1, "F.BASE.1", "I.BASE.smoker", "0")
    put("S001", "SCREEN", 1, "F.BASE.1", "I.BASE.pain", "3")
    put("S001", "SCREEN", 1, "F.BASE.1", "I.BASE.bmi", "22.456")
    put("S001", "SCREEN", 1, "F.BASE.1", "I.BASE.consent", "同意书 v2.pdf")
    put("S001", "SCREEN", 1, "F.BASE.1", "I.BASE.med_name", "Aspirin & co", row="1")
    put("S001", "SCREEN", 1, "F.BASE.1", "I.BASE.dose", "100.5", row="1")
    put("S001", "SCREEN", 1, "F.BASE.1", "I.BASE.med_name", "Metformin", row="2")
    put("S001", "SCREEN", 1, "F.BASE.1", "I.BASE.dose", None, "UNK", row="2")
    put("S001", "SCREEN", 1, "F.VITALS.1", "I.VITALS.weight", "70.25")
    put("S001", "SCREEN", 1, "F.VITALS.1", "I.VITALS.pulse", "72")
    put("S001", "SCREEN", 1, "F.VITALS.1", "I.VITALS.position", "SIT")
    put("S001", "M3", 1, "F.VITALS.2", "I.VITALS.weight", None, "NA")
    put("S001", "M3", 1, "F.VITALS.2", "I.VITALS.pulse", "80")
    put("S001", "M3", 1, "F.VITALS.2", "I.VITALS.position.V2", "SUP")
    put("S001", "M3", 1, "F.VITALS.2", "I.VITALS.vs_time", "08:05:00")
    put("S001", "M3", 2, "F.VITALS.2", "I.VITALS.weight", "0.00001")
    put("S002", "SCREEN", 1, "F.BASE.1", "I.BASE.smoker", "1")
    put("S002", "SCREEN", 1, "F.BASE.1", "I.BASE.visit_date", None, "ASKU")
    put("S003", "SCREEN", 1, "F.VITALS.1", "I.VITALS.weight", "55")
    put("S003", "SCREEN", 1, "F.VITALS.1", "I.VITALS.position", "STAND")
    return cells


def test_clinical_data_round_trips() -> None:
    blob, counts = write(study_data())
    root = parse(blob)
    clinical = root.find("odm:ClinicalData", NS)
    assert clinical.get("StudyOID") == "ST.ACME.CRF" and clinical.get("MetaDataVersionOID") == "MDV.1"
    subjects = clinical.findall("odm:SubjectData", NS)
    assert [s.get("SubjectKey") for s in subjects] == ["S001", "S002", "S003", "S004"]
    assert [s.find("odm:SiteRef", NS).get("LocationOID") for s in subjects] == ["LOC.BJ01", "LOC.BJ01",
                                                                                   "LOC.SH02", "LOC.SH02"]
    events = [(e.get("StudyEventOID"), e.get("StudyEventRepeatKey")) for e in subjects[0]]
    assert events[1:] == [("SE.SCREEN", "1"), ("SE.M3", "1"), ("SE.M3", "2")]

    found = item_values(root)
    expected = expected_cells()
    assert set(found) == set(expected)
    for key, (value, code) in expected.items():
        item = found[key]
        assert item.get("Value") == value, key
        if code is None:
            assert item.get("IsNull") is None and item.find("odm:Annotation", NS) is None
        else:
            assert item.get("IsNull") == "Yes"
            flag = item.find("odm:Annotation/odm:Flag/odm:FlagValue", NS)
            assert (flag.text, flag.get("CodeListOID")) == (code, "CL.MISSING")
    # Every ItemOID and FormOID used is defined in the metadata.
    defined = {i.get("OID") for i in root.iterfind(".//odm:ItemDef", NS)}
    assert {key[5] for key in found} <= defined
    assert {key[3] for key in found} <= {f.get("OID") for f in root.iterfind(".//odm:FormDef", NS)}
    nulls = sum(1 for value, code in expected.values() if code)
    assert (counts.subjects, counts.forms, counts.items, counts.nulls) == (4, 6, len(expected), nulls)


def test_audit_records() -> None:
    blob, counts = write(study_data(), with_audit=True)
    root = parse(blob)
    admin = root.find("odm:AdminData", NS)
    users = sorted(u.get("OID") for u in admin.iterfind("odm:User", NS))
    assert users == ["USR.crc@sh.cn", "USR.dr.li@bj.cn", "USR.nurse@bj.cn"]  # not the unexported subject's
    assert sorted(loc.get("OID") for loc in admin.iterfind("odm:Location", NS)) == ["LOC.BJ01", "LOC.SH02"]
    found = item_values(root)
    weight = found[("S001", "SE.SCREEN", "1", "F.VITALS.1", "", "I.VITALS.weight")].find("odm:AuditRecord", NS)
    assert weight.find("odm:UserRef", NS).get("UserOID") == "USR.dr.li@bj.cn"  # the change that set 70.25
    assert weight.find("odm:LocationRef", NS).get("LocationOID") == "LOC.BJ01"
    assert weight.findtext("odm:DateTimeStamp", namespaces=NS) == "2024-01-05T02:00:00Z"
    assert weight.findtext("odm:ReasonForChange", namespaces=NS) == "Typo <fixed> & checked"
    assert weight.findtext("odm:SourceID", namespaces=NS) == "api"
    dose = found[("S001", "SE.SCREEN", "1", "F.BASE.1", "1", "I.BASE.dose")].find("odm:AuditRecord", NS)
    assert dose.findtext("odm:SourceID", namespaces=NS) == "import"
    with_record = [key for key, item in found.items() if item.find("odm:AuditRecord", NS) is not None]
    assert len(with_record) == counts.audit_records == 3
    # Without audit: no AuditRecord, no User.
    plain = parse(write(study_data(False))[0])
    assert plain.find(".//odm:AuditRecord", NS) is None and plain.find(".//odm:User", NS) is None


def test_same_input_gives_identical_bytes() -> None:
    first, _ = write(study_data(), with_audit=True)
    second, _ = write(study_data(), with_audit=True)
    assert first == second


@pytest.mark.parametrize(("change", "message"), [
    ({"initials": "bell\x07"}, "U+0007"),
    ({"pain": "lots"}, "pain"),
    ({"unknown_item": 1}, "unknown_item"),
    ({"visit_date": "05/01/2024"}, "visit_date"),
    ({"symptoms": ["NOPE"]}, "symptoms"),
])
def test_bad_values_are_refused_with_their_place(change: dict[str, Any], message: str) -> None:
    bad = EntryRecord("S001", "BJ01", "SCREEN", 1, "BASE", 1, "complete", change)
    data = StudyData(study=STUDY, snapshot_at=SNAPSHOT, subjects=SUBJECTS[:1], visits=iter(()), entries=iter([bad]))
    with pytest.raises(CdiscInputError) as caught:
        odm_write(io.BytesIO(), data, file_oid="F.1")
    assert message in str(caught.value) and "S001" in str(caught.value) and "BASE" in str(caught.value)
    # The place, never the value: the job's page shows this message to everyone who exports.
    for value in change.values():
        if isinstance(value, str) and len(value) > 2:
            assert value not in str(caught.value)


def test_inconsistent_streams_are_refused() -> None:
    naive = StudyData(study=STUDY, snapshot_at=datetime(2025, 1, 1), subjects=(), visits=iter(()), entries=iter(()))
    with pytest.raises(CdiscInputError, match="snapshot_at"):
        odm_write(io.BytesIO(), naive, file_oid="F.1")
    orphan = StudyData(study=STUDY, snapshot_at=SNAPSHOT, subjects=SUBJECTS[1:2], visits=iter(()),
                       entries=iter(entries()[:1]))
    with pytest.raises(CdiscInputError, match="S001"):
        odm_write(io.BytesIO(), orphan, file_oid="F.1")
    both = EntryRecord("S001", "BJ01", "SCREEN", 1, "VITALS", 1, "complete", {"weight": 70}, {"weight": "UNK"})
    data = StudyData(study=STUDY, snapshot_at=SNAPSHOT, subjects=SUBJECTS[:1], visits=iter(()), entries=iter([both]))
    with pytest.raises(CdiscInputError, match="both a value and the missing-data code"):
        odm_write(io.BytesIO(), data, file_oid="F.1")


def big_entries(subjects: int, visits: int) -> Iterator[EntryRecord]:
    for s in range(subjects):
        for v in range(visits):
            yield EntryRecord(f"S{s:05d}", "BJ01", "M3", v + 1, "VITALS", 1, "complete",
                              {"weight": 50 + (s + v) % 100 + 0.5, "pulse": 60 + v % 40, "position": "SIT"})


def big_audit(subjects: int, visits: int) -> Iterator[AuditRecord]:
    at = datetime(2024, 1, 1, tzinfo=UTC)
    for s in range(subjects):
        for v in range(visits):
            yield AuditRecord(f"S{s:05d}", "M3", "VITALS", "pulse", "create", at + timedelta(seconds=v),
                              f"user{s % 7}", "web", new=60 + v % 40)


class CountingSink(io.RawIOBase):
    """Counts bytes without keeping them, so the measurement is the writer's own memory."""

    def __init__(self) -> None:
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, chunk: Any) -> int:
        self.size += len(chunk)
        return len(chunk)


def test_memory_stays_flat_on_a_large_study() -> None:
    subjects, visits = 2000, 34  # 68,000 forms x 3 items = 204,000 ItemData
    data = StudyData(study=STUDY, snapshot_at=SNAPSHOT,
                     subjects=(SubjectRecord(f"S{s:05d}", "BJ01", "enrolled", None) for s in range(subjects)),
                     visits=iter(()), entries=big_entries(subjects, visits), audit=big_audit(subjects, visits))
    sink = CountingSink()
    tracemalloc.start()
    try:
        counts = odm_write(sink, data, file_oid="F.BIG", with_audit=True)  # type: ignore[arg-type]
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert counts.items == subjects * visits * 3 and counts.audit_records == subjects * visits
    assert sink.size > 30_000_000  # the document is far larger than the memory used
    assert peak < 8_000_000, peak


def test_large_output_is_valid_and_complete() -> None:
    subjects, visits = 50, 10
    data = StudyData(study=STUDY, snapshot_at=SNAPSHOT,
                     subjects=[SubjectRecord(f"S{s:05d}", "BJ01", "enrolled", None) for s in range(subjects)],
                     visits=iter(()), entries=big_entries(subjects, visits), audit=big_audit(subjects, visits))
    blob, _counts = write(data, with_audit=True)
    assert odm_problems(blob) == []
    found = item_values(parse(blob))
    for entry in big_entries(subjects, visits):
        key = (entry.subject_key, "SE.M3", str(entry.sequence), "F.VITALS.1", "")
        assert Decimal(found[(*key, "I.VITALS.weight")].get("Value")) == Decimal(repr(entry.values["weight"]))
        assert found[(*key, "I.VITALS.pulse")].get("Value") == str(entry.values["pulse"])
