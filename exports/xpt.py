"""A streaming SAS XPORT version 5 writer (the transport format of SDTM submissions).

The bytes are pyreadstat's (readstat's TS-140 implementation, IBM floats included), but
written batch by batch so that memory is bounded by one batch, not by the dataset:

- each batch is written by ``pyreadstat.write_xport`` to a temporary file, with one extra
  *sentinel* row appended whose character values are exactly ``spec.length`` bytes long.
  pyreadstat has no width parameter: it sizes a character variable as the longest UTF-8
  encoding in the column (at least 1 byte). The sentinel makes that maximum the spec width
  in every batch, so every batch has the same header;
- the header records (library, member, descriptor, namestr, obs header) are kept once. In
  version 5 they do not contain the row count, so they are known before the rows;
- each batch's first ``n * row_length`` observation bytes are appended (the sentinel row
  and the final 80-byte padding are dropped); the padding is written once at the end.

The result is byte for byte what one ``pyreadstat.write_xport(frame, path,
file_format_version=5, ...)`` of the whole frame writes when each character column reaches
its spec width, except for the creation timestamps, which readstat takes from the clock:
they are set to ``created`` so that the same input gives the same bytes.

Encoding: character values are written as UTF-8 and their length is counted in bytes.
SDTM submissions expect ASCII; Chinese text is written intact rather than mangled (pass
``ascii_only=True`` to refuse it instead, e.g. for an FDA submission). Values are never
truncated: a value longer than its variable's width is an error.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from datetime import datetime
from itertools import islice
from types import TracebackType
from typing import IO, Any

import pandas as pd
import pyreadstat

from exports.records import DatasetSpec, VariableSpec

NAME_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")
MAX_NAME = 8
MAX_LABEL = 40
MAX_CHAR = 200
RECORD = 80
# SAS's own epoch, used when the caller gives no creation time: deterministic output.
SAS_EPOCH = datetime(1960, 1, 1)
OBS_HEADER = b"HEADER RECORD*******OBS     HEADER RECORD!!!!!!!"
LIBRARY_HEADER_V5 = b"HEADER RECORD*******LIBRARY HEADER RECORD!!!!!!!"
# (record index, offset) of the 16-byte "ddMMMyy:hh:mm:ss" stamps in a version 5 header.
STAMPS = ((1, 64), (2, 0), (5, 64), (6, 0))
STAMP_RE = re.compile(rb"\d\d[A-Z]{3}\d\d:\d\d:\d\d:\d\d")
DEFAULT_BATCH = 10_000


class XptError(ValueError):
    """Bad input for an XPT file; the message names the dataset, variable and row."""


def xpt_stamp(moment: datetime) -> bytes:
    """SAS's DATETIME16 text, as TS-140 headers carry it: 01JAN60:00:00:00."""
    months = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
    text = f"{moment.day:02d}{months[moment.month - 1]}{moment.year % 100:02d}:{moment:%H:%M:%S}"
    return text.encode("ascii")


def xpt_validate_spec(spec: DatasetSpec) -> None:
    """Names, labels, types and widths that a version 5 file can hold; raises XptError."""
    _check_name(spec.name, f"Dataset {spec.name!r}")
    _check_label(spec.label, f"Dataset {spec.name}")
    if not spec.variables:
        raise XptError(f"Dataset {spec.name}: it has no variables.")
    seen: set[str] = set()
    for variable in spec.variables:
        where = f"Dataset {spec.name}, variable {variable.name!r}"
        _check_name(variable.name, where)
        if variable.name in seen:
            raise XptError(f"{where}: the name is used twice.")
        seen.add(variable.name)
        _check_label(variable.label, where)
        if variable.type == "Num":
            if variable.length != 8:
                raise XptError(f"{where}: a Num variable has length 8, not {variable.length}.")
        elif variable.type == "Char":
            if not 1 <= variable.length <= MAX_CHAR:
                raise XptError(f"{where}: a Char length is 1 to {MAX_CHAR} bytes, not {variable.length}.")
        else:
            raise XptError(f"{where}: the type is Char or Num, not {variable.type!r}.")


def _check_name(name: str, where: str) -> None:
    if len(name) > MAX_NAME:
        raise XptError(f"{where}: the name is {len(name)} characters long; XPT v5 allows at most {MAX_NAME}.")
    if not NAME_RE.fullmatch(name):
        raise XptError(f"{where}: a name starts with A-Z, then A-Z, 0-9 or _ only.")


def _check_label(label: str, where: str) -> None:
    size = len(label.encode("utf-8"))
    if len(label) > MAX_LABEL or size > MAX_LABEL:
        raise XptError(f"{where}: the label is {len(label)} characters ({size} bytes); at most {MAX_LABEL}.")


def xpt_row_length(spec: DatasetSpec) -> int:
    return sum(variable.length for variable in spec.variables)


class XptWriter:
    """``with XptWriter(path, spec) as xpt: xpt.write(batch) ...``; rows are sequences in
    ``spec.variables`` order, None for missing. ``out`` is a path or a binary file object
    (left open). ``rows`` counts the rows written; ``written_spec()`` is the spec with it."""

    def __init__(self, out: str | os.PathLike[str] | IO[bytes], spec: DatasetSpec, *,
                 created: datetime = SAS_EPOCH, ascii_only: bool = False) -> None:
        xpt_validate_spec(spec)
        self.spec = spec
        self.rows = 0
        self._out_arg = out
        self._out: IO[bytes] | None = None
        self._owns_out = False
        self._stamp = xpt_stamp(created)
        self._ascii_only = ascii_only
        self._row_length = xpt_row_length(spec)
        self._header: bytes | None = None
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self._data_bytes = 0

    def __enter__(self) -> XptWriter:
        if isinstance(self._out_arg, str | os.PathLike):
            self._out = open(self._out_arg, "wb")  # closed in __exit__
            self._owns_out = True
        else:
            self._out = self._out_arg
        self._tmpdir = tempfile.TemporaryDirectory(prefix="xpt-")
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        try:
            if kind is None:
                self._finish()
        finally:
            if self._tmpdir is not None:
                self._tmpdir.cleanup()
            if self._owns_out and self._out is not None:
                self._out.close()

    def write(self, rows: Sequence[Sequence[object]]) -> int:
        """Validate and append one batch; returns the number of rows it had."""
        out = self._require_open()
        if not rows:
            return 0
        columns = self._validate(rows)
        header, data = self._encode(columns, len(rows))
        if self._header is None:
            self._header = header
            out.write(header)
        elif header != self._header:
            # Cannot happen unless pyreadstat changes how it sizes columns; never write a corrupt file.
            raise XptError(f"Dataset {self.spec.name}: a batch produced a different XPT header.")
        out.write(data)
        self._data_bytes += len(data)
        self.rows += len(rows)
        return len(rows)

    def written_spec(self) -> DatasetSpec:
        return replace(self.spec, rows=self.rows, file_name=self.spec.file_name or f"{self.spec.name.lower()}.xpt")

    def _require_open(self) -> IO[bytes]:
        if self._out is None or self._tmpdir is None:
            raise RuntimeError("Use XptWriter as a context manager.")
        return self._out

    def _finish(self) -> None:
        out = self._require_open()
        if self._header is None:  # no rows: the header alone, from the sentinel-only batch
            self._header, _ = self._encode([[] for _ in self.spec.variables], 0)
            out.write(self._header)
        padding = -self._data_bytes % RECORD
        out.write(b" " * padding)
        out.flush()

    def _validate(self, rows: Sequence[Sequence[object]]) -> list[list[Any]]:
        """Check every value and return the batch by column."""
        spec = self.spec
        columns: list[list[Any]] = [[] for _ in spec.variables]
        for offset, row in enumerate(rows):
            number = self.rows + offset + 1
            if len(row) != len(spec.variables):
                raise XptError(f"Dataset {spec.name}, row {number}: {len(row)} values for "
                               f"{len(spec.variables)} variables.")
            for index, (variable, value) in enumerate(zip(spec.variables, row, strict=True)):
                columns[index].append(self._check_value(variable, value, number))
        return columns

    def _check_value(self, variable: VariableSpec, value: object, number: int) -> Any:
        if value is None:
            return None
        where = f"Dataset {self.spec.name}, variable {variable.name}, row {number}"
        if variable.type == "Num":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise XptError(f"{where}: give a number or None, not {type(value).__name__}.")
            if not math.isfinite(value):
                raise XptError(f"{where}: {value} is not a finite number.")
            return float(value)
        if not isinstance(value, str):
            raise XptError(f"{where}: give text or None, not {type(value).__name__}.")
        if self._ascii_only and not value.isascii():
            raise XptError(f"{where}: {value[:20]!r} is not ASCII.")
        size = len(value.encode("utf-8"))
        if size > variable.length:
            raise XptError(f"{where}: the value is {size} bytes in UTF-8; the variable holds "
                           f"{variable.length}{'' if variable.length == MAX_CHAR else ' (its spec length)'}.")
        return value

    def _encode(self, columns: list[list[Any]], count: int) -> tuple[bytes, bytes]:
        """pyreadstat's bytes for the batch plus the sentinel row: (header, n rows of data)."""
        assert self._tmpdir is not None
        frame = pd.DataFrame({
            variable.name: pd.Series([*column, _sentinel(variable)], dtype="float64" if variable.type == "Num"
                                     else object)
            for variable, column in zip(self.spec.variables, columns, strict=True)
        })
        path = os.path.join(self._tmpdir.name, "batch.xpt")
        pyreadstat.write_xport(frame, path, file_format_version=5, table_name=self.spec.name,
                               file_label=self.spec.label,
                               column_labels=[variable.label for variable in self.spec.variables])
        with open(path, "rb") as handle:
            header = _read_header(handle, self.spec.name)
            data = handle.read(count * self._row_length)
        if len(data) != count * self._row_length:
            raise XptError(f"Dataset {self.spec.name}: pyreadstat wrote fewer observation bytes than expected.")
        return self._stamped(header), data

    def _stamped(self, header: bytes) -> bytes:
        stamped = bytearray(header)
        for record, offset in STAMPS:
            start = record * RECORD + offset
            if not STAMP_RE.fullmatch(header[start:start + 16]):
                raise XptError(f"Dataset {self.spec.name}: unexpected XPT header layout (no timestamp at {start}).")
            stamped[start:start + 16] = self._stamp
        return bytes(stamped)


def _sentinel(variable: VariableSpec) -> object:
    return 0.0 if variable.type == "Num" else "X" * variable.length


def _read_header(handle: IO[bytes], name: str) -> bytes:
    records: list[bytes] = []
    while True:
        record = handle.read(RECORD)
        if len(record) < RECORD:
            raise XptError(f"Dataset {name}: pyreadstat wrote no observation header.")
        records.append(record)
        if record.startswith(OBS_HEADER):
            break
    if not records[0].startswith(LIBRARY_HEADER_V5):
        raise XptError(f"Dataset {name}: pyreadstat did not write a version 5 library header.")
    return b"".join(records)


def _batches(rows: Iterable[Sequence[object]], size: int) -> Iterator[list[Sequence[object]]]:
    iterator = iter(rows)
    while batch := list(islice(iterator, size)):
        yield batch


def xpt_write(out: str | os.PathLike[str] | IO[bytes], spec: DatasetSpec, rows: Iterable[Sequence[object]], *,
              created: datetime = SAS_EPOCH, ascii_only: bool = False, batch_size: int = DEFAULT_BATCH) -> DatasetSpec:
    """Stream ``rows`` into one XPT file, ``batch_size`` rows at a time; returns the spec with
    its row count and file name."""
    with XptWriter(out, spec, created=created, ascii_only=ascii_only) as writer:
        for batch in _batches(rows, batch_size):
            writer.write(batch)
    return writer.written_spec()
