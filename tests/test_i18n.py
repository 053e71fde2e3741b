"""Every user-facing string has a Simplified Chinese translation, and it is compiled."""

from __future__ import annotations

import re
from pathlib import Path

from django.utils import translation

PO = Path(__file__).resolve().parent.parent / "locale" / "zh_Hans" / "LC_MESSAGES" / "django.po"


def _entries() -> list[tuple[str, str, str]]:
    text = PO.read_text(encoding="utf-8")
    entries = []
    for block in text.split("\n\n"):
        msgid = "".join(re.findall(r'^(?:msgid )?"(.*)"$', block.split("msgstr")[0], re.M))
        msgstr = "".join(re.findall(r'"(.*)"', block.split("msgstr", 1)[1])) if "msgstr" in block else ""
        entries.append((block, msgid, msgstr))
    return entries


def test_catalog_is_complete_and_not_fuzzy():
    entries = [(b, i, s) for b, i, s in _entries() if i]  # skip the header
    assert len(entries) > 100
    missing = [i for _b, i, s in entries if not s]
    fuzzy = [i for b, i, _s in entries if "#, fuzzy" in b]
    assert missing == [] and fuzzy == []


def test_placeholders_survive_translation():
    for _block, msgid, msgstr in _entries():
        if not msgid:
            continue
        assert sorted(re.findall(r"%\(\w+\)[sd]", msgid)) == sorted(re.findall(r"%\(\w+\)[sd]", msgstr)), msgid
        assert sorted(re.findall(r"%\(\w+\)[sd]|\{\{ ?\w+ ?\}\}", msgid)) == sorted(
            re.findall(r"%\(\w+\)[sd]|\{\{ ?\w+ ?\}\}", msgstr)), msgid


def test_compiled_catalog_is_used():
    with translation.override("zh-hans"):
        assert translation.gettext("Sign in") == "登录"
        assert translation.gettext("Site coordinator") != "Site coordinator"
