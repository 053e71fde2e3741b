"""The entry-save body check (ecrf.api.serializers.entry_save_input) gives exactly what
EntrySaveSerializer gives: the same validated data for every body it accepts, and the
serializer's own field messages for every body it refuses. Its direct path is only a
shortcut for well-formed bodies, so each case is run through both."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.exceptions import ValidationError

from ecrf.api.serializers import EntrySaveSerializer, entry_save_input

VALUES = {"weight": "70.5", "sex": "2", "meds": [{"med_name": "Aspirin", "med_dose": 100}], "symptoms": ["a"]}

CASES: list[Any] = [
    {"values": VALUES},
    {"values": VALUES, "version": 0, "complete": True},
    {"values": {}, "version": None},
    {"values": VALUES, "version": 3, "missing": {"height": "UNK"}, "reason": "typo",
     "reasons": {"weight": "re-measured", "sex": ""}},
    {"values": VALUES, "reasons": {"weight": "重新测量"}, "reason": "录入错误"},
    {"values": VALUES, "unknown_key": 1},  # ignored by both
    # Accepted by the serializer after conversion: the direct path must not differ.
    {"values": VALUES, "version": "4"},
    {"values": VALUES, "version": 2.0},
    {"values": VALUES, "complete": "true"},
    {"values": VALUES, "complete": 1},
    {"values": VALUES, "reason": "  padded  "},
    {"values": VALUES, "missing": {"height": " NA "}},
    {"values": VALUES, "missing": {"height": 5}},
    {"values": VALUES, "reasons": {"weight": 12}},
    # Refused.
    {"values": VALUES, "version": -1},
    {"values": VALUES, "version": True},
    {"values": VALUES, "version": "x"},
    {"values": []},
    {"values": "weight=70"},
    {"values": None},
    {"version": 1},
    {"values": VALUES, "complete": "maybe"},
    {"values": VALUES, "missing": {"height": "TOO-LONG-CODE"}},
    {"values": VALUES, "missing": {"height": ""}},
    {"values": VALUES, "missing": {"height": "   "}},
    {"values": VALUES, "missing": ["height"]},
    {"values": VALUES, "reason": "x" * 1001},
    {"values": VALUES, "reason": "x" * 1000},
    {"values": VALUES, "reason": "nul\x00byte"},
    {"values": VALUES, "reason": "lone \ud800 surrogate"},
    {"values": VALUES, "reasons": {"weight": "x" * 1001}},
    {"values": VALUES, "reasons": "because"},
    {"values": VALUES, "reason": None},
    [],
    "values",
    None,
]


def _serializer_result(data: Any) -> tuple[str, Any]:
    serializer = EntrySaveSerializer(data=data)
    if serializer.is_valid():
        return "ok", dict(serializer.validated_data)
    return "error", serializer.errors


def _direct_result(data: Any) -> tuple[str, Any]:
    try:
        return "ok", entry_save_input(data)
    except ValidationError as error:
        return "error", error.detail


@pytest.mark.parametrize("data", CASES, ids=[str(i) for i in range(len(CASES))])
def test_the_body_check_agrees_with_the_serializer(data: Any) -> None:
    assert _direct_result(data) == _serializer_result(data)


def test_the_cases_cover_both_outcomes() -> None:
    outcomes = [_serializer_result(case)[0] for case in CASES]
    assert outcomes.count("ok") >= 10 and outcomes.count("error") >= 15
