"""``afm``: PCA of each table's output features over the training data (post-training).

Yu et al., "Unified Low-rank Compression Framework for Click-through Rate Prediction"
(KDD 2024): instead of factorizing the weights (SVD), factorize what a layer *outputs* on
real data. For an embedding table the outputs over the training batches are its rows, each
as often as the id occurs, so the PCA is the frequency-weighted one: mean ``mu`` and the top
``k`` eigenvectors ``U_k`` of the weighted covariance. The table becomes ``E U_k`` (a
TorchRec table of width k) and a ``k -> d`` linear layer ``U_k^T`` with bias
``mu (I - U_k U_k^T)``, so a row decodes to ``mu + (e - mu) U_k U_k^T``: exact on the
principal directions of the data, not of the weights. The paper fuses the ``k -> d`` layer
into the first dense layer when nothing sits between them; every reccomp CTR model has an
interaction (FM, dot products, cross layers) right after the embeddings, so it stays.

The bias is added once per looked-up row, so it applies to single-valued fields only (a bag
of several ids would need it times the bag size); multi-valued fields keep ``E U_k U_k^T``.
``reccomp compress --method afm --dense-ratio r`` applies the same PCA to the model's dense
layers (see :mod:`reccomp.compress.dense`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reccomp.compress.base import TrainedTable
from reccomp.compress.low_rank import LowRankConfig, LowRankTable, batched_projection
from reccomp.compress.registry import register


@register("afm")
@dataclass
class AFMConfig(LowRankConfig):
    """Output-feature PCA of each table (Yu et al., KDD 2024).

    Args:
        rank: kept components ``k`` (multiple of 4 below dim); ``None`` = what the budget allows.
    """


class AFMTable(LowRankTable):
    post_training = True
    needs_counts = True

    def __init__(self, field: str, num_embeddings: int, dim: int, config: AFMConfig, **kw) -> None:
        super().__init__(field, num_embeddings, dim, config, **kw)
        self.register_buffer("bias_", torch.zeros(dim))  # (dim,) mu (I - U U^T)

    def from_trained(self, src: TrainedTable) -> list[torch.Tensor]:
        if src.counts is None:
            raise ValueError(
                "afm needs the rows' training frequencies (reccomp compress reads them)"
            )
        e = src.dense.double()  # (n, d)
        c = src.counts.double().clamp_min(0) + 1e-6  # every row a little weight
        w = c / c.sum()  # (n,)
        mu = w @ e  # (d,)
        x = e - mu
        cov = (x * w[:, None]).T @ x  # (d, d) weighted covariance of the outputs
        _, vecs = torch.linalg.eigh(cov)  # ascending eigenvalues
        u = vecs[:, -self.rank :].flip(1)  # (d, k), the leading components first
        with torch.no_grad():
            self.proj.copy_(u.T.float())
            if not self.multi_valued:
                self.bias_.copy_((mu - (mu @ u) @ u.T).float())
        return [(e @ u).float().contiguous()]  # (n, k)

    def decode(self, pooled: list[torch.Tensor]) -> torch.Tensor:
        return pooled[0] @ self.proj + self.bias_  # (..., k) @ (k, dim) + (dim,)

    def group_param(self) -> torch.Tensor:
        return torch.cat([self.proj, self.bias_.unsqueeze(0)])  # (k + 1, dim)

    def decode_group(self, pooled: list[torch.Tensor], params: list[torch.Tensor]) -> torch.Tensor:
        p = torch.stack(params)  # (n, k + 1, dim): projections, then biases
        if torch.jit.is_scripting():
            return torch.bmm(pooled[0].transpose(0, 1), p[:, :-1]).transpose(0, 1) + p[:, -1]
        return batched_projection(pooled[0], p[:, :-1]) + p[:, -1]  # (B, n, dim)


AFMConfig.module = AFMTable
