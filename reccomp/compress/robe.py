"""``robe``: ROBE-Z, every field's embeddings read in chunks from ONE shared array.

Desai, Chou and Shrivastava, "Random Offset Block Embedding (ROBE) for compressed embedding
tables in deep learning recommendation systems", MLSys 2022. All fields that use the method
share one flat parameter array; the embedding of id ``x`` is ``dim / Z`` chunks of ``Z``
consecutive values, chunk ``j`` read at a hashed offset ``h(x, j)`` (contiguous blocks:
cache-friendly, one lookup per chunk). Two ids share a whole embedding only if all their
chunks collide, and a field with many ids borrows the array space that small fields leave.

Here the array is one TorchRec table of rows ``Z`` wide (``TableSpec.shared``: every
field's spec names it, the collection makes it one table whose rows are the sum of the
fields' shares), and chunk ``j`` of ``x`` is row ``h_j(x)`` of the whole table, ``h_j`` a
universal hash of the field. Offsets are therefore multiples of ``Z`` (the paper's are
arbitrary, wrapping around the array): the price of an ordinary FBGEMM row lookup, which
trains, shards and quantizes like any table. Decode is the concatenation of the chunks:
linear, so bags of several ids pool as usual.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch

from reccomp.compress.base import (
    BYTES_PER_VALUE,
    BudgetError,
    TableMethod,
    TableSpec,
    field_seed,
    hash_params,
    universal_hash,
)
from reccomp.compress.registry import MethodConfig, register

HASH_PARAM_BYTES = 16  # (a, b) as int64, one pair per chunk
DEFAULT_CHUNK = 8


@register("robe")
@dataclass
class RobeConfig(MethodConfig):
    """ROBE-Z (Desai et al., MLSys 2022): chunks of one shared array at hashed offsets.

    Args:
        chunk: ``Z``, values per chunk: a multiple of 4 (FBGEMM widths) dividing ``dim``;
            each id makes ``dim / Z`` lookups. ``None`` = 8 where it divides ``dim``, else
            ``dim``. Smaller chunks make whole-embedding collisions rarer but cost lookups
            (FBGEMM's CPU lookups cost per row): on the synthetic Criteo data (dim 16, 2
            epochs) Z = 16 / 8 / 4 gave test AUC 0.789 / 0.796 / 0.800 at 1/100 of the
            memory and 0.765 / 0.780 / 0.783 at 1/1000, epochs of ~10 / ~11 / ~18 s.
        num_rows: this field's share of the array, in rows of ``Z`` values; ``None`` = from
            the budget.
        array: the shared array's name: fields with one name share one array (per-field
            overrides can give some fields another); ``""`` = an array of the field's own.

    >>> RobeConfig(chunk=4, num_rows=1000).array
    'robe'
    """

    chunk: int | None = None
    num_rows: int | None = None
    array: str = "robe"
    size_options: ClassVar[tuple[str, ...]] = ("num_rows",)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.chunk is not None and (self.chunk < 4 or self.chunk % 4):
            raise ValueError(f"robe: chunk must be a multiple of 4 (FBGEMM), got {self.chunk}")
        if self.num_rows is not None and self.num_rows < 1:
            raise ValueError(f"robe: num_rows must be >= 1, got {self.num_rows}")
        if any(c in self.array for c in ".:#"):
            # '.' splits state_dict keys; ':' and '#' split storage feature names
            raise ValueError(f"robe: array name {self.array!r} may not hold '.', ':' or '#'")


def _chunk(dim: int, config: RobeConfig) -> int:
    """``Z`` of ``config`` for output width ``dim`` (the default, or the option checked)."""
    if config.chunk is None:
        return DEFAULT_CHUNK if dim % DEFAULT_CHUNK == 0 else dim
    if dim % config.chunk:
        raise ValueError(f"robe: chunk {config.chunk} does not divide dim {dim}")
    return config.chunk


def _bytes(rows: int, dim: int, z: int) -> int:
    return rows * z * BYTES_PER_VALUE + (dim // z) * HASH_PARAM_BYTES


class RobeTable(TableMethod):
    """Chunk ``j`` of id ``x`` = row ``h_j(x)`` of the shared (R, Z) array; output = the
    ``dim / Z`` chunks side by side.

    >>> m = RobeTable("f", 1000, 16, RobeConfig(chunk=4, num_rows=50, array=""))
    >>> [r.shape for r in m.remap(torch.tensor([3, 7]))], m.tables()[0].lookups
    ([torch.Size([2]), torch.Size([2]), torch.Size([2]), torch.Size([2])], 4)
    """

    def __init__(self, field: str, num_embeddings: int, dim: int, config: RobeConfig, **kw) -> None:
        super().__init__(field, num_embeddings, dim, config, **kw)
        self.chunk = _chunk(dim, config)
        self.k = dim // self.chunk  # lookups per id
        self.rows = [int(config.num_rows)]  # type: ignore[arg-type]
        self.array = config.array
        # rows of the whole array, every field's share: set by the collection
        # (set_shared_rows); a field with an array of its own hashes into its share
        self.total_rows = self.rows[0]
        s = field_seed(field, self.seed)
        self.register_buffer("params_", torch.stack([hash_params(s + j) for j in range(self.k)]))

    def tables(self) -> list[TableSpec]:
        return [TableSpec("", self.rows[0], self.chunk, lookups=self.k, shared=self.array)]

    def set_shared_rows(self, name: str, rows: int) -> None:
        self.total_rows = int(rows)

    @classmethod
    def table_bytes(cls, num_embeddings: int, dim: int, config: MethodConfig) -> int:
        return _bytes(config.num_rows, dim, _chunk(dim, config))

    @classmethod
    def min_bytes(cls, num_embeddings: int, dim: int, config: MethodConfig) -> int:
        return _bytes(1, dim, _chunk(dim, config))

    @classmethod
    def fit_budget(cls, num_embeddings, dim, config, budget_bytes):
        z = _chunk(dim, config)
        rows = (budget_bytes - _bytes(0, dim, z)) // (z * BYTES_PER_VALUE)
        if rows < 1:
            raise BudgetError("robe needs one row of the array and its hash parameters")
        # more than dim/Z rows per id cannot be used: every chunk of every id has its own
        rows = min(rows, num_embeddings * (dim // z))
        return dataclasses.replace(config, chunk=z, num_rows=int(rows))

    def remap(self, ids: torch.Tensor) -> list[torch.Tensor]:
        # any int64 id, negative or past the field, hashes into the array
        out: list[torch.Tensor] = []
        for j in range(self.k):
            out.append(universal_hash(ids, self.params_[j], self.total_rows))  # (N,)
        return out

    def decode(self, pooled: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(pooled, dim=-1)  # k x (..., Z) -> (..., dim)


RobeConfig.module = RobeTable
