"""``maestro``: low-rank embeddings trained with ordered dropout, truncatable after training.

Maestro (Horvath et al., "Maestro: Uncovering Low-Rank Structures via Trainable
Decomposition", ICML 2024) trains ``E = A B`` while each sample keeps only a random prefix
of the ranks (ordered dropout): the first ranks learn to carry the most, so after one
training run ``A[:, :k] B[:k]`` is a good model for every k. ``reccomp compress --method
maestro --budget b`` truncates a trained model to the rank that budget allows, without
retraining.

``A`` is an ordinary TorchRec table trained by FBGEMM's fused optimizer, so the optional
hierarchical group lasso acts on the rank rows of the projection ``B`` only (the fused
optimizer updates ``A`` without a loss term on its weights).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reccomp.compress.base import TrainedTable
from reccomp.compress.low_rank import LowRankConfig, LowRankTable
from reccomp.compress.registry import register

PREFIX_SAMPLING = ("uniform", "log", "halving")


@register("maestro")
@dataclass
class MaestroConfig(LowRankConfig):
    """Ordered-dropout low rank (Horvath et al., ICML 2024).

    Args:
        rank: trained rank ``r`` (multiple of 4 below dim); ``None`` = what the budget allows.
        keep_full: probability that a sample keeps all ranks; the others keep a prefix of
            ``4 k`` ranks, k in ``1..r/4`` drawn by ``prefix_sampling`` (prefixes in FBGEMM's
            width steps, the ranks a truncation can keep).
        group_lasso: weight of the hierarchical group lasso ``sum_k ||B[k:]||_F`` that
            drives trailing ranks to zero (0 = off). Default 1e-4: on DeepFM / ml-1m-head
            it is what keeps truncations to r/2, r/4 and r/8 within 0.003 AUC of models
            trained at those ranks (without it the full-rank model comes out overconfident
            and r/8 loses 0.004; see docs/methods.md).
        prefix_sampling: which rank prefixes a sample keeps: ``uniform`` (the paper: every
            ``4 k`` equally likely), ``log`` (``4 k`` with probability ~ ``1 / k``: each
            doubling of the rank about equally often) or ``halving`` (only ``r, r/2, r/4,
            ...`` down to 4, equally likely: the ranks one would truncate to, each trained
            far more often than among all ``r / 4`` prefixes; ranks between them still come
            out ordered, as every sample keeps a prefix).
    """

    keep_full: float = 0.0
    group_lasso: float = 1e-4
    prefix_sampling: str = "uniform"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.keep_full <= 1.0:
            raise ValueError(f"maestro: keep_full must be in [0, 1], got {self.keep_full}")
        if self.group_lasso < 0:
            raise ValueError(f"maestro: group_lasso must be >= 0, got {self.group_lasso}")
        if self.prefix_sampling not in PREFIX_SAMPLING:
            raise ValueError(
                f"maestro: prefix_sampling must be one of {PREFIX_SAMPLING}, "
                f"got {self.prefix_sampling!r}"
            )


class MaestroTable(LowRankTable):
    """:class:`LowRankTable` whose decode masks trailing ranks per sample while training."""

    def __init__(self, field: str, num_embeddings: int, dim: int, config: MaestroConfig, **kw):
        super().__init__(field, num_embeddings, dim, config, **kw)
        self.keep_full = float(config.keep_full)  # plain floats: TorchScript reads these
        self.group_lasso = float(config.group_lasso)
        prob = prefix_probabilities(self.rank, config.prefix_sampling)
        # cumulative probabilities of the prefixes: a sample keeps 4 * (1 + #{cdf < u})
        # ranks (a list, not a buffer: servers don't hold it)
        self.prefix_cdf: list[float] = prob.cumsum(0).tolist()

    def decode_signature(self) -> tuple:
        # one mask rule per group
        return (*super().decode_signature(), self.keep_full, self.config.prefix_sampling)

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        """Training: each sample (and field) keeps a random prefix of the ranks of x (..., r)."""
        if self.training:
            shape = list(x.shape[:-1]) + [1]  # noqa: RUF005  (TorchScript has no [*x, 1])
            u = torch.rand(shape, device=x.device)  # (..., 1)
            cdf = torch.tensor(self.prefix_cdf, device=x.device)  # (r/4,), last ~1
            keep = (((u > cdf).sum(-1, keepdim=True) + 1) * 4).clamp_max(self.rank)  # (..., 1)
            if self.keep_full > 0:
                full = torch.rand(shape, device=x.device) < self.keep_full
                keep = torch.where(full, torch.full_like(keep, self.rank), keep)
            ranks = torch.arange(self.rank, device=x.device)
            x = x * (ranks < keep).to(x.dtype)  # (..., r)
        return x

    def penalty(self) -> torch.Tensor | None:
        lam = self.group_lasso
        if lam == 0:
            return None
        # ||B[k:]||_F for every k: a reversed cumulative sum of squared row norms
        tail = self.proj.pow(2).sum(1).flip(0).cumsum(0).flip(0)  # (r,)
        return lam * tail.clamp_min(1e-12).sqrt().sum()

    def from_trained(self, src: TrainedTable) -> list[torch.Tensor]:
        """Truncation: from a trained Maestro table keep its ``r`` most important ranks
        (importance ``||A[:, k]|| ||B[k]||``; ordered dropout makes them the leading ones),
        from any other table the truncated SVD."""
        if not (isinstance(src.module, MaestroTable) and src.module.rank >= self.rank):
            return super().from_trained(src)
        a, b = src.weights[0], src.module.proj.detach()  # (n, R), (R, d)
        keep = rank_importance(a, b).argsort(descending=True)[: self.rank].sort().values
        a, b = a[:, keep], b[keep]
        with torch.no_grad():
            self.proj.copy_(b)
        return [a.contiguous()]


def prefix_probabilities(rank: int, sampling: str) -> torch.Tensor:
    """(rank/4,) float64 probability that a sample keeps the first ``4 k`` ranks, k = 1..r/4.

    >>> [round(p, 2) for p in prefix_probabilities(16, "halving").tolist()]  # 4, 8, 16
    [0.33, 0.33, 0.0, 0.33]
    """
    k = torch.arange(1, rank // 4 + 1, dtype=torch.float64)
    if sampling == "uniform":
        return torch.ones_like(k) / len(k)
    if sampling == "log":
        return (1.0 / k) / (1.0 / k).sum()
    on = torch.zeros_like(k)
    r = rank
    while r >= 4:  # r, then halves rounded down to FBGEMM's width step of 4
        on[r // 4 - 1] = 1.0
        r = r // 2 // 4 * 4
    return on / on.sum()


def rank_importance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(r,) importance of each rank of ``A`` (n, r) ``B`` (r, d): ``||A[:, k]|| ||B[k]||``."""
    return a.float().norm(dim=0) * b.float().norm(dim=1)


MaestroConfig.module = MaestroTable
