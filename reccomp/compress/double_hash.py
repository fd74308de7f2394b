"""``double_hash``: two independent hashes of the id, their rows summed or concatenated.

Two ids collide only if both hashes collide, so far fewer ids share a whole embedding than
with one hash into the same number of rows. Zhang et al., "Model Size Reduction Using
Frequency Based Double Hashing for Recommender Systems", RecSys 2020 (which also keeps the
frequent ids apart: that part is :mod:`reccomp.compress.frequency_hash`).
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

_COMBINERS = ("sum", "concat")


@register("double_hash")
@dataclass
class DoubleHashConfig(MethodConfig):
    """Double hashing (Zhang et al., RecSys 2020).

    Args:
        num_buckets: rows over both hashes (each of two tables gets half; a shared
            table gets all); ``None`` = chosen from the budget.
        shared: both hashes index one table instead of one table each.
        combiner: ``sum`` the two rows, or ``concat`` two half-width rows (dim % 8 == 0).
    """

    num_buckets: int | None = None
    shared: bool = False
    combiner: str = "sum"
    size_options: ClassVar[tuple[str, ...]] = ("num_buckets",)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.combiner not in _COMBINERS:
            raise ValueError(f"double_hash: combiner must be one of {_COMBINERS}")
        if self.num_buckets is not None and self.num_buckets < 2:
            raise ValueError(f"double_hash: num_buckets must be >= 2, got {self.num_buckets}")


def _width(dim: int, config: DoubleHashConfig) -> int:
    if config.combiner == "concat":
        if dim % 8:
            raise ValueError(f"double_hash concat needs dim % 8 == 0 (FBGEMM), got {dim}")
        return dim // 2
    return dim


class DoubleHashTable(TableMethod):
    """Rows ``h1(x)`` and ``h2(x)``; ``shared``: both in one table of ``num_buckets`` rows."""

    def __init__(
        self, field: str, num_embeddings: int, dim: int, config: DoubleHashConfig, **kw
    ) -> None:
        super().__init__(field, num_embeddings, dim, config, **kw)
        m = int(config.num_buckets)  # type: ignore[arg-type]
        self.shared = config.shared
        self.concat = config.combiner == "concat"
        self.width = _width(dim, config)
        self.rows = [m] if config.shared else [m // 2, m - m // 2]
        self.m0 = self.rows[0]
        self.m1 = self.rows[-1]
        s = field_seed(field, self.seed)
        self.register_buffer("params_", torch.stack([hash_params(s), hash_params(s + 1)]))

    def tables(self) -> list[TableSpec]:
        if self.shared:
            return [TableSpec("", self.rows[0], self.width, lookups=2)]
        return [TableSpec(f":{i}", r, self.width) for i, r in enumerate(self.rows)]

    @classmethod
    def table_bytes(cls, num_embeddings: int, dim: int, config: MethodConfig) -> int:
        return config.num_buckets * _width(dim, config) * BYTES_PER_VALUE + 32

    @classmethod
    def min_bytes(cls, num_embeddings: int, dim: int, config: MethodConfig) -> int:
        return cls.table_bytes(num_embeddings, dim, dataclasses.replace(config, num_buckets=2))

    @classmethod
    def fit_budget(cls, num_embeddings, dim, config, budget_bytes):
        m = (budget_bytes - 32) // (_width(dim, config) * BYTES_PER_VALUE)
        if m < 2:
            raise BudgetError("double_hash needs at least two rows")
        return dataclasses.replace(config, num_buckets=int(min(m, 2 * num_embeddings)))

    def remap(self, ids: torch.Tensor) -> list[torch.Tensor]:
        return [
            universal_hash(ids, self.params_[0], self.m0),
            universal_hash(ids, self.params_[1], self.m1),
        ]

    def decode(self, pooled: list[torch.Tensor]) -> torch.Tensor:
        if self.concat:
            return torch.cat(pooled, dim=-1)  # (B, dim)
        return pooled[0] + pooled[1]


DoubleHashConfig.module = DoubleHashTable
