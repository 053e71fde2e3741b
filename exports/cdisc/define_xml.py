"""Define-XML 2.1 writer for the SDTM datasets (exports.records.DatasetSpec).

Choices (the 2.1 schema and specification fix the element order and required attributes):

* OIDs: "IG.<DS>", "IT.<DS>.<VAR>", "CL.<DS>.<VAR>", "MT.<DS>.<VAR>", leaf "LF.<DS>"; standards
  "STD.SDTMIG" and "STD.CT". The CDISC/NCI CT standard is declared when a variable has a code
  list, but code lists carry no def:StandardOID: a VariableSpec does not say whether its pairs
  are CDISC terminology or the sponsor's.
* DataType: Char -> "text" (a --DTC variable -> "datetime", as ISO 8601 text without Length);
  Num -> "integer" for --SEQ, --DY and --ORD variables and "float" otherwise (VariableSpec has no
  decimal places, so float variables have no SignificantDigits).
* def:Origin: CRF -> Collected (Source="Investigator", the form/item in its Description);
  Derived, Assigned, Protocol -> that type with Source="Sponsor". Derived variables get a
  MethodDef (Type="Computation") with a short description, referenced by ItemRef/@MethodOID.
* A code list whose codes equal their decodes is written with EnumeratedItem, otherwise with
  CodeListItem/Decode.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import BinaryIO

from lxml import etree

from exports.cdisc.odm import CdiscInputError, iso_with_offset, xml_safe
from exports.records import DatasetSpec, StudyMeta, VariableSpec

ODM_NS = "http://www.cdisc.org/ns/odm/v1.3"
DEF_NS = "http://www.cdisc.org/ns/def/v2.1"
XLINK_NS = "http://www.w3.org/1999/xlink"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
NSMAP = {None: ODM_NS, "def": DEF_NS, "xlink": XLINK_NS}
DEFINE_VERSION = "2.1.0"
CT_VERSION = "2024-03-29"
DOMAIN_CLASSES = frozenset({"SPECIAL PURPOSE", "FINDINGS", "FINDINGS ABOUT", "EVENTS", "INTERVENTIONS",
                            "TRIAL DESIGN", "RELATIONSHIP", "STUDY REFERENCE"})
ORIGINS = {"CRF": ("Collected", "Investigator"), "Derived": ("Derived", "Sponsor"),
           "Assigned": ("Assigned", "Sponsor"), "Protocol": ("Protocol", "Sponsor")}
_DATASET_NAME = re.compile(r"[A-Z][A-Z0-9]{1,7}")
_VARIABLE_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,7}")


def _odm(tag: str) -> str:
    return f"{{{ODM_NS}}}{tag}"


def _def(tag: str) -> str:
    return f"{{{DEF_NS}}}{tag}"


def _sub(parent: etree._Element, tag: str, attrs: dict[str, str] | None = None, *, where: str,
         text: str | None = None) -> etree._Element:
    element = etree.SubElement(parent, tag, {key: xml_safe(value, f"{where} @{key.rsplit('}', 1)[-1]}")
                                             for key, value in (attrs or {}).items()})
    if text is not None:
        element.text = xml_safe(text, where)
    return element


def _description(parent: etree._Element, text: str, where: str) -> None:
    holder = _sub(parent, _odm("Description"), where=where)
    _sub(holder, _odm("TranslatedText"), {XML_LANG: "en"}, text=text, where=where)


def _data_type(variable: VariableSpec) -> str:
    if variable.type == "Char":
        return "datetime" if variable.name.endswith("DTC") else "text"
    return "integer" if variable.name.endswith(("SEQ", "DY", "ORD")) else "float"


def _method_text(dataset: DatasetSpec, variable: VariableSpec) -> str:
    if variable.name.endswith("SEQ"):
        return (f"Sequence number of the record within each subject in {dataset.name}, numbered 1, 2, ... "
                f"in the order of the dataset keys ({', '.join(dataset.keys)}).")
    if variable.name.endswith("DY"):
        stem = variable.name[:-2]
        return (f"Study day of {stem}DTC relative to DM.RFSTDTC: date - RFSTDTC + 1 on or after the reference "
                "start date, date - RFSTDTC before it (there is no day 0); empty when either date is partial.")
    return f"Derived: {variable.label}" + (f" ({variable.source})." if variable.source else ".")


def _check(datasets: Sequence[DatasetSpec]) -> None:
    names: set[str] = set()
    for dataset in datasets:
        where = f"dataset {dataset.name}"
        if not _DATASET_NAME.fullmatch(dataset.name):
            raise CdiscInputError(where, "a dataset name is 2 to 8 capital letters or digits, starting with a letter.")
        if dataset.name in names:
            raise CdiscInputError(where, "the dataset is listed twice.")
        names.add(dataset.name)
        if dataset.domain_class not in DOMAIN_CLASSES:
            raise CdiscInputError(f"{where} class", f"unknown SDTM class {dataset.domain_class!r} "
                                  f"(use one of {', '.join(sorted(DOMAIN_CLASSES))}).")
        if not dataset.structure.strip():
            raise CdiscInputError(f"{where} structure", "describe the structure (e.g. One record per subject).")
        variables: set[str] = set()
        for variable in dataset.variables:
            vwhere = f"{where}, variable {variable.name}"
            if not _VARIABLE_NAME.fullmatch(variable.name):
                raise CdiscInputError(vwhere, "a variable name is 1 to 8 capital letters, digits or _.")
            if variable.name in variables:
                raise CdiscInputError(vwhere, "the variable is listed twice.")
            variables.add(variable.name)
            if variable.type not in ("Char", "Num"):
                raise CdiscInputError(f"{vwhere} type", "the type is Char or Num.")
            if not 1 <= variable.length <= (200 if variable.type == "Char" else 8):
                raise CdiscInputError(f"{vwhere} length", "Char lengths are 1 to 200, Num lengths 1 to 8.")
            if len(variable.label) > 40 or not variable.label:
                raise CdiscInputError(f"{vwhere} label", "give a label of at most 40 characters.")
            if variable.origin not in ORIGINS:
                raise CdiscInputError(f"{vwhere} origin", f"use one of {', '.join(ORIGINS)}.")
            codes = [code for code, _decode in variable.codelist]
            if len(set(codes)) != len(codes):
                raise CdiscInputError(f"{vwhere} codelist", "a code appears twice.")
        for key in dataset.keys:
            if key not in variables:
                raise CdiscInputError(f"{where} keys", f"key {key} is not a variable of the dataset.")
        if len(set(dataset.keys)) != len(dataset.keys):
            raise CdiscInputError(f"{where} keys", "a key variable appears twice.")


def _define_tree(study: StudyMeta, datasets: Sequence[DatasetSpec], *, file_oid: str, created: str,
                 sdtmig_version: str, ct_version: str) -> etree._Element:
    root = etree.Element(_odm("ODM"), {
        "FileType": "Snapshot", "FileOID": xml_safe(file_oid, "file_oid"), "CreationDateTime": created,
        "ODMVersion": "1.3.2", "Originator": "Suifang", "SourceSystem": "Suifang", _def("Context"): "Submission",
    }, nsmap=NSMAP)
    where = "study"
    study_el = _sub(root, _odm("Study"), {"OID": study.oid}, where=where)
    global_vars = _sub(study_el, _odm("GlobalVariables"), where=where)
    _sub(global_vars, _odm("StudyName"), text=study.code, where=where)
    _sub(global_vars, _odm("StudyDescription"), text=study.title, where=where)
    _sub(global_vars, _odm("ProtocolName"), text=study.protocol or study.code, where=where)
    mdv = _sub(study_el, _odm("MetaDataVersion"), {
        "OID": f"MDV.{study.code}.SDTMIG.{sdtmig_version}", "Name": f"Study {study.code}, SDTM data definitions",
        "Description": f"SDTM tabulation datasets of {study.code}", _def("DefineVersion"): DEFINE_VERSION,
    }, where=where)
    has_codelists = any(v.codelist for dataset in datasets for v in dataset.variables)
    standards = _sub(mdv, _def("Standards"), where=where)
    _sub(standards, _def("Standard"), {"OID": "STD.SDTMIG", "Name": "SDTMIG", "Type": "IG",
                                       "Version": sdtmig_version, "Status": "Final"}, where="sdtmig_version")
    if has_codelists:
        _sub(standards, _def("Standard"), {"OID": "STD.CT", "Name": "CDISC/NCI", "Type": "CT",
                                           "PublishingSet": "SDTM", "Version": ct_version, "Status": "Final"},
             where="ct_version")

    for dataset in datasets:
        where = f"dataset {dataset.name}"
        leaf_id = f"LF.{dataset.name}"
        group = _sub(mdv, _odm("ItemGroupDef"), {
            "OID": f"IG.{dataset.name}", "Name": dataset.name, "Repeating": "No" if dataset.name == "DM" else "Yes",
            "IsReferenceData": "Yes" if dataset.domain_class == "TRIAL DESIGN" else "No",
            "SASDatasetName": dataset.name, "Domain": dataset.name[4:] if dataset.name.startswith("SUPP")
            else dataset.name, "Purpose": "Tabulation", _def("Structure"): dataset.structure,
            _def("StandardOID"): "STD.SDTMIG", _def("ArchiveLocationID"): leaf_id,
        }, where=where)
        _description(group, dataset.label, where)
        for order, variable in enumerate(dataset.variables, start=1):
            attrs = {"ItemOID": f"IT.{dataset.name}.{variable.name}", "OrderNumber": str(order),
                     "Mandatory": "Yes" if variable.mandatory else "No"}
            if variable.name in dataset.keys:
                attrs["KeySequence"] = str(dataset.keys.index(variable.name) + 1)
            if variable.origin == "Derived":
                attrs["MethodOID"] = f"MT.{dataset.name}.{variable.name}"
            if variable.role:
                attrs["Role"] = variable.role
            _sub(group, _odm("ItemRef"), attrs, where=f"{where}, variable {variable.name}")
        _sub(group, _def("Class"), {"Name": dataset.domain_class}, where=where)
        file_name = dataset.file_name or f"{dataset.name.lower()}.xpt"
        leaf = _sub(group, _def("leaf"), {"ID": leaf_id, f"{{{XLINK_NS}}}href": file_name}, where=where)
        _sub(leaf, _def("title"), text=file_name, where=where)

    for dataset in datasets:
        for variable in dataset.variables:
            where = f"dataset {dataset.name}, variable {variable.name}"
            data_type = _data_type(variable)
            attrs = {"OID": f"IT.{dataset.name}.{variable.name}", "Name": variable.name, "DataType": data_type}
            if data_type in ("text", "integer", "float"):
                attrs["Length"] = str(variable.length)
            attrs["SASFieldName"] = variable.name
            item = _sub(mdv, _odm("ItemDef"), attrs, where=where)
            _description(item, variable.label, where)
            if variable.codelist:
                _sub(item, _odm("CodeListRef"), {"CodeListOID": f"CL.{dataset.name}.{variable.name}"}, where=where)
            origin_type, source = ORIGINS[variable.origin]
            origin = _sub(item, _def("Origin"), {"Type": origin_type, "Source": source}, where=where)
            if variable.origin == "CRF" and variable.source:
                _description(origin, f"Collected on the eCRF: {variable.source}", where)

    for dataset in datasets:
        for variable in dataset.variables:
            if not variable.codelist:
                continue
            where = f"dataset {dataset.name}, variable {variable.name} codelist"
            code_list = _sub(mdv, _odm("CodeList"), {
                "OID": f"CL.{dataset.name}.{variable.name}", "Name": f"{dataset.name}.{variable.name}",
                "DataType": "text" if variable.type == "Char" else _data_type(variable)}, where=where)
            enumerated = all(code == decode for code, decode in variable.codelist)
            for order, (code, decode) in enumerate(variable.codelist, start=1):
                if enumerated:
                    _sub(code_list, _odm("EnumeratedItem"), {"CodedValue": code, "OrderNumber": str(order)},
                         where=where)
                else:
                    entry = _sub(code_list, _odm("CodeListItem"), {"CodedValue": code, "OrderNumber": str(order)},
                                 where=where)
                    holder = _sub(entry, _odm("Decode"), where=where)
                    _sub(holder, _odm("TranslatedText"), {XML_LANG: "en"}, text=decode, where=where)

    for dataset in datasets:
        for variable in dataset.variables:
            if variable.origin != "Derived":
                continue
            where = f"dataset {dataset.name}, variable {variable.name} method"
            method = _sub(mdv, _odm("MethodDef"), {"OID": f"MT.{dataset.name}.{variable.name}",
                                                   "Name": f"Algorithm for {dataset.name}.{variable.name}",
                                                   "Type": "Computation"}, where=where)
            _description(method, _method_text(dataset, variable), where)
    return root


def define_write(out: BinaryIO, study: StudyMeta, datasets: Sequence[DatasetSpec], *, file_oid: str,
                 created: datetime, sdtmig_version: str = "3.4", ct_version: str = CT_VERSION) -> None:
    """Write the Define-XML 2.1 document describing `datasets` (in the given order) to `out`.

    The document is metadata only (its size follows the number of variables, not of rows), so it is
    built as a tree and serialised once through lxml.etree.xmlfile. The same input gives the same
    bytes. Raises CdiscInputError naming the dataset/variable for specs Define-XML cannot describe."""
    if not file_oid:
        raise CdiscInputError("file_oid", "give the file's OID.")
    if not datasets:
        raise CdiscInputError("datasets", "give at least one dataset.")
    _check(datasets)
    tree = _define_tree(study, datasets, file_oid=file_oid, created=iso_with_offset(created, "created"),
                        sdtmig_version=sdtmig_version, ct_version=ct_version)
    with etree.xmlfile(out, encoding="UTF-8") as xf:
        xf.write_declaration()
        xf.write(tree, pretty_print=True)
