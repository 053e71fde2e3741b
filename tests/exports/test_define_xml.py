"""Define-XML 2.1 writer: schema-valid, and the metadata parsed back matches the DatasetSpecs."""

from __future__ import annotations

import dataclasses
import io
from datetime import datetime, timedelta, timezone

import pytest
from lxml import etree

from exports.cdisc.define_xml import define_write
from exports.cdisc.odm import CdiscInputError
from exports.cdisc.xsd import define_problems
from exports.records import DatasetSpec, StudyMeta, VariableSpec

NS = {"odm": "http://www.cdisc.org/ns/odm/v1.3", "def": "http://www.cdisc.org/ns/def/v2.1"}
XLINK_HREF = "{http://www.w3.org/1999/xlink}href"
CREATED = datetime(2025, 3, 1, 12, 0, tzinfo=timezone(timedelta(hours=8)))
STUDY = StudyMeta(oid="ST.ACME.CRF", code="ACME", title="ACME follow-up", protocol="ACME-001")


def ident(domain: str) -> tuple[VariableSpec, ...]:
    return (
        VariableSpec("STUDYID", "Study Identifier", "Char", 12, "Identifier", "Assigned", mandatory=True),
        VariableSpec("DOMAIN", "Domain Abbreviation", "Char", 2, "Identifier", "Assigned", mandatory=True,
                     codelist=((domain, domain),)),
        VariableSpec("USUBJID", "Unique Subject Identifier", "Char", 30, "Identifier", "Derived", mandatory=True),
    )


DM = DatasetSpec("DM", "Demographics", "SPECIAL PURPOSE", "One record per subject", ("STUDYID", "USUBJID"), (
    *ident("DM"),
    VariableSpec("SUBJID", "Subject Identifier for the Study", "Char", 20, "Topic", "CRF", "SCREEN.subject_code"),
    VariableSpec("RFSTDTC", "Subject Reference Start Date/Time", "Char", 19, "Record Qualifier", "Derived"),
    VariableSpec("SITEID", "Study Site Identifier", "Char", 10, "Record Qualifier", "Assigned", mandatory=True),
    VariableSpec("AGE", "Age", "Num", 8, "Record Qualifier", "CRF", "DEMOG.age"),
    VariableSpec("SEX", "Sex", "Char", 1, "Record Qualifier", "CRF", "DEMOG.sex",
                 (("M", "Male"), ("F", "Female"), ("U", "Unknown")), mandatory=True),
    VariableSpec("ARMCD", "Planned Arm Code", "Char", 20, "Record Qualifier", "Protocol"),
), rows=3, file_name="dm.xpt")
VS = DatasetSpec("VS", "Vital Signs", "FINDINGS", "One record per vital sign measurement per visit per subject",
                 ("STUDYID", "USUBJID", "VSTESTCD", "VISITNUM"), (
    *ident("VS"),
    VariableSpec("VSSEQ", "Sequence Number", "Num", 8, "Identifier", "Derived", mandatory=True),
    VariableSpec("VSTESTCD", "Vital Signs Test Short Name", "Char", 8, "Topic", "Assigned",
                 codelist=(("WEIGHT", "Weight"), ("PULSE", "Pulse Rate")), mandatory=True),
    VariableSpec("VSORRES", "Result or Finding in Original Units", "Char", 20, "Result Qualifier", "CRF",
                 "VITALS.weight"),
    VariableSpec("VSSTRESN", "Numeric Result/Finding in Standard Units", "Num", 8, "Result Qualifier", "Derived"),
    VariableSpec("VISITNUM", "Visit Number", "Num", 8, "Timing", "Assigned"),
    VariableSpec("VSDTC", "Date/Time of Measurements", "Char", 19, "Timing", "CRF", "VITALS.vs_date"),
    VariableSpec("VSDY", "Study Day of Vital Signs", "Num", 8, "Timing", "Derived"),
), rows=12, file_name="vs.xpt")
AE = DatasetSpec("AE", "Adverse Events", "EVENTS", "One record per adverse event per subject",
                 ("STUDYID", "USUBJID", "AEDECOD", "AESTDTC"), (
    *ident("AE"),
    VariableSpec("AESEQ", "Sequence Number", "Num", 8, "Identifier", "Derived", mandatory=True),
    VariableSpec("AETERM", "Reported Term for the Adverse Event", "Char", 200, "Topic", "CRF", "AE.term"),
    VariableSpec("AEDECOD", "Dictionary-Derived Term", "Char", 100, "Synonym Qualifier", "Derived"),
    VariableSpec("AESEV", "Severity/Intensity", "Char", 8, "Record Qualifier", "CRF", "AE.severity",
                 (("MILD", "MILD"), ("MODERATE", "MODERATE"), ("SEVERE", "SEVERE"))),
    VariableSpec("AESTDTC", "Start Date/Time of Adverse Event", "Char", 19, "Timing", "CRF", "AE.start"),
), rows=2)
DATASETS = (DM, VS, AE)


def write(datasets: tuple[DatasetSpec, ...] = DATASETS, **kwargs: str) -> bytes:
    buffer = io.BytesIO()
    define_write(buffer, STUDY, datasets, file_oid="DEF.ACME.1", created=CREATED, **kwargs)
    return buffer.getvalue()


def parse(blob: bytes) -> etree._Element:
    return etree.fromstring(blob, etree.XMLParser(no_network=True, resolve_entities=False))


def test_define_is_schema_valid() -> None:
    assert define_problems(write()) == []


def test_validator_reports_a_broken_define() -> None:
    root = parse(write())
    group = root.find(".//odm:ItemGroupDef", NS)
    del group.attrib["{http://www.cdisc.org/ns/def/v2.1}Structure"]  # required in 2.1
    root.find(".//odm:MetaDataVersion", NS).set("{http://www.cdisc.org/ns/def/v2.1}DefineVersion", "2.0.0")
    problems = define_problems(etree.tostring(root))
    assert any("Structure" in problem for problem in problems)
    assert any("DefineVersion" in problem for problem in problems)


def test_root_and_standards() -> None:
    root = parse(write(sdtmig_version="3.3"))
    assert root.get("{http://www.cdisc.org/ns/def/v2.1}Context") == "Submission"
    assert root.get("ODMVersion") == "1.3.2" and root.get("FileType") == "Snapshot"
    assert datetime.fromisoformat(root.get("CreationDateTime")) == CREATED
    mdv = root.find("odm:Study/odm:MetaDataVersion", NS)
    assert mdv.get("{http://www.cdisc.org/ns/def/v2.1}DefineVersion").startswith("2.1.")
    standards = {(s.get("Name"), s.get("Type"), s.get("Version")) for s in mdv.iterfind("def:Standards/def:Standard",
                                                                                       NS)}
    assert ("SDTMIG", "IG", "3.3") in standards
    assert any(name == "CDISC/NCI" and kind == "CT" for name, kind, _version in standards)


def test_datasets_and_variables_match_the_specs() -> None:
    root = parse(write())
    mdv = root.find("odm:Study/odm:MetaDataVersion", NS)
    groups = mdv.findall("odm:ItemGroupDef", NS)
    assert [g.get("Name") for g in groups] == ["DM", "VS", "AE"]
    items = {i.get("OID"): i for i in mdv.iterfind("odm:ItemDef", NS)}
    methods = {m.get("OID") for m in mdv.iterfind("odm:MethodDef", NS)}
    codelists = {c.get("OID"): c for c in mdv.iterfind("odm:CodeList", NS)}
    for spec, group in zip(DATASETS, groups, strict=True):
        assert group.get("SASDatasetName") == spec.name and group.get("Purpose") == "Tabulation"
        assert group.get("{http://www.cdisc.org/ns/def/v2.1}Structure") == spec.structure
        assert group.find("def:Class", NS).get("Name") == spec.domain_class
        assert group.findtext("odm:Description/odm:TranslatedText", namespaces=NS) == spec.label
        leaf = group.find("def:leaf", NS)
        assert leaf.get("ID") == group.get("{http://www.cdisc.org/ns/def/v2.1}ArchiveLocationID")
        assert leaf.get(XLINK_HREF) == (spec.file_name or f"{spec.name.lower()}.xpt")
        assert group.get("Repeating") == ("No" if spec.name == "DM" else "Yes")
        refs = group.findall("odm:ItemRef", NS)
        assert len(refs) == len(spec.variables)
        keyed = sorted((int(r.get("KeySequence")), items[r.get("ItemOID")].get("Name"))
                       for r in refs if r.get("KeySequence"))
        assert tuple(name for _seq, name in keyed) == spec.keys
        assert [seq for seq, _name in keyed] == list(range(1, len(spec.keys) + 1))
        for order, (variable, ref) in enumerate(zip(spec.variables, refs, strict=True), start=1):
            item = items[ref.get("ItemOID")]
            assert int(ref.get("OrderNumber")) == order
            assert item.get("Name") == item.get("SASFieldName") == variable.name
            assert ref.get("Mandatory") == ("Yes" if variable.mandatory else "No")
            assert item.findtext("odm:Description/odm:TranslatedText", namespaces=NS) == variable.label
            origin = item.find("def:Origin", NS)
            expected_origin = {"CRF": "Collected"}.get(variable.origin, variable.origin)
            assert origin.get("Type") == expected_origin and origin.get("Source")
            if variable.origin == "Derived":
                assert ref.get("MethodOID") in methods
            else:
                assert ref.get("MethodOID") is None
            if variable.type == "Char" and not variable.name.endswith("DTC"):
                assert (item.get("DataType"), int(item.get("Length"))) == ("text", variable.length)
            elif variable.type == "Num":
                assert item.get("DataType") in ("integer", "float")
            if variable.codelist:
                code_list = codelists[item.find("odm:CodeListRef", NS).get("CodeListOID")]
                written = [(c.get("CodedValue"), c.findtext("odm:Decode/odm:TranslatedText", namespaces=NS)
                            or c.get("CodedValue")) for c in code_list]
                assert written == list(variable.codelist)
            else:
                assert item.find("odm:CodeListRef", NS) is None
    assert items["IT.VS.VSSEQ"].get("DataType") == "integer" and items["IT.VS.VSDY"].get("DataType") == "integer"
    assert items["IT.VS.VSDTC"].get("DataType") == "datetime"


def test_same_input_gives_identical_bytes() -> None:
    assert write() == write()


@pytest.mark.parametrize(("broken", "where"), [
    (dataclasses.replace(DM, keys=("STUDYID", "NOPE")), "dataset DM keys"),
    (dataclasses.replace(DM, domain_class="DEMOGRAPHICS"), "dataset DM class"),
    (dataclasses.replace(DM, name="dm"), "dataset dm"),
    (dataclasses.replace(DM, variables=(*DM.variables, VariableSpec("TOOLONGNAME", "x", "Char", 1))),
     "dataset DM, variable TOOLONGNAME"),
    (dataclasses.replace(DM, variables=(*DM.variables, VariableSpec("X", "L" * 41, "Char", 1))),
     "dataset DM, variable X label"),
    (dataclasses.replace(DM, variables=(*DM.variables, VariableSpec("X", "bad \x0b", "Char", 1))),
     "dataset DM, variable X"),
])
def test_bad_specs_are_refused_with_their_place(broken: DatasetSpec, where: str) -> None:
    with pytest.raises(CdiscInputError) as caught:
        write((broken, VS))
    assert caught.value.where.startswith(where)
