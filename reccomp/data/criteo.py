"""Criteo click logs (Kaggle ``train.txt``, 1TB ``day_N``): streaming preprocessing into the cache.

Each line holds 40 tab-separated fields: the click label (0/1), 13 integer features
``I1..I13`` and 26 categorical features ``C1..C26`` (32-bit hashes written as 8 hex digits);
an empty field is a missing value. Files can be larger than memory, so they are streamed in
byte chunks and memory stays bounded by the chunk size plus the vocabularies.

How (and why this way): parsing text is the dominant cost (pyarrow's CSV reader, ~2 CPU
seconds per million lines), so every line is parsed exactly once.

* A fast newline count fixes the row of every split before parsing: a line's split depends
  only on its global line index (``random``: a seeded hash of the index; ``temporal``: a cut
  at ``fractions`` of the line count), so the split arrays are opened at their final size.
* Pass 1 parses each chunk (in a reader thread, overlapping the numpy work), writes ``label``
  and the transformed ``dense`` arrays, counts categorical values on training rows and writes
  a *provisional* id per value into ``sparse.npy`` (id 0 = missing; ids number distinct
  values in order of first appearance).
* Pass 2 maps provisional ids to final rows in place with one lookup table per field:
  raw value ``vocab[i]`` -> row ``i + 2``, rare or unseen -> row 0, missing -> row 1
  (:mod:`reccomp.data.schema`). Lines skipped as malformed leave the arrays a little shorter
  than allotted: their files are cut to the rows written.

Example::

    >>> w = CacheWriter(tmp / "prep")                              # doctest: +SKIP
    >>> schema = prepare_criteo([Path("train.txt")], w, split=SplitConfig())  # doctest: +SKIP
    >>> w.finish(schema)  # the caller finishes (and may add stats first)  # doctest: +SKIP
"""

from __future__ import annotations

import io
import math
import queue
import threading
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv

from reccomp.data.cache import SPLITS, CacheWriter
from reccomp.data.raw import ParseReport
from reccomp.data.schema import MISSING_ROW, NUM_SPECIAL_ROWS, OOV_ROW, Schema, SparseField
from reccomp.data.splits import SplitConfig

N_DENSE, N_SPARSE = 13, 26
N_COLUMNS = 1 + N_DENSE + N_SPARSE
DENSE_NAMES = [f"I{i}" for i in range(1, N_DENSE + 1)]
SPARSE_NAMES = [f"C{i}" for i in range(1, N_SPARSE + 1)]
COLUMNS = ["label", *DENSE_NAMES, *SPARSE_NAMES]

_U64 = np.uint64
_HEX = np.frombuffer(b"0123456789abcdef", np.uint8)


# -- writing (tests, benchmarks, synthetic data) -----------------------------------------------
def _hex_column(values: np.ndarray) -> pa.Array:
    """(N,) ints in [-1, 2**32) -> 8-digit lowercase hex strings, "" for -1 (missing)."""
    v = np.asarray(values).astype(np.int64)
    if len(v) and (v.min() < -1 or v.max() >= 2**32):
        raise ValueError("categorical values must lie in [0, 2**32) or be -1 (missing)")
    present = v >= 0
    u = v[present].astype(np.uint32)
    shifts = np.arange(28, -1, -4, dtype=np.uint32)
    chars = _HEX[(u[:, None] >> shifts) & 0xF]  # (M, 8) first digit = highest nibble
    offsets = np.zeros(len(v) + 1, np.int32)
    np.cumsum(np.where(present, 8, 0), out=offsets[1:])
    return pa.Array.from_buffers(
        pa.string(), len(v), [None, pa.py_buffer(offsets), pa.py_buffer(chars.reshape(-1))]
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
    for j, name in enumerate(DENSE_NAMES):
        miss = np.isnan(dense[:, j])
        cols[name] = pa.array(np.rint(np.where(miss, 0, dense[:, j])).astype(np.int64), mask=miss)
    for j, name in enumerate(SPARSE_NAMES):
        cols[name] = _hex_column(cat[:, j])
    opts = pv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
    pv.write_csv(pa.table(cols), str(path), opts)


# -- reading chunks ----------------------------------------------------------------------------
@dataclass
class _Chunk:
    """Whole lines of one file: ``data`` ends with a newline; its first line is ``first``."""

    file: int
    first: int  # global 0-based index of the chunk's first line
    n_lines: int
    data: bytes


@dataclass
class _Parsed:
    """A parsed chunk: rows that passed the column checks, their global line indices, events."""

    file: int
    table: pa.Table
    lines: np.ndarray  # (N,) int64 global line index of each row
    n_lines: int
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (global line, why)
    padded: int = 0


def _count_lines(paths: list[Path], max_rows: int | None) -> list[int]:
    """Lines per file (a last line without newline counts), ``max_rows`` at most in all."""
    counts, left = [], math.inf if max_rows is None else max_rows
    for p in paths:
        n, last = 0, b"\n"
        with open(p, "rb") as f:
            while n < left and (buf := f.read(16 << 20)):
                n += buf.count(b"\n")
                last = buf[-1:]
        n = int(min(n + (last != b"\n"), left))
        left -= n
        counts.append(n)
    return counts


def _iter_chunks(paths: list[Path], counts: list[int], chunk_bytes: int) -> Iterator[_Chunk]:
    """Whole lines, about ``chunk_bytes`` at a time, ``counts[i]`` lines of file ``i``."""
    first = 0
    for i, (p, n) in enumerate(zip(paths, counts, strict=True)):
        done, rest = 0, b""
        with open(p, "rb") as f:
            while done < n:
                buf = f.read(chunk_bytes)
                data = rest + buf
                if buf and data.rfind(b"\n") < 0:  # a line longer than a chunk: read on
                    rest = data
                    continue
                if not buf and not data.endswith(b"\n"):
                    data += b"\n"  # the last line has no newline
                cut = data.rfind(b"\n") + 1
                data, rest = data[:cut], data[cut:]
                k = data.count(b"\n")
                if k > n - done:  # max_rows ends inside this chunk
                    ends = np.flatnonzero(np.frombuffer(data, np.uint8) == 10)
                    data, k = data[: ends[n - done - 1] + 1], n - done
                yield _Chunk(i, first + done, k, data)
                done += k
                if not buf:
                    break
        first += n


_READ = pv.ReadOptions(column_names=COLUMNS, block_size=1 << 20, use_threads=False)
_NUMERIC = ["label", *DENSE_NAMES]
# categoricals as 8-byte fixed-size strings: no offsets, and their bytes form one uint64 each
_TYPES = {**dict.fromkeys(_NUMERIC, pa.int64()), **dict.fromkeys(SPARSE_NAMES, pa.binary(8))}
_INT_RE = r"^-?[0-9]{1,18}$"  # what pyarrow's int64 conversion accepts, bounded to fit


def _read(data: bytes, types: dict[str, pa.DataType], on_invalid=None) -> pa.Table:
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


def _parse(chunk: _Chunk) -> _Parsed:
    """Fast path: one typed read. A chunk with any bad line is re-read the slow way."""
    n = chunk.n_lines
    invalid: list[object] = []
    try:
        table = _read(chunk.data, _TYPES, lambda row: invalid.append(row) or "skip")
        # a missing label may be an empty line, which the reader turns into a row of nulls
        if not invalid and table.num_rows == n and not table["label"].null_count:
            return _Parsed(chunk.file, table, np.arange(chunk.first, chunk.first + n), n)
    except pa.ArrowInvalid:  # a non-integer number, or a categorical not 8 characters long
        pass
    return _parse_slow(chunk, n)


def _parse_slow(chunk: _Chunk, n: int) -> _Parsed:
    """Split lines in Python (rare chunks only): pad short lines, drop bad ones, re-read."""
    lines = [line.removesuffix(b"\r") for line in chunk.data.split(b"\n")[:n]]
    out = _Parsed(chunk.file, pa.table({}), np.empty(0, np.int64), n)
    keep, padded = [], np.zeros(n, bool)
    for i, line in enumerate(lines):
        k = line.count(b"\t") + 1
        if k < 2 or k > N_COLUMNS:
            out.skipped.append((chunk.first + i, f"expected {N_COLUMNS} columns, got {k}"))
        elif b"\r" in line:  # the CSV reader would end the line there
            out.skipped.append((chunk.first + i, "carriage return inside the line"))
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
            out.skipped += [(chunk.first + idx[i], f"{c} is {what}") for i in np.flatnonzero(bad)]
            ok &= ~bad
        idx = idx[ok]
    out.lines, out.padded = chunk.first + idx, int(padded[idx].sum())
    out.table = _read_lines([lines[i] for i in idx], _TYPES)
    return out


def _read_lines(lines: list[bytes], types: dict[str, pa.DataType]) -> pa.Table:
    """Lines known to hold 40 fields each -> one row each."""
    if not lines:  # the reader refuses empty input
        return pa.table({c: pa.array([], types[c]) for c in COLUMNS})
    table = _read(b"\n".join(lines) + b"\n", types)
    if table.num_rows != len(lines):
        raise RuntimeError(f"read {table.num_rows} rows from {len(lines)} lines")
    return table


def _parsed_chunks(paths: list[Path], counts: list[int], chunk_bytes: int) -> Iterator[_Parsed]:
    """Parse in a background thread (pyarrow releases the GIL) while the caller encodes."""
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
            for chunk in _iter_chunks(paths, counts, chunk_bytes):
                if stop.is_set():
                    return
                put(_parse(chunk))
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


# -- categorical values ------------------------------------------------------------------------
def _hex_pairs() -> np.ndarray:
    """(65536,) uint16: two hex characters read as a little-endian uint16 -> their byte
    value (upper and lower case alike), 256 if either is not a hex digit."""
    digit = np.full(256, 256, np.int32)
    for chars in (b"0123456789abcdef", b"0123456789ABCDEF"):
        digit[np.frombuffer(chars, np.uint8)] = np.arange(16)
    first, second = digit[np.arange(65536) & 0xFF], digit[np.arange(65536) >> 8]
    return np.where((first < 16) & (second < 16), first * 16 + second, 256).astype(np.uint16)


_HEX_PAIRS = _hex_pairs()


def _raw_keys(col: pa.ChunkedArray) -> np.ndarray:
    """(N,) uint64: the 8 bytes of each value, 0 where missing (no valid value is 0)."""
    out = np.empty(len(col), _U64)
    a = 0
    for arr in col.chunks:
        validity, data = arr.buffers()
        raw = np.frombuffer(data, _U64, len(arr), arr.offset)
        if arr.null_count:  # null slots hold zeros in practice, but Arrow does not promise it
            bits = np.unpackbits(
                np.frombuffer(validity, np.uint8), count=arr.offset + len(arr), bitorder="little"
            )
            np.multiply(raw, bits[arr.offset :].view(bool), out=out[a : a + len(arr)])
        else:
            out[a : a + len(arr)] = raw
        a += len(arr)
    return out


def _encode_column(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One chunk of a categorical column -> ``(local, values, bad)``.

    ``local`` (N,) int32 indexes the chunk's distinct strings; ``values`` (K,) int64 is the
    integer of each distinct string (-1: missing); ``bad`` (K,) marks strings that are not
    hex. Hashing the raw bytes is the only per-value work: only distinct strings are decoded.
    """
    enc = pc.dictionary_encode(pa.array(_raw_keys(col)))
    distinct = enc.dictionary.to_numpy()  # (K,) uint64
    pairs = np.take(_HEX_PAIRS, distinct.view(np.uint16)).reshape(-1, 4)  # (K, 4) bytes or 256
    values = pairs.astype(np.uint8).view(">u4")[:, 0].astype(np.int64)  # first byte highest
    values[distinct == 0] = -1
    bad = (pairs > 255).any(axis=1) & (distinct != 0)
    return enc.indices.to_numpy(), values, bad


def _pack(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """(hi << 32) | lo as uint64, which sorts by ``hi`` (numpy's uint64 sort is vectorized)."""
    return (hi.astype(_U64) << _U64(32)) | lo.astype(np.uint32).astype(_U64)


class _FieldIds:
    """Provisional ids (1, 2, ... in order of first appearance; 0 = missing) of one field's
    values, and the training count of each id.

    Values live in two sorted levels of ``value << 32 | id``: new values go into the small
    level, which merges into the large one when it reaches a quarter of its size, so a chunk
    costs time in its number of distinct values, not in the vocabulary size.
    """

    def __init__(self) -> None:
        self.levels = [np.empty(0, _U64), np.empty(0, _U64)]  # large, small
        self.counts = np.zeros(1024, np.int64)  # (n_ids,) by id
        self.n_ids = 1

    def ids_of(self, values: np.ndarray) -> np.ndarray:
        """(K,) int64 values (-1 = missing; repeats allowed) -> (K,) int32 ids; new values
        get new ids."""
        where = np.flatnonzero(values >= 0)
        q = np.sort(_pack(values[where], where))  # sorted queries search faster
        rows = (q & _U64(0xFFFFFFFF)).astype(np.int64)
        q = q >> _U64(32) << _U64(32)
        first = np.ones(len(q), bool)
        first[1:] = q[1:] != q[:-1]
        ids = np.zeros(len(q), _U64)  # 0 = not seen yet
        for level in self.levels:
            if len(level):
                pos = np.minimum(np.searchsorted(level, q), len(level) - 1)
                hit = (level[pos] >> _U64(32)) == (q >> _U64(32))
                ids[hit] = level[pos[hit]] & _U64(0xFFFFFFFF)
        new = first & (ids == 0)
        if k := int(new.sum()):
            ids[new] = np.arange(self.n_ids, self.n_ids + k, dtype=_U64)
            self.n_ids += k
            small = np.sort(np.concatenate([self.levels[1], q[new] | ids[new]]))
            if len(small) > len(self.levels[0]) // 4:
                self.levels = [np.sort(np.concatenate([self.levels[0], small])), small[:0]]
            else:
                self.levels[1] = small
            if self.n_ids > len(self.counts):
                self.counts = np.concatenate([self.counts, np.zeros(self.n_ids, np.int64)])
        ids = ids[first][np.cumsum(first) - 1]  # repeats (e.g. upper case) share an id
        out = np.zeros(len(values), np.int32)
        out[rows] = ids
        return out

    def table(self, min_count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Final rows: ``(lut, values, row_counts)``. ``lut`` (n_ids,) int32 maps id -> row
        (id 0 -> missing row); ``values`` sorted int64 raw values of rows 2..;
        ``row_counts`` (cardinality,) train counts per row."""
        entries = np.concatenate(self.levels)  # sorted by value within each level
        ids = (entries & _U64(0xFFFFFFFF)).astype(np.int64)
        counts = self.counts[ids]
        kept = counts >= max(min_count, 1)  # a value unseen in training is never kept
        by_value = np.sort(entries[kept])
        values = (by_value >> _U64(32)).astype(np.int64)
        kept_ids = (by_value & _U64(0xFFFFFFFF)).astype(np.int64)
        lut = np.full(self.n_ids, OOV_ROW, np.int32)
        lut[0] = MISSING_ROW
        lut[kept_ids] = np.arange(NUM_SPECIAL_ROWS, NUM_SPECIAL_ROWS + len(values))
        row_counts = np.empty(NUM_SPECIAL_ROWS + len(values), np.int64)
        row_counts[OOV_ROW] = counts[~kept].sum()
        row_counts[MISSING_ROW] = self.counts[0]
        row_counts[NUM_SPECIAL_ROWS:] = self.counts[kept_ids]
        return lut, values, row_counts


# -- splits ------------------------------------------------------------------------------------
def _uniform(lines: np.ndarray, seed: int) -> np.ndarray:
    """A uniform [0, 1) draw per global line index (splitmix64): same line, same draw."""
    mix = np.uint64((seed * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) % 2**64)
    with np.errstate(over="ignore"):
        z = lines.astype(_U64) * _U64(0x9E3779B97F4A7C15) + mix
        z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
        z ^= z >> _U64(31)
    return (z >> _U64(11)).astype(np.float64) * 2.0**-53


def _split_of(lines: np.ndarray, split: SplitConfig, total: int) -> np.ndarray:
    """(N,) global line indices -> (N,) uint8 split codes (0 train, 1 val, 2 test)."""
    if split.kind == "random":
        bounds = np.cumsum(split.fractions[:2])
        return np.searchsorted(bounds, _uniform(lines, split.seed), side="right").astype(np.uint8)
    # temporal: a global cut by line order, rounded as splits.split_indices rounds it
    a = round(total * split.fractions[0])
    b = round(total * (split.fractions[0] + split.fractions[1]))
    return ((lines >= a).astype(np.uint8) + (lines >= b)).astype(np.uint8)


def _split_sizes(split: SplitConfig, total: int, block: int = 1 << 22) -> list[int]:
    """Lines per split, before any line is read (skipped lines are taken off later)."""
    sizes = np.zeros(3, np.int64)
    for start in range(0, total, block):
        lines = np.arange(start, min(start + block, total))
        sizes += np.bincount(_split_of(lines, split, total), minlength=3)
    return [int(s) for s in sizes]


# -- preprocessing -----------------------------------------------------------------------------
def _check(table: pa.Table) -> tuple[np.ndarray, list, np.ndarray]:
    """Labels, encoded categoricals and why each row is bad: (N,) int 0 = fine, 1 = label
    not 0/1, 2 + j = ``C{j+1}`` not hex."""
    label = pc.fill_null(table["label"], -1).to_numpy()  # (N,) int64, -1 = empty
    encoded = [_encode_column(table[c]) for c in SPARSE_NAMES]
    why = ((label != 0) & (label != 1)).astype(np.int8)
    for j, (local, _, bad) in enumerate(encoded):
        if bad.any():
            why[(why == 0) & bad[local]] = 2 + j
    return label, encoded, why


def _dense(table: pa.Table) -> np.ndarray:
    """(13, N) float32 ``log(1 + max(x, 0))``, missing -> 0 (= log 1)."""
    out = np.empty((N_DENSE, table.num_rows), np.float32)
    for j, c in enumerate(DENSE_NAMES):
        x = pc.fill_null(table[c], 0).to_numpy().astype(np.float32)
        np.maximum(x, 0, out=x)
        np.log1p(x, out=out[j])
    return out


def _shrink_npy(path: Path, rows: int) -> None:
    """Cut a C-order ``.npy`` file to its first ``rows`` rows, in place: numpy pads headers
    so that the first dimension can be rewritten without moving the data."""
    fmt = np.lib.format
    with open(path, "r+b") as f:
        v1 = fmt.read_magic(f) == (1, 0)
        shape, fortran, dtype = (fmt.read_array_header_1_0 if v1 else fmt.read_array_header_2_0)(f)
        size = f.tell()
        header = io.BytesIO()
        d = {
            "shape": (rows, *shape[1:]),
            "fortran_order": False,
            "descr": fmt.dtype_to_descr(dtype),
        }
        (fmt.write_array_header_1_0 if v1 else fmt.write_array_header_2_0)(header, d)
        if fortran or len(header.getvalue()) != size:
            raise RuntimeError(f"cannot shrink {path} in place")
        f.seek(0)
        f.write(header.getvalue())
        f.truncate(size + rows * int(np.prod(shape[1:])) * dtype.itemsize)


class _Writer:
    """Pass-1 state: the split arrays (opened at their largest size), how many rows each
    holds, and the provisional ids of every field."""

    def __init__(self, writer: CacheWriter, sizes: list[int]) -> None:
        self.writer, self.sizes, self.filled = writer, sizes, [0, 0, 0]
        self.arrays = [
            {
                "sparse": writer.open_array(s, "sparse", (n, N_SPARSE), np.int32),
                "dense": writer.open_array(s, "dense", (n, N_DENSE), np.float32),
                "label": writer.open_array(s, "label", (n,), np.float32),
            }
            for s, n in zip(SPLITS, sizes, strict=True)
        ]
        self.fields = [_FieldIds() for _ in SPARSE_NAMES]
        self.clicks = 0

    def add(self, table: pa.Table, label: np.ndarray, encoded: list, codes: np.ndarray) -> None:
        """Write one chunk of checked rows; ``codes`` (N,) are their splits."""
        train = np.flatnonzero(codes == 0)
        dense = _dense(table)  # (13, N)
        ids = np.empty((N_SPARSE, len(codes)), np.int32)  # (26, N) provisional ids
        for f, (local, values, _), out in zip(self.fields, encoded, ids, strict=True):
            distinct_ids = f.ids_of(values)  # (K,)
            counts = np.bincount(
                local if len(train) == len(local) else local[train], minlength=len(values)
            )
            np.add.at(f.counts, distinct_ids, counts)  # ids repeat for missing and upper case
            np.take(distinct_ids, local, out=out)
        self.clicks += int(label.sum())
        for s, arrays in enumerate(self.arrays):
            rows = codes == s
            a, k = self.filled[s], int(rows.sum())
            arrays["sparse"][a : a + k] = ids[:, rows].T
            arrays["dense"][a : a + k] = dense[:, rows].T
            arrays["label"][a : a + k] = label[rows]
            self.filled[s] += k

    def finish(self, min_count: int) -> list[int]:
        """Pass 2: write maps and counts, turn provisional ids into rows in place (one lookup
        table for all fields), cut the arrays to the rows written. Returns cardinalities."""
        luts, cards = [], []
        for c, f in zip(SPARSE_NAMES, self.fields, strict=True):
            lut, values, row_counts = f.table(min_count)
            self.writer.write_map(c, values)
            self.writer.write_counts(c, row_counts)
            luts.append(lut)
            cards.append(len(row_counts))
        big_lut = np.concatenate(luts)
        offsets = np.cumsum([0] + [len(lut) for lut in luts[:-1]])  # (26,) where each field starts
        offsets = offsets.astype(np.int32 if len(big_lut) < 2**31 else np.int64)
        for s, arrays in enumerate(self.arrays):
            sparse, n = arrays["sparse"], self.filled[s]
            for a in range(0, n, 1 << 18):
                block = sparse[a : min(a + (1 << 18), n)]  # (B, 26) provisional ids
                block[:] = big_lut[block + offsets]
            arrays.clear()  # drop the memory maps before cutting their files
            if n < self.sizes[s]:
                for what in ("sparse", "dense", "label"):
                    _shrink_npy(self.writer.path(SPLITS[s], f"{what}.npy"), n)
        return cards


def prepare_criteo(
    paths: list[Path],
    writer: CacheWriter,
    *,
    name: str = "criteo",
    split: SplitConfig,
    min_count: int = 1,
    chunk_bytes: int = 32 << 20,
    strict: bool = False,
    max_rows: int | None = None,
) -> Schema:
    """Stream Criteo TSV files into ``writer``'s directory; return the schema, unfinished.

    The caller calls ``writer.finish(schema)`` (after adding stats if it likes), or
    ``writer.abort()`` when this raises.

    Args:
        paths: files read in order, as one sequence of lines.
        writer: receives ``<split>/{sparse,dense,label}.npy``, ``maps/C*.npy`` (sorted int64
            values of the 8-hex-digit hashes) and ``counts/C*.npy`` (training counts by row).
        name: data set name written into the schema.
        split: ``random`` (each line drawn by a seeded hash of its global line index, so the
            split does not depend on chunking) or ``temporal`` without ``last_n`` (a cut by
            line order). Per-user hold-outs raise ``ValueError``: Criteo has no users.
        min_count: training count a value needs for its own row; rarer and unseen values
            share row 0. Values below 1 act as 1.
        chunk_bytes: bytes parsed at a time (32 MiB is ~135k lines); memory holds about
            three chunks plus the vocabularies.
        strict: raise :class:`~reccomp.data.raw.MalformedInputError` (file and line) at the
            first malformed line instead of skipping it. Lines with fewer fields (trailing
            empty fields stripped) are padded with empty fields in either mode.
        max_rows: read at most this many lines in all (``None``: every line).

    Malformed lines (more than 40 or fewer than 2 fields, a label other than 0/1, an ``I``
    field that is not an integer, a ``C`` field that is not 8 hex digits) are skipped and
    counted in ``schema.stats["parse_report"]``.
    """
    if split.per_user_n is not None:
        raise ValueError(
            f"split {split.kind!r} holds out each user's last rows, but Criteo has no users: "
            "use kind 'random' or 'temporal' (without last_n)"
        )
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("prepare_criteo needs at least one file")
    line_counts = _count_lines(paths, max_rows)
    total = sum(line_counts)
    file_start = np.cumsum([0, *line_counts[:-1]])
    reports = [ParseReport(source=str(p), strict=strict) for p in paths]
    out = _Writer(writer, _split_sizes(split, total))
    text = ["", "label is not 0 or 1", *(f"{c} is not hex" for c in SPARSE_NAMES)]
    with closing(
        _parsed_chunks(paths, line_counts, chunk_bytes)
    ) as parts:  # closing stops the reader
        for part in parts:
            report, table, lines = reports[part.file], part.table, part.lines
            report.lines += part.n_lines
            report.padded += part.padded
            events = list(part.skipped)
            label, encoded, why = _check(table)
            if why.any():  # rare: drop the rows, encode again
                events += [(int(lines[i]), text[why[i]]) for i in np.flatnonzero(why)]
                table, lines = table.filter(pa.array(why == 0)), lines[why == 0]
                label, encoded, _ = _check(table)
            for g, what in sorted(events):
                report.add_skipped(int(g - file_start[part.file]) + 1, what)
            out.add(table, label, encoded, _split_of(lines, split, total))
    cardinalities = out.finish(min_count)

    total_report = ParseReport(source=", ".join(str(p) for p in paths))
    for r in reports:
        total_report.merge(r)
        if r.skipped or r.padded:
            print(r.summary())
    kept = sum(out.filled)
    return Schema(
        name=name,
        task="ctr",
        sparse=[SparseField(c, n) for c, n in zip(SPARSE_NAMES, cardinalities, strict=True)],
        dense=list(DENSE_NAMES),
        splits=dict(zip(SPLITS, out.filled, strict=True)),
        stats={
            "lines": total,
            "skipped": total_report.skipped,
            "parse_report": total_report.to_dict(),
            "label_mean": out.clicks / kept if kept else None,
        },
    )
