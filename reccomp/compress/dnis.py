"""``dnis``: Differentiable Neural Input Search for the width of each frequency block.

Cheng et al., "Differentiable Neural Input Search for Recommender Systems" (arXiv:2006.04466).
Each table's rows are sorted by training frequency into blocks (as in ``mixed_dim``). Two
phases inside one ``reccomp fit`` (see :class:`reccomp.compress.phases.PhaseCallback`):

1. **search** (``search_epochs``): every block is ``dim`` wide and its output is scaled per
   dimension by a soft selection weight ``alpha[b, j]``. Model and tables train on training
   batches; ``alpha`` alone trains on validation batches (first-order bi-level: one Adam
   step on a validation batch after each training step, with the tables' rows held fixed).
2. **prune**: per table, dimensions are kept by ``|alpha|`` (in chunks of 4, the widths
   FBGEMM takes, the best score per byte first) until the table's budget is full; each
   block becomes a TorchRec table holding only its kept columns (real memory saved, not a
   mask) with a projection that puts them back in place scaled by ``alpha``; training
   then continues on the pruned model for the remaining epochs. Checkpoints and the final
   artifact hold only the pruned form; the searched widths are printed per field and block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from reccomp.compress.base import BYTES_PER_VALUE, BudgetError
from reccomp.compress.mixed_dim import (
    MIN_WIDTH,
    FrequencyBlocksConfig,
    MixedDimTable,
    id_map_bytes,
)
from reccomp.compress.registry import MethodConfig, register


@register("dnis")
@dataclass
class DNISConfig(FrequencyBlocksConfig):
    """Differentiable Neural Input Search (Cheng et al., 2020).

    Args:
        blocks: frequency blocks per table.
        growth: block b holds ``growth ** b`` times the rows of block 0.
        target_bytes: this table's bytes after pruning (set from the budget).
        search_epochs: epochs of the search phase; the pruned model trains for the rest
            of ``trainer.max_epochs``.
        alpha_lr: Adam learning rate of the selection weights (validation batches).
    """

    search_epochs: int = 2
    alpha_lr: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.search_epochs < 1:
            raise ValueError(f"dnis: search_epochs must be >= 1, got {self.search_epochs}")
        if self.alpha_lr <= 0:
            raise ValueError(f"dnis: alpha_lr must be > 0, got {self.alpha_lr}")


class DNISTable(MixedDimTable):
    """Search phase: blocks ``dim`` wide, output ``sum_b pooled_b * alpha[b]``; pruned phase:
    ``mixed_dim``'s narrow blocks and stacked projection."""

    __jit_unused_properties__ = ["phase"]  # noqa: RUF012  (TorchScript reads this name)

    def __init__(self, field: str, num_embeddings: int, dim: int, config: DNISConfig, **kw) -> None:
        self.searching = True
        super().__init__(field, num_embeddings, dim, config, **kw)  # type: ignore[arg-type]
        self.search_epochs = int(config.search_epochs)
        self.search_lr = float(config.alpha_lr)

    def _new_proj(self) -> None:
        if self.searching:
            self.widths = [self.dim] * self.k
            self.alpha = nn.Parameter(torch.ones(self.k, self.dim))  # (k, dim) soft selection
            self.register_buffer("proj", torch.zeros(0, self.dim), persistent=False)
            self.stats = {"phase": "search", "block_rows": list(self.rows)}
        else:
            if isinstance(getattr(self, "alpha", None), nn.Parameter):
                del self.alpha
                self.register_buffer("alpha", torch.zeros(0, self.dim), persistent=False)
            if "proj" in self._buffers:
                del self._buffers["proj"]
            self.proj = nn.Parameter(torch.zeros(sum(self.widths), self.dim))
            self.stats = {
                "phase": "pruned",
                "widths": list(self.widths),
                "block_rows": list(self.rows),
            }

    # -- phases -----------------------------------------------------------------------------------
    @property
    def phase(self) -> str:
        return "search" if self.searching else "pruned"

    def set_phase(self, phase: str, widths: list[int]) -> None:
        """Restore a phase (checkpoints): shapes only, the values load next."""
        searching = phase == "search"
        if searching == self.searching and widths == self.widths:
            return
        if not self.searching or searching:
            raise ValueError(f"dnis: {self.field}: cannot go back from {self.phase} to {phase}")
        self.searching = False
        self.widths = list(widths)
        self._new_proj()

    def search_parameters(self) -> list[nn.Parameter]:
        return [self.alpha] if self.searching else []

    def advance(self, weights: list[torch.Tensor]) -> list[torch.Tensor]:
        """Prune: the kept columns of each block's rows (the projection is set here)."""
        alpha = self.alpha.detach().abs()  # (k, dim)
        budget = int(self.config.target_bytes) - id_map_bytes(self.num_embeddings, self.k)
        keep = prune_widths(alpha, self.rows, self.dim, budget)
        if keep is None:
            raise BudgetError(f"dnis: {self.field}: budget below the narrowest blocks")
        signed = self.alpha.detach()
        self.kept_ = keep  # advance_state selects the same columns
        self.searching = False
        self.widths = [len(k) for k in keep]
        self._new_proj()
        with torch.no_grad():
            off = 0
            for b, cols in enumerate(keep):
                idx = torch.tensor(cols, dtype=torch.int64)
                self.proj[off + torch.arange(len(cols)), idx] = signed[b, idx]
                off += len(cols)
        return self.advance_state(weights)  # (n_b, d_b) per block: the kept columns

    def advance_state(self, states: list[torch.Tensor]) -> list[torch.Tensor]:
        """The kept columns of each block's (n_b, dim) tensor (rows, per-element optimizer
        state); per-row state (row-wise Adagrad) stays as it is."""
        out = []
        for s, cols in zip(states, self.kept_, strict=True):
            idx = torch.tensor(cols, dtype=torch.int64, device=s.device)
            out.append(s[:, idx].contiguous() if s.dim() == 2 else s.clone())
        return out

    # -- lookup ---------------------------------------------------------------------------------
    def decode(self, pooled: list[torch.Tensor]) -> torch.Tensor:
        if self.searching:
            out = pooled[0] * self.alpha[0]
            for b in range(1, len(pooled)):
                out = out + pooled[b] * self.alpha[b]  # (..., dim)
            return out
        return torch.cat(pooled, -1) @ self.proj  # (..., sum d_b) @ (sum d_b, dim)

    def fit(self, data: Any) -> None:
        self._fit_order(data)  # widths come from the search

    @classmethod
    def budget_weight(cls, num_embeddings: int, dim: int, config: MethodConfig) -> float:
        return float(num_embeddings * dim * BYTES_PER_VALUE)

    def resize(self, rows: list[int], widths: list[int] | None = None) -> None:
        self.rows = list(rows)  # widths follow the phase (set_phase)


def prune_widths(
    alpha: torch.Tensor, rows: list[int], dim: int, budget: int
) -> list[list[int]] | None:
    """Kept dimensions per block: chunks of 4 dims (largest ``|alpha|`` first) added by score
    per byte while the blocks' rows and projections fit ``budget``; every block keeps >= 4."""
    k = len(rows)
    order = [torch.argsort(alpha[b], descending=True).tolist() for b in range(k)]
    cost = [(r + dim) * MIN_WIDTH * BYTES_PER_VALUE for r in rows]  # bytes of 4 more dims
    kept = [MIN_WIDTH] * k
    used = sum(cost)
    if used > budget:
        return None
    while True:
        best, best_score = -1, -1.0
        for b in range(k):
            if kept[b] + MIN_WIDTH > dim or used + cost[b] > budget:
                continue
            score = float(alpha[b, order[b][kept[b] : kept[b] + MIN_WIDTH]].sum()) / cost[b]
            if score > best_score:
                best, best_score = b, score
        if best < 0:
            break
        kept[best] += MIN_WIDTH
        used += cost[best]
    return [sorted(order[b][: kept[b]]) for b in range(k)]


DNISConfig.module = DNISTable
