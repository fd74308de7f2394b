"""Delimited CTR text files (Criteo's TSV, CSV with a header, gzip or plain), read in chunks.

:func:`parsed_chunks` reads whole lines about ``chunk_bytes`` at a time in a background
thread and parses each chunk with pyarrow's CSV reader into
:class:`~reccomp.data.ctr_table.Parsed` arrays (hex categoricals as raw 8-byte keys, dense
already transformed); Parquet files in the same list are read in row batches
(:mod:`reccomp.data.ctr_table`). Malformed chunks take a slower line-by-line path that pads
stripped trailing fields and drops bad lines. :mod:`reccomp.data.ctr` turns the arrays into
the cache.

Example::

    >>> parts = parsed_chunks([sniff(p, CRITEO)], CRITEO, 32 << 20, None)  # doctest: +SKIP
"""

from __future__ import annotations

import gzip
import io
import math
import queue
import threading
import zlib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv

from reccomp.data.ctr_layout import GZIP_MAGIC, CtrFormat, FileLayout
from reccomp.data.ctr_table import NUMBER_RE, Parsed, parquet_parts, parquet_rows, to_parsed

# byte -> its two lowercase hex characters, as the uint16 whose memory holds them in order
_HEX_BYTES = np.array(
    [int.from_bytes(f"{b:02x}".encode(), "little") for b in range(256)], np.uint16
)


def hex_column(values: np.ndarray) -> pa.Array:
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


# -- reading bytes -----------------------------------------------------------------------------
def is_gzip(path: Path) -> bool:
    """Detected from the content, not the name."""
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


class Source(io.RawIOBase):
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


class _Chunk:
    """Whole lines (``n_lines`` of them, or ``None``: not counted yet): the first ``size``
    bytes of ``buf``, ending with a newline, valid until the next chunk."""

    def __init__(self, n_lines: int | None, buf: bytearray, size: int) -> None:
        self.n_lines, self.buf, self.size = n_lines, buf, size

    def count(self, sub: bytes) -> int:
        return self.buf.count(sub, 0, self.size)


def _text_chunks(layout: FileLayout, chunk_bytes: int, left: float) -> Iterator[_Chunk]:
    """Whole data lines of one file (its header line left out), about ``chunk_bytes`` at a
    time, ``left`` lines at most.

    One buffer is reused (fresh 32 MiB buffers cost page faults) and handed out as a view.
    Lines are counted only to stop at ``left``: parsing counts them anyway.
    """
    buf, held, header = bytearray(chunk_bytes), 0, layout.header  # buf[:held]: a partial line
    count = left != math.inf
    with Source(layout.path) as f:
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
            start = 0
            if header:  # drop the header line
                nl = buf.find(b"\n", 0, end)
                if nl < 0:
                    held = end
                    continue
                start, header = nl + 1, False
            cut = buf.rfind(b"\n", start, end) + 1
            if cut <= start:  # no complete line yet: read on
                buf[: end - start] = buf[start:end]
                held = end - start
                continue
            if start:
                buf[: end - start] = buf[start:end]
                cut, end = cut - start, end - start
            k = buf.count(b"\n", 0, cut) if count else None
            if k is not None and k > left:  # the limit ends inside this chunk
                ends = np.flatnonzero(np.frombuffer(buf, np.uint8, cut) == 10)
                cut, k = int(ends[int(left) - 1]) + 1, int(left)
                end = cut
            yield _Chunk(k, buf, cut)
            left -= k or 0
            held = end - cut
            buf[:held] = buf[cut:end]  # keep the incomplete line


def count_lines(layouts: list[FileLayout], max_rows: int | None) -> int:
    """Data lines (or Parquet rows) in all files (a last line without newline counts, header
    lines do not), ``max_rows`` at most."""
    total, left = 0, math.inf if max_rows is None else max_rows
    for lay in layouts:
        if lay.container == "parquet":
            n = parquet_rows([lay])
        else:
            n, last = 0, b"\n"
            with Source(lay.path) as f:
                while n < left + lay.header and (buf := f.read(16 << 20)):
                    n += buf.count(b"\n")
                    last = buf[-1:]
            n = max(n + (last != b"\n") - lay.header, 0)
        n = int(min(n, left))
        total, left = total + n, left - n
    return total


# -- parsing -----------------------------------------------------------------------------------
_INT_RE = r"^-?[0-9]{1,18}$"  # what pyarrow's int64 conversion accepts, bounded to fit


@cache
def _options(layout: FileLayout, fmt: CtrFormat) -> tuple[pv.ReadOptions, dict, dict]:
    """Read options, typed column types and all-binary column types of a layout."""
    read = pv.ReadOptions(column_names=list(layout.columns), block_size=1 << 20, use_threads=False)
    number = pa.float64() if layout.floats else pa.int64()
    # hex categoricals as 8-byte fixed-size strings: no offsets, their bytes form one uint64
    types = {c: pa.binary(8) if fmt.kind(c) == "hex" else number for c in fmt.needed}
    types[fmt.label] = number
    return read, types, dict.fromkeys(fmt.needed, pa.binary())


def _read(data: bytes | memoryview, layout: FileLayout, fmt: CtrFormat, types: dict,
          on_invalid: Any = None) -> pa.Table:  # fmt: skip
    read, _, _ = _options(layout, fmt)
    parse = pv.ParseOptions(
        delimiter=layout.delimiter,
        quote_char='"' if layout.delimiter == "," else False,
        double_quote=layout.delimiter == ",",
        ignore_empty_lines=False,  # one row per line, so rows map to line numbers
        invalid_row_handler=on_invalid,
    )
    convert = pv.ConvertOptions(
        column_types=types, check_utf8=False, null_values=[""], strings_can_be_null=True,
        quoted_strings_can_be_null=False, include_columns=list(fmt.needed),
    )  # fmt: skip
    return pv.read_csv(pa.py_buffer(data), read, parse, convert)


def _parse(chunk: _Chunk, file: int, first: int, layout: FileLayout, fmt: CtrFormat) -> Parsed:
    """Text -> arrays; ``first`` is the global index of the chunk's first line. Fast path:
    one typed read; a chunk with a bad line goes the slow way."""
    data, n, invalid = memoryview(chunk.buf)[: chunk.size], chunk.n_lines, []
    if n is None and chunk.buf.find(b"\r", 0, chunk.size) >= 0:  # "\r" ends rows too:
        n = chunk.count(b"\n")  # count lines to be sure
    try:
        _, types, _ = _options(layout, fmt)
        table = _read(data, layout, fmt, types, lambda row: invalid.append(row) or "skip")
        # rows are lines unless a line was dropped or an empty line became a row of nulls
        ok = not invalid and n in (None, table.num_rows) and not table[fmt.label].null_count
    except pa.ArrowInvalid:  # a non-number, or a hex categorical not 8 characters long
        ok = False
    if ok:
        return to_parsed(table, fmt, file, first, table.num_rows)
    n = n if n is not None else chunk.count(b"\n")
    table, lines, skipped, padded = _parse_slow(data, n, first, layout, fmt)
    return to_parsed(table, fmt, file, first, n, lines, skipped, padded)


def _parse_slow(
    data: memoryview, n: int, first: int, layout: FileLayout, fmt: CtrFormat
) -> tuple[pa.Table, np.ndarray, list, np.ndarray]:
    """Split lines in Python (rare chunks only): pad short lines, drop bad ones, re-read.
    Returns the table, the global line index of its rows, skip events and padded lines."""
    sep, width = layout.delimiter.encode(), len(layout.columns)
    lines = [line.removesuffix(b"\r") for line in bytes(data).split(b"\n")[:n]]
    keep, padded, skipped = [], np.zeros(n, bool), []
    for i, line in enumerate(lines):
        k = line.count(sep) + 1
        if k < 2 or k > width:
            skipped.append((first + i, f"expected {width} columns, got {k}"))
        elif b"\r" in line:  # the CSV reader would end the line there
            skipped.append((first + i, "carriage return inside the line"))
        else:
            lines[i] += sep * (width - k)  # trailing empty fields were stripped
            padded[i] = k < width
            keep.append(i)
    idx = np.asarray(keep, np.int64)
    _, types, binary = _options(layout, fmt)
    if len(idx):
        table = _read_lines([lines[i] for i in idx], layout, fmt, binary)
        ok = np.ones(len(idx), bool)
        number = NUMBER_RE if layout.floats else _INT_RE
        for c in fmt.needed:
            col = pc.fill_null(table[c], b"")
            if types[c] == pa.binary(8):
                good = pc.is_in(pc.binary_length(col), pa.array([0, 8], pa.int32()))
                what = "not 8 characters"
            else:
                good = pc.or_(pc.equal(col, b""), pc.match_substring_regex(col, number))
                what = "not a number" if layout.floats else "not an integer"
            bad = ~good.to_numpy(zero_copy_only=False) & ok
            skipped += [(first + idx[i], f"{c} is {what}") for i in np.flatnonzero(bad)]
            ok &= ~bad
        idx = idx[ok]
    table = _read_lines([lines[i] for i in idx], layout, fmt, types)
    return table, first + idx, skipped, first + idx[padded[idx]]


def _read_lines(lines: list[bytes], layout: FileLayout, fmt: CtrFormat, types: dict) -> pa.Table:
    """Lines known to hold every field -> one row each."""
    if not lines:  # the reader refuses empty input
        return pa.table({c: pa.array([], types[c]) for c in fmt.needed})
    table = _read(b"\n".join(lines) + b"\n", layout, fmt, types)
    if table.num_rows != len(lines):
        raise RuntimeError(f"read {table.num_rows} rows from {len(lines)} lines")
    return table


def parsed_chunks(
    layouts: list[FileLayout], fmt: CtrFormat, chunk_bytes: int, max_rows: int | None
) -> Iterator[Parsed]:
    """Every file's rows, in order, as :class:`Parsed` parts. Reading and parsing run in a
    background thread (pyarrow and numpy release the GIL) while the caller encodes the
    previous part."""
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
            first, left = 0, math.inf if max_rows is None else max_rows
            for i, lay in enumerate(layouts):
                if lay.container == "parquet":  # about as many rows as a text chunk holds
                    parts = parquet_parts(lay, fmt, i, first, max(chunk_bytes // 256, 1024), left)
                else:
                    parts = _text_parts(i, lay, fmt, first, chunk_bytes, left)
                for part in parts:
                    if stop.is_set():
                        return
                    first, left = first + part.n_lines, left - part.n_lines
                    put(part)
            put(None)
        except BaseException as e:  # handed to the consumer, which re-raises it
            put(e)

    t = threading.Thread(target=work, name="ctr-reader", daemon=True)
    t.start()
    try:
        while (item := q.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        t.join()


def _text_parts(
    file: int, layout: FileLayout, fmt: CtrFormat, first: int, chunk_bytes: int, left: float
) -> Iterator[Parsed]:
    for chunk in _text_chunks(layout, chunk_bytes, left):
        part = _parse(chunk, file, first, layout, fmt)
        first += part.n_lines
        yield part
