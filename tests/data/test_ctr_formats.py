"""Click-log files in the forms users have them: the same rows in any layout prepare the same.

Criteo as headerless TSV, CSV with a header in another column order with integers written as
floats (comma or tab), gzip-compressed, and Parquet (hex strings or integers); Avazu's
``train`` CSV with a header; format sniffed from content and printed.
"""

from __future__ import annotations

import datetime
import gzip
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pv
import pyarrow.parquet as pq
import pytest

from reccomp.data.avazu import AVAZU, HEX_NAMES, prepare_avazu, write_avazu_csv
from reccomp.data.cache import SPLITS, CacheWriter, load_split
from reccomp.data.checks import DataError
from reccomp.data.criteo import COLUMNS, criteo_table, prepare_criteo, write_criteo_tsv
from reccomp.data.schema import Schema
from reccomp.data.sources import source_files
from reccomp.data.splits import SplitConfig
from tests.conftest import shared_dataset

SPLIT = SplitConfig(kind="random", fractions=(0.8, 0.1, 0.1), seed=3)


def _rows(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    label = (rng.random(n) < 0.3).astype(np.int64)
    dense = np.floor(rng.exponential(30.0, (n, 13))) - 2
    dense[rng.random((n, 13)) < 0.2] = np.nan
    cat = rng.integers(0, 40, (n, 26)) * 2654435761 % 2**32
    cat[rng.random((n, 26)) < 0.1] = -1
    return label, dense, cat


def _prepare(tmp: Path, path: Path, name: str, fn=prepare_criteo, **kw) -> Schema:
    w = CacheWriter(tmp / f"prep-{name}")
    schema = fn([path], w, split=SPLIT, **kw)
    return Schema.load(w.finish(schema))


def _same(a: Schema, b: Schema) -> None:
    assert a.splits == b.splits and [f.cardinality for f in a.sparse] == [
        f.cardinality for f in b.sparse
    ]
    for f in a.feature_names:
        np.testing.assert_array_equal(a.raw_values(f), b.raw_values(f))
        np.testing.assert_array_equal(a.counts(f), b.counts(f))
    for s in SPLITS:
        x, y = load_split(a.root, s), load_split(b.root, s)
        for k in ("sparse", "dense", "label"):
            np.testing.assert_array_equal(getattr(x, k), getattr(y, k), err_msg=f"{s}/{k}")


def _csv(table: pa.Table, path: Path, delimiter: str = ",", header: bool = True) -> None:
    """As pandas writes it: names unquoted, floats as ``260.0``, missing values empty."""
    cols = [["" if v is None else str(v) for v in table[c].to_pylist()] for c in table.column_names]
    lines = [delimiter.join(row) for row in zip(*cols, strict=True)]
    head = [delimiter.join(table.column_names)] if header else []
    path.write_text("\n".join(head + lines) + "\n")


@pytest.fixture
def reference(tmp_path: Path) -> tuple[Schema, pa.Table]:
    label, dense, cat = _rows()
    write_criteo_tsv(tmp_path / "train.txt", label, dense, cat)
    return _prepare(tmp_path, tmp_path / "train.txt", "tsv"), criteo_table(label, dense, cat, True)


def test_criteo_layouts_prepare_the_same(tmp_path, reference, capsys) -> None:
    ref, table = reference
    shuffled = table.select(list(np.random.default_rng(1).permutation(COLUMNS)))
    _csv(shuffled, tmp_path / "floats.csv")  # "260.0", columns in another order
    assert b".0," in (tmp_path / "floats.csv").read_bytes()
    _csv(table, tmp_path / "tabs.tsv", delimiter="\t")
    _csv(table, tmp_path / "plain.csv", header=False)
    with gzip.open(tmp_path / "data.bin", "wb") as f:  # the name says nothing
        f.write((tmp_path / "floats.csv").read_bytes())
    pq.write_table(shuffled, tmp_path / "strings.parquet", row_group_size=100)
    ints = table  # hex fields as their integer values: the same values as the hex strings
    cat = _rows()[2]
    for j in range(26):
        col = pa.array(np.where(cat[:, j] < 0, 0, cat[:, j]), mask=cat[:, j] < 0)
        ints = ints.set_column(ints.schema.get_field_index(f"C{j + 1}"), f"C{j + 1}", col)
    pq.write_table(ints, tmp_path / "ints.parquet")
    capsys.readouterr()
    expect = {
        "floats.csv": "Criteo CSV (comma-separated, with a header)",
        "tabs.tsv": "Criteo CSV (tab-separated, with a header)",
        "plain.csv": "Criteo CSV (comma-separated, no header)",
        "data.bin": "gzip-compressed Criteo CSV (comma-separated, with a header)",
        "strings.parquet": "Criteo Parquet",
        "ints.parquet": "Criteo Parquet",
    }
    for name, printed in expect.items():
        got = _prepare(tmp_path, tmp_path / name, name)
        assert f"{tmp_path / name}: {printed}" in capsys.readouterr().out
        _same(ref, got)
        assert got.stats["formats"] == [printed] and got.stats["skipped"] == 0


def test_root_is_a_file_or_a_folder(tmp_path) -> None:
    label, dense, cat = _rows(50)
    d = tmp_path / "criteo"
    d.mkdir()
    pq.write_table(criteo_table(label, dense, cat), d / "part-0.parquet")
    assert source_files("criteo", d) == [d / "part-0.parquet"]
    assert source_files("criteo", d / "part-0.parquet") == [d / "part-0.parquet"]
    write_avazu_csv(tmp_path / "train.gz", 10, compress=True)
    assert source_files("avazu", tmp_path) == [tmp_path / "train.gz"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="reccomp data download avazu"):
        source_files("avazu", tmp_path / "empty")


def test_header_lacking_columns_is_one_clear_error(tmp_path) -> None:
    (tmp_path / "t.csv").write_text("label,I1,C1\n1,2,05db9164\n")
    with pytest.raises(DataError, match=r"the header lacks 37 of the Criteo columns \(I2, I3"):
        _prepare(tmp_path, tmp_path / "t.csv", "x")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 and nothing else")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        _prepare(tmp_path, tmp_path / "bad.parquet", "p")


def test_bad_values_in_a_header_csv_are_counted(tmp_path, reference) -> None:
    _, table = reference
    _csv(table, tmp_path / "t.csv")
    lines = (tmp_path / "t.csv").read_bytes().splitlines(True)
    lines[5] = lines[5].replace(b",", b",x", 3)  # I-fields that are no numbers
    lines[9] = b"2" + lines[9][1:]  # label 2
    (tmp_path / "t.csv").write_bytes(b"".join(lines))
    got = _prepare(tmp_path, tmp_path / "t.csv", "bad")
    report = got.stats["parse_reports"][0]
    assert report["skipped"] == 2 and sum(got.splits.values()) == 598
    assert report["examples"][0].startswith("line 6: I")  # line 1 is the header
    assert report["examples"][1] == "line 10: label is not 0 or 1"


@pytest.mark.parametrize("compress", [True, False])
def test_avazu(tmp_path, compress, capsys) -> None:
    path = tmp_path / ("train.gz" if compress else "train")
    write_avazu_csv(path, 3000, seed=4, compress=compress)
    schema = _prepare(tmp_path, path, "avazu", fn=prepare_avazu)
    kind = "gzip-compressed Avazu CSV" if compress else "Avazu CSV"
    assert f"{path}: {kind} (comma-separated, with a header)" in capsys.readouterr().out
    assert schema.feature_names == [*AVAZU.sparse, "hour_of_day", "day_of_week"]
    assert len(schema.feature_names) == 23 and schema.dense == [] and schema.stats["skipped"] == 0
    assert sum(schema.splits.values()) == 3000
    raw = pv.read_csv(
        gzip.open(path) if compress else path,  # noqa: SIM115 (read at once)
        convert_options=pv.ConvertOptions(column_types={c: pa.string() for c in HEX_NAMES}),
    )
    hours = raw["hour"].to_numpy()
    np.testing.assert_array_equal(schema.raw_values("hour_of_day"), np.unique(hours % 100))
    days = {datetime.date(2000 + h // 10**6, h // 10**4 % 100, h // 100 % 100).weekday()
            for h in hours.tolist()}  # fmt: skip
    assert set(schema.raw_values("day_of_week").tolist()) <= days  # training values only
    assert -1 in schema.raw_values("C20")  # a negative integer is a value, not missing
    site = {int(v, 16) for v in raw["site_id"].to_pylist()}
    assert set(schema.raw_values("site_id").tolist()) <= site
    assert schema.stats["value_kinds"]["site_id"] == "hex"
    assert schema.stats["value_kinds"]["C14"] == "int"
    # Parquet of the same rows prepares the same
    pq.write_table(raw, tmp_path / "avazu.parquet", row_group_size=700)
    _same(schema, _prepare(tmp_path, tmp_path / "avazu.parquet", "pq", fn=prepare_avazu))


def test_avazu_bad_hour_is_counted(tmp_path) -> None:
    write_avazu_csv(tmp_path / "train", 200)
    lines = (tmp_path / "train").read_bytes().splitlines(True)
    parts = lines[3].split(b",")
    parts[2] = b"14133100"  # month 13
    lines[3] = b",".join(parts)
    (tmp_path / "train").write_bytes(b"".join(lines))
    schema = _prepare(tmp_path, tmp_path / "train", "h", fn=prepare_avazu)
    assert schema.stats["parse_reports"][0]["examples"] == ["line 4: hour is not YYMMDDHH"]


def test_kaggle_head_as_csv_and_parquet(tmp_path) -> None:
    src = shared_dataset("criteo-kaggle-head") / "train.txt"
    ref = _prepare(tmp_path, src, "tsv")
    table = pv.read_csv(
        src,
        pv.ReadOptions(column_names=list(COLUMNS)),
        pv.ParseOptions(delimiter="\t"),
        pv.ConvertOptions(column_types={c: pa.float64() for c in COLUMNS[:14]}),
    )  # integers as floats, as pandas writes them when a column has a missing value
    _csv(table, tmp_path / "criteo_sample.txt")
    pq.write_table(table, tmp_path / "t.parquet")
    for name in ("criteo_sample.txt", "t.parquet"):
        _same(ref, _prepare(tmp_path, tmp_path / name, name))
