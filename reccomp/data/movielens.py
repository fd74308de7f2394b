"""MovieLens parsers: every official release format into :class:`RawData`.

Three file layouts cover all GroupLens releases:

=========  =========================================================  ======================
layout     files                                                      releases
=========  =========================================================  ======================
``100k``   ``u.data`` (tabs), ``u.user``, ``u.item``, ``u.genre`` (|)  ML-100K
``dat``    ``ratings.dat``, ``users.dat``, ``movies.dat`` (``::``)    ML-1M, ML-10M (no users)
``csv``    ``ratings.csv``, ``movies.csv`` (header, quoted titles)    ML-20M/25M/32M, latest
=========  =========================================================  ======================

Ratings (up to 32M lines) are parsed by pyarrow's multithreaded CSV reader, typed at once;
only when that fails (a non-numeric value) are they re-read as bytes and validated per row
with vectorized regexes. Side files are small and parsed in Python. Malformed lines are
skipped and counted in one :class:`ParseReport` per file (or raise with ``strict``).

Example::

    >>> raw = read_movielens("../shared/datasets/ml-100k")  # doctest: +SKIP
    >>> raw.name, len(raw), raw.sparse["genres"].shape
    ('ml-100k', 100000, (100000, 6))
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from reccomp.data.raw import MalformedInputError, ParseReport, RawData

# Genre flag columns of u.item, used when u.genre is absent.
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
NO_GENRE = "(no genres listed)"
DOWNLOADABLE = ("ml-100k", "ml-1m", "ml-20m", "ml-25m", "ml-latest-small")
_RATINGS = {"u.data": "100k", "ratings.dat": "dat", "ratings.csv": "csv"}
_SIDE_FILES = {  # layout -> (users file, movies file)
    "100k": ("u.user", "u.item"),
    "dat": ("users.dat", "movies.dat"),
    "csv": (None, "movies.csv"),
}
_COLUMNS = ("user", "item", "rating", "timestamp")
_TYPES = (pa.int64(), pa.int64(), pa.float32(), pa.int64())
# What pyarrow's typed reader accepts (ints: optional '-', whitespace trimmed); NaN/inf refused.
_INT_RE = r"^\s*-?\d{1,18}\s*$"
_FLOAT_RE = r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$"
_TITLE_YEAR = re.compile(r"\((\d{4})(?:\s*[-–]\s*(?:\d{4})?)?\)\s*$")
_DATE_YEAR = re.compile(r"(\d{4})\s*$")


@dataclass(frozen=True)
class MovieLensRelease:
    """Where an extracted release lies: ``name`` (``ml-1m``), ``layout`` and its files."""

    name: str
    layout: str
    root: Path
    ratings: Path
    users: Path | None
    movies: Path
    genres: Path | None = None


def _hint(name: str | None, root: Path) -> str:
    which = name if name in DOWNLOADABLE else "ml-1m"
    others = ", ".join(n for n in DOWNLOADABLE if n != which)
    return f"get the data with `reccomp data download {which} --root {root}` (or {others})"


def find_movielens(root: str | Path) -> MovieLensRelease:
    """Detect the release under ``root`` (or in its only release subfolder, ``root/ml-1m``).

    Raises ``FileNotFoundError`` (naming the path and how to download) when there is none,
    ``ValueError`` when ``root`` holds several releases.
    """
    root = Path(root).expanduser()
    if root.is_file():  # e.g. .../ml-1m/ratings.dat
        root = root.parent
    candidates = [root] if any((root / f).is_file() for f in _RATINGS) else []
    if not candidates and root.is_dir():
        subs = sorted(d for d in root.iterdir() if d.is_dir())
        candidates = [d for d in subs if any((d / f).is_file() for f in _RATINGS)]
    if not candidates:
        what = "does not exist" if not root.exists() else "holds no MovieLens ratings file"
        raise FileNotFoundError(
            f"{root} {what} (looked for {', '.join(_RATINGS)} there and in its subfolders); "
            + _hint(None, root)
        )
    if len(candidates) > 1:
        names = ", ".join(str(c) for c in candidates)
        raise ValueError(f"{root} holds several MovieLens releases ({names}): pass one of them")
    (d,) = candidates
    ratings_name, layout = next((f, lay) for f, lay in _RATINGS.items() if (d / f).is_file())
    users_name, movies_name = _SIDE_FILES[layout]
    users = d / users_name if users_name else None
    folder = d.name.lower()
    if layout == "100k":
        name = "ml-100k"
    elif layout == "dat":
        # ML-10M ships no users.dat; a folder named ml-1m without it is an incomplete copy.
        name = "ml-1m" if users.is_file() or folder == "ml-1m" else "ml-10m"
    else:
        name = folder if re.fullmatch(r"ml-(\d+m|latest(-small)?)", folder) else "ml-csv"
    if name == "ml-10m":
        users = None
    genres = d / "u.genre" if layout == "100k" and (d / "u.genre").is_file() else None
    return MovieLensRelease(name, layout, d, d / ratings_name, users, d / movies_name, genres)


def movielens_sources(root: str | Path, side_features: bool = True) -> list[Path]:
    """The files :func:`read_movielens` reads (for cache keys), without parsing them."""
    rel = find_movielens(root)
    if not side_features:
        return [rel.ratings]
    return [p for p in (rel.ratings, rel.users, rel.movies, rel.genres) if p is not None]


def read_movielens(root: str | Path, strict: bool = False, side_features: bool = True) -> RawData:
    """Parse a MovieLens release into one row per rating.

    Args:
        root: the extracted release folder, or a folder holding exactly one of them.
        strict: raise :class:`MalformedInputError` on the first malformed line instead of
            skipping and counting it.
        side_features: join user and movie features onto the ratings.

    Returns:
        RawData with sparse ``user``, ``item`` (N,) int64; when side files have them
        ``gender`` (str), ``age`` (int64), ``occupation`` (str in 100K, int64 code in 1M),
        ``zip`` (first 3 characters, str), ``year`` (int64) with ``missing`` masks (value
        placeholders ``""`` / ``-1``), and ``genres`` (N, L) int64 indices into
        ``stats["genres"]`` padded with -1 (all -1: no genre known). label: rating float32,
        time: timestamp int64.

    Example::

        >>> raw = read_movielens("data/ml-1m")  # doctest: +SKIP
        >>> raw.sparse["gender"][:2], raw.label[:2]
        (array(['F', 'F'], dtype='<U1'), array([5., 3.], dtype=float32))
    """
    rel = find_movielens(root)
    cols, ratings_report = _read_ratings(rel.ratings, rel.layout, strict)
    reports = [ratings_report]
    sparse = {"user": cols["user"], "item": cols["item"]}
    missing: dict[str, np.ndarray] = {}
    stats: dict = {"format": rel.name}
    if side_features:
        for path in (rel.users, rel.movies):
            if path is not None and not path.is_file():
                raise FileNotFoundError(f"{path} is missing; " + _hint(rel.name, rel.root.parent))
        if rel.users is not None:
            users, report = _read_users(rel.users, rel.layout, strict)
            reports.append(report)
            _join(cols["user"], users, sparse, missing)
        movies, report, names = _read_movies(rel, strict)
        reports.append(report)
        _join(cols["item"], movies, sparse, missing)
        stats["genres"] = names
    return RawData(
        name=rel.name,
        sparse=sparse,
        label=cols["rating"],
        time=cols["timestamp"],
        missing=missing,
        user_field="user",
        item_field="item",
        reports=reports,
        stats=stats,
    )


# -- ratings: pyarrow ------------------------------------------------------------------------
class _NeedsValidation(Exception):
    """The typed read accepted a value the row validation refuses (NaN/inf rating)."""


def _parse(data: bytes, sep: bytes, header: bool, on_invalid: Callable, typed: bool) -> pa.Table:
    types = _TYPES if typed else (pa.binary(),) * len(_COLUMNS)
    return pacsv.read_csv(
        pa.py_buffer(data),
        read_options=pacsv.ReadOptions(column_names=list(_COLUMNS), skip_rows=int(header)),
        # No quoting: a separator always splits, so numpy can recount columns per line.
        parse_options=pacsv.ParseOptions(
            delimiter=sep.decode(), quote_char=False, invalid_row_handler=on_invalid
        ),
        convert_options=pacsv.ConvertOptions(
            column_types=dict(zip(_COLUMNS, types, strict=True)),
            null_values=[],
            strings_can_be_null=False,
            check_utf8=False,
        ),
    )


def _read_ratings(
    path: Path, layout: str, strict: bool
) -> tuple[dict[str, np.ndarray], ParseReport]:
    """Columns ``user, item, rating, timestamp`` of a ratings file, (N,) each, and its report."""
    data = path.read_bytes()
    if not data.strip():
        raise MalformedInputError(f"{path} is empty")
    if layout == "dat":
        # pyarrow wants a one-byte delimiter: pick one absent from the file, so no line
        # gains columns by the substitution.
        sep = next((s for s in (b"\t", b"|", b",", b";") if s not in data), b"\x1f")
        data = data.replace(b"::", sep)
    else:
        sep = b"\t" if layout == "100k" else b","
    header = layout == "csv" and re.match(rb"\s*-?\d", data[:64]) is None
    n_bad_rows = [0]

    def on_invalid(row: pacsv.InvalidRow) -> str:
        n_bad_rows[0] += 1
        return "skip"

    bad_idx, why_value = np.zeros(0, np.int64), None
    try:
        table = _parse(data, sep, header, on_invalid, typed=True)
        if not pc.all(pc.is_finite(table["rating"])).as_py():
            raise _NeedsValidation
    except (pa.ArrowInvalid, _NeedsValidation):
        n_bad_rows[0] = 0
        table = _parse(data, sep, header, on_invalid, typed=False)
        table, bad_idx, why_value = _validate(table)
    report = ParseReport(source=str(path), strict=strict)
    n_rows = table.num_rows + len(bad_idx)  # rows with the right column count
    report.lines = n_rows + n_bad_rows[0]
    if n_bad_rows[0] or len(bad_idx):
        _report_bad(report, data, sep, header, n_rows, n_bad_rows[0], bad_idx, why_value)
    if table.num_rows == 0:
        raise MalformedInputError(f"no valid rating lines: {report.summary()}")
    cols = {c: table[c].to_numpy() for c in _COLUMNS}
    return cols, report


def _validate(table: pa.Table) -> tuple[pa.Table, np.ndarray, Callable[[int], str]]:
    """Rows of a bytes table whose values parse: (typed table, bad row indices, why(i))."""
    ok = {}
    for col, typ in zip(_COLUMNS, _TYPES, strict=True):
        ok[col] = pc.match_substring_regex(table[col], _INT_RE if typ == pa.int64() else _FLOAT_RE)
    valid = np.logical_and.reduce([m.to_numpy(zero_copy_only=False) for m in ok.values()])
    typed = {}
    for col, typ in zip(_COLUMNS, _TYPES, strict=True):
        text = pc.utf8_trim_whitespace(table[col].filter(valid).cast(pa.string()))
        typed[col] = text.cast(typ)
    finite = np.isfinite(typed["rating"].to_numpy())  # e.g. 1e50 overflows float32
    valid[np.flatnonzero(valid)[~finite]] = False
    out = pa.table({c: a.filter(finite) for c, a in typed.items()})

    def why(i: int) -> str:
        for col in _COLUMNS:
            value = table[col][i].as_py().decode("latin-1")
            if not ok[col][i].as_py() or (col == "rating" and not np.isfinite(float(value))):
                return f"{col}: not a number: {value[:40]!r}"
        return "invalid value"

    return out, np.flatnonzero(~valid), why


def _line_layout(data: bytes, sep: bytes, header: bool) -> tuple[np.ndarray, np.ndarray]:
    """1-based numbers and column counts of the non-empty data lines, as pyarrow splits them."""
    buf = np.frombuffer(data, np.uint8)
    nl = np.flatnonzero(buf == ord("\n"))
    cr = np.flatnonzero(buf == ord("\r"))
    after = buf[np.minimum(cr + 1, len(buf) - 1)]
    lone_cr = cr[(cr + 1 == len(buf)) | (after != ord("\n"))]  # "\r" alone also ends a line
    ends = np.sort(np.concatenate([nl, lone_cr])) if len(lone_cr) else nl
    starts = np.concatenate([[0], ends + 1])
    ends = np.concatenate([ends, [len(buf)]])
    crlf = (ends > starts) & (buf[np.maximum(ends - 1, 0)] == ord("\r"))
    ends = ends - crlf
    sep_pos = np.flatnonzero(buf == sep[0])
    n_cols = np.searchsorted(sep_pos, ends) - np.searchsorted(sep_pos, starts) + 1
    line_no = np.flatnonzero(ends > starts) + 1  # pyarrow drops empty lines
    n_cols = n_cols[line_no - 1]
    if header:
        line_no, n_cols = line_no[1:], n_cols[1:]
    return line_no, n_cols


def _report_bad(
    report: ParseReport,
    data: bytes,
    sep: bytes,
    header: bool,
    n_rows: int,
    n_bad_rows: int,
    bad_idx: np.ndarray,
    why_value: Callable[[int], str] | None,
) -> None:
    """Record skipped lines in file order: the first few as examples, the rest as a count."""
    line_no, n_cols = _line_layout(data, sep, header)
    good = n_cols == len(_COLUMNS)
    if good.sum() != n_rows or (~good).sum() != n_bad_rows:  # not expected; keep counts right
        report.add_skipped(0, "(line numbers unknown)", count=n_bad_rows + len(bad_idx))
        return
    bad_lines, bad_cols = line_no[~good][:5], n_cols[~good][:5]
    events = [
        (int(n), f"expected {len(_COLUMNS)} fields, got {c}")
        for n, c in zip(bad_lines, bad_cols, strict=True)
    ]
    good_lines = line_no[good]
    if why_value is not None:
        events += [(int(good_lines[i]), why_value(i)) for i in bad_idx[:5]]
    for n, why in sorted(events)[:5]:
        report.add_skipped(n, why)
    report.skipped += n_bad_rows + len(bad_idx) - min(5, len(events))


# -- side files: Python ----------------------------------------------------------------------
@dataclass
class _Side:
    """A small side table: ids (M,), per-field values (None = missing) and bags (M, L)."""

    kinds: dict[str, type]
    ids: list[int] = field(default_factory=list)
    values: dict[str, list] = field(default_factory=dict)
    bags: dict[str, np.ndarray] = field(default_factory=dict)
    _seen: set[int] = field(default_factory=set, repr=False)

    def add(self, report: ParseReport, no: int, key: str, row: dict) -> bool:
        """Append a parsed row unless its id is not a number or repeated (skip and count)."""
        try:
            key_id = int(key)
        except ValueError:
            report.add_skipped(no, f"id: not a number: {key[:40]!r}")
            return False
        if key_id in self._seen:
            report.add_skipped(no, f"duplicate id {key_id}")
            return False
        self._seen.add(key_id)
        self.ids.append(key_id)
        for k in self.kinds:
            self.values.setdefault(k, []).append(row[k])
        return True


def _decode(raw: bytes) -> str:
    """UTF-8, else ISO-8859-1 (ML-100K and ML-1M are Latin-1, ML-10M on are UTF-8)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _lines(path: Path, sep: str) -> Iterator[tuple[int, list[str]]]:
    """(1-based line number, fields) of the non-empty lines of a ``sep``-separated file."""
    for no, raw in enumerate(path.read_bytes().splitlines(), 1):
        line = _decode(raw)
        if line.strip():
            yield no, line.split(sep)


def _read_users(path: Path, layout: str, strict: bool) -> tuple[_Side, ParseReport]:
    """``u.user`` (user|age|gender|occupation|zip) or ``users.dat`` (user::gender::age::...)."""
    report = ParseReport(source=str(path), strict=strict)
    if layout == "100k":
        sep, names, kinds = "|", ("age", "gender", "occupation", "zip"), (int, str, str, str)
    else:  # occupation is a numeric code in ML-1M
        sep, names, kinds = "::", ("gender", "age", "occupation", "zip"), (str, int, int, str)
    side = _Side(kinds=dict(zip(names, kinds, strict=True)))
    for no, parts in _lines(path, sep):
        report.lines += 1
        if len(parts) != 5:
            report.add_skipped(no, f"expected 5 fields, got {len(parts)}")
            continue
        row, bad = {}, None
        for name, kind, text in zip(names, kinds, parts[1:], strict=True):
            text = text.strip()
            if kind is int and text and re.fullmatch(r"-?\d+", text) is None:
                bad = f"{name}: not a number: {text[:40]!r}"
                break
            row[name] = (int(text) if kind is int else text) if text else None
        if bad:
            report.add_skipped(no, bad)
            continue
        row["zip"] = row["zip"] and row["zip"][:3]
        side.add(report, no, parts[0], row)
    return side, report


def _genre_flags(path: Path | None) -> list[str]:
    """Names of the genre flag columns of ``u.item``, from ``u.genre`` (name|index)."""
    if path is None:
        return list(ML100K_GENRES)
    pairs = []
    for _, parts in _lines(path, "|"):
        if len(parts) == 2 and parts[1].strip().isdigit():
            pairs.append((int(parts[1]), parts[0]))
    return [n for _, n in sorted(pairs)] or list(ML100K_GENRES)


def _movie_rows(rel: MovieLensRelease) -> Iterator[tuple[int, list[str]]]:
    if rel.layout == "100k":
        yield from _lines(rel.movies, "|")
    elif rel.layout == "dat":
        yield from _lines(rel.movies, "::")
    else:  # titles with commas are quoted
        lines = [_decode(raw) for raw in rel.movies.read_bytes().splitlines()]
        reader = csv.reader(lines)
        for i, parts in enumerate(reader):
            if parts and not (i == 0 and parts[0].strip() == "movieId"):
                yield reader.line_num, parts


def _year(title: str, date: str = "") -> int | None:
    m = _DATE_YEAR.search(date) or _TITLE_YEAR.search(title.strip())
    return int(m.group(1)) if m else None


def _read_movies(rel: MovieLensRelease, strict: bool) -> tuple[_Side, ParseReport, list[str]]:
    """Movie ``year`` and ``genres`` (bag of indices into the returned sorted names)."""
    report = ParseReport(source=str(rel.movies), strict=strict)
    side = _Side(kinds={"year": int})
    flags = _genre_flags(rel.genres) if rel.layout == "100k" else []
    genre_lists: list[list[str]] = []
    for no, parts in _movie_rows(rel):
        report.lines += 1
        if rel.layout == "100k":  # id|title|release date|video date|url|flag * G
            if len(parts) != 5 + len(flags):
                report.add_skipped(no, f"expected {5 + len(flags)} fields, got {len(parts)}")
                continue
            if any(f.strip() not in ("0", "1") for f in parts[5:]):
                report.add_skipped(no, "genre flags must be 0 or 1")
                continue
            genres = [g for g, f in zip(flags, parts[5:], strict=True) if f.strip() == "1"]
            year = _year(parts[1], parts[2])
        else:  # id, title, genres; a title holding the separator is rejoined
            if len(parts) < 3:
                report.add_skipped(no, f"expected 3 fields, got {len(parts)}")
                continue
            genres = [g.strip() for g in parts[-1].split("|")]
            genres = [g for g in genres if g and g != NO_GENRE]
            year = _year(("::" if rel.layout == "dat" else ",").join(parts[1:-1]))
        if side.add(report, no, parts[0], {"year": year}):
            genre_lists.append(genres)
    names = sorted({g for gl in genre_lists for g in gl})
    index = {g: i for i, g in enumerate(names)}
    width = max([1, *map(len, genre_lists)])
    bag = np.full((len(genre_lists), width), -1, np.int64)  # (M, L)
    for r, gl in enumerate(genre_lists):
        cols = sorted({index[g] for g in gl})
        bag[r, : len(cols)] = cols
    side.bags["genres"] = bag
    return side, report, names


def _join(
    keys: np.ndarray, side: _Side, sparse: dict[str, np.ndarray], missing: dict[str, np.ndarray]
) -> None:
    """Add ``side``'s fields for each row of ``keys`` (N,); ids absent from it are missing."""
    ids = np.asarray(side.ids, np.int64)
    if len(ids) and ids.min() >= 0 and ids.max() < 1 << 26:
        # MovieLens ids are small: a lookup table is an O(N) gather, no binary search.
        lut = np.full(int(ids.max()) + 1, -1, np.int32)
        lut[ids] = np.arange(len(ids), dtype=np.int32)
        inside = (keys >= 0) & (keys < len(lut))
        row = np.where(inside, lut[np.where(inside, keys, 0)], -1)  # (N,)
        hit = row >= 0
        row = np.maximum(row, 0)
    elif len(ids):
        order = np.argsort(ids, kind="stable")
        row = order[np.minimum(np.searchsorted(ids[order], keys), len(ids) - 1)]  # (N,)
        hit = ids[row] == keys
    else:
        row, hit = np.zeros(len(keys), np.int64), np.zeros(len(keys), bool)
    for name, kind in side.kinds.items():
        values = side.values.get(name, [])
        fill = "" if kind is str else -1
        table = np.array([fill if v is None else v for v in values] or [fill])
        table = table.astype(str if kind is str else np.int64)  # (M,)
        absent = np.array([v is None for v in values] or [True])
        miss = ~hit | absent[row]  # (N,)
        out = table[row]
        out[miss] = fill
        sparse[name], missing[name] = out, miss
    for name, bag in side.bags.items():
        out = bag[row] if len(bag) else np.full((len(keys), bag.shape[1]), -1, np.int64)
        out[~hit] = -1  # (N, L)
        sparse[name] = out
