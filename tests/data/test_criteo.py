"""Criteo TSV streaming preprocessing: encoding, counts, splits, bad lines, chunking."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from reccomp.data.cache import SPLITS, CacheWriter, load_split
from reccomp.data.criteo import prepare_criteo, write_criteo_tsv
from reccomp.data.raw import MalformedInputError
from reccomp.data.schema import Schema
from reccomp.data.splits import SplitConfig, split_indices
from tests.conftest import shared_dataset

TEMPORAL = SplitConfig(kind="temporal", fractions=(0.8, 0.1, 0.1))


def random_data(n: int, seed: int = 0, card: int = 12) -> tuple[np.ndarray, ...]:
    """Labels, (N, 13) dense with negatives and NaN, (N, 26) categoricals with -1."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, n)
    dense = rng.integers(-3, 300, (n, 13)).astype(np.float64)
    dense[rng.random((n, 13)) < 0.2] = np.nan
    cat = rng.integers(0, card, (n, 26)) * 0x1F3D5B79 % 2**32  # small vocabularies, 32-bit
    cat[:, 0] = rng.integers(0, 2**32, n)  # a field of mostly distinct values
    cat[rng.random((n, 26)) < 0.15] = -1
    return label, dense, cat


def prepare(tmp_path: Path, paths: list[Path], tag: str = "prep", **kw) -> Schema:
    writer = CacheWriter(tmp_path / tag)
    schema = prepare_criteo(paths, writer, **{"split": TEMPORAL, **kw})
    assert not writer.final_dir.exists()  # the caller finishes the writer
    writer.finish(schema)
    return schema


def arrays(schema: Schema) -> dict[str, np.ndarray]:
    out = {}
    for s in SPLITS:
        a = load_split(schema.root, s, mmap=False)
        out |= {f"{s}/sparse": a.sparse, f"{s}/dense": a.dense, f"{s}/label": a.label}
    for f in schema.feature_names:
        out[f"maps/{f}"], out[f"counts/{f}"] = schema.raw_values(f), schema.counts(f)
    return out


def reference(lines: list[str], n_train: int, min_count: int = 1) -> dict[str, np.ndarray]:
    """Per-line Python encoding of well-formed lines; the first ``n_train`` lines train."""
    rows = [(line.rstrip("\r\n").split("\t") + [""] * 40)[:40] for line in lines]
    out: dict[str, np.ndarray] = {
        "label": np.array([float(r[0]) for r in rows], np.float32),
        "dense": np.array(
            [[np.log1p(max(int(x), 0)) if x else 0.0 for x in r[1:14]] for r in rows], np.float32
        ).reshape(-1, 13),
    }
    sparse = np.zeros((len(rows), 26), np.int32)
    for j in range(26):
        col = [int(r[14 + j], 16) if r[14 + j] else None for r in rows]
        train = Counter(v for v in col[:n_train] if v is not None)
        vocab = sorted(v for v, c in train.items() if c >= min_count)
        row_of = {v: i + 2 for i, v in enumerate(vocab)}
        sparse[:, j] = [1 if v is None else row_of.get(v, 0) for v in col]
        rare = sum(c for c in train.values() if c < min_count)
        out[f"maps/C{j + 1}"] = np.array(vocab, np.int64)
        out[f"counts/C{j + 1}"] = np.array(
            [rare, col[:n_train].count(None), *(train[v] for v in vocab)], np.int64
        )
    out["sparse"] = sparse
    return out


def check_against_reference(schema: Schema, lines: list[str], min_count: int = 1) -> None:
    n = len(lines)
    cuts = [0, round(0.8 * n), round(0.9 * n), n]
    ref = reference(lines, cuts[1], min_count)
    got = arrays(schema)
    assert schema.splits == {s: cuts[i + 1] - cuts[i] for i, s in enumerate(SPLITS)}
    for i, s in enumerate(SPLITS):
        part = slice(cuts[i], cuts[i + 1])
        np.testing.assert_array_equal(got[f"{s}/sparse"], ref["sparse"][part])
        np.testing.assert_array_equal(got[f"{s}/label"], ref["label"][part])
        np.testing.assert_allclose(got[f"{s}/dense"], ref["dense"][part], rtol=1e-6)
    for f in schema.feature_names:
        np.testing.assert_array_equal(got[f"maps/{f}"], ref[f"maps/{f}"])
        np.testing.assert_array_equal(got[f"counts/{f}"], ref[f"counts/{f}"])
        assert schema.field(f).cardinality == len(ref[f"counts/{f}"])


# -- writing -----------------------------------------------------------------------------------
def test_write_criteo_tsv_format(tmp_path: Path) -> None:
    dense = np.full((2, 13), np.nan)
    dense[0, :3] = [5, -2, 1e6]
    cat = np.full((2, 26), -1)
    cat[0, 0], cat[1, 25] = 0xABC, 2**32 - 1
    write_criteo_tsv(tmp_path / "x.txt", np.array([1, 0]), dense, cat)
    lines = (tmp_path / "x.txt").read_text().splitlines()
    assert lines[0].split("\t") == ["1", "5", "-2", "1000000", *[""] * 10, "00000abc", *[""] * 25]
    assert lines[1].split("\t") == ["0", *[""] * 38, "ffffffff"]
    with pytest.raises(ValueError, match="2\\*\\*32"):
        write_criteo_tsv(tmp_path / "y.txt", np.array([1]), dense[:1], np.full((1, 26), 2**32))


# -- encoding ----------------------------------------------------------------------------------
@pytest.mark.parametrize("min_count", [1, 3])
def test_matches_per_line_reference(tmp_path: Path, min_count: int) -> None:
    path = tmp_path / "train.txt"
    write_criteo_tsv(path, *random_data(500))
    schema = prepare(tmp_path, [path], min_count=min_count)
    check_against_reference(schema, path.read_text().splitlines(), min_count)
    assert schema.name == "criteo" and schema.task == "ctr"
    assert schema.dense == [f"I{i}" for i in range(1, 14)]
    assert schema.feature_names == [f"C{i}" for i in range(1, 27)]


def test_special_rows_and_dense_transform(tmp_path: Path) -> None:
    # 8 training lines, 1 validation line, 1 test line (temporal 0.8 / 0.1 / 0.1)
    a, b, c, unseen = 0x0000000A, 0xFFFFFFF0, 0x12345678, 0x00C0FFEE
    c1 = [a, a, a, b, -1, -1, c, c, unseen, a]
    dense = np.full((10, 13), np.nan)
    dense[:, 0] = [0, 1, -5, 7, 2**40, np.nan, 3, 3, 3, 3]
    path = tmp_path / "x.txt"
    cat = np.tile(np.array(c1)[:, None], (1, 26))
    write_criteo_tsv(path, np.array([1, 0] * 5), dense, cat)
    schema = prepare(tmp_path, [path], min_count=2)
    assert list(schema.raw_values("C1")) == [a, c]  # b is rare (1 < 2), unseen never counted
    assert list(schema.counts("C1")) == [1, 2, 3, 2]  # rare, missing, a, c
    train, val, test = (load_split(schema.root, s) for s in SPLITS)
    assert list(train.sparse[:, 0]) == [2, 2, 2, 0, 1, 1, 3, 3]
    assert list(val.sparse[:, 0]) == [0] and list(test.sparse[:, 0]) == [2]
    expected = np.log1p([0, 1, 0, 7, 2**40, 0, 3, 3]).astype(np.float32)
    np.testing.assert_allclose(train.dense[:, 0], expected, rtol=1e-6)
    assert (train.dense[:, 1:] == 0).all()  # every other integer is missing
    dtypes = (train.sparse.dtype, train.dense.dtype, train.label.dtype)
    assert dtypes == (np.int32, np.float32, np.float32)
    assert train.sparse.shape == (8, 26) and train.dense.shape == (8, 13)
    assert list(train.label) == [1, 0] * 4
    assert schema.stats["label_mean"] == 0.5


def test_upper_case_hex_is_the_same_value(tmp_path: Path) -> None:
    base = "\t".join(["1", *["1"] * 13, *["abcdef01"] * 26])
    path = tmp_path / "x.txt"
    path.write_text("\n".join([base, base.upper(), base, base]) + "\n")
    schema = prepare(tmp_path, [path], split=SplitConfig(fractions=(1, 0, 0)))
    assert list(schema.raw_values("C5")) == [0xABCDEF01]
    assert list(schema.counts("C5")) == [0, 0, 4]


# -- splits ------------------------------------------------------------------------------------
def test_random_split_is_seeded_and_covers_every_line(tmp_path: Path) -> None:
    n = 2000
    label, dense, cat = random_data(n)
    dense[:, 0] = np.arange(n)  # I1 = line number, to find each row's line
    path = tmp_path / "x.txt"
    write_criteo_tsv(path, label, dense, cat)
    split = SplitConfig(kind="random", fractions=(0.7, 0.2, 0.1), seed=3)
    s1 = prepare(tmp_path, [path], "a", split=split)
    s2 = prepare(tmp_path, [path], "b", split=split)
    s3 = prepare(tmp_path, [path], "c", split=SplitConfig(kind="random", seed=4))
    got1, got2, got3 = arrays(s1), arrays(s2), arrays(s3)
    for k in got1:
        np.testing.assert_array_equal(got1[k], got2[k])
    assert not np.array_equal(got1["test/label"], got3["test/label"][: len(got1["test/label"])])
    lines = [np.rint(np.expm1(got1[f"{s}/dense"][:, 0].astype(np.float64))) for s in SPLITS]
    assert all((np.diff(x) > 0).all() for x in lines)  # file order within each split
    np.testing.assert_array_equal(np.sort(np.concatenate(lines)), np.arange(n))
    sizes = np.array([s1.splits[s] for s in SPLITS])
    assert sizes.sum() == n
    assert (np.abs(sizes - n * np.array([0.7, 0.2, 0.1])) < 4 * np.sqrt(n * 0.25)).all()
    # vocabularies count training rows only
    train_c2 = got1["train/sparse"][:, 1]
    assert got1["counts/C2"][1] == (train_c2 == 1).sum()
    np.testing.assert_array_equal(got1["counts/C2"][2:], np.bincount(train_c2)[2:])


def test_temporal_split_is_a_cut_by_line_order(tmp_path: Path) -> None:
    path = tmp_path / "x.txt"
    write_criteo_tsv(path, *random_data(101))
    split = SplitConfig(kind="temporal", fractions=(0.5, 0.25, 0.25))
    schema = prepare(tmp_path, [path], split=split)
    # cuts at round(50.5) = 50 and round(75.75) = 76
    assert schema.splits == {"train": 50, "val": 26, "test": 25}
    assert list(schema.splits.values()) == [len(p) for p in split_indices(split, 101)]


@pytest.mark.parametrize(
    "split", [SplitConfig(kind="leave_one_out"), SplitConfig(kind="temporal", last_n=2)]
)
def test_per_user_splits_are_refused(tmp_path: Path, split: SplitConfig) -> None:
    path = tmp_path / "x.txt"
    write_criteo_tsv(path, *random_data(5))
    with pytest.raises(ValueError, match="Criteo has no"):
        prepare_criteo([path], CacheWriter(tmp_path / "p"), split=split)


# -- malformed input ---------------------------------------------------------------------------
def good_line(i: int) -> str:
    return "\t".join([str(i % 2), *[str(i)] * 13, *[f"{i:08x}"] * 26])


def test_short_lines_are_padded_and_bad_lines_skipped(tmp_path: Path) -> None:
    lines = [good_line(i) for i in range(30)]
    lines[3] = "\t".join(good_line(3).split("\t")[:20])  # trailing empty fields stripped
    lines[4] = "1\t2"  # two fields: padded too
    bad = {
        6: good_line(6) + "\textra",  # 41 fields
        8: "1",  # one field
        9: "",  # empty line
        11: good_line(11).replace("\t11\t", "\tx1\t", 1),  # non-integer I field
        13: "2" + good_line(13)[1:],  # label 2
        15: "\t".join(["1", *["1"] * 13, "zzzzzzzz", *["0000000a"] * 25]),  # not hex
        17: "\t".join(["0", *["1"] * 13, "abc", *["0000000a"] * 25]),  # not 8 characters
        18: "\t".join(["", *["1"] * 13, *["0000000a"] * 26]),  # missing label
        19: "\t".join(["0", "1.5", *["1"] * 12, *["0000000a"] * 26]),  # float I field
        21: "5\t1",  # short and a bad label: skipped, not counted as padded
    }
    for i, line in bad.items():
        lines[i] = line
    path = tmp_path / "x.txt"
    path.write_text("\n".join(lines))  # and no newline after the last line
    schema = prepare(tmp_path, [path], split=SplitConfig(fractions=(1, 0, 0)))
    rep = schema.stats["parse_report"]
    assert (rep["lines"], rep["skipped"], rep["padded"]) == (30, len(bad), 2)
    assert schema.stats["lines"] == 30 and schema.stats["skipped"] == len(bad)
    assert rep["examples"][0].startswith("line 7: expected 40 columns, got 41")
    assert schema.splits["train"] == 30 - len(bad)
    kept = [line for i, line in enumerate(lines) if i not in bad]
    check_against_reference_all_train(schema, kept)

    with pytest.raises(MalformedInputError, match=r"x\.txt: line 7: expected 40"):
        prepare(tmp_path, [path], "strict", strict=True)
    path.write_text("\n".join(lines[:6] + lines[12:14]) + "\n")  # bad label on line 8
    with pytest.raises(MalformedInputError, match="line 8: label"):
        prepare(tmp_path, [path], "strict", strict=True)


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("2" + good_line(1)[1:], "label is not 0 or 1"),
        (good_line(1)[1:], "label is not 0 or 1"),  # missing label
        ("", "expected 40 columns, got 1"),  # an empty line
        (good_line(1)[:-8] + "0000000g", "C26 is not hex"),
        (good_line(1)[:-8] + "0000000", "C26 is not 8 characters"),
        (good_line(1).replace("\t1\t", "\t1e3\t", 1), "I1 is not an integer"),
        (good_line(1) + "\t", "expected 40 columns, got 41"),
        ("0", "expected 40 columns, got 1"),
    ],
)
def test_one_bad_line(tmp_path: Path, line: str, why: str) -> None:
    lines = [good_line(i) for i in range(1, 9)]
    lines[4] = line
    path = tmp_path / "x.txt"
    path.write_text("\n".join(lines) + "\n")
    schema = prepare(tmp_path, [path], split=SplitConfig(fractions=(1, 0, 0)))
    assert schema.stats["parse_report"]["examples"] == [f"line 5: {why}"]
    assert schema.splits["train"] == 7
    check_against_reference_all_train(schema, lines[:4] + lines[5:])
    with pytest.raises(MalformedInputError, match=f"line 5: {why}"):
        prepare(tmp_path, [path], "strict", strict=True)


def test_crlf_line_ends_and_stray_carriage_returns(tmp_path: Path) -> None:
    lines = [good_line(i) for i in range(1, 9)]
    unix, dos = tmp_path / "unix.txt", tmp_path / "dos.txt"
    unix.write_text("\n".join(lines) + "\n")
    dos.write_bytes(("\r\n".join(lines) + "\r\n").encode())
    split = SplitConfig(fractions=(1, 0, 0))
    a, b = (
        arrays(prepare(tmp_path, [unix], "u", split=split)),
        arrays(prepare(tmp_path, [dos], "d", split=split)),
    )
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    lines[2] = lines[2].replace("\t3\t", "\t3\r\t", 1)  # a carriage return inside a line
    unix.write_text("\n".join(lines) + "\n")
    schema = prepare(tmp_path, [unix], "cr", split=split)
    assert schema.stats["parse_report"]["examples"] == ["line 3: carriage return inside the line"]
    check_against_reference_all_train(schema, lines[:2] + lines[3:])


def check_against_reference_all_train(schema: Schema, lines: list[str]) -> None:
    ref = reference(lines, len(lines))
    got = arrays(schema)
    np.testing.assert_array_equal(got["train/sparse"], ref["sparse"])
    np.testing.assert_array_equal(got["train/label"], ref["label"])
    np.testing.assert_allclose(got["train/dense"], ref["dense"], rtol=1e-6)
    for f in schema.feature_names:
        np.testing.assert_array_equal(got[f"counts/{f}"], ref[f"counts/{f}"])


def test_skipped_lines_leave_consistent_splits(tmp_path: Path) -> None:
    lines = [good_line(i) for i in range(200)]
    for i in range(0, 200, 7):
        lines[i] = "garbage"
    path = tmp_path / "x.txt"
    path.write_text("\n".join(lines) + "\n")
    schema = prepare(tmp_path, [path], split=SplitConfig(kind="random", seed=1))
    n_bad = len(range(0, 200, 7))
    assert sum(schema.splits.values()) == 200 - n_bad
    for s in SPLITS:
        a = load_split(schema.root, s)
        assert len(a) == a.sparse.shape[0] == a.dense.shape[0] == schema.splits[s]
        assert (a.sparse >= 0).all() and (a.label >= 0).all()


# -- files and chunks --------------------------------------------------------------------------
def test_chunking_and_file_splits_give_identical_output(tmp_path: Path) -> None:
    path = tmp_path / "all.txt"
    write_criteo_tsv(path, *random_data(100, seed=5))
    lines = path.read_text().splitlines(keepends=True)
    parts = [tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "c.txt"]
    for p, part in zip(parts, (lines[:40], lines[40:41], lines[41:]), strict=True):
        p.write_text("".join(part))
    split = SplitConfig(kind="random", seed=7)
    whole = arrays(prepare(tmp_path, [path], "whole", split=split))
    for tag, kw in {
        "tiny": {"paths": [path], "chunk_bytes": 64},  # chunks shorter than a line
        "small": {"paths": [path], "chunk_bytes": 1500},
        "files": {"paths": parts, "chunk_bytes": 2000},
    }.items():
        got = arrays(prepare(tmp_path, kw.pop("paths"), tag, split=split, **kw))
        assert got.keys() == whole.keys()
        for k in whole:
            np.testing.assert_array_equal(got[k], whole[k], err_msg=f"{tag}: {k}")


def test_max_rows_reads_a_prefix(tmp_path: Path) -> None:
    path = tmp_path / "x.txt"
    write_criteo_tsv(path, *random_data(300))
    lines = path.read_text().splitlines(keepends=True)
    schema = prepare(tmp_path, [path], max_rows=120, chunk_bytes=2000)
    check_against_reference(schema, [line.rstrip("\n") for line in lines[:120]])
    assert schema.stats["lines"] == 120
    parts = [tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "c.txt"]
    for p, part in zip(parts, (lines[:100], lines[100:110], lines[110:]), strict=True):
        p.write_text("".join(part))
    schema = prepare(tmp_path, parts, "files", max_rows=105, chunk_bytes=2000)
    check_against_reference(schema, [line.rstrip("\n") for line in lines[:105]])
    assert schema.stats["lines"] == 105  # all of a.txt and b.txt, 5 lines of c.txt


# -- real data ---------------------------------------------------------------------------------
def test_kaggle_head(tmp_path: Path) -> None:
    path = shared_dataset("criteo-kaggle-head") / "train.txt"
    schema = prepare(tmp_path, [path], chunk_bytes=100_000)
    assert sum(schema.splits.values()) == 1999
    assert schema.stats["parse_report"]["skipped"] == 0
    assert schema.stats["label_mean"] == pytest.approx(418 / 1999)
    check_against_reference(schema, path.read_text().splitlines())
