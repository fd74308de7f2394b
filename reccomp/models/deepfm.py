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

from reccomp.models.fused import fm_deep
from reccomp.models.layers import _ACTIVATIONS, MLP, FeatureLayout, check_num_dense


class DeepFM(nn.Module):
    """``logit = bias + sum_f w_f + linear(dense) + FM(v_1..v_F) + MLP([e_1..e_F, dense])``.

    ``FM(v) = 0.5 * sum_k ((sum_f v_fk)^2 - sum_f v_fk^2)``, the sum of all pairwise dot
    products between field factors. Dense features enter the first-order term (a linear
    layer) and the deep input, not the FM term. The deep part reads each field's whole row
    ``e_f = [v_f, w_f]`` (the factor and its first-order weight), so it consumes the
    collection's output without copying column slices; its first layer is split into an
    embedding and a dense half, the same map as one layer on their concatenation.

    Args:
        embeddings: collection whose tables all have width ``k + 1`` (``k >= 1``), rows
            ``[v (k), w (1)]``.
        num_dense: number of dense features (0 for none).
        deep_mlp: hidden widths of the deep part; a final ``Linear(-, 1)`` is appended.
            The default is the paper's 400-400-400; empty = a linear deep part.
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
        self.width = width
        self.factor_dim = width - 1  # k
        self.dense_linear = nn.Linear(num_dense, 1, bias=False) if num_dense else None
        sizes = list(deep_mlp)
        first_out = sizes[0] if sizes else 1
        self.deep_emb = nn.Linear(self.num_features * width, first_out)
        self.deep_dense = nn.Linear(num_dense, first_out, bias=False) if num_dense else None
        if sizes:
            act = _ACTIVATIONS[activation]() if activation in _ACTIVATIONS else None
            if act is None:
                raise ValueError(
                    f"unknown activation {activation!r}; choose from {list(_ACTIVATIONS)}"
                )
            rest: list[nn.Module] = [act] + ([nn.Dropout(dropout)] if dropout > 0 else [])
            rest.append(MLP(sizes[0], [*sizes[1:], 1], activation, dropout, last_activation=False))
            self.deep_rest: nn.Module = nn.Sequential(*rest)
        else:
            self.deep_rest = nn.Identity()
        self.bias = nn.Parameter(torch.tensor(float(init_bias)))

    def forward(self, dense: Tensor, sparse: KeyedJaggedTensor) -> Tensor:
        return self.interact(dense, self._layout.values(self.embeddings(sparse)))

    def interact(self, dense: Tensor, values: Tensor) -> Tensor:
        """The dense part: (B, num_dense) and pooled rows (B, F*(k+1)) -> (B,) logits."""
        if torch.jit.is_scripting():
            hidden, z = self._embedding_terms(values)
        else:
            hidden, z = self._embedding_terms_fused(values)
        if self.deep_dense is not None:
            hidden = hidden + self.deep_dense(dense)
            z = z + self.dense_linear(dense).squeeze(1)  # type: ignore[misc]
        deep = self.deep_rest(hidden).squeeze(1)  # (B,)
        return self.bias + z + deep

    def _embedding_terms(self, values: Tensor) -> tuple[Tensor, Tensor]:
        """``(deep_emb(values) (B, h0), FM + first order (B,))``, written with torch ops."""
        rows = values.view(-1, self.num_features, self.width)  # (B, F, k+1)
        summed = rows.sum(dim=1)  # (B, k+1): field sums of factors and first-order weights
        squares = rows.square().sum(dim=1)  # (B, k+1)
        k = self.factor_dim
        fm = 0.5 * (summed[:, :k].square() - squares[:, :k]).sum(dim=1)  # (B,)
        return self.deep_emb(values), fm + summed[:, k]

    @torch.jit.unused
    def _embedding_terms_fused(self, values: Tensor) -> tuple[Tensor, Tensor]:
        """The same terms through one fused autograd node (about half the passes over ``values``)
        when the deep part's first layer is a plain ``nn.Linear`` (``afm`` may factorize it)."""
        if not isinstance(self.deep_emb, nn.Linear):
            return self._embedding_terms(values)
        return fm_deep(values, self.deep_emb.weight, self.deep_emb.bias, self.num_features)
