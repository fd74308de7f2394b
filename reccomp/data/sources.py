"""Data sources by name: where their files are and how they are prepared.

A source knows which files it reads under ``root`` (they key the cache) and turns them into
a prepared directory. Names::

    movielens (aliases ml-100k, ml-1m, ml-10m, ml-20m, ml-25m, ml-32m, ml-latest,
               ml-latest-small, ml-1m-head): any MovieLens release, format detected
    criteo    (aliases criteo-kaggle, criteo-1tb): TSV, CSV with a header, gzip, Parquet
    avazu     Kaggle's train.gz (CSV with a header), plain, gzip or Parquet
    synthetic-movielens, synthetic-criteo: generated, no files
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reccomp.data.cache import CacheWriter
from reccomp.data.ctr_layout import CtrFormat
from reccomp.data.prepare import frame_task, prepare_raw
from reccomp.data.schema import Schema
from reccomp.data.splits import SplitConfig
from reccomp.metrics import binary_auc

MOVIELENS_ALIASES = (
    "ml-100k",
    "ml-1m",
    "ml-1m-head",
    "ml-10m",
    "ml-20m",
    "ml-25m",
    "ml-32m",
    "ml-latest",
    "ml-latest-small",
)
CRITEO_ALIASES = ("criteo-kaggle", "criteo-1tb")
SOURCES = ("movielens", "criteo", "avazu", "synthetic-movielens", "synthetic-criteo")
# files a directory root stands for, by data set family (a file root is read as it is)
_CTR_FILES = {
    "criteo": ("train.txt", "train.txt.gz", "train.csv", "train.csv.gz", "*.parquet", "day_*"),
    "avazu": ("train", "train.gz", "train.csv", "train.csv.gz", "*.parquet"),
}


def canonical(name: str) -> str:
    if name in MOVIELENS_ALIASES:
        return "movielens"
    if name in CRITEO_ALIASES:
        return "criteo"
    if name not in SOURCES:
        known = sorted(SOURCES + MOVIELENS_ALIASES + CRITEO_ALIASES)
        raise ValueError(f"data.dataset: unknown data set {name!r}; known: {known}")
    return name


def _download_hint(dataset: str) -> str:
    name = dataset if dataset in MOVIELENS_ALIASES + CRITEO_ALIASES else None
    if name in (None, "ml-1m-head"):
        name = "ml-1m" if canonical(dataset) == "movielens" else "criteo-kaggle"
    if dataset == "avazu":
        return "`reccomp data download avazu` says where to get it (a Kaggle download)"
    if name in ("ml-10m", "ml-32m", "ml-latest", "criteo-1tb"):
        return f"download {name} from its official site and point --data.root at it"
    return f"get it with: reccomp data download {name} --root DIR, then pass --data.root DIR"


def source_files(dataset: str, root: Path | None) -> list[Path]:
    """The files a data set reads (for the cache key); a clear error when none is there."""
    kind = canonical(dataset)
    if kind.startswith("synthetic"):
        return []
    if root is None:
        raise FileNotFoundError(
            f"data set {dataset!r} needs --data.root; {_download_hint(dataset)}"
        )
    root = Path(root)
    if kind == "movielens":
        from reccomp.data.movielens import movielens_sources

        if not root.exists():
            raise FileNotFoundError(
                f"no {dataset} data at {root.resolve()}: the path does not exist; {_download_hint(dataset)}"
            )
        return movielens_sources(root)  # its error names the path and the download command
    if root.is_file():
        return [root]
    files = [f for pattern in _CTR_FILES[kind] for f in sorted(root.glob(pattern))]
    files = list(dict.fromkeys(f for f in files if f.is_file()))
    if not files:
        looked = ", ".join(_CTR_FILES[kind])
        where = root.resolve()
        raise FileNotFoundError(
            f"no {dataset} data found at {where} (looked for {looked}); {_download_hint(dataset)}"
        )
    return files


@dataclass
class PrepareSettings:
    """Everything that changes the prepared arrays (part of the cache key)."""

    dataset: str
    task: str
    split: SplitConfig
    min_count: int = 1
    side_features: bool = True
    fields: list[str] | None = None
    ctr_threshold: float = 4.0
    implicit_threshold: float | None = None
    strict: bool = False
    synthetic: dict[str, Any] | None = None


def _ctr_format(kind: str) -> CtrFormat:
    if kind == "avazu":
        from reccomp.data.avazu import AVAZU

        return AVAZU
    from reccomp.data.criteo import CRITEO

    return CRITEO


def prepare_source(root: Path | None, s: PrepareSettings, writer: CacheWriter) -> Schema:
    """Parse/generate, frame the task, split, encode and write (caller finishes the writer)."""
    kind = canonical(s.dataset)
    if kind in _CTR_FILES:
        from reccomp.data.ctr import prepare_ctr

        fmt = _ctr_format(kind)
        if s.task != "ctr":
            raise ValueError(f"{fmt.name} data has click labels: use task 'ctr', not {s.task!r}")
        return prepare_ctr(
            source_files(s.dataset, root),
            writer,
            fmt,
            name=s.dataset,
            split=s.split,
            min_count=s.min_count,
            strict=s.strict,
        )
    if kind == "movielens":
        from reccomp.data.movielens import read_movielens

        raw = read_movielens(root, strict=s.strict, side_features=s.side_features)  # type: ignore[arg-type]
    elif kind == "synthetic-movielens":
        from reccomp.data.synthetic import synthetic_movielens

        raw = synthetic_movielens(**(s.synthetic or {}))
    else:
        from reccomp.data.synthetic import synthetic_criteo

        raw = synthetic_criteo(**(s.synthetic or {}))
        raw.stats["labels_are_clicks"] = True
    for r in raw.reports:
        if r.skipped or r.padded:
            print(r.summary())
    raw = frame_task(raw, s.task, s.ctr_threshold, s.implicit_threshold, s.fields)
    schema = prepare_raw(raw, writer, task=s.task, split=s.split, min_count=s.min_count)
    if "prob" in raw.extra and schema.splits["test"]:
        test = np.load(writer.path("test", "prob.npy"))
        label = np.load(writer.path("test", "label.npy"))
        schema.stats["oracle_auc"] = binary_auc(label, test)
    return schema
