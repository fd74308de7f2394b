"""The preprocessed-data cache: one directory of ``.npy`` arrays per (sources, settings).

Layout of a prepared directory ``<cache_root>/<name>-<key>/``::

    schema.json                 Schema (fields, cardinalities, split sizes, stats)
    maps/<field>.npy            sorted raw values; raw_values[i] is row i + 2
    counts/<field>.npy          (cardinality,) int64 training-split frequency of each row
    <split>/sparse.npy          (N, F1) int32 rows of the single-valued fields, schema order
    <split>/bag_<field>.npy     (N, L) int32 rows of a multi-valued field, padded with -1
    <split>/dense.npy           (N, D) float32 dense features (D may be 0)
    <split>/label.npy           (N,) float32
    <split>/<extra>.npy         optional per-row arrays (e.g. ``prob``: true click probability)
    COMPLETE                    written last: a directory without it is rebuilt

``<split>`` is ``train``, ``val`` and ``test``. ``key`` hashes the source files (path, size,
mtime) and every preprocessing setting, so changing either prepares anew, and a second run
with the same ones reuses the directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reccomp.data.schema import Schema

SPLITS = ("train", "val", "test")
FORMAT_VERSION = 1


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``$RECCOMP_CACHE``, else ``~/.cache/reccomp``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("RECCOMP_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "reccomp"


def fingerprint(paths: list[Path]) -> list[list[Any]]:
    """(resolved path, size, mtime_ns) of each source file: cheap and changes on edit."""
    out = []
    for p in sorted(Path(p) for p in paths):
        st = p.stat()
        out.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
    return out


def cache_key(name: str, sources: list[Path], settings: dict[str, Any]) -> str:
    blob = json.dumps(
        {"v": FORMAT_VERSION, "name": name, "sources": fingerprint(sources), "settings": settings},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def is_complete(directory: Path) -> bool:
    return (Path(directory) / "COMPLETE").exists()


@dataclass
class SplitArrays:
    """The arrays of one split, memory-mapped from the cache.

    Shapes: ``sparse`` (N, F1) int32, ``bags`` field -> (N, L) int32, ``dense`` (N, D) float32,
    ``label`` (N,) float32, ``extra`` name -> (N, ...).
    """

    sparse: np.ndarray
    dense: np.ndarray
    label: np.ndarray
    bags: dict[str, np.ndarray] = field(default_factory=dict)
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.label)


def load_split(directory: Path, split: str, mmap: bool = True) -> SplitArrays:
    d = Path(directory) / split
    mode = "r" if mmap else None

    def ld(name: str) -> np.ndarray:
        return np.load(d / f"{name}.npy", mmap_mode=mode, allow_pickle=False)

    bags, extra = {}, {}
    for p in sorted(d.glob("*.npy")):
        stem = p.stem
        if stem.startswith("bag_"):
            bags[stem[4:]] = ld(stem)
        elif stem not in ("sparse", "dense", "label"):
            extra[stem] = ld(stem)
    return SplitArrays(ld("sparse"), ld("dense"), ld("label"), bags, extra)


class CacheWriter:
    """Writes a prepared directory atomically: into a temp dir, renamed on :meth:`finish`.

    Example::

        w = CacheWriter(final_dir)
        w.write_array("train", "label", labels)
        w.write_map("user", np.array([3, 7, 9]))
        w.finish(schema)
    """

    def __init__(self, final_dir: Path) -> None:
        self.final_dir = Path(final_dir)
        self.final_dir.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.final_dir.parent))

    def path(self, *parts: str) -> Path:
        p = self.tmp.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def write_array(self, split: str, name: str, arr: np.ndarray) -> None:
        np.save(self.path(split, f"{name}.npy"), np.ascontiguousarray(arr))

    def open_array(self, split: str, name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """A writable memory-mapped ``.npy`` for data written in chunks (Criteo)."""
        return np.lib.format.open_memmap(
            self.path(split, f"{name}.npy"), mode="w+", dtype=dtype, shape=shape
        )

    def write_map(self, field_name: str, raw_values: np.ndarray) -> None:
        np.save(self.path("maps", f"{field_name}.npy"), raw_values, allow_pickle=False)

    def write_counts(self, field_name: str, counts: np.ndarray) -> None:
        np.save(self.path("counts", f"{field_name}.npy"), counts.astype(np.int64))

    def finish(self, schema: Schema) -> Path:
        schema.save(self.tmp)
        (self.tmp / "COMPLETE").write_text("ok\n")
        if is_complete(self.final_dir):
            # another process (a rank of the same run) finished the same key first: its
            # arrays are these, and someone may be reading them
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            if self.final_dir.exists():
                shutil.rmtree(self.final_dir)
            try:
                os.replace(self.tmp, self.final_dir)
            except OSError:
                if not is_complete(self.final_dir):
                    raise
                shutil.rmtree(self.tmp, ignore_errors=True)
        schema.root = self.final_dir
        return self.final_dir

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
