"""DLRM: bottom MLP on dense features, pairwise dot interactions, top MLP.

Naumov et al., "Deep Learning Recommendation Model for Personalization and Recommendation
Systems", arXiv:1906.00091 (2019).

Example:
    >>> model = DLRM(ebc, 13, bottom_mlp=[64], top_mlp=[64, 32])   # all tables width D
    >>> logits = model(dense, kjt)                                 # (B,)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchrec.modules.embedding_modules import EmbeddingBagCollectionInterface
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from reccomp.models.layers import MLP, FeatureLayout, check_num_dense


def _upper_pairs(n: int) -> Tensor:
    """Flat indices of the strict upper triangle of an ``(n, n)`` matrix, ``(n(n-1)/2,)``."""
    rows, cols = torch.triu_indices(n, n, offset=1)
    return rows * n + cols


class DLRM(nn.Module):
    """DLRM with dot interactions.

    With dense features: the bottom MLP maps ``dense -> (B, D)``; the top MLP sees
    ``[bottom_out, dots]`` where ``dots`` are the pairwise dot products among
    ``[bottom_out, emb_1, ..., emb_F]`` (upper triangle, no diagonal). With ``num_dense == 0``
    there is no bottom MLP: the top MLP sees ``[emb_1, ..., emb_F, dots among the embeddings]``.

    Args:
        embeddings: collection whose tables all have the same ``embedding_dim`` D.
        num_dense: number of dense features (0 for none).
        bottom_mlp: hidden widths of the bottom MLP; a last layer of width D is appended
            (every bottom layer has the activation, as in the reference implementation).
        top_mlp: hidden widths of the top MLP; a final ``Linear(-, 1)`` logit is appended.
            Defaults of both follow the paper's Criteo Kaggle configuration.
        activation: activation of both MLPs (see :class:`reccomp.models.layers.MLP`).
        dropout: dropout after each hidden layer of the top MLP.

    Shapes: ``forward(dense (B, num_dense), sparse KJT of batch B) -> (B,)`` logits.
    """

    def __init__(
        self,
        embeddings: EmbeddingBagCollectionInterface,
        num_dense: int,
        *,
        bottom_mlp: Sequence[int] = (512, 256, 64),
        top_mlp: Sequence[int] = (512, 256),
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_dense = check_num_dense(num_dense)
        self.embeddings = embeddings
        self._layout = FeatureLayout(embeddings)
        dim = self._layout.uniform_dim()
        if dim is None:
            raise ValueError(
                "DLRM's dot interactions need every table to have the same embedding_dim, got "
                f"{self._layout.describe()}"
            )
        self.embedding_dim = dim
        self.num_features = self._layout.num_features
        if num_dense:
            self.bottom = MLP(num_dense, [*bottom_mlp, dim], activation)
            n = self.num_features + 1  # bottom output takes part in the interactions
            top_in = dim + n * (n - 1) // 2
        else:
            self.bottom = None
            n = self.num_features
            top_in = n * dim + n * (n - 1) // 2
        self.register_buffer("_pair_index", _upper_pairs(n), persistent=False)
        self.top = nn.Sequential(
            MLP(top_in, top_mlp, activation, dropout),
            nn.Linear(top_mlp[-1] if len(top_mlp) else top_in, 1),
        )

    def forward(self, dense: Tensor, sparse: KeyedJaggedTensor) -> Tensor:
        return self.interact(dense, self._layout.values(self.embeddings(sparse)))

    def interact(self, dense: Tensor, values: Tensor) -> Tensor:
        """The dense part: (B, num_dense) and pooled rows (B, F*D) -> (B,) logits."""
        emb = values.reshape(-1, self.num_features, self.embedding_dim)  # (B, F, D)
        if self.bottom is not None:
            head = self.bottom(dense)  # (B, D)
            stack = torch.cat([head.unsqueeze(1), emb], dim=1)  # (B, F+1, D)
        else:
            head = values  # (B, F*D)
            stack = emb  # (B, F, D)
        gram = torch.bmm(stack, stack.transpose(1, 2))  # (B, n, n)
        dots = gram.flatten(1).index_select(1, self._pair_index)  # (B, n(n-1)/2)
        return self.top(torch.cat([head, dots], dim=1)).squeeze(1)  # (B,)
