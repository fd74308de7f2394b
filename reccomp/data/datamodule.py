"""The Lightning DataModule: prepare once into the cache, then serve batches of tensors.

Example (YAML, under ``data:`` of a run config)::

    data:
      dataset: ml-100k
      root: ../shared/datasets/ml-100k
      task: rating
      split: {kind: random, fractions: [0.8, 0.1, 0.1], seed: 0}
      batch_size: 1024
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from reccomp.data.cache import CacheWriter, cache_key, cache_root, is_complete, load_split
from reccomp.data.checks import check_prepared
from reccomp.data.loader import (
    BatchIterator,
    RetrievalIterator,
    SplitTensors,
    user_item_csr,
)
from reccomp.data.schema import NUM_SPECIAL_ROWS, TASKS, Schema
from reccomp.data.sources import PrepareSettings, canonical, prepare_source, source_files
from reccomp.data.splits import SplitConfig


class RecDataModule(pl.LightningDataModule):
    """Any supported data set, framed as a rating, CTR or retrieval task.

    Args:
        dataset: ``movielens`` (or a release name such as ``ml-100k``), ``criteo`` (or
            ``criteo-kaggle``), ``avazu``, ``synthetic-movielens`` or ``synthetic-criteo``.
        root: directory holding the source files, or one file.
        task: ``rating``, ``ctr`` or ``retrieval``.
        split: how rows are split (see :class:`~reccomp.data.splits.SplitConfig`).
        batch_size: training batch size. eval_batch_size: validation / test batch size.
        min_count: values seen fewer times in training go to the out-of-vocabulary row.
        side_features: MovieLens user / movie features (gender, age, occupation, zip,
            genres, year) as extra sparse fields (used when ``fields`` selects them; all
            fields are used by default for ``ctr``).
        fields: sparse fields to keep, in order (None: user + item for rating / retrieval,
            all for ctr).
        ctr_threshold: a rating >= this is a click (MovieLens CTR).
        implicit_threshold: a rating >= this is a positive (retrieval); None = every rating.
        strict: malformed input lines are fatal instead of skipped and counted.
        max_skipped: the share of a file's lines that may be bad (skipped and counted);
            more fails before training, as does a file with no good line or an empty split.
        synthetic: keyword arguments of the synthetic generator (sizes, seed).
        cache_dir: cache root (default ``$RECCOMP_CACHE`` or ``~/.cache/reccomp``).
        shuffle_seed: seed of the per-epoch shuffling of the training split.
    """

    def __init__(
        self,
        dataset: str = "synthetic-movielens",
        root: str | None = None,
        task: str = "rating",
        split: SplitConfig | None = None,
        batch_size: int = 1024,
        eval_batch_size: int = 8192,
        min_count: int = 1,
        side_features: bool = True,
        fields: list[str] | None = None,
        ctr_threshold: float = 4.0,
        implicit_threshold: float | None = None,
        strict: bool = False,
        max_skipped: float = 0.01,
        synthetic: dict[str, Any] | None = None,
        cache_dir: str | None = None,
        shuffle_seed: int = 0,
    ) -> None:
        super().__init__()
        canonical(dataset)  # fail early on an unknown name
        if task not in TASKS:
            raise ValueError(f"data.task must be one of {TASKS}, got {task!r}")
        if batch_size < 1 or eval_batch_size < 1:
            raise ValueError("data.batch_size and data.eval_batch_size must be >= 1")
        self.dataset = dataset
        self.root = root
        self.task = task
        self.split = split or SplitConfig()
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.settings = PrepareSettings(
            dataset=dataset,
            task=task,
            split=self.split,
            min_count=min_count,
            side_features=side_features,
            fields=fields,
            ctr_threshold=ctr_threshold,
            implicit_threshold=implicit_threshold,
            strict=strict,
            synthetic=synthetic,
        )
        if not 0 <= max_skipped <= 1:
            raise ValueError(f"data.max_skipped must be in [0, 1], got {max_skipped}")
        self.max_skipped = max_skipped  # not part of the cache key: checked on every load
        self.cache_dir = cache_dir
        self.shuffle_seed = shuffle_seed
        self.schema_: Schema | None = None
        self.tensors_: dict[str, SplitTensors] = {}

    # -- preparation -------------------------------------------------------------------------
    def prepared_dir(self) -> Path:
        root = Path(self.root) if self.root is not None else None
        files = source_files(self.dataset, root)
        settings = dataclasses.asdict(self.settings)
        if canonical(self.dataset) in ("criteo", "avazu"):  # they have no side features
            settings.pop("side_features")
        key = cache_key(canonical(self.dataset), files, settings)
        return cache_root(self.cache_dir) / f"{self.dataset}-{self.task}-{key}"

    def prepare(self, verbose: bool = True) -> Schema:
        """Prepare into the cache once (or reuse it) and return the schema."""
        if self.schema_ is not None:
            return self.schema_
        out = self.prepared_dir()
        _wait_for_local_rank0(out)
        cached = is_complete(out)
        if not cached:
            t0 = time.perf_counter()
            if verbose:
                print(f"Preparing {self.dataset} ({self.task}) into {out} ...")
            writer = CacheWriter(out)
            try:
                root = Path(self.root) if self.root is not None else None
                schema = prepare_source(root, self.settings, writer)
                schema.stats["prepare_seconds"] = round(time.perf_counter() - t0, 3)
                writer.finish(schema)
            except BaseException:
                writer.abort()
                raise
            if verbose:
                print(f"Prepared in {time.perf_counter() - t0:.1f} s")
        schema = Schema.load(out)
        check_prepared(schema, self.max_skipped)  # cached data is checked again: a new limit
        self.schema_ = schema
        if verbose:
            rows = ", ".join(f"{k} {v:,}" for k, v in self.schema_.splits.items())
            where = "prepared data, cached" if cached else "prepared data"
            print(f"Data: {self.dataset} ({self.task}), rows: {rows} ({where} at {out})")
        return self.schema_

    def prepare_data(self) -> None:
        self.prepare()

    @property
    def schema(self) -> Schema:
        return self.prepare()

    @property
    def schema_dict(self) -> dict[str, Any]:
        """The schema as plain data (what a task stores in its checkpoint)."""
        return self.schema.to_dict()

    def setup(self, stage: str | None = None) -> None:
        schema = self.prepare(verbose=False)
        for split in ("train", "val", "test"):
            if split not in self.tensors_:
                self.tensors_[split] = SplitTensors.from_arrays(
                    load_split(schema.root, split, mmap=False)  # type: ignore[arg-type]
                )

    # -- loaders -----------------------------------------------------------------------------
    def _iter(self, split: str, train: bool) -> BatchIterator:
        self.setup()
        return BatchIterator(
            self.tensors_[split],
            self.schema.feature_names,
            self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            seed=self.shuffle_seed,
            uneven="drop" if train else "pad",
            **_ranks(),
        )

    def _retrieval(self, split: str) -> RetrievalIterator:
        """Users of ``split`` with their held-out items; excluded: items seen before."""
        self.setup()
        schema = self.schema
        ui = [schema.feature_names.index(f) for f in (schema.user_field, schema.item_field)]
        n_users = schema.field(schema.user_field).cardinality  # type: ignore[arg-type]
        n_items = schema.field(schema.item_field).cardinality  # type: ignore[arg-type]

        def pairs(s: str) -> tuple[np.ndarray, np.ndarray]:
            sp = self.tensors_[s].sparse.numpy()
            keep = sp[:, ui[1]] >= NUM_SPECIAL_ROWS  # OOV items cannot be ranked
            return sp[keep, ui[0]], sp[keep, ui[1]]

        seen = [pairs("train")] + ([pairs("val")] if split == "test" else [])
        exclude = user_item_csr(
            np.concatenate([u for u, _ in seen]), np.concatenate([i for _, i in seen]), n_users
        )
        target = user_item_csr(*pairs(split), n_users)
        users = np.flatnonzero(np.diff(target[0]) > 0)
        return RetrievalIterator(
            users,
            target,
            exclude,
            schema.feature_names,
            schema.user_field,  # type: ignore[arg-type]
            n_items,
            max(1, min(self.eval_batch_size, 1024)),
            **_ranks(),
        )

    def train_dataloader(self) -> BatchIterator:
        return self._iter("train", train=True)

    def val_dataloader(self) -> Any:
        return self._retrieval("val") if self.task == "retrieval" else self._iter("val", False)

    def test_dataloader(self) -> Any:
        return self._retrieval("test") if self.task == "retrieval" else self._iter("test", False)

    def search_dataloader(self) -> BatchIterator:
        """Validation interactions in the training batch format: what a bi-level search
        (``dnis``) fits its architecture weights on. The same batches as
        :meth:`val_dataloader` except for retrieval, whose validation batches are users to
        rank items for."""
        return self._iter("val", train=False)

    def predict_dataloader(self) -> BatchIterator:
        return self._iter("test", train=False)


def _ranks() -> dict[str, int]:
    """This process's rank and the world size (0 and 1 without torch.distributed)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return {"rank": dist.get_rank(), "world": dist.get_world_size()}
    return {"rank": 0, "world": 1}


def _wait_for_local_rank0(out: Path, poll_s: float = 0.5) -> None:
    """Under torchrun, ranks other than each node's first wait for it to prepare the cache
    (torchrun stops them all if it fails) rather than prepare the same data again."""
    import os

    if os.environ.get("LOCAL_RANK", "0") == "0" or "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    while not is_complete(out):
        time.sleep(poll_s)
