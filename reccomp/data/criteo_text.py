"""Criteo's text format: the 40-column TSV line, writing it, and reading files in chunks.

A line holds the click label (0/1), 13 integer features ``I1..I13`` and 26 categorical
features ``C1..C26`` (32-bit hashes written as 8 hex digits), tab separated; an empty field is
a missing value. Reading is streamed: :func:`parsed_chunks` reads whole lines about
``chunk_bytes`` at a time in a background thread and parses each chunk with pyarrow's CSV
reader into :class:`Parsed` arrays (categoricals as raw 8-byte keys, dense already
transformed); malformed chunks take a slower line-by-line path that pads stripped trailing
fields and drops bad lines. :mod:`reccomp.data.criteo` turns those arrays into the cache.

Example::

    >>> write_criteo_tsv(p, np.array([1]), np.full((1, 13), np.nan), np.full((1, 26), -1))  # doctest: +SKIP
"""

from __future__ import annotations

import gzip
import io
import math
import queue
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv

N_DENSE, N_SPARSE = 13, 26
N_COLUMNS = 1 + N_DENSE + N_SPARSE
DENSE_NAMES = [f"I{i}" for i in range(1, N_DENSE + 1)]
SPARSE_NAMES = [f"C{i}" for i in range(1, N_SPARSE + 1)]
COLUMNS = ["label", *DENSE_NAMES, *SPARSE_NAMES]

_U64 = np.uint64
# byte -> its two lowercase hex characters, as the uint16 whose memory holds them in order
_HEX_BYTES = np.array(
    [int.from_bytes(f"{b:02x}".encode(), "little") for b in range(256)], np.uint16
)


# -- writing (tests, benchmarks, synthetic data) -----------------------------------------------
def _hex_column(values: np.ndarray) -> pa.Array:
    """(N,) ints in [-1, 2**32) -> 8-digit lowercase hex strings, "" for -1 (missing)."""
    v = np.asarray(values).astype(np.int64)
    if len(v) and (v.min() < -1 or v.max() >= 2**32):
        raise ValueError("categorical values must lie in [0, 2**32) or be -1 (missing)")
    present = v >= 0
    big_endian = v[present].astype(">u4").view(np.uint8)  # (M * 4,) highest byte first
    chars = _HEX_BYTES[big_endian]  # (M * 4,) two characters per byte
    offsets = np.zeros(len(v) + 1, np.int64)
    np.cumsum(present * 8, out=offsets[1:])
    return pa.Array.from_buffers(
        pa.large_string(), len(v), [None, pa.py_buffer(offsets), pa.py_buffer(chars)]
    )


def write_criteo_tsv(path: Path, label: np.ndarray, dense: np.ndarray, cat: np.ndarray) -> None:
    """Write Criteo Kaggle-format lines: label, ``I1..I13``, ``C1..C26``, tab separated.

    Args:
        label: (N,) 0/1 clicks.
        dense: (N, 13) floats; rounded to integers, NaN -> empty field (missing).
        cat: (N, 26) ints in [0, 2**32) written as 8 lowercase hex digits; -1 -> empty field.

    Example::

        >>> write_criteo_tsv(p, np.array([1]), np.full((1, 13), np.nan), np.full((1, 26), -1))  # doctest: +SKIP
    """
    label, dense, cat = np.asarray(label), np.asarray(dense, np.float64), np.asarray(cat)
    n = len(label)
    if dense.shape != (n, N_DENSE) or cat.shape != (n, N_SPARSE):
        raise ValueError(f"need dense (N, 13) and cat (N, 26), got {dense.shape}, {cat.shape}")
    cols: dict[str, pa.Array] = {"label": pa.array(label.astype(np.int64))}
    for name, x in zip(DENSE_NAMES, np.ascontiguousarray(dense.T), strict=True):  # (N,) each
        miss = np.isnan(x)
        cols[name] = pa.array(np.rint(np.where(miss, 0, x)).astype(np.int64), mask=miss)
    for name, x in zip(SPARSE_NAMES, np.ascontiguousarray(cat.T), strict=True):
        cols[name] = _hex_column(x)
    opts = pv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
    pv.write_csv(pa.table(cols), str(path), opts)


# -- reading chunks ----------------------------------------------------------------------------
@dataclass
class _Chunk:
    """Whole lines of file ``file`` (``n_lines`` of them, or ``None``: not counted yet): the
    first ``size`` bytes of ``buf``, ending with a newline, valid until the next chunk."""

    file: int
    n_lines: int | None
    buf: bytearray
    size: int

    def count(self, sub: bytes) -> int:
        return self.buf.count(sub, 0, self.size)


GZIP_MAGIC = b"\x1f\x8b"


def is_gzip(path: Path) -> bool:
    """Detected from the content, not the name."""
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


class _Source(io.RawIOBase):
    """A file's bytes, gunzipped when it is gzip data; a cut or corrupt gzip stream is a
    :class:`~reccomp.data.checks.DataError` naming the file (not a traceback)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.f: Any = gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")  # noqa: SIM115

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        try:
            return self.f.readinto(b)
        except (EOFError, OSError, zlib.error) as e:
            from reccomp.data.checks import DataError

            raise DataError(f"{self.path}: gzip data is cut short or corrupt ({e})") from None

    def read(self, n: int = -1) -> bytes:
        buf = bytearray(n if n >= 0 else 16 << 20)
        k = self.readinto(memoryview(buf))
        return bytes(buf[:k])

    def close(self) -> None:
        self.f.close()
        super().close()


def _iter_chunks(paths: list[Path], chunk_bytes: int, max_rows: int | None) -> Iterator[_Chunk]:
    """Whole lines, about ``chunk_bytes`` at a time, ``max_rows`` lines at most in all.

    One buffer is reused (fresh 32 MiB buffers cost page faults) and handed out as a view.
    Lines are counted only to stop at ``max_rows``: parsing counts them anyway.
    """
    buf, left = bytearray(chunk_bytes), math.inf if max_rows is None else max_rows
    for i, p in enumerate(paths):
        held = 0  # the start of buf holds an incomplete line
        with _Source(p) as f:
            while left > 0:
                if held == len(buf):  # a line longer than the buffer: make room
                    buf = buf + bytearray(len(buf))
                end = held + f.readinto(memoryview(buf)[held:])
                if end == held:  # end of file
                    if not held:
                        break
                    if held == len(buf):
                        buf = buf + bytearray(1)
                    buf[held], end = 10, held + 1  # the last line had no newline
                cut = buf.rfind(b"\n", 0, end) + 1
                if not cut:  # no complete line yet: read on
                    held = end
                    continue
                k = buf.count(b"\n", 0, cut) if max_rows is not None else None
                if k is not None and k > left:  # max_rows ends inside this chunk
                    ends = np.flatnonzero(np.frombuffer(buf, np.uint8, cut) == 10)
                    cut, k = int(ends[int(left) - 1]) + 1, int(left)
                    end = cut
                yield _Chunk(i, k, buf, cut)
                left -= k or 0
                held = end - cut
                buf[:held] = buf[cut:end]  # keep the incomplete line


def count_lines(paths: list[Path], max_rows: int | None) -> int:
    """Lines in all files (a last line without newline counts), ``max_rows`` at most."""
    total, left = 0, math.inf if max_rows is None else max_rows
    for p in paths:
        n, last = 0, b"\n"
        with _Source(p) as f:
            while n < left and (buf := f.read(16 << 20)):
                n += buf.count(b"\n")
                last = buf[-1:]
        n = int(min(n + (last != b"\n"), left))
        total, left = total + n, left - n
    return total


@dataclass
class Parsed:
    """A chunk as arrays: rows that passed the column checks, their global line indices,
    and the lines skipped so far."""

    file: int
    first: int  # global index of the chunk's first line
    n_lines: int
    lines: np.ndarray  # (N,) int64 global line index of each row
    label: np.ndarray  # (N,) int64, -1 = empty
    dense: np.ndarray  # (13, N) float32, transformed
    keys: np.ndarray  # (26, N) uint64 raw bytes of each categorical, 0 = missing
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (global line, why)
    padded: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # global lines

    def select(self, keep: np.ndarray) -> None:
        self.lines, self.label = self.lines[keep], self.label[keep]
        self.dense, self.keys = self.dense[:, keep], self.keys[:, keep]


_READ = pv.ReadOptions(column_names=COLUMNS, block_size=1 << 20, use_threads=False)
_NUMERIC = ["label", *DENSE_NAMES]
# categoricals as 8-byte fixed-size strings: no offsets, and their bytes form one uint64 each
_TYPES = {**dict.fromkeys(_NUMERIC, pa.int64()), **dict.fromkeys(SPARSE_NAMES, pa.binary(8))}
_INT_RE = r"^-?[0-9]{1,18}$"  # what pyarrow's int64 conversion accepts, bounded to fit


def _read(data: bytes | memoryview, types: dict[str, pa.DataType], on_invalid=None) -> pa.Table:
    parse = pv.ParseOptions(
        delimiter="\t",
        quote_char=False,
        double_quote=False,
        ignore_empty_lines=False,  # one row per line, so rows map to line numbers
        invalid_row_handler=on_invalid,
    )
    convert = pv.ConvertOptions(
        column_types=types, check_utf8=False, null_values=[""], strings_can_be_null=True,
        quoted_strings_can_be_null=False,
    )  # fmt: skip
    return pv.read_csv(pa.py_buffer(data), _READ, parse, convert)


def _parse(chunk: _Chunk, first: int) -> Parsed:
    """Text -> arrays; ``first`` is the global index of the chunk's first line. Fast path:
    one typed read; a chunk with a bad line goes the slow way."""
    data, n, invalid = memoryview(chunk.buf)[: chunk.size], chunk.n_lines, []
    if n is None and chunk.buf.find(b"\r", 0, chunk.size) >= 0:  # "\r" ends rows too:
        n = chunk.count(b"\n")  # count lines to be sure
    try:
        table = _read(data, _TYPES, lambda row: invalid.append(row) or "skip")
        # rows are lines unless a line was dropped or an empty line became a row of nulls
        ok = not invalid and n in (None, table.num_rows) and not table["label"].null_count
    except pa.ArrowInvalid:  # a non-integer number, or a categorical not 8 characters long
        ok = False
    if ok:
        n, skipped, padded = table.num_rows, [], np.empty(0, np.int64)
        lines = np.arange(first, first + n)
    else:
        n = n if n is not None else chunk.count(b"\n")
        table, lines, skipped, padded = _parse_slow(data, n, first)
    keys = np.empty((N_SPARSE, table.num_rows), _U64)
    for c, out in zip(SPARSE_NAMES, keys, strict=True):
        _raw_keys(table[c], out)
    label = pc.fill_null(table["label"], -1).to_numpy()
    return Parsed(chunk.file, first, n, lines, label, _dense(table), keys, skipped, padded)


def _parse_slow(
    data: memoryview, n: int, first: int
) -> tuple[pa.Table, np.ndarray, list, np.ndarray]:
    """Split lines in Python (rare chunks only): pad short lines, drop bad ones, re-read.
    Returns the table, the global line index of its rows, skip events and padded lines."""
    lines = [line.removesuffix(b"\r") for line in bytes(data).split(b"\n")[:n]]
    keep, padded, skipped = [], np.zeros(n, bool), []
    for i, line in enumerate(lines):
        k = line.count(b"\t") + 1
        if k < 2 or k > N_COLUMNS:
            skipped.append((first + i, f"expected {N_COLUMNS} columns, got {k}"))
        elif b"\r" in line:  # the CSV reader would end the line there
            skipped.append((first + i, "carriage return inside the line"))
        else:
            lines[i] += b"\t" * (N_COLUMNS - k)  # trailing empty fields were stripped
            padded[i] = k < N_COLUMNS
            keep.append(i)
    idx = np.asarray(keep, np.int64)
    if len(idx):
        table = _read_lines([lines[i] for i in idx], dict.fromkeys(COLUMNS, pa.binary()))
        ok = np.ones(len(idx), bool)
        for c in COLUMNS:
            col = pc.fill_null(table[c], b"")
            if c in SPARSE_NAMES:
                good = pc.is_in(pc.binary_length(col), pa.array([0, 8], pa.int32()))
            else:
                good = pc.or_(pc.equal(col, b""), pc.match_substring_regex(col, _INT_RE))
            bad = ~good.to_numpy(zero_copy_only=False) & ok
            what = "not 8 characters" if c in SPARSE_NAMES else "not an integer"
            skipped += [(first + idx[i], f"{c} is {what}") for i in np.flatnonzero(bad)]
            ok &= ~bad
        idx = idx[ok]
    table = _read_lines([lines[i] for i in idx], _TYPES)
    return table, first + idx, skipped, first + idx[padded[idx]]


def _read_lines(lines: list[bytes], types: dict[str, pa.DataType]) -> pa.Table:
    """Lines known to hold 40 fields each -> one row each."""
    if not lines:  # the reader refuses empty input
        return pa.table({c: pa.array([], types[c]) for c in COLUMNS})
    table = _read(b"\n".join(lines) + b"\n", types)
    if table.num_rows != len(lines):
        raise RuntimeError(f"read {table.num_rows} rows from {len(lines)} lines")
    return table


def parsed_chunks(paths: list[Path], chunk_bytes: int, max_rows: int | None) -> Iterator[Parsed]:
    """Read and parse in a background thread (pyarrow and numpy release the GIL) while the
    caller encodes the previous chunk."""
    q: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()

    def put(item: object) -> None:
        while not stop.is_set():
            try:
                return q.put(item, timeout=0.1)
            except queue.Full:
                continue

    def work() -> None:
        try:
            first = 0
            for chunk in _iter_chunks(paths, chunk_bytes, max_rows):
                if stop.is_set():
                    return
                part = _parse(chunk, first)
                first += part.n_lines
                put(part)
            put(None)
        except BaseException as e:  # handed to the consumer, which re-raises it
            put(e)

    t = threading.Thread(target=work, name="criteo-reader", daemon=True)
    t.start()
    try:
        while (item := q.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        t.join()


def _raw_keys(col: pa.ChunkedArray, out: np.ndarray) -> np.ndarray:
    """Fill (N,) uint64 ``out`` with the 8 bytes of each value, 0 where missing (no valid
    value is 0)."""
    arr = col.combine_chunks()
    validity, data = arr.buffers()
    raw = np.frombuffer(data, _U64, len(arr), arr.offset)
    if not arr.null_count:
        out[:] = raw
        return out
    # null slots hold zeros in practice, but Arrow does not promise it
    bits = np.unpackbits(
        np.frombuffer(validity, np.uint8), count=arr.offset + len(arr), bitorder="little"
    )
    return np.multiply(raw, bits[arr.offset :].view(bool), out=out)


def _dense(table: pa.Table) -> np.ndarray:
    """(13, N) float32 ``log(1 + max(x, 0))``, missing -> 0 (= log 1)."""
    out = np.empty((N_DENSE, table.num_rows), np.float32)
    for j, c in enumerate(DENSE_NAMES):
        x = pc.fill_null(table[c], 0).to_numpy().astype(np.float32)
        np.maximum(x, 0, out=x)
        np.log1p(x, out=out[j])
    return out
