"""Preparation, cache reuse, splits and batches of the DataModule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from reccomp.data.datamodule import RecDataModule
from reccomp.data.prepare import transform_dense
from reccomp.data.schema import MISSING_ROW, NUM_SPECIAL_ROWS, OOV_ROW, encode_with
from reccomp.data.splits import SplitConfig, split_indices
from reccomp.sparse.batch import Batch, RetrievalBatch
from tests.conftest import shared_dataset

SMALL_ML = {"n_users": 60, "n_items": 120, "n_ratings": 3000, "seed": 1}
SMALL_CRITEO = {"n_rows": 4000, "max_card": 2000, "seed": 1}


def small_ml(tmp_path: Path, **kw: object) -> RecDataModule:
    args: dict = {
        "dataset": "synthetic-movielens",
        "synthetic": SMALL_ML,
        "cache_dir": str(tmp_path),
    }
    args.update(kw)
    return RecDataModule(**args)


def test_prepare_once_then_reuse(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dm = small_ml(tmp_path, batch_size=256)
    schema = dm.prepare()
    assert "Preparing" in capsys.readouterr().out
    stamp = (schema.root / "train" / "label.npy").stat().st_mtime_ns
    again = small_ml(tmp_path, batch_size=512)  # batch size is not a preprocessing setting
    assert again.prepare().root == schema.root
    assert "cached" in capsys.readouterr().out
    assert (schema.root / "train" / "label.npy").stat().st_mtime_ns == stamp
    other = small_ml(tmp_path, split=SplitConfig(seed=5))  # a setting changes the key
    assert other.prepare().root != schema.root


def test_schema_and_counts(tmp_path: Path) -> None:
    schema = small_ml(tmp_path).prepare()
    assert schema.feature_names == ["user", "item"]
    assert sum(schema.splits.values()) == 3000
    assert schema.splits["train"] == 2400
    counts = schema.counts("item")
    assert counts.shape == (schema.field("item").cardinality,)
    assert counts.sum() == schema.splits["train"]
    raw = schema.raw_values("user")
    assert np.all(raw[:-1] < raw[1:])  # sorted map: raw value i -> row i + 2


def test_batches_are_tensor_slices(tmp_path: Path) -> None:
    dm = small_ml(tmp_path, batch_size=1000)
    it = dm.train_dataloader()
    batches = list(it)
    assert len(batches) == len(it) == 3
    b = batches[0]
    assert isinstance(b, Batch)
    assert b.dense.shape == (1000, 0) and b.dense.dtype == torch.float32
    assert b.labels.shape == (1000,) and b.labels.dtype == torch.float32
    assert b.sparse.keys() == ["user", "item"]
    assert b.sparse.values().dtype == torch.int32
    assert b.sparse.stride() == 1000
    assert len(batches[-1]) == 400
    # one epoch sees every training row once; the next epoch is shuffled differently
    labels = torch.cat([x.labels for x in batches])
    tr = dm.tensors_["train"].label
    assert torch.equal(labels.sort().values, tr.sort().values)
    again = next(iter(it))
    assert not torch.equal(again.sparse.values(), b.sparse.values())


def test_bag_fields_ml100k(tmp_path: Path) -> None:
    root = shared_dataset("ml-100k")
    dm = RecDataModule(
        dataset="ml-100k", root=str(root), task="ctr", batch_size=64, cache_dir=str(tmp_path)
    )
    schema = dm.prepare()
    assert {"user", "item", "gender", "age", "occupation", "zip", "genres", "year"} <= set(
        schema.feature_names
    )
    assert schema.field("genres").max_len > 1
    b = next(iter(dm.train_dataloader()))
    kjt = b.sparse
    lengths = kjt.length_per_key()
    assert kjt.stride() == 64
    assert lengths[kjt.keys().index("user")] == 64
    assert lengths[kjt.keys().index("genres")] >= 64  # most movies have one or more genres
    assert set(b.labels.unique().tolist()) <= {0.0, 1.0}
    # CTR from ratings: rating >= 4 is a click
    assert 0.4 < schema.stats["label_mean"] < 0.7


def test_synthetic_criteo_dense_and_oracle(tmp_path: Path) -> None:
    dm = RecDataModule(
        dataset="synthetic-criteo", task="ctr", synthetic=SMALL_CRITEO, cache_dir=str(tmp_path)
    )
    schema = dm.prepare()
    assert len(schema.dense) == 13 and len(schema.sparse) == 26
    assert 0.5 < schema.stats["oracle_auc"] < 1.0
    b = next(iter(dm.val_dataloader()))
    assert b.dense.shape[1] == 13
    assert torch.isfinite(b.dense).all() and (b.dense >= 0).all()


def test_transform_dense_handles_nan_and_negatives() -> None:
    x = np.array([[np.nan, -3.0, 0.0, np.e - 1]], dtype=np.float32)
    np.testing.assert_allclose(transform_dense(x), [[0.0, 0.0, 0.0, 1.0]], rtol=1e-6)


def test_unseen_values_map_to_oov() -> None:
    vocab = np.array([3, 7, 9])
    rows = encode_with(vocab, np.array([7, 8, 100, -5, 3]))
    assert rows.tolist() == [NUM_SPECIAL_ROWS + 1, OOV_ROW, OOV_ROW, OOV_ROW, NUM_SPECIAL_ROWS]
    assert encode_with(np.array(["a", "c"]), np.array(["b", "c"])).tolist() == [OOV_ROW, 3]
    assert MISSING_ROW != OOV_ROW


def test_splits() -> None:
    n = 100
    tr, va, te = split_indices(SplitConfig("random", (0.8, 0.1, 0.1), seed=3), n)
    assert (len(tr), len(va), len(te)) == (80, 10, 10)
    assert len(np.unique(np.concatenate([tr, va, te]))) == n
    time = np.arange(n)[::-1].copy()  # row 0 is the latest
    tr, va, te = split_indices(SplitConfig("temporal", (0.8, 0.1, 0.1)), n, time)
    assert time[tr].max() < time[va].min() and time[va].max() < time[te].min()
    user = np.repeat(np.arange(10), 10)
    tr, va, te = split_indices(SplitConfig("leave_one_out"), n, np.arange(n), user)
    assert len(te) == 10 and len(va) == 10
    assert np.array_equal(te, np.arange(9, n, 10))  # each user's latest interaction
    tr, va, te = split_indices(SplitConfig("temporal", last_n=2), n, np.arange(n), user)
    assert len(te) == 20 and len(va) == 20
    with pytest.raises(ValueError, match="sum to 1"):
        SplitConfig(fractions=(0.5, 0.1, 0.1))
    with pytest.raises(ValueError, match=r"split\.kind"):
        SplitConfig(kind="bogus")


def test_retrieval_eval_batches(tmp_path: Path) -> None:
    dm = small_ml(tmp_path, task="retrieval", split=SplitConfig("leave_one_out"))
    schema = dm.prepare()
    batches = list(dm.test_dataloader())
    b = batches[0]
    assert isinstance(b, RetrievalBatch)
    n_items = schema.field("item").cardinality
    assert b.target.shape[1] == n_items and b.exclude.shape == b.target.shape
    assert (b.target.sum(1) >= 1).all()
    assert not (b.target & b.exclude).any()  # held-out items are never excluded
    assert sum(len(x) for x in batches) <= schema.splits["test"]
    lengths = b.sparse.length_per_key()
    assert lengths[b.sparse.keys().index("item")] == 0


def test_missing_files_name_path_and_download(tmp_path: Path) -> None:
    dm = RecDataModule(dataset="ml-1m", root=str(tmp_path / "nowhere"), cache_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"nowhere.*reccomp data download ml-1m"):
        dm.prepare()
    with pytest.raises(ValueError, match="unknown data set"):
        RecDataModule(dataset="ml-7m")
