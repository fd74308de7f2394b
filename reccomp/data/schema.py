"""The schema of a prepared data set: fields, cardinalities, splits and where the arrays lie.

A prepared data set is a directory (see :mod:`reccomp.data.cache`) holding ``schema.json``
plus ``.npy`` arrays. :class:`Schema` is the small, JSON-serializable part that models need
(field names and cardinalities); raw-value maps and frequency counts stay on disk and are
loaded on demand.

Row layout of every sparse field (the same for every data set)::

    row 0          out-of-vocabulary: unseen values, and values rarer than ``min_count``
    row 1          missing value (empty field)
    row 2 ... V+1  the vocabulary, in the order of ``maps/<field>.npy`` (sorted raw values)

Example::

    >>> s = Schema(name="toy", task="ctr", sparse=[SparseField("user", 12)], dense=[])
    >>> s.feature_names
    ['user']
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

OOV_ROW = 0
MISSING_ROW = 1
NUM_SPECIAL_ROWS = 2

TASKS = ("rating", "ctr", "retrieval")


@dataclass
class SparseField:
    """One categorical feature and its embedding table.

    Args:
        name: feature (KeyedJaggedTensor key) name.
        cardinality: number of rows, special rows included.
        max_len: 1 for single-valued fields; > 1 for multi-valued bags stored padded
            with -1 (e.g. movie genres).
    """

    name: str
    cardinality: int
    max_len: int = 1

    def __post_init__(self) -> None:
        if self.cardinality < 1:
            raise ValueError(f"field {self.name!r}: cardinality must be >= 1")
        if self.max_len < 1:
            raise ValueError(f"field {self.name!r}: max_len must be >= 1")


@dataclass
class Schema:
    """Fields, task and split sizes of a prepared data set.

    Args:
        name: data set name (e.g. ``ml-100k``, ``synthetic-criteo``).
        task: ``rating``, ``ctr`` or ``retrieval``.
        sparse: categorical fields in KeyedJaggedTensor key order.
        dense: names of the dense (float) features, possibly empty.
        splits: number of rows per split (``train``, ``val``, ``test``).
        user_field / item_field: the fields holding user and item ids (MovieLens and
            retrieval), used by retrieval evaluation and graph-based compression.
        stats: free-form statistics (skipped lines, oracle AUC, label mean, ...).
        root: the prepared directory (not serialized).
    """

    name: str
    task: str
    sparse: list[SparseField]
    dense: list[str] = field(default_factory=list)
    splits: dict[str, int] = field(default_factory=dict)
    user_field: str | None = None
    item_field: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    root: Path | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        self.sparse = [f if isinstance(f, SparseField) else SparseField(**f) for f in self.sparse]
        names = [f.name for f in self.sparse]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate sparse field names: {names}")

    # -- views -------------------------------------------------------------------------------
    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.sparse]

    @property
    def num_dense(self) -> int:
        return len(self.dense)

    def field(self, name: str) -> SparseField:
        for f in self.sparse:
            if f.name == name:
                return f
        raise KeyError(f"no sparse field {name!r}; fields are {self.feature_names}")

    # -- on-disk side data -------------------------------------------------------------------
    def _require_root(self) -> Path:
        if self.root is None:
            raise ValueError("this schema is not attached to a prepared directory")
        return self.root

    def raw_values(self, name: str) -> np.ndarray:
        """Sorted raw values of field ``name``; raw value ``raw_values[i]`` is row ``i + 2``."""
        return np.load(self._require_root() / "maps" / f"{name}.npy", allow_pickle=False)

    def counts(self, name: str) -> np.ndarray:
        """Training-split frequency of every row of field ``name``, shape ``(cardinality,)``."""
        return np.load(self._require_root() / "counts" / f"{name}.npy", allow_pickle=False)

    def encode(self, name: str, raw: np.ndarray) -> np.ndarray:
        """Map raw values of field ``name`` to rows; unseen values go to the OOV row."""
        return encode_with(self.raw_values(name), raw)

    # -- serialization -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("root")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], root: Path | None = None) -> Schema:
        return cls(**{**d, "root": root})

    def save(self, directory: Path) -> None:
        (Path(directory) / "schema.json").write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, directory: Path) -> Schema:
        directory = Path(directory)
        return cls.from_dict(json.loads((directory / "schema.json").read_text()), root=directory)


def encode_with(vocab: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """Rows of ``raw`` in a sorted vocabulary: ``vocab[i] -> i + 2``, unknown -> ``OOV_ROW``.

    Works for integer and string values of any shape. Returns int32 rows.
    """
    raw = np.asarray(raw)
    if len(vocab) == 0:
        return np.full(raw.shape, OOV_ROW, dtype=np.int32)
    pos = np.searchsorted(vocab, raw)
    pos_c = np.minimum(pos, len(vocab) - 1)
    hit = vocab[pos_c] == raw
    return np.where(hit, pos_c + NUM_SPECIAL_ROWS, OOV_ROW).astype(np.int32)
