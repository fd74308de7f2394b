"""Logistic regression: the CTR baseline without feature interactions.

A category's weight is the sum of its table row. Width 1 would be the textbook form, but
FBGEMM's TBE kernels take widths that are multiples of 4, so a row of width 4 holds the
weight as the sum of 4 entries: still one scalar per category, still no interactions
(a multi-valued bag adds its ids' weights).

Example:
    >>> model = LogisticRegression(ebc, num_dense=13)   # any table width, e.g. 4
    >>> logits = model(dense, kjt)                      # (B,)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchrec.modules.embedding_modules import EmbeddingBagCollectionInterface
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from reccomp.models.layers import FeatureLayout, check_num_dense


class LogisticRegression(nn.Module):
    """``logit = sum_f w_f[x_f] + linear(dense) + bias``.

    Args:
        embeddings: collection of any table widths (each row's sum is its weight).
        num_dense: number of dense features (0 for none).
        init_bias: initial bias, e.g. the log-odds of the training click rate.

    Shapes: ``forward(dense (B, num_dense), sparse KJT of batch B) -> (B,)`` logits.
    """

    def __init__(
        self,
        embeddings: EmbeddingBagCollectionInterface,
        num_dense: int,
        *,
        init_bias: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_dense = check_num_dense(num_dense)
        self.embeddings = embeddings
        self._layout = FeatureLayout(embeddings)
        self.dense_linear = nn.Linear(num_dense, 1, bias=False) if num_dense else None
        self.bias = nn.Parameter(torch.tensor(float(init_bias)))

    def forward(self, dense: Tensor, sparse: KeyedJaggedTensor) -> Tensor:
        logit = self._layout.values(self.embeddings(sparse)).sum(dim=1)  # (B, sum D) -> (B,)
        if self.dense_linear is not None:
            logit = logit + self.dense_linear(dense).squeeze(1)  # (B,)
        return logit + self.bias
