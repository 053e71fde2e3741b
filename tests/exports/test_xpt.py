"""exports.xpt: streamed XPT v5 equals pyreadstat's one-shot file, reads back, refuses bad input."""

from __future__ import annotations

import io
import math
import random
import re
import tracemalloc
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyreadstat
import pytest

from exports.records import DatasetSpec, VariableSpec
from exports.xpt import XptError, XptWriter, xpt_write

CREATED = datetime(2024, 3, 7, 14, 5, 9)
CREATED_TEXT = b"07MAR24:14:05:09"  # written out by hand: SAS DATETIME16


def _spec(**changes: object) -> DatasetSpec:
    variables = (
        VariableSpec("USUBJID", "Unique Subject Identifier", "Char", 14),
        VariableSpec("VSSEQ", "Sequence Number", "Num", 8),
        VariableSpec("VSORRES", "Result or Finding in Original Units", "Char", 9),
        VariableSpec("VSSTRESN", "Numeric Result/Finding in Standard Units", "Num", 8),
    )
    base: dict[str, object] = {"name": "VS", "label": "Vital Signs", "domain_class": "FINDINGS",
                               "structure": "One record per measurement", "keys": ("USUBJID",),
                               "variables": variables}
    base.update(changes)
    return DatasetSpec(**base)  # type: ignore[arg-type]


def _rows(count: int) -> list[tuple[object, ...]]:
    rows: list[tuple[object, ...]] = []
    for i in range(count):
        subject = f"S-{i:03d}"
        result = ["72.5", "体重高", None, ""][i % 4]  # "体重高": 9 bytes, the VSORRES width
        number = [72.5, None, -0.001, 1e10][i % 4]
        rows.append((subject, i + 1, result, number))
    # Every Char column reaches its spec width at least once, as the one-shot comparison needs.
    rows[5] = ("S-005-ABCDEFGH", 6, "72.5", 3.0)  # USUBJID: 14 bytes
    return rows


def _one_shot(path: Path, spec: DatasetSpec, rows: list[tuple[object, ...]]) -> bytes:
    frame = pd.DataFrame({
        variable.name: pd.Series([row[i] for row in rows], dtype="float64" if variable.type == "Num" else object)
        for i, variable in enumerate(spec.variables)})
    pyreadstat.write_xport(frame, str(path), file_format_version=5, table_name=spec.name, file_label=spec.label,
                           column_labels=[variable.label for variable in spec.variables])
    data = path.read_bytes()
    # readstat stamps the clock's time; put the writer's fixed time in the four header stamps.
    header_end = data.index(b"HEADER RECORD*******OBS     HEADER RECORD")
    header = re.sub(rb"\d\d[A-Z]{3}\d\d:\d\d:\d\d:\d\d", CREATED_TEXT, data[:header_end])
    assert header.count(CREATED_TEXT) == 4
    return header + data[header_end:]


def test_batches_give_the_bytes_of_one_pyreadstat_call(tmp_path: Path) -> None:
    spec, rows = _spec(), _rows(53)
    assert max(len(str(row[2] or "").encode()) for row in rows) == 9
    with XptWriter(tmp_path / "vs.xpt", spec, created=CREATED) as writer:
        for start in range(0, len(rows), 7):
            assert writer.write(rows[start:start + 7]) == len(rows[start:start + 7])
    assert writer.rows == 53
    assert writer.written_spec().rows == 53
    assert (tmp_path / "vs.xpt").read_bytes() == _one_shot(tmp_path / "once.xpt", spec, rows)


def test_short_values_keep_the_spec_width_and_read_back(tmp_path: Path) -> None:
    spec = _spec(variables=(VariableSpec("USUBJID", "Unique Subject Identifier", "Char", 40),
                            VariableSpec("AGE", "Age", "Num", 8),
                            VariableSpec("TERM", "术语", "Char", 200)))
    rows = [("A", 30, "头痛"), ("BB", None, None), ("CCC", -1.5, ""), ("D", 0, "x" * 200)]
    written = xpt_write(tmp_path / "x.xpt", spec, rows, batch_size=2, created=CREATED)
    data = (tmp_path / "x.xpt").read_bytes()
    assert data.startswith(b"HEADER RECORD*******LIBRARY HEADER RECORD!!!!!!!")  # v5, not LIBV8
    assert len(data) % 80 == 0
    assert written.rows == 4 and written.file_name == "vs.xpt"
    frame, meta = pyreadstat.read_xport(str(tmp_path / "x.xpt"))
    assert meta.table_name == "VS" and meta.file_label == "Vital Signs"
    assert meta.column_names == ["USUBJID", "AGE", "TERM"]
    assert meta.column_labels == ["Unique Subject Identifier", "Age", "术语"]
    assert meta.variable_storage_width == {"USUBJID": 40, "AGE": 8, "TERM": 200}
    assert frame["USUBJID"].tolist() == ["A", "BB", "CCC", "D"]
    assert frame["TERM"].tolist() == ["头痛", "", "", "x" * 200]
    ages = frame["AGE"].tolist()
    assert ages[0] == 30 and math.isnan(ages[1]) and ages[2] == -1.5 and ages[3] == 0


def test_same_rows_give_the_same_bytes(tmp_path: Path) -> None:
    first, second = io.BytesIO(), io.BytesIO()
    xpt_write(first, _spec(), _rows(40), batch_size=9, created=CREATED)
    xpt_write(second, _spec(), _rows(40), batch_size=13, created=CREATED)
    assert first.getvalue() == second.getvalue()
    assert CREATED_TEXT in first.getvalue()[:800]


def test_an_empty_dataset_is_a_header_that_reads_back(tmp_path: Path) -> None:
    spec = _spec()
    written = xpt_write(tmp_path / "e.xpt", spec, [])
    frame, meta = pyreadstat.read_xport(str(tmp_path / "e.xpt"))
    assert written.rows == 0 and len(frame) == 0
    assert meta.column_names == [variable.name for variable in spec.variables]


@pytest.mark.parametrize(("spec", "message"), [
    (_spec(name="VITALSIGN"), "Dataset 'VITALSIGN': the name is 9 characters long"),
    (_spec(name="vs"), "Dataset 'vs': a name starts with A-Z"),
    (_spec(label="L" * 41), "Dataset VS: the label is 41 characters"),
    (_spec(variables=(VariableSpec("VSSTRESNUM", "x", "Num", 8),)), "variable 'VSSTRESNUM': the name is 10"),
    (_spec(variables=(VariableSpec("VS-X", "x", "Num", 8),)), "variable 'VS-X': a name starts with A-Z"),
    (_spec(variables=(VariableSpec("VSTEST", "T" * 41, "Char", 8),)), "variable 'VSTEST': the label is 41"),
    (_spec(variables=(VariableSpec("VSTEST", "检查项目名称" * 3, "Char", 8),)), "(54 bytes); at most 40"),
    (_spec(variables=(VariableSpec("VSTEST", "x", "Char", 201),)), "a Char length is 1 to 200 bytes, not 201"),
    (_spec(variables=(VariableSpec("VSTEST", "x", "Num", 4),)), "a Num variable has length 8, not 4"),
    (_spec(variables=(VariableSpec("VSTEST", "x", "Date", 8),)), "the type is Char or Num"),
    (_spec(variables=(VariableSpec("A", "x", "Num", 8), VariableSpec("A", "y", "Num", 8))), "used twice"),
])
def test_bad_specs_are_refused_by_name(tmp_path: Path, spec: DatasetSpec, message: str) -> None:
    with pytest.raises(XptError, match=re.escape(message)):
        XptWriter(tmp_path / "bad.xpt", spec)


@pytest.mark.parametrize(("row", "message"), [
    (("S-1", 1, "123456789X", 1.0), "Dataset VS, variable VSORRES, row 3: the value is 10 bytes in UTF-8"),
    (("S-1", 1, "体重高X", 1.0), "variable VSORRES, row 3: the value is 10 bytes in UTF-8"),
    (("S-1", float("nan"), "", 1.0), "variable VSSEQ, row 3: nan is not a finite number"),
    (("S-1", 1, "", float("inf")), "variable VSSTRESN, row 3: inf is not a finite number"),
    (("S-1", "1", "", 1.0), "variable VSSEQ, row 3: give a number or None, not str"),
    (("S-1", True, "", 1.0), "variable VSSEQ, row 3: give a number or None, not bool"),
    (("S-1", 1, 72.5, 1.0), "variable VSORRES, row 3: give text or None, not float"),
    (("S-1", 1, ""), "Dataset VS, row 3: 3 values for 4 variables"),
])
def test_bad_values_are_refused_with_dataset_variable_and_row(tmp_path: Path, row: tuple[object, ...],
                                                              message: str) -> None:
    good = [("S-1", 1, "a", 1.0), ("S-2", 2, "b", 2.0)]
    out = io.BytesIO()
    with pytest.raises(XptError, match=re.escape(message)):
        xpt_write(out, _spec(), [*good, row], batch_size=2)


def test_width_counts_utf8_bytes_not_characters(tmp_path: Path) -> None:
    assert xpt_write(io.BytesIO(), _spec(), [("S-1", 1, "体重高", 1.0)]).rows == 1  # 3 characters, 9 bytes


def test_a_value_over_200_bytes_is_refused_not_truncated(tmp_path: Path) -> None:
    spec = _spec(variables=(VariableSpec("AETERM", "Reported Term for the Adverse Event", "Char", 200),))
    with pytest.raises(XptError, match=r"Dataset VS, variable AETERM, row 1: the value is 201 bytes in UTF-8; "
                                       r"the variable holds 200\.$"):
        xpt_write(tmp_path / "ae.xpt", spec, [("头" * 67,)])  # 67 characters, 201 bytes
    assert xpt_write(tmp_path / "ae.xpt", spec, [("头" * 66 + "xx",)]).rows == 1  # exactly 200 bytes


def test_ascii_only_refuses_chinese_text(tmp_path: Path) -> None:
    with pytest.raises(XptError, match=r"variable VSORRES, row 1: the text is not ASCII \(character 1, U\+4F53\)"):
        xpt_write(tmp_path / "a.xpt", _spec(), [("S-1", 1, "体重", 1.0)], ascii_only=True)


def _many(count: int) -> Iterator[tuple[object, ...]]:
    for i in range(count):
        yield (f"S-{i % 5000:05d}", i + 1, f"{i % 997}.5", i * 0.25)


def test_memory_stays_bounded_by_one_batch(tmp_path: Path) -> None:
    tracemalloc.start()
    try:
        written = xpt_write(tmp_path / "big.xpt", _spec(), _many(200_000), batch_size=5_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert written.rows == 200_000
    # 200k rows held at once would be well over 50 MB of Python objects; one batch is a few MB.
    assert peak < 20 * 1024 * 1024, peak
    size = (tmp_path / "big.xpt").stat().st_size
    header = (tmp_path / "big.xpt").read_bytes()[:2000]
    header_len = header.index(b"HEADER RECORD*******OBS     HEADER RECORD") + 80
    assert size == header_len + math.ceil(200_000 * 39 / 80) * 80
    frame, _ = pyreadstat.read_xport(str(tmp_path / "big.xpt"), row_offset=199_990)
    assert frame["VSSEQ"].tolist() == [float(i + 1) for i in range(199_990, 200_000)]
    assert frame["VSSTRESN"].tolist() == [i * 0.25 for i in range(199_990, 200_000)]


def _mixed_rows(count: int) -> list[tuple[object, ...]]:
    """Numbers over the whole IBM range and beyond (readstat's own rules apply at its edges),
    in every Python form a caller may give, next to text of every UTF-8 length."""
    rng = random.Random(20240307)
    edges = [0.0, -0.0, 1.0, -1.0, 0.5, 2.0 ** -260, 16.0 ** -65, 5e-324, 1e-300, 2.0 ** 248, 1e75, -1e76, 7.2e75]
    alphabet = "abcXYZ 0.-体重高é\t"
    rows: list[tuple[object, ...]] = []
    for i in range(count):
        kind = i % 10
        number: object
        if kind == 0:
            number = None
        elif kind == 1:
            number = edges[i // 10 % len(edges)]
        elif kind == 2:
            number = rng.randint(-10 ** 9, 10 ** 9)
        elif kind == 3:
            number = np.float64(rng.uniform(-1e6, 1e6))  # a float subclass: checked value by value
        else:
            number = math.copysign(rng.random() * 10 ** rng.uniform(-80, 80), rng.random() - 0.5)
        text = None if i % 7 == 0 else "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6)))
        rows.append((f"S-{i:06d}", number, text, float(i)))
    rows[3] = (rows[3][0], rows[3][1], "体重高体重高", rows[3][3])  # 18 bytes: the Char width is reached
    return rows


def test_numbers_and_text_of_every_kind_give_pyreadstats_bytes(tmp_path: Path) -> None:
    spec = _spec(variables=(VariableSpec("USUBJID", "Unique Subject Identifier", "Char", 8),
                            VariableSpec("VSSTRESN", "Numeric Result/Finding in Standard Units", "Num", 8),
                            VariableSpec("VSORRES", "Result or Finding in Original Units", "Char", 18),
                            VariableSpec("VSSEQ", "Sequence Number", "Num", 8)))
    rows = _mixed_rows(30_000)
    with XptWriter(tmp_path / "vs.xpt", spec, created=CREATED) as writer:
        for start in range(0, len(rows), 4_096):
            writer.write(rows[start:start + 4_096])
    assert (tmp_path / "vs.xpt").read_bytes() == _one_shot(tmp_path / "once.xpt", spec, rows)
    frame, _ = pyreadstat.read_xport(str(tmp_path / "vs.xpt"))
    # XPT pads with spaces, so a reader cannot tell trailing spaces from padding.
    assert frame["VSORRES"].tolist() == [(text or "").rstrip(" ") for _, _, text, _ in rows]


def test_a_nul_inside_a_value_is_refused_not_cut(tmp_path: Path) -> None:
    # readstat ends a value at a NUL, which silently dropped the rest of it.
    spec = _spec(variables=(VariableSpec("USUBJID", "Unique Subject Identifier", "Char", 5),))
    with pytest.raises(XptError, match=re.escape("variable USUBJID, row 2: the value holds a NUL character")):
        xpt_write(io.BytesIO(), spec, [("cd",), ("a\x00b",)])


@pytest.mark.parametrize("count", [1, 2, 3, 4, 7, 25])
@pytest.mark.parametrize("labels", ["plain", "chinese", "empty"])
def test_the_header_is_pyreadstats_for_any_variables(tmp_path: Path, count: int, labels: str) -> None:
    label = {"plain": "Label {n}", "chinese": "检查项目{n}", "empty": ""}[labels]
    variables = tuple(VariableSpec(f"V{n}" if n % 3 else f"VARIABL{n % 10}", label.format(n=n),
                                   "Num" if n % 2 else "Char", 8 if n % 2 else 1 + n * 7 % 200)
                      for n in range(count))
    spec = _spec(name="QS", label=label.format(n="") if labels != "plain" else "Questionnaires",
                 variables=variables)
    rows = [tuple(float(n) if variable.type == "Num" else "x" * variable.length
                  for n, variable in enumerate(variables))]
    written = io.BytesIO()
    xpt_write(written, spec, rows, created=CREATED)
    assert written.getvalue() == _one_shot(tmp_path / "once.xpt", spec, rows)
