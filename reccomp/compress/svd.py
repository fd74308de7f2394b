"""Post-training low rank: ``svd`` and ``fwsvd`` turn a trained table into ``E ~ A B``.

Both store ``A = U_r S_r`` (rows in a TorchRec table of width r) and ``B = V_r^T`` (the
projection after pooling), like ``low_rank``; they are built by ``reccomp compress`` from a
trained checkpoint (any method: the table each id sees is factorized) and may then be
fine-tuned. ``fwsvd`` weights each row's reconstruction error by its Fisher information
(accumulated squared gradients of the training loss), so frequent, influential rows are kept
more exactly than rows the data hardly touches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reccomp.compress.base import TrainedTable
from reccomp.compress.low_rank import LowRankConfig, LowRankTable
from reccomp.compress.registry import register


@register("svd")
@dataclass
class SVDConfig(LowRankConfig):
    """Truncated SVD of each trained table (the classic post-training baseline; e.g.
    Ghaemmaghami et al., "Training with Multi-Layer Embeddings for Model Reduction", 2020).

    Args:
        rank: kept rank ``r`` (multiple of 4 below dim); ``None`` = what the budget allows.
    """


class SVDTable(LowRankTable):
    post_training = True

    # from_trained: low_rank's truncated SVD of the trained table


@register("fwsvd")
@dataclass
class FWSVDConfig(LowRankConfig):
    """Fisher-weighted SVD (Hsu et al., "Language model compression with weighted low-rank
    factorization", ICLR 2022): row i's error weighs its summed squared gradients.

    Args:
        rank: kept rank ``r`` (multiple of 4 below dim); ``None`` = what the budget allows.
        importance_batches: training batches the Fisher information is summed over
            (``None``: one pass over the training split).
    """

    importance_batches: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.importance_batches is not None and self.importance_batches < 1:
            raise ValueError(
                f"fwsvd: importance_batches must be >= 1, got {self.importance_batches}"
            )


class FWSVDTable(SVDTable):
    needs_importance = True

    def row_weight(self, src: TrainedTable) -> torch.Tensor | None:
        if src.importance is None:
            raise ValueError(
                "fwsvd needs the rows' Fisher importance (reccomp compress computes it)"
            )
        return src.importance


SVDConfig.module = SVDTable
FWSVDConfig.module = FWSVDTable
