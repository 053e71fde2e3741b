"""A streaming SAS XPORT version 5 writer (the transport format of SDTM submissions).

The bytes are those pyreadstat writes (readstat's TS-140 implementation), produced here
batch by batch so that memory is bounded by one batch, not by the dataset:

- the header records (library, member, descriptor, namestr, obs header) are written as
  readstat writes them, with the spec's widths. In version 5 they do not contain the row
  count, so they are known before the rows;
- the observations are encoded a batch at a time and column by column with numpy: a
  character value is its UTF-8 bytes padded with spaces to the width; a number is an IBM
  370 double (big-endian, base-16 exponent), missing is ``.`` (0x2E) and seven zero
  bytes, zero (signed or not) is eight zero bytes. (Per-value Python, and a pyreadstat
  call per batch, cost several times the rest of an SDTM export.) A number outside the
  range where the conversion is exact (tiny, or near the IBM maximum, where readstat has
  its own rules) is encoded by pyreadstat itself;
- the final 80-byte padding is written once at the end.

The result is byte for byte what one ``pyreadstat.write_xport(frame, path,
file_format_version=5, ...)`` of the whole frame writes when each character column reaches
its spec width (tests/exports/test_xpt.py holds the two to each other), except for the
creation timestamps, which readstat takes from the clock: they are ``created`` here, so
that the same input gives the same bytes.

Encoding: character values are written as UTF-8 and their length is counted in bytes.
SDTM submissions expect ASCII; Chinese text is written intact rather than mangled (pass
``ascii_only=True`` to refuse it instead, e.g. for an FDA submission). Values are never
truncated: a value longer than its variable's width is an error.
"""

from __future__ import annotations

import math
import os
import re
import struct
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from datetime import datetime
from itertools import islice, repeat
from types import TracebackType
from typing import IO, Any, Protocol

import numpy as np

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
DEFAULT_BATCH = 10_000
# IBM exponents (excess 64, base 16) encoded here; outside them readstat's own rules apply
# (it writes the largest number for values near the top of the range, for one), so such a
# rare number is encoded by pyreadstat.
IBM_EXPONENTS = (2, 120)
IBM_MISSING = np.uint64(0x2E << 56)


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
        columns = self._columns(rows)
        if columns is None:  # something to refuse, or unusual types: value by value
            columns = self._validate(rows)
        data = self._encode(columns, len(rows))
        if self._header is None:
            self._header = self._header_records()
            out.write(self._header)
        out.write(data)
        self._data_bytes += len(data)
        self.rows += len(rows)
        return len(rows)

    def write_cells(self, columns: Sequence[np.ndarray], count: int) -> bool:
        """Append one batch given as cells (Char: (rows or 1, width) bytes, UTF-8 padded
        with spaces; Num: float64, NaN for missing). False, writing nothing, when the
        batch holds something ``write`` must word (non-ASCII text with ``ascii_only``, a
        NUL, a non-finite number): then pass the batch to ``write`` as rows."""
        out = self._require_open()
        if not count:
            return True
        block = np.empty((count, self._row_length), dtype=np.uint8)
        offset = 0
        for variable, column in zip(self.spec.variables, columns, strict=True):
            width = variable.length
            if variable.type == "Num":
                if column.shape != (count,) or np.isinf(column).any():
                    return False
                block[:, offset:offset + 8] = self._ibm(column.astype(np.float64, copy=False))
            else:
                if column.ndim != 2 or column.shape[1] != width or column.shape[0] not in (1, count):
                    return False
                if not column.all() or (self._ascii_only and (column >= 0x80).any()):
                    return False
                block[:, offset:offset + width] = column
            offset += width
        if self._header is None:
            self._header = self._header_records()
            out.write(self._header)
        data = block.tobytes()
        out.write(data)
        self._data_bytes += len(data)
        self.rows += count
        return True

    def written_spec(self) -> DatasetSpec:
        return replace(self.spec, rows=self.rows, file_name=self.spec.file_name or f"{self.spec.name.lower()}.xpt")

    def _require_open(self) -> IO[bytes]:
        if self._out is None or self._tmpdir is None:
            raise RuntimeError("Use XptWriter as a context manager.")
        return self._out

    def _finish(self) -> None:
        out = self._require_open()
        if self._header is None:  # no rows: the header alone
            self._header = self._header_records()
            out.write(self._header)
        padding = -self._data_bytes % RECORD
        out.write(b" " * padding)
        out.flush()

    def _columns(self, rows: Sequence[Sequence[object]]) -> list[Any] | None:
        """The batch by column when every value is plainly valid (checked a column at a
        time, in C loops); None when a value must be refused or converted, which
        ``_validate`` then does value by value (with the row number in its message)."""
        spec = self.spec
        if set(map(len, rows)) != {len(spec.variables)}:
            return None
        columns: list[Any] = list(zip(*rows, strict=True))
        for index, (variable, column) in enumerate(zip(spec.variables, columns, strict=True)):
            kinds = set(map(type, column))
            if variable.type == "Num":
                if not kinds <= {float, int, type(None)}:
                    return None
                numbers = np.array(column, dtype=np.float64)  # None -> NaN
                if int(np.count_nonzero(~np.isfinite(numbers))) != column.count(None):
                    return None  # NaN or infinity given as a value
                columns[index] = numbers
                continue
            if not kinds <= {str, type(None)}:
                return None
            if self._ascii_only and not "".join(filter(None, column)).isascii():
                return None
            cells = _char_cells(column, variable.length)
            if cells is None:  # a value is too long or holds a NUL
                return None
            columns[index] = cells
        return columns

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
            # The position, never the text: these messages are shown on the export and logged.
            at = next(i for i, c in enumerate(value) if not c.isascii())
            raise XptError(f"{where}: the text is not ASCII (character {at + 1}, U+{ord(value[at]):04X}).")
        if "\x00" in value:  # readstat used to cut the value there, silently
            raise XptError(f"{where}: the value holds a NUL character, which XPT cannot carry.")
        size = len(value.encode("utf-8"))
        if size > variable.length:
            raise XptError(f"{where}: the value is {size} bytes in UTF-8; the variable holds "
                           f"{variable.length}{'' if variable.length == MAX_CHAR else ' (its spec length)'}.")
        return value

    def _encode(self, columns: Sequence[Any], count: int) -> bytes:
        """The observation bytes of one batch (checked values by column), as readstat writes them."""
        block = np.full((count, self._row_length), 0x20, dtype=np.uint8)
        offset = 0
        for variable, column in zip(self.spec.variables, columns, strict=True):
            width = variable.length
            if variable.type == "Num":
                numbers = column if isinstance(column, np.ndarray) else np.array(column, dtype=np.float64)
                block[:, offset:offset + 8] = self._ibm(numbers)
            else:
                cells = column if isinstance(column, np.ndarray) else _char_cells(column, width)
                if cells is None:  # checked by _validate: cannot happen
                    raise XptError(f"Dataset {self.spec.name}, variable {variable.name}: a value cannot be written.")
                block[:, offset:offset + width] = cells
            offset += width
        return block.tobytes()

    def _ibm(self, numbers: np.ndarray) -> np.ndarray:
        """IBM 370 doubles, big-endian, one row of 8 bytes per number (NaN: missing).

        A normal IEEE double is (1 + m / 2**52) * 2**(e - 1023); the IBM fraction holds 56
        bits after a base-16 exponent, so the 53-bit significand shifted left by 0-3 bits
        fits exactly (no rounding) and the leading hexadecimal digit is not zero."""
        bits = numbers.view(np.uint64)
        biased = ((bits >> np.uint64(52)) & np.uint64(0x7FF)).astype(np.int64)
        shift = (biased - 763) % 4
        exponent = (biased - 763 - shift) // 4
        significand = (bits & np.uint64((1 << 52) - 1)) | np.uint64(1 << 52)
        words = ((bits >> np.uint64(63)) << np.uint64(63)) | (exponent.astype(np.uint64) << np.uint64(56)) | (
            significand << shift.astype(np.uint64))
        words[numbers == 0] = 0
        missing = np.isnan(numbers)
        words[missing] = IBM_MISSING
        cells = words.astype(">u8").view(np.uint8).reshape(len(numbers), 8)
        low, high = IBM_EXPONENTS
        outside = ~missing & (numbers != 0) & ((exponent < low) | (exponent > high))
        for at in np.flatnonzero(outside):
            cells[at] = np.frombuffer(self._readstat_number(float(numbers[at])), dtype=np.uint8)
        return cells

    def _readstat_number(self, number: float) -> bytes:
        import pandas as pd  # only for such a rare number: importing them takes half a second
        import pyreadstat

        frame = pd.DataFrame({"X": pd.Series([number], dtype="float64")})
        assert self._tmpdir is not None
        path = os.path.join(self._tmpdir.name, "number.xpt")
        pyreadstat.write_xport(frame, path, file_format_version=5, table_name="X")
        with open(path, "rb") as handle:
            _read_header(handle, self.spec.name)
            return handle.read(8)

    def _header_records(self) -> bytes:
        """The header records as readstat writes them for the spec (TS-140, version 5):
        library, member and descriptor records, one 140-byte namestr per variable (no
        formats; numbers right-justified), then the observation header. Written here, so
        that an export does not import pandas and pyreadstat (half a second) for them."""
        spec = self.spec
        stamp = self._stamp
        namestrs = b"".join(
            struct.pack(">hhhh8s40s8shhh2s8shhi52s", 1 if variable.type == "Num" else 2, 0, variable.length, number,
                        _padded(variable.name, 8), _padded(variable.label, 40), b" " * 8, 0, 0,
                        1 if variable.type == "Num" else 0, b"\x00\x00", b" " * 8, 0, 0, position, b"\x00" * 52)
            for number, (variable, position) in enumerate(zip(spec.variables, self._positions(), strict=True), 1))
        records = [
            LIBRARY_HEADER_V5 + b"000000000000000000000000000000  ",
            b"SAS     SAS     SASLIB  6.06    bsd4.2  " + b" " * 24 + stamp,
            stamp + b" " * 64,
            b"HEADER RECORD*******MEMBER  HEADER RECORD!!!!!!!000000000000000001600000000140  ",
            b"HEADER RECORD*******DSCRPTR HEADER RECORD!!!!!!!000000000000000000000000000000  ",
            b"SAS     " + _padded(spec.name, 8) + b"SASDATA 6.06    bsd4.2  " + b" " * 24 + stamp,
            stamp + b" " * 16 + _padded(spec.label, 40) + b" " * 8,
            b"HEADER RECORD*******NAMESTR HEADER RECORD!!!!!!!000000%04d00000000000000000000  " % len(spec.variables),
            namestrs + b" " * (-len(namestrs) % RECORD),
            OBS_HEADER + b"000000000000000000000000000000  ",
        ]
        return b"".join(records)

    def _positions(self) -> list[int]:
        positions, at = [], 0
        for variable in self.spec.variables:
            positions.append(at)
            at += variable.length
        return positions


def _padded(text: str, size: int) -> bytes:
    return text.encode("utf-8").ljust(size)


def _char_cells(texts: Sequence[str | None], width: int) -> np.ndarray | None:
    """Text values (None: empty) as UTF-8 bytes padded with spaces: (rows, width) bytes,
    or None when a value is longer than ``width`` bytes or holds a NUL. map() over C
    methods: no Python frame per value."""
    texts = [text or "" for text in texts] if None in texts else texts
    joined = "".join(map(str.ljust, texts, repeat(width)))  # type: ignore[arg-type]
    if "\x00" in joined:
        return None
    if joined.isascii():  # characters are bytes: pad before encoding (half the work)
        padded = joined.encode("ascii")
    else:
        padded = b"".join(map(bytes.ljust, map(str.encode, texts), repeat(width)))  # type: ignore[arg-type]
    if len(padded) != len(texts) * width:  # ljust never cuts: some value is longer
        return None
    return np.frombuffer(padded, dtype=np.uint8).reshape(len(texts), width)


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


class ColumnBatch(Protocol):
    """A batch of rows that can also be given as cells (exports.sdtm_columns)."""

    count: int

    def cells(self, spec: DatasetSpec) -> list[np.ndarray] | None: ...

    def rows(self) -> list[tuple[object, ...]]: ...


def xpt_write_columns(out: str | os.PathLike[str] | IO[bytes], spec: DatasetSpec, batches: Iterable[ColumnBatch], *,
                      created: datetime = SAS_EPOCH, ascii_only: bool = False) -> DatasetSpec:
    """Like ``xpt_write``, from batches of cells; a batch the cells cannot carry is written
    (or refused, with the row in the message) value by value. Same bytes either way."""
    with XptWriter(out, spec, created=created, ascii_only=ascii_only) as writer:
        for batch in batches:
            cells = batch.cells(spec)
            if cells is None or not writer.write_cells(cells, batch.count):
                for rows in _batches(batch.rows(), DEFAULT_BATCH):
                    writer.write(rows)
    return writer.written_spec()
