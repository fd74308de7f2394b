"""What a CTR data set's files hold, and how one file's layout is found from its content.

A :class:`CtrFormat` is a data set's fixed definition (Criteo, Avazu): its label, dense and
categorical columns, the kind of each categorical's values (``hex``: 8 hex digits, a 32-bit
hash; ``int``: an integer), fields derived from other columns, and the column order of a
headerless file. :func:`sniff` reads the first bytes of a file, never its name, and returns
its :class:`FileLayout`: Parquet or text, gzip-compressed or plain, tab or comma separated,
with or without a header (whose names give the column order, so any order works).

Example::

    >>> fmt = CtrFormat("toy", "label", ("I1",), ("C1",), frozenset({"C1"}), ("label", "I1", "C1"))
    >>> fmt.fields, fmt.kind("C1")
    (('C1',), 'hex')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reccomp.data.checks import DataError

PARQUET_MAGIC = b"PAR1"
GZIP_MAGIC = b"\x1f\x8b"
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class Derived:
    """A categorical field computed from one numeric column.

    ``fn`` maps (N,) int64 values of ``source`` to ``(values, ok)``: (N,) int64 field values
    and an (N,) bool mask of the inputs it understood (rows where it is False are skipped
    with ``why``).
    """

    name: str
    source: str
    fn: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
    why: str


@dataclass(frozen=True)
class CtrFormat:
    """A CTR data set's columns.

    Args:
        name: shown in messages ("Criteo").
        label: the 0/1 click column.
        dense: numeric feature columns, in schema order.
        sparse: categorical columns read as they are, in schema order (derived fields follow).
        hex_fields: the categoricals whose values are 8 hex digits; the others are integers.
        columns: the column order of a file without a header; ``None``: files need a header.
        derived: fields computed from a numeric column (e.g. Avazu's hour of day).
    """

    name: str
    label: str
    dense: tuple[str, ...]
    sparse: tuple[str, ...]
    hex_fields: frozenset[str]
    columns: tuple[str, ...] | None
    derived: tuple[Derived, ...] = ()

    @property
    def fields(self) -> tuple[str, ...]:
        """Categorical fields in schema order: read ones, then derived ones."""
        return self.sparse + tuple(d.name for d in self.derived)

    @property
    def needed(self) -> tuple[str, ...]:
        """The columns a file must hold."""
        extra = [d.source for d in self.derived if d.source not in self.sparse]
        return (self.label, *self.dense, *self.sparse, *dict.fromkeys(extra))

    def kind(self, field: str) -> str:
        """``hex`` or ``int``: how the field's raw values are written."""
        return "hex" if field in self.hex_fields else "int"


@dataclass(frozen=True)
class FileLayout:
    """How one file is laid out (found by :func:`sniff`).

    Args:
        path: the file.
        container: ``text`` (delimited lines) or ``parquet``.
        gzip: text that is gzip-compressed.
        delimiter: ``\\t`` or ``,``.
        header: the first line names the columns.
        columns: every column of the file, in file order.
        floats: numbers may be written as floats (``260.0``); otherwise they are integers.
    """

    path: Path
    container: str
    gzip: bool = False
    delimiter: str = "\t"
    header: bool = False
    columns: tuple[str, ...] = ()
    floats: bool = False

    def describe(self, fmt: CtrFormat) -> str:
        """E.g. ``gzip-compressed Criteo CSV (comma-separated, with a header)``."""
        if self.container == "parquet":
            return f"{fmt.name} Parquet"
        kind = "TSV" if self.delimiter == "\t" and not self.header else "CSV"
        sep = "tab" if self.delimiter == "\t" else "comma"
        head = "with a header" if self.header else "no header"
        what = f"{fmt.name} {kind} ({sep}-separated, {head})"
        return f"gzip-compressed {what}" if self.gzip else what


def _first_line(path: Path) -> bytes:
    from reccomp.data.ctr_text import Source

    with Source(path) as f:
        head = f.read(1 << 16)
    line = head.split(b"\n", 1)[0].rstrip(b"\r")
    return line.removeprefix(_BOM)


def _names(line: bytes, delimiter: str) -> list[str]:
    text = line.decode("utf-8", "replace")
    return [t.strip().strip('"').strip("'").strip() for t in text.split(delimiter)]


def sniff(path: Path, fmt: CtrFormat) -> FileLayout:
    """The layout of ``path`` from its first bytes; a :class:`DataError` when a header lacks
    columns or a format that needs a header has none."""
    path = Path(path)
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == PARQUET_MAGIC:
        import pyarrow.parquet as pq

        try:
            names = tuple(pq.ParquetFile(path).schema_arrow.names)
        except Exception as e:  # pyarrow raises several types for a damaged footer
            raise DataError(f"{path}: not a readable Parquet file ({e})") from None
        _check_names(path, fmt, names, "the Parquet schema")
        return FileLayout(path, "parquet", columns=names, floats=True)
    gz = magic[:2] == GZIP_MAGIC
    line = _first_line(path)
    delimiter = "\t" if b"\t" in line or b"," not in line else ","
    names = tuple(_names(line, delimiter))
    known = set(fmt.needed) | set(fmt.columns or ())
    if fmt.label in names or sum(n in known for n in names) > len(names) // 2:
        _check_names(path, fmt, names, "the header")
        return FileLayout(path, "text", gz, delimiter, True, names, floats=True)
    if fmt.columns is None:
        raise DataError(
            f"{path}: the first line is not a header; {fmt.name} files start with one "
            f"naming their columns ({','.join(fmt.needed[:4])},...)"
        )
    return FileLayout(path, "text", gz, delimiter, False, fmt.columns, floats=delimiter != "\t")


def _check_names(path: Path, fmt: CtrFormat, names: tuple[str, ...], where: str) -> None:
    missing = [c for c in fmt.needed if c not in names]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise DataError(
            f"{path}: {where} lacks {len(missing)} of the {fmt.name} columns ({shown}); "
            f"found {', '.join(names[:8])}{', ...' if len(names) > 8 else ''}"
        )
    dupes = sorted({n for n in names if names.count(n) > 1 and n in fmt.needed})
    if dupes:
        raise DataError(f"{path}: {where} names {', '.join(dupes)} more than once")
