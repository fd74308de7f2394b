"""``mixed_dim``: mixed-dimension embeddings, wide rows for popular ids, narrow for the rest.

Ginart et al., "Mixed Dimension Embeddings with Application to Memory-Efficient Recommendation
Systems" (ISIT 2021, arXiv:1909.11810): a row accessed with probability p gets a dimension
proportional to ``p ** temperature`` and a projection to the common width. Here each table's
rows are sorted by training frequency and cut into ``blocks`` frequency blocks (block b holds
``growth ** b`` times the rows of block 0); block b is a TorchRec table of width ``d_b`` and
an id is looked up only in its own block (:meth:`MixedDimTable.remap_jagged`: the other
blocks' bags are empty). Across tables the budget is split with the same rule, taking each
row of a table with n rows as accessed with probability 1/n (``blocks: 1`` then gives one
dimension per table, as in the paper's per-feature variant).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from reccomp.compress.base import (
    BYTES_PER_VALUE,
    BudgetError,
    TableMethod,
    TableSpec,
    in_range,
    index_dtype,
)
from reccomp.compress.registry import MethodConfig, register

MIN_WIDTH = 4  # FBGEMM widths are multiples of 4


@dataclass
class FrequencyBlocksConfig(MethodConfig):
    """Options shared by the methods that cut each table into frequency blocks (not a
    method itself: ``mixed_dim`` and ``dnis`` extend it).

    Args:
        blocks: frequency blocks per table.
        growth: block b holds ``growth ** b`` times the rows of block 0 (small head blocks).
        target_bytes: the bytes of this table (set from the budget).
    """

    blocks: int = 4
    growth: float = 3.0
    target_bytes: int | None = None
    size_options: ClassVar[tuple[str, ...]] = ("target_bytes",)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.blocks < 1:
            raise ValueError(f"{self.name}: blocks must be >= 1, got {self.blocks}")
        if self.growth < 1.0:
            raise ValueError(f"{self.name}: growth must be >= 1, got {self.growth}")


@register("mixed_dim")
@dataclass
class MixedDimConfig(FrequencyBlocksConfig):
    """Mixed-dimension embeddings (Ginart et al., ISIT 2021).

    Args:
        blocks: frequency blocks per table (1: one dimension per table).
        growth: block b holds ``growth ** b`` times the rows of block 0 (small head blocks).
        target_bytes: the bytes of this table (set from the budget); the widths are chosen
            from the training frequencies to fill it.
        temperature: ``alpha``: dims grow as ``p ** alpha`` with a row's access probability
            (0: every block the same width).
    """

    temperature: float = 0.3

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.temperature <= 1.0:
            raise ValueError(f"mixed_dim: temperature must be in [0, 1], got {self.temperature}")


def block_sizes(n: int, blocks: int, growth: float) -> list[int]:
    """Rows per block, head first, each >= 1, summing to ``n``."""
    k = max(1, min(blocks, n))
    w = np.array([growth**b for b in range(k)])
    sizes = np.maximum(1, np.floor(n * w / w.sum()).astype(int))
    sizes[-1] = n - sizes[:-1].sum()
    return [int(s) for s in sizes]


def id_map_bytes(n: int, k: int) -> int:
    # pos_ (n,) id -> position in frequency order; starts_ (k,) int64
    return n * torch.empty((), dtype=index_dtype(n)).element_size() + 8 * k


def table_bytes_for(rows: list[int], widths: list[int], dim: int) -> int:
    return sum((r + dim) * w for r, w in zip(rows, widths, strict=True)) * BYTES_PER_VALUE


def widths_for(
    rows: list[int], probs: np.ndarray, dim: int, alpha: float, budget: int
) -> list[int] | None:
    """The widest ``d_b = clip(lam * p_b ** alpha)`` (multiples of 4) within ``budget``."""

    def widths(lam: float) -> list[int]:
        raw = lam * probs**alpha
        return [int(min(dim, max(MIN_WIDTH, x // MIN_WIDTH * MIN_WIDTH))) for x in raw]

    if table_bytes_for(rows, widths(0.0), dim) > budget:
        return None
    lo, hi = 0.0, float(dim) / max(float((probs**alpha).min()), 1e-30) + 1.0
    for _ in range(60):  # bisection on the scale: bytes grow with it
        mid = (lo + hi) / 2
        if table_bytes_for(rows, widths(mid), dim) <= budget:
            lo = mid
        else:
            hi = mid
    return widths(lo)


class MixedDimTable(TableMethod):
    """Block b: rows of width ``d_b``; output = ``sum_b pooled_b @ P_b`` (P stacked)."""

    needs_fit = True

    def __init__(
        self, field: str, num_embeddings: int, dim: int, config: MixedDimConfig, **kw
    ) -> None:
        super().__init__(field, num_embeddings, dim, config, **kw)
        self.rows = block_sizes(num_embeddings, config.blocks, config.growth)
        self.k = len(self.rows)
        self.widths = [MIN_WIDTH] * self.k  # until fit decides
        starts = np.concatenate([[0], np.cumsum(self.rows)[:-1]])
        self.register_buffer("starts_", torch.from_numpy(starts.astype(np.int64)))
        # until fit: ids in their own order stand in for the frequency order
        self.register_buffer(
            "pos_", torch.arange(num_embeddings, dtype=index_dtype(num_embeddings))
        )
        self._new_proj()

    def _new_proj(self) -> None:
        g = torch.Generator().manual_seed(self.seed)
        parts = [torch.randn(w, self.dim, generator=g) / w**0.5 for w in self.widths]
        self.proj = nn.Parameter(torch.cat(parts))  # (sum d_b, dim): P_b stacked
        self.stats = {"widths": list(self.widths), "block_rows": list(self.rows)}

    def tables(self) -> list[TableSpec]:
        return [
            TableSpec(f":{b}", r, w)
            for b, (r, w) in enumerate(zip(self.rows, self.widths, strict=True))
        ]

    def decode_signature(self) -> tuple:
        return (*super().decode_signature(), self.field)  # own projection: no shared block

    # -- sizes -----------------------------------------------------------------------------------
    @classmethod
    def table_bytes(cls, num_embeddings: int, dim: int, config: MethodConfig) -> int:
        return int(config.target_bytes)

    @classmethod
    def min_bytes(cls, num_embeddings: int, dim: int, config: MethodConfig) -> int:
        rows = block_sizes(num_embeddings, config.blocks, config.growth)
        return table_bytes_for(rows, [MIN_WIDTH] * len(rows), dim) + id_map_bytes(
            num_embeddings, len(rows)
        )

    @classmethod
    def budget_weight(cls, num_embeddings: int, dim: int, config: MethodConfig) -> float:
        # n rows of access probability 1/n each, width ~ (1/n) ** alpha
        return float(num_embeddings) ** (1.0 - config.temperature) * dim

    @classmethod
    def fit_budget(cls, num_embeddings, dim, config, budget_bytes):
        if budget_bytes < cls.min_bytes(num_embeddings, dim, config):
            raise BudgetError(f"{config.name} needs width >= 4 in every block")
        return dataclasses.replace(config, target_bytes=int(budget_bytes))

    # -- data -------------------------------------------------------------------------------------
    def fit(self, data: Any) -> None:
        probs = self._fit_order(data)
        budget = int(self.config.target_bytes) - id_map_bytes(self.num_embeddings, self.k)
        widths = widths_for(self.rows, probs, self.dim, self.config.temperature, budget)
        if widths is None:
            raise BudgetError(f"mixed_dim: {self.field}: budget below the narrowest blocks")
        self.resize(self.rows, widths)

    def _fit_order(self, data: Any) -> np.ndarray:
        """Put ids in frequency order (``pos_``); (k,) access probability of a block's row."""
        counts = np.asarray(data.counts(self.field), dtype=np.float64)
        order = np.lexsort((np.arange(len(counts)), -counts))  # ids by count desc, then id
        pos = np.empty(len(counts), dtype=np.int64)
        pos[order] = np.arange(len(counts))
        self.pos_.copy_(torch.from_numpy(pos).to(self.pos_.dtype))
        starts = self.starts_.numpy()
        share = np.array(
            [counts[order[s : s + r]].sum() for s, r in zip(starts, self.rows, strict=True)]
        )
        share = (share + 1e-3) / (share.sum() + 1e-3 * self.k)  # unseen blocks stay > 0
        return share / np.array(self.rows)  # (k,) access probability of a row in block b

    def resize(self, rows: list[int], widths: list[int] | None = None) -> None:
        super().resize(rows, widths)
        if widths is not None and list(widths) != self.widths:
            self.widths = list(widths)
            self._new_proj()

    # -- lookup -----------------------------------------------------------------------------------
    def remap(self, ids: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError("mixed_dim looks ids up in one block each: see remap_jagged")

    def remap_jagged(
        self, ids: torch.Tensor, lengths: torch.Tensor
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        pos = self.pos_[in_range(ids, self.num_embeddings)].long()  # (N,) frequency rank
        block = torch.bucketize(pos, self.starts_[1:], right=True)  # (N,) block of each id
        bags = lengths.numel()
        seg = torch.repeat_interleave(torch.arange(bags, device=ids.device), lengths.long())
        out: list[tuple[torch.Tensor, torch.Tensor]] = []
        for b in range(self.k):
            hit = block == b
            lens = torch.bincount(seg[hit], minlength=bags).to(lengths.dtype)  # (B,)
            out.append((pos[hit] - self.starts_[b], lens))
        return out

    def decode(self, pooled: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(pooled, -1) @ self.proj  # (..., sum d_b) @ (sum d_b, dim)


MixedDimConfig.module = MixedDimTable
