"""CTR click logs (Criteo, Avazu): streaming preprocessing into the cache.

A data set's columns are a :class:`~reccomp.data.ctr_layout.CtrFormat`; each file's layout
(TSV, CSV with a header in any column order, gzip, Parquet) is sniffed from its content
(:mod:`reccomp.data.ctr_layout`). Files can be larger than memory, so they are streamed in
chunks, and memory stays bounded by the chunk size plus the vocabularies.

Parsing text is the dominant cost (pyarrow's CSV reader, ~1.7 CPU seconds per million
Criteo lines), so every line is parsed exactly once:

* A line's split depends only on its global line index: ``random`` draws it from a seeded
  hash of the index, ``temporal`` cuts at ``fractions`` of the line count (which a fast
  newline count finds first). Chunk sizes therefore never change the result.
* Pass 1: a reader thread reads chunks into one reused buffer and parses them
  (:mod:`reccomp.data.ctr_text`, :mod:`reccomp.data.ctr_table`), categoricals as one uint64
  key each. The main thread hashes each categorical column of the chunk
  (``dictionary_encode``), decodes only the distinct keys, gives every value a
  *provisional* id (0 = missing; 1, 2, ... in order of first appearance), counts values on
  training rows, and appends label, transformed dense and provisional ids to the split's
  ``.npy`` files (the header gets the row count at the end).
* Pass 2 maps provisional ids to final rows in place, one lookup table for all fields:
  raw value ``vocab[i]`` -> row ``i + 2``, rare or unseen -> row 0, missing -> row 1
  (:mod:`reccomp.data.schema`). It reads back 4 bytes per field and row, not the line.

Example::

    >>> w = CacheWriter(tmp / "prep")  # doctest: +SKIP
    >>> schema = prepare_ctr([Path("train.txt")], w, CRITEO, split=SplitConfig())  # doctest: +SKIP
    >>> w.finish(schema)  # the caller finishes the writer, after adding stats if it likes  # doctest: +SKIP
"""

from __future__ import annotations

from contextlib import closing
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from reccomp.data.cache import SPLITS, CacheWriter
from reccomp.data.ctr_layout import CtrFormat, FileLayout, sniff
from reccomp.data.ctr_table import INT_RANGE, Parsed, int_values
from reccomp.data.ctr_text import count_lines, parsed_chunks
from reccomp.data.raw import ParseReport
from reccomp.data.schema import MISSING_ROW, NUM_SPECIAL_ROWS, OOV_ROW, Schema, SparseField
from reccomp.data.splits import SplitConfig

__all__ = ["prepare_ctr"]

_U64 = np.uint64


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


def _encode_column(
    raw: np.ndarray, is_int: bool, offset: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N,) uint64 keys of one chunk -> ``(local, values, bad)``.

    ``local`` (N,) int32 indexes the chunk's distinct keys; ``values`` (K,) int64 is the
    value of each distinct key plus the field's ``offset`` (so values lie in [0, 2**32);
    -1: missing); ``bad`` (K,) marks keys that are not hex. Hashing the keys is the only
    per-value work: only distinct keys are decoded.
    """
    enc = pc.dictionary_encode(pa.array(raw))
    distinct = enc.dictionary.to_numpy()  # (K,) uint64
    if is_int:  # the reader checked the range
        values = np.where(distinct == 0, -1, int_values(distinct) + offset)
        return enc.indices.to_numpy(), values, np.zeros(len(distinct), bool)
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
        packed = np.sort(_pack(values[where], where))  # sorted queries search faster
        q = packed >> _U64(32)  # (Q,) sorted values
        repeat = q[1:] == q[:-1]  # (Q - 1,) e.g. upper and lower case of one value
        first = np.concatenate([[True], ~repeat]) if repeat.any() else slice(None)
        ids = np.zeros(len(q), _U64)  # 0 = not seen yet
        for level in self.levels:
            if len(level):
                pos = np.minimum(np.searchsorted(level, q << _U64(32)), len(level) - 1)
                hit = (level[pos] >> _U64(32)) == q
                ids[hit] = level[pos[hit]] & _U64(0xFFFFFFFF)
        new = np.flatnonzero(ids == 0)
        if isinstance(first, np.ndarray):
            new = new[first[new]]
        if len(new):
            ids[new] = np.arange(self.n_ids, self.n_ids + len(new), dtype=_U64)
            self.n_ids += len(new)
            small = np.sort(np.concatenate([self.levels[1], (q[new] << _U64(32)) | ids[new]]))
            if len(small) > len(self.levels[0]) // 4:
                self.levels = [np.sort(np.concatenate([self.levels[0], small])), small[:0]]
            else:
                self.levels[1] = small
            if self.n_ids > len(self.counts):
                self.counts = np.concatenate([self.counts, np.zeros(self.n_ids, np.int64)])
        if isinstance(first, np.ndarray):
            ids = ids[first][np.cumsum(first) - 1]  # repeats take the id of their first
        out = np.zeros(len(values), np.int32)
        out[(packed & _U64(0xFFFFFFFF)).astype(np.intp)] = ids
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


def _temporal_cuts(split: SplitConfig, total: int) -> tuple[int, int]:
    """First val and first test line of a temporal split, rounded as ``split_indices`` does."""
    f = split.fractions
    return round(total * f[0]), round(total * (f[0] + f[1]))


def _split_of(lines: np.ndarray, split: SplitConfig, total: int) -> np.ndarray:
    """(N,) global line indices -> (N,) uint8 split codes (0 train, 1 val, 2 test)."""
    if split.kind == "random":
        bounds = np.cumsum(split.fractions[:2])
        return np.searchsorted(bounds, _uniform(lines, split.seed), side="right").astype(np.uint8)
    a, b = _temporal_cuts(split, total)
    return (lines >= a).astype(np.uint8) + (lines >= b)


# -- preprocessing -----------------------------------------------------------------------------
def _offset(fmt: CtrFormat, field: str) -> int:
    """Added to a field's integer values so that they lie in [0, 2**32) (see ``INT_RANGE``)."""
    return -INT_RANGE[fmt.kind(field)][0]


def _check(part: Parsed, fmt: CtrFormat) -> tuple[list, np.ndarray]:
    """Encoded categoricals and why each row is bad: (N,) int8, 0 = good, 1 = label, 2 + j =
    field j is not hex."""
    encoded = [
        _encode_column(raw, is_int, _offset(fmt, c))
        for raw, is_int, c in zip(part.keys, part.int_keys, fmt.fields, strict=True)
    ]
    why = ((part.label != 0) & (part.label != 1)).astype(np.int8)
    for j, (local, _, bad) in enumerate(encoded):
        if bad.any():
            why[(why == 0) & bad[local]] = 2 + j
    return encoded, why


def _checked(part: Parsed, fmt: CtrFormat, report: ParseReport, line_one: int) -> list:
    """Drop rows with a bad label or categorical, report the lines skipped (strict: raise at
    the first) and return the encoded categoricals of the rows kept. ``line_one`` is the
    global index that is line 1 of the part's file."""
    events = list(part.skipped)  # (global line, why)
    encoded, why = _check(part, fmt)
    if why.any():  # rare: drop the rows, encode again
        reasons = ["", "label is not 0 or 1", *(f"{c} is not hex" for c in fmt.fields)]
        events += [(int(part.lines[i]), reasons[why[i]]) for i in np.flatnonzero(why)]
        part.select(why == 0)
        encoded, _ = _check(part, fmt)
    report.lines += part.n_lines
    report.padded += int(np.isin(part.padded, part.lines).sum())  # padded and kept
    for line, what in sorted(events):
        report.add_skipped(int(line) - line_one + 1, what)
    return encoded


class _NpyAppender:
    """A ``.npy`` file written a block of rows at a time; its header gets the final shape on
    :meth:`close` (numpy pads headers so that the first dimension can grow in place)."""

    def __init__(self, path: Path, row_shape: tuple[int, ...], dtype: type) -> None:
        self.file = open(path, "wb")  # noqa: SIM115 (closed by close())
        self.row_shape, self.dtype, self.rows = row_shape, np.dtype(dtype), 0
        self.size = self._header()

    def _header(self) -> int:
        self.file.seek(0)
        d = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False}
        np.lib.format.write_array_header_1_0(
            self.file, {**d, "shape": (self.rows, *self.row_shape)}
        )
        return self.file.tell()

    def append(self, block: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(block, self.dtype).data)
        self.rows += len(block)

    def close(self) -> None:
        if self.file.closed:
            return
        end = self.file.tell()
        if self._header() != self.size:
            raise RuntimeError(f"the .npy header of {self.file.name} changed size")
        self.file.seek(end)
        self.file.close()


class _Writer:
    """Pass-1 state: the split arrays being appended to and the provisional ids of every
    field."""

    def __init__(self, writer: CacheWriter, fmt: CtrFormat) -> None:
        self.writer, self.fmt = writer, fmt
        n_sparse, n_dense = len(fmt.fields), len(fmt.dense)
        self.arrays = [
            {
                "sparse": _NpyAppender(writer.path(s, "sparse.npy"), (n_sparse,), np.int32),
                "dense": _NpyAppender(writer.path(s, "dense.npy"), (n_dense,), np.float32),
                "label": _NpyAppender(writer.path(s, "label.npy"), (), np.float32),
            }
            for s in SPLITS
        ]
        self.fields = [_FieldIds() for _ in fmt.fields]
        self.clicks = 0

    @property
    def rows(self) -> list[int]:
        return [a["label"].rows for a in self.arrays]

    def add(self, part: Parsed, encoded: list, codes: np.ndarray) -> None:
        """Write one chunk of checked rows; ``codes`` (N,) are their splits."""
        train = np.flatnonzero(codes == 0)
        ids = np.empty((len(self.fields), len(codes)), np.int32)  # (F, N) provisional ids
        for f, (local, values, _), out in zip(self.fields, encoded, ids, strict=True):
            distinct_ids = f.ids_of(values)  # (K,)
            counts = np.bincount(
                local if len(train) == len(local) else local[train], minlength=len(values)
            )
            np.add.at(f.counts, distinct_ids, counts)  # ids repeat for missing and upper case
            np.take(distinct_ids, local, out=out)
        self.clicks += int(part.label.sum())
        for s, arrays in enumerate(self.arrays):
            rows = codes == s
            arrays["sparse"].append(ids[:, rows].T)
            arrays["dense"].append(part.dense[:, rows].T)
            arrays["label"].append(part.label[rows])

    def close(self) -> None:
        for arrays in self.arrays:
            for a in arrays.values():
                a.close()

    def finish(self, min_count: int) -> list[int]:
        """Pass 2: write maps and counts, turn provisional ids into rows in place (one lookup
        table for all fields). Returns the cardinalities."""
        self.close()
        luts, cards = [], []
        for c, f in zip(self.fmt.fields, self.fields, strict=True):
            lut, values, row_counts = f.table(min_count)
            self.writer.write_map(c, values - _offset(self.fmt, c))
            self.writer.write_counts(c, row_counts)
            luts.append(lut)
            cards.append(len(row_counts))
        big_lut = np.concatenate(luts)
        offsets = np.cumsum([0] + [len(lut) for lut in luts[:-1]])  # (F,) where each field starts
        offsets = offsets.astype(np.int32 if len(big_lut) < 2**31 else np.int64)
        for s, n in zip(SPLITS, self.rows, strict=True):
            if n:
                sparse = np.load(self.writer.path(s, "sparse.npy"), mmap_mode="r+")
                for a in range(0, n, 1 << 18):
                    block = sparse[a : a + (1 << 18)]  # (B, 26) provisional ids
                    block[:] = big_lut[block + offsets]
                del sparse  # unmap
        return cards


def prepare_ctr(
    paths: list[Path],
    writer: CacheWriter,
    fmt: CtrFormat,
    *,
    name: str,
    split: SplitConfig,
    min_count: int = 1,
    chunk_bytes: int = 32 << 20,
    strict: bool = False,
    max_rows: int | None = None,
) -> Schema:
    """Stream CTR files of format ``fmt`` into ``writer``'s directory; return the schema,
    unfinished.

    The caller calls ``writer.finish(schema)`` (after adding stats if it likes), or
    ``writer.abort()`` when this raises. Each file's layout is sniffed from its content and
    printed (:func:`~reccomp.data.ctr_layout.sniff`).

    Args:
        paths: files read in order, as one sequence of lines.
        writer: receives ``<split>/{sparse,dense,label}.npy``, ``maps/<field>.npy`` (sorted
            int64 values: hex values as their 32-bit integers) and ``counts/<field>.npy``
            (training counts by row).
        fmt: the data set's columns (:data:`reccomp.data.criteo.CRITEO`, ...).
        name: data set name written into the schema.
        split: ``random`` (each line drawn by a seeded hash of its global line index, so the
            split does not depend on chunking) or ``temporal`` without ``last_n`` (a cut by
            line order). Per-user hold-outs raise ``ValueError``: click logs have no users.
        min_count: training count a value needs for its own row; rarer and unseen values
            share row 0. Values below 1 act as 1.
        chunk_bytes: bytes parsed at a time (32 MiB is ~135k Criteo lines); memory holds
            about three chunks plus the vocabularies.
        strict: raise :class:`~reccomp.data.raw.MalformedInputError` (file and line) at the
            first malformed line instead of skipping it. Lines with fewer fields (trailing
            empty fields stripped) are padded with empty fields in either mode.
        max_rows: read at most this many lines in all (``None``: every line).

    Malformed lines (too many or too few fields, a label other than 0/1, a number that is no
    number, an integer field out of its 32-bit range, a hex field that is not 8 hex digits)
    are skipped and counted in ``schema.stats["parse_report"]``.
    """
    if split.per_user_n is not None:
        raise ValueError(
            f"split {split.kind!r} holds out each user's last rows, but {fmt.name} has no "
            "users: use kind 'random' or 'temporal' (without last_n)"
        )
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError(f"{fmt.name} preprocessing needs at least one file")
    layouts: list[FileLayout] = []
    for p in paths:  # detected from the content, not the name
        layouts.append(sniff(p, fmt))
        print(f"{p}: {layouts[-1].describe(fmt)}")
    # a temporal cut needs the line count first; a random split is drawn line by line
    total = count_lines(layouts, max_rows) if split.kind != "random" else 0
    reports = [ParseReport(source=str(p), strict=strict) for p in paths]
    line_one: dict[int, int] = {}  # global index of line 1 of each file
    out = _Writer(writer, fmt)
    try:
        with closing(parsed_chunks(layouts, fmt, chunk_bytes, max_rows)) as parts:  # closing
            for part in parts:  # stops the reader on errors
                start = line_one.setdefault(part.file, part.first - layouts[part.file].header)
                encoded = _checked(part, fmt, reports[part.file], start)
                out.add(part, encoded, _split_of(part.lines, split, total))
        cardinalities = out.finish(min_count)
    finally:
        out.close()

    total_report = ParseReport(source=", ".join(str(p) for p in paths))
    for r in reports:
        total_report.merge(r)
        if r.skipped or r.padded:
            print(r.summary())
    kept = sum(out.rows)
    return Schema(
        name=name,
        task="ctr",
        sparse=[SparseField(c, n) for c, n in zip(fmt.fields, cardinalities, strict=True)],
        dense=list(fmt.dense),
        splits=dict(zip(SPLITS, out.rows, strict=True)),
        stats={
            "lines": total_report.lines,
            "skipped": total_report.skipped,
            "parse_report": total_report.to_dict(),
            "parse_reports": [r.to_dict() for r in reports],
            "formats": [lay.describe(fmt) for lay in layouts],
            "value_kinds": {c: fmt.kind(c) for c in fmt.fields},
            "label_mean": out.clicks / kept if kept else None,
        },
    )
