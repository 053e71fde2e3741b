"""Validation against the official CDISC schemas (ODM 1.3.2, Define-XML 2.1).

The XSDs ship with odmlib; they are compiled from their file path so that the relative
xs:include / xs:import (xml.xsd, xlink.xsd, xmldsig, the ODM foundation) resolve from the
package directory, and the parser refuses the network so a validation never fetches.
"""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path

from lxml import etree

Source = str | Path | bytes


def _schemas_dir() -> Path:
    spec = importlib.util.find_spec("odmlib")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("odmlib is not installed: the CDISC schemas ship with it.")
    return Path(next(iter(spec.submodule_search_locations))) / "schemas"


def _parser() -> etree.XMLParser:
    # no_network: relative includes stay local; resolve_entities off: no XXE in documents.
    return etree.XMLParser(no_network=True, resolve_entities=False, huge_tree=True)


def _compile(path: Path) -> etree.XMLSchema:
    if not path.is_file():
        raise RuntimeError(f"Schema file missing: {path}")
    return etree.XMLSchema(etree.parse(str(path), _parser()))


@cache
def odm_schema() -> etree.XMLSchema:
    return _compile(_schemas_dir() / "odm" / "1.3.2" / "ODM1-3-2.xsd")


@cache
def define_schema() -> etree.XMLSchema:
    return _compile(_schemas_dir() / "define" / "2.1" / "define2-1-0.xsd")


def _problems(schema: etree.XMLSchema, source: Source) -> list[str]:
    try:
        if isinstance(source, bytes):
            doc = etree.fromstring(source, _parser()).getroottree()
        else:
            doc = etree.parse(str(source), _parser())
    except etree.XMLSyntaxError as exc:
        return [f"line {exc.lineno}: not well-formed XML: {exc.msg}"]
    if schema.validate(doc):
        return []
    return [f"line {error.line}: {error.message}" for error in schema.error_log]


def odm_problems(source: Source) -> list[str]:
    """Schema problems of an ODM 1.3.2 document (path or bytes), each with its line; [] = valid."""
    return _problems(odm_schema(), source)


def define_problems(source: Source) -> list[str]:
    """Schema problems of a Define-XML 2.1 document (path or bytes), each with its line; [] = valid."""
    return _problems(define_schema(), source)
