"""DCN-V2: explicit feature crosses plus a deep MLP.

Wang et al., "DCN V2: Improved Deep & Cross Network and Practical Lessons for Web-scale
Learning to Rank Systems", WWW 2021.

Example:
    >>> model = DCNv2(ebc, 13, num_cross_layers=3, low_rank=32, deep_mlp=[256, 128])
    >>> logits = model(dense, kjt)   # (B,)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchrec.modules.embedding_modules import EmbeddingBagCollectionInterface
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from reccomp.models.layers import MLP, FeatureLayout, check_num_dense

_STRUCTURES = ("stacked", "parallel")


class DCNv2(nn.Module):
    """DCN-V2 on ``x0 = [dense, emb_1, ..., emb_F]`` (embedding widths may differ).

    Cross layer ``l``: ``x_{l+1} = x0 * (W_l x_l + b_l) + x_l``, with ``W_l`` full
    ``(d, d)`` or, if ``low_rank`` is set, ``U_l V_l^T`` with ``U_l, V_l`` of shape ``(d, r)``.
    ``structure="stacked"`` feeds the cross output to the deep MLP; ``"parallel"`` runs the
    deep MLP on ``x0`` and concatenates both outputs. A final ``Linear(-, 1)`` gives the logit.

    Args:
        embeddings: any collection (widths need not match).
        num_dense: number of dense features (0 for none).
        num_cross_layers: number of cross layers (0 gives a plain MLP).
        low_rank: rank r of each cross matrix, or None for full rank.
        deep_mlp: hidden widths of the deep MLP (empty for none).
        structure: ``"stacked"`` or ``"parallel"``.
        activation: activation of the deep MLP.
        dropout: dropout after each deep layer.

    Shapes: ``forward(dense (B, num_dense), sparse KJT of batch B) -> (B,)`` logits.
    """

    def __init__(
        self,
        embeddings: EmbeddingBagCollectionInterface,
        num_dense: int,
        *,
        num_cross_layers: int = 3,
        low_rank: int | None = None,
        deep_mlp: Sequence[int] = (512, 256),
        structure: str = "stacked",
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if structure not in _STRUCTURES:
            raise ValueError(f"structure must be one of {_STRUCTURES}, got {structure!r}")
        if num_cross_layers < 0:
            raise ValueError(f"num_cross_layers must be >= 0, got {num_cross_layers}")
        if low_rank is not None and low_rank <= 0:
            raise ValueError(f"low_rank must be a positive int or None, got {low_rank}")
        self.num_dense = check_num_dense(num_dense)
        self.embeddings = embeddings
        self.structure = structure
        self._layout = FeatureLayout(embeddings)
        in_dim = num_dense + self._layout.total_dim
        self.cross = nn.ModuleList(
            nn.Linear(in_dim, in_dim)
            if low_rank is None
            else nn.Sequential(nn.Linear(in_dim, low_rank, bias=False), nn.Linear(low_rank, in_dim))
            for _ in range(num_cross_layers)
        )
        self.deep = MLP(in_dim, deep_mlp, activation, dropout)
        head_in = self.deep.out_dim + (in_dim if structure == "parallel" else 0)
        self.head = nn.Linear(head_in, 1)

    def forward(self, dense: Tensor, sparse: KeyedJaggedTensor) -> Tensor:
        return self.interact(dense, self._layout.values(self.embeddings(sparse)))

    def interact(self, dense: Tensor, values: Tensor) -> Tensor:
        """The dense part: (B, num_dense) and pooled rows (B, sum of dims) -> (B,) logits."""
        if not self.cross and self.structure == "stacked" and self.num_dense:
            # a plain MLP on x0: its first layer reads the two halves directly, sparing the
            # (B, d) concatenation and the copy of its gradient back into ``values``
            first = self.deep[0] if len(self.deep) else self.head
            if isinstance(first, nn.Linear):
                x = _linear_on_concat(first, dense, values)  # (B, first.out_features)
                if not len(self.deep):
                    return x.squeeze(1)  # (B, 1) -> (B,)
                for layer in list(self.deep)[1:]:
                    x = layer(x)
                return self.head(x).squeeze(1)  # (B, h) -> (B,)
        x0 = values
        if self.num_dense:
            x0 = torch.cat([dense, x0], dim=1)  # (B, d)
        x = x0
        for layer in self.cross:
            x = x0 * layer(x) + x  # (B, d)
        if self.structure == "stacked":
            return self.head(self.deep(x)).squeeze(1)  # (B, h) -> (B,)
        return self.head(torch.cat([x, self.deep(x0)], dim=1)).squeeze(1)  # (B, d+h) -> (B,)


def _linear_on_concat(linear: nn.Linear, dense: Tensor, values: Tensor) -> Tensor:
    """``linear(cat([dense, values], 1))`` without building the concatenation."""
    nd = dense.shape[1]
    w = linear.weight  # (out, nd + d)
    out = values @ w[:, nd:].T  # (B, out)
    out = torch.addmm(out, dense, w[:, :nd].T)
    return out if linear.bias is None else out + linear.bias
