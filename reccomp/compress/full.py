"""``full``: the uncompressed table, one row per id: the reference every method is measured by."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reccomp.compress.base import (
    BYTES_PER_VALUE,
    BudgetError,
    TableMethod,
    TrainedTable,
    in_range,
)
from reccomp.compress.registry import MethodConfig, register


@register("full")
@dataclass
class FullConfig(MethodConfig):
    """One row per id, as in TorchRec's ``EmbeddingBagCollection``. No options."""


class FullTable(TableMethod):
    """Ids outside ``[0, num_embeddings)`` go to row 0 (out-of-vocabulary), never raise."""

    def __init__(self, field: str, num_embeddings: int, dim: int, config: FullConfig, **kw) -> None:
        super().__init__(field, num_embeddings, dim, config, **kw)
        self.rows = [num_embeddings]

    @classmethod
    def table_bytes(cls, num_embeddings: int, dim: int, config: MethodConfig) -> int:
        return num_embeddings * dim * BYTES_PER_VALUE

    @classmethod
    def min_bytes(cls, num_embeddings: int, dim: int, config: MethodConfig) -> int:
        return cls.table_bytes(num_embeddings, dim, config)

    @classmethod
    def fit_budget(cls, num_embeddings, dim, config, budget_bytes):
        if budget_bytes < cls.table_bytes(num_embeddings, dim, config):
            raise BudgetError("full cannot compress a table")
        return config

    def remap(self, ids: torch.Tensor) -> list[torch.Tensor]:
        return [in_range(ids, self.num_embeddings)]

    def decode(self, pooled: list[torch.Tensor]) -> torch.Tensor:
        return pooled[0]

    def from_trained(self, src: TrainedTable) -> list[torch.Tensor]:
        return [src.dense]  # tables left uncompressed keep their trained rows


FullConfig.module = FullTable
