"""``frequency_hash``: the most frequent ids keep their own rows, the rest share hashed rows.

Frequency comes from the training split (``counts/<field>.npy`` of the prepared data).
Like TorchRec's managed-collision modules in spirit, and the frequency split of Zhang et al.,
"Model Size Reduction Using Frequency Based Double Hashing for Recommender Systems",
RecSys 2020. The kept ids are stored sorted (``kept_``, the smallest int type that holds
them) and found with a binary search, so the id map costs bytes per *kept* id, not per id.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from reccomp.compress.base import (
    BYTES_PER_VALUE,
    BudgetError,
    TableMethod,
    field_seed,
    hash_params,
    index_dtype,
    top_ids,
    universal_hash,
)
from reccomp.compress.registry import MethodConfig, register


@register("frequency_hash")
@dataclass
class FrequencyHashConfig(MethodConfig):
    """Frequent ids apart, the rest hashed (Zhang et al., RecSys 2020).

    Args:
        num_frequent: ids that keep their own row; ``None`` = from the budget.
        num_buckets: shared hashed rows for all other ids; ``None`` = from the budget.
        frequent_share: with a budget, the share of the rows given to frequent ids.
    """

    num_frequent: int | None = None
    num_buckets: int | None = None
    frequent_share: float = 0.5
    size_options: ClassVar[tuple[str, ...]] = ("num_frequent", "num_buckets")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.frequent_share < 1.0:
            raise ValueError("frequency_hash: frequent_share must be in [0, 1)")
        self.require_together("num_frequent", "num_buckets")
        if self.num_buckets is not None and (self.num_buckets < 1 or self.num_frequent < 0):
            raise ValueError("frequency_hash: num_buckets must be >= 1, num_frequent >= 0")


def _id_bytes(num_embeddings: int) -> int:
    return torch.empty((), dtype=index_dtype(num_embeddings)).element_size()


class FrequencyHashTable(TableMethod):
    """Row of id ``x``: its rank among the kept ids if kept, else ``K + hash(x) mod H``."""

    needs_fit = True

    def __init__(
        self, field: str, num_embeddings: int, dim: int, config: FrequencyHashConfig, **kw
    ) -> None:
        super().__init__(field, num_embeddings, dim, config, **kw)
        self.k = int(config.num_frequent)  # type: ignore[arg-type]
        self.h = int(config.num_buckets)  # type: ignore[arg-type]
        self.rows = [self.k + self.h]
        dt = index_dtype(num_embeddings)
        # until fit: the first ids stand in for the frequent ones
        self.register_buffer("kept_", torch.arange(self.k, dtype=dt))
        self.register_buffer("params_", hash_params(field_seed(field, self.seed)))
        self.max_id = torch.iinfo(dt).max

    @classmethod
    def table_bytes(cls, num_embeddings: int, dim: int, config: MethodConfig) -> int:
        rows = config.num_frequent + config.num_buckets
        return rows * dim * BYTES_PER_VALUE + config.num_frequent * _id_bytes(num_embeddings) + 16

    @classmethod
    def min_bytes(cls, num_embeddings: int, dim: int, config: MethodConfig) -> int:
        return dim * BYTES_PER_VALUE + 16

    @classmethod
    def fit_budget(cls, num_embeddings, dim, config, budget_bytes):
        row, idb, share = dim * BYTES_PER_VALUE, _id_bytes(num_embeddings), config.frequent_share
        if budget_bytes < row + 16:  # min_bytes: one hashed row, no kept ids
            raise BudgetError("frequency_hash needs at least one row")
        total = max(int((budget_bytes - 16) // (row + share * idb)), 1)  # rows K + H
        k = min(int(share * total), num_embeddings)
        h = max(total - k, 1)
        while (k + h) * row + k * idb + 16 > budget_bytes:  # rounding: step down
            k, h = (k - 1, h) if k > 0 else (k, h - 1)
        return dataclasses.replace(config, num_frequent=k, num_buckets=h)

    def fit(self, data: Any) -> None:
        counts = np.asarray(data.counts(self.field))
        kept = top_ids(counts, self.k)
        self.kept_.copy_(torch.from_numpy(kept.astype(np.int64)).to(self.kept_.dtype))

    def remap(self, ids: torch.Tensor) -> list[torch.Tensor]:
        hashed = universal_hash(ids, self.params_, self.h) + self.k
        if self.k == 0:
            return [hashed]
        small = ids.clamp(-1, self.max_id).to(self.kept_.dtype)  # same dtype for the search
        pos = torch.searchsorted(self.kept_, small).clamp(max=self.k - 1)
        hit = self.kept_[pos] == small
        return [torch.where(hit, pos, hashed)]

    def decode(self, pooled: list[torch.Tensor]) -> torch.Tensor:
        return pooled[0]


FrequencyHashConfig.module = FrequencyHashTable
