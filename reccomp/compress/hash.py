"""``hash``: the hashing trick: a seeded universal hash of the id, modulo ``num_buckets`` rows.

Weinberger et al., "Feature Hashing for Large Scale Multitask Learning", ICML 2009; the
standard baseline of embedding compression (e.g. Shi et al., 2020).
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
    field_seed,
    hash_params,
    universal_hash,
)
from reccomp.compress.registry import MethodConfig, register

HASH_PARAM_BYTES = 16  # (a, b) as int64


@register("hash")
@dataclass
class HashConfig(MethodConfig):
    """The hashing trick (Weinberger et al., ICML 2009).

    Args:
        num_buckets: rows of the hashed table; ``None`` = chosen from the budget.
    """

    num_buckets: int | None = None
    size_options: ClassVar[tuple[str, ...]] = ("num_buckets",)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_buckets is not None and self.num_buckets < 1:
            raise ValueError(f"hash: num_buckets must be >= 1, got {self.num_buckets}")


class HashTable(TableMethod):
    """Row of id ``x``: ``((a x + b) mod p) mod num_buckets``, p = 2^31 - 1."""

    def __init__(self, field: str, num_embeddings: int, dim: int, config: HashConfig, **kw) -> None:
        super().__init__(field, num_embeddings, dim, config, **kw)
        assert config.num_buckets is not None
        self.num_buckets = config.num_buckets
        self.rows = [config.num_buckets]
        self.register_buffer("params_", hash_params(field_seed(field, self.seed)))

    @classmethod
    def table_bytes(cls, num_embeddings: int, dim: int, config: MethodConfig) -> int:
        return config.num_buckets * dim * BYTES_PER_VALUE + HASH_PARAM_BYTES

    @classmethod
    def min_bytes(cls, num_embeddings: int, dim: int, config: MethodConfig) -> int:
        return dim * BYTES_PER_VALUE + HASH_PARAM_BYTES

    @classmethod
    def fit_budget(cls, num_embeddings, dim, config, budget_bytes):
        m = (budget_bytes - HASH_PARAM_BYTES) // (dim * BYTES_PER_VALUE)
        if m < 1:
            raise BudgetError("hash needs at least one row")
        # more buckets than ids would only add collisions-free waste
        return dataclasses.replace(config, num_buckets=int(min(m, num_embeddings)))

    def remap(self, ids: torch.Tensor) -> list[torch.Tensor]:
        return [universal_hash(ids, self.params_, self.num_buckets)]

    def decode(self, pooled: list[torch.Tensor]) -> torch.Tensor:
        return pooled[0]


HashConfig.module = HashTable
