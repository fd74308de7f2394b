"""DeepFM: a factorization machine and a deep MLP sharing the same field embeddings.

Guo et al., "DeepFM: A Factorization-Machine based Neural Network for CTR Prediction",
IJCAI 2017.

Table layout: every field has **one** table of width ``k + 1``; the first ``k`` columns are
the FM factor ``v_f`` and the **last** column is the first-order weight ``w_f``. Keeping both
in one table means a compressed collection compresses both and one lookup serves both. FBGEMM's TBE kernels (fused/sharded TorchRec
collections) need widths that are multiples of 4, so choose ``k`` = 3, 7, 15, ... there.

Example:
    >>> model = DeepFM(ebc, 13, deep_mlp=[64, 32])   # all tables width k+1
    >>> logits = model(dense, kjt)                   # (B,)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchrec.modules.embedding_modules import EmbeddingBagCollectionInterface
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from reccomp.models.layers import MLP, FeatureLayout, check_num_dense


class DeepFM(nn.Module):
    """``logit = bias + sum_f w_f + linear(dense) + FM(v_1..v_F) + MLP([v_1..v_F, dense])``.

    ``FM(v) = 0.5 * sum_k ((sum_f v_fk)^2 - sum_f v_fk^2)``, the sum of all pairwise dot
    products between field factors. Dense features enter the first-order term (a linear
    layer) and the deep input, not the FM term.

    Args:
        embeddings: collection whose tables all have width ``k + 1`` (``k >= 1``), rows
            ``[v (k), w (1)]``.
        num_dense: number of dense features (0 for none).
        deep_mlp: hidden widths of the deep part; a final ``Linear(-, 1)`` is appended.
            The default is the paper's 400-400-400.
        activation: activation of the deep part.
        dropout: dropout after each hidden layer of the deep part.
        init_bias: initial global bias, e.g. the log-odds of the training click rate.

    Shapes: ``forward(dense (B, num_dense), sparse KJT of batch B) -> (B,)`` logits.
    """

    def __init__(
        self,
        embeddings: EmbeddingBagCollectionInterface,
        num_dense: int,
        *,
        deep_mlp: Sequence[int] = (400, 400, 400),
        activation: str = "relu",
        dropout: float = 0.0,
        init_bias: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_dense = check_num_dense(num_dense)
        self.embeddings = embeddings
        self._layout = FeatureLayout(embeddings)
        width = self._layout.uniform_dim()
        if width is None or width < 2:
            raise ValueError(
                "DeepFM needs every table to have the same width k+1 >= 2 (k FM factors plus "
                f"one first-order weight), got {self._layout.describe()}"
            )
        self.num_features = self._layout.num_features
        self.factor_dim = width - 1  # k
        self.dense_linear = nn.Linear(num_dense, 1, bias=False) if num_dense else None
        deep_in = self.num_features * self.factor_dim + num_dense
        self.deep = nn.Sequential(
            MLP(deep_in, deep_mlp, activation, dropout),
            nn.Linear(deep_mlp[-1] if len(deep_mlp) else deep_in, 1),
        )
        self.bias = nn.Parameter(torch.tensor(float(init_bias)))

    def forward(self, dense: Tensor, sparse: KeyedJaggedTensor) -> Tensor:
        values = self._layout.values(self.embeddings(sparse))  # (B, F*(k+1))
        rows = values.reshape(-1, self.num_features, self.factor_dim + 1)  # (B, F, k+1)
        factors = rows[..., :-1]  # (B, F, k)
        first = rows[..., -1].sum(dim=1)  # (B,)
        summed = factors.sum(dim=1)  # (B, k)
        fm = 0.5 * (summed.square() - factors.square().sum(dim=1)).sum(dim=1)  # (B,)
        deep_in = factors.reshape(factors.shape[0], -1)  # (B, F*k)
        if self.dense_linear is not None:
            first = first + self.dense_linear(dense).squeeze(1)
            deep_in = torch.cat([deep_in, dense], dim=1)  # (B, F*k + num_dense)
        deep = self.deep(deep_in).squeeze(1)  # (B,)
        return self.bias + first + fm + deep
