"""Arrow tables of CTR rows -> :class:`Parsed` arrays, and Parquet files read in batches.

Every reader (delimited text in :mod:`reccomp.data.ctr_text`, Parquet here) ends in
:func:`to_parsed`, so every format gives the same arrays: labels, transformed dense features
and one uint64 key per categorical value (0 = missing). A ``hex`` value's key is its 8 bytes
as written; an integer's key is the integer with its top bit flipped (so 0 stays free for
missing). :mod:`reccomp.data.ctr` turns keys into vocabulary rows.

Example::

    >>> import pyarrow as pa
    >>> fmt = CtrFormat("toy", "label", ("I1",), ("C1",), frozenset({"C1"}), ("label", "I1", "C1"))
    >>> t = pa.table({"label": [1], "I1": [3.0], "C1": ["05db9164"]})
    >>> to_parsed(t, fmt, 0, 0, 1).dense.shape
    (1, 1)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from reccomp.data.checks import DataError
from reccomp.data.ctr_layout import CtrFormat, FileLayout

_U64 = np.uint64
_FLIP = _U64(1 << 63)
BAD_KEY = _U64(2**64 - 1)  # eight 0xff bytes: never hex, so a bad hex value
NUMBER_RE = r"^\s*[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?\s*$"


@dataclass
class Parsed:
    """A chunk as arrays: rows that passed the column checks, their global line indices,
    and the lines skipped so far."""

    file: int
    first: int  # global index of the chunk's first line
    n_lines: int
    lines: np.ndarray  # (N,) int64 global line index of each row
    label: np.ndarray  # (N,) float64, -1 = missing
    dense: np.ndarray  # (D, N) float32, transformed
    keys: np.ndarray  # (F, N) uint64 key of each categorical, 0 = missing
    int_keys: tuple[bool, ...]  # (F,) which fields hold integer keys (else hex bytes)
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (global line, why)
    padded: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # global lines

    def select(self, keep: np.ndarray) -> None:
        self.lines, self.label = self.lines[keep], self.label[keep]
        self.dense, self.keys = self.dense[:, keep], self.keys[:, keep]


def int_values(keys: np.ndarray) -> np.ndarray:
    """Integer keys -> the int64 values they hold."""
    return (keys ^ _FLIP).view(np.int64)


def _validity(arr: pa.Array) -> np.ndarray:
    """(N,) bool: not null."""
    if not arr.null_count:
        return np.ones(len(arr), bool)
    return ~arr.is_null().to_numpy(zero_copy_only=False)


def _numbers(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A column as (N,) float64 (NaN = missing) and an (N,) bool mask of values that are no
    numbers (only text columns have them)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    t = arr.type
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
        x = pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False)
        return x, np.zeros(len(x), bool)
    if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)):
        raise DataError(f"a numeric column has type {t}")
    text = pc.utf8_trim_whitespace(arr.cast(pa.large_string()))
    empty = pc.fill_null(pc.equal(text, ""), True).to_numpy(zero_copy_only=False)
    ok = pc.fill_null(pc.match_substring_regex(text, NUMBER_RE), False)
    x = np.full(len(arr), np.nan)
    good = ok.to_numpy(zero_copy_only=False)
    if good.any():
        x[good] = pc.cast(pc.filter(text, ok), pa.float64()).to_numpy(zero_copy_only=False)
    return x, ~good & ~empty


def raw_keys(arr: pa.Array) -> np.ndarray:
    """(N,) uint64 keys of a ``fixed_size_binary(8)`` column: the 8 bytes of each value, 0
    where missing."""
    _, data = arr.buffers()
    raw = np.frombuffer(data, _U64, len(arr), arr.offset)
    if not arr.null_count:
        return raw.copy()
    return np.where(_validity(arr), raw, _U64(0))  # null slots need not hold zeros


def _string_keys(arr: pa.Array) -> np.ndarray:
    """(N,) uint64 keys of a string column: 8-byte values as written, 0 for empty or missing,
    ``BAD_KEY`` for any other length."""
    arr = pc.utf8_trim_whitespace(arr.cast(pa.large_string())).cast(pa.large_binary())
    _, offsets, data = arr.buffers()
    off = np.frombuffer(offsets, np.int64, len(arr) + 1, arr.offset)
    lens = np.where(_validity(arr), np.diff(off), 0)  # (N,)
    keys = np.zeros(len(arr), _U64)
    eight = lens == 8
    if eight.any():
        raw = np.frombuffer(data, np.uint8)
        keys[eight] = raw[off[:-1][eight, None] + np.arange(8)].view(_U64)[:, 0]  # (M, 8) bytes
    keys[(lens != 0) & ~eight] = BAD_KEY
    return keys


# integer values a field may hold: hex fields are 32-bit hashes, integer fields 32-bit ints
INT_RANGE = {"hex": (0, 2**32), "int": (-(2**31), 2**31)}


def _int_keys(x: np.ndarray, kind: str = "int") -> tuple[np.ndarray, np.ndarray]:
    """(N,) float64 (NaN = missing) -> (N,) uint64 integer keys and an (N,) bad mask (not an
    integer, or outside the field kind's :data:`INT_RANGE`)."""
    lo, hi = INT_RANGE[kind]
    present = ~np.isnan(x)
    bad = present & ((x < lo) | (x >= hi) | (x != np.floor(x)))
    v = np.where(present & ~bad, x, 0).astype(np.int64)
    keys = v.view(_U64) ^ _FLIP
    keys[~present | bad] = 0
    return keys, bad


def to_parsed(
    table: pa.Table,
    fmt: CtrFormat,
    file: int,
    first: int,
    n_lines: int,
    lines: np.ndarray | None = None,
    skipped: list | None = None,
    padded: np.ndarray | None = None,
) -> Parsed:
    """Rows of ``table`` (``fmt``'s columns, any Arrow types) -> :class:`Parsed`.

    Rows with a dense value that is no finite number, or an integer field that is no integer,
    are dropped and added to ``skipped`` (a label or hex value is checked later, on distinct
    values only). ``lines`` (N,) are the rows' global line indices (default: consecutive from
    ``first``).
    """
    n = table.num_rows
    lines = np.arange(first, first + n) if lines is None else lines
    bad: dict[str, np.ndarray] = {}  # why -> (N,) rows
    label, nonnum = _numbers(table[fmt.label])
    label = np.where(np.isnan(label) | nonnum, -1.0, label)
    dense = np.empty((len(fmt.dense), n), np.float32)  # (D, N)
    for j, c in enumerate(fmt.dense):
        x, nonnum = _numbers(table[c])
        x = np.where(np.isnan(x), 0, x).astype(np.float32)
        bad[f"{c} is not a number"] = nonnum | np.isinf(x)
        np.maximum(x, 0, out=x)
        np.log1p(x, out=dense[j])
    keys = np.empty((len(fmt.fields), n), _U64)  # (F, N)
    flags: list[bool] = []  # per field: integer keys (else hex bytes)
    for out, c in zip(keys, fmt.sparse, strict=False):
        arr = table[c].combine_chunks()
        if pa.types.is_dictionary(arr.type):
            arr = arr.dictionary_decode()
        t = arr.type
        numeric = pa.types.is_integer(t) or pa.types.is_floating(t)
        if pa.types.is_fixed_size_binary(t):  # hex as typed by the text reader
            if t.byte_width != 8:
                raise DataError(f"column {c} holds {t.byte_width}-byte values, not 8 hex digits")
            out[:], is_int = raw_keys(arr), False
        elif fmt.kind(c) == "hex" and not numeric:  # hex strings
            out[:], is_int = _string_keys(arr), False
        else:  # integers (a hex field stored as its integer value holds the same values)
            x, nonnum = _numbers(arr)
            out[:], b = _int_keys(x, fmt.kind(c))
            lo, hi = INT_RANGE[fmt.kind(c)]
            bad[f"{c} is not an integer in [{lo}, {hi})"] = b | nonnum
            is_int = True
        flags.append(is_int)
    for out, d in zip(keys[len(fmt.sparse) :], fmt.derived, strict=True):
        x, nonnum = _numbers(table[d.source])
        k, b = _int_keys(x, "hex")  # any non-negative 32-bit source
        v, ok = d.fn(int_values(k))
        ok |= k == 0  # a missing source is a missing field
        out[:], _ = _int_keys(np.where(k == 0, np.nan, v.astype(np.float64)))
        bad[d.why] = b | nonnum | ~ok
        flags.append(True)
    part = Parsed(file, first, n_lines, lines, label, dense, keys, tuple(flags), skipped or [])
    part.padded = padded if padded is not None else np.empty(0, np.int64)
    drop = np.zeros(n, bool)
    for why, rows in bad.items():
        rows = rows & ~drop  # one reason per line
        part.skipped += [(int(lines[i]), why) for i in np.flatnonzero(rows)]
        drop |= rows
    if drop.any():
        part.select(~drop)
    return part


def parquet_rows(layouts: list[FileLayout]) -> int:
    """Rows in Parquet files, from their metadata."""
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(lay.path).metadata.num_rows for lay in layouts)


def parquet_parts(
    layout: FileLayout,
    fmt: CtrFormat,
    file: int,
    first: int,
    batch_rows: int,
    max_rows: float,
) -> Iterator[Parsed]:
    """One Parquet file in batches of ``batch_rows``; ``first`` is the global index of its
    first row, ``max_rows`` how many rows to read at most."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(layout.path)
    try:
        for batch in pf.iter_batches(batch_size=batch_rows, columns=list(fmt.needed)):
            if max_rows <= 0:
                return
            table = pa.Table.from_batches([batch])
            if table.num_rows > max_rows:
                table = table.slice(0, int(max_rows))
            yield to_parsed(table, fmt, file, first, table.num_rows)
            first += table.num_rows
            max_rows -= table.num_rows
    except (OSError, pa.ArrowInvalid) as e:
        raise DataError(f"{layout.path}: the Parquet file is damaged ({e})") from None
    finally:
        pf.close()
