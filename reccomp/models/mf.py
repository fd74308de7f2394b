"""Biased matrix factorization over an embedding collection.

Koren, Bell, Volinsky, "Matrix Factorization Techniques for Recommender Systems",
IEEE Computer 2009: ``r_ui = mu + b_u + b_i + <p_u, q_i>``.

The biases live in the embedding tables themselves so that a compressed collection
compresses them too: the user table and the item table both have width ``d + 1``; a user row
is ``[p_u, b_u]`` and an item row is ``[q_i, b_i]`` (the bias is the **last** column). Only
the global bias ``mu`` is a dense parameter. FBGEMM's TBE kernels (fused/sharded TorchRec
collections) need widths that are multiples of 4, so choose ``d`` = 7, 15, 31, ... there.

Example:
    >>> model = MatrixFactorization(ebc, 0)            # ebc has features "user", "item"
    >>> pred = model(dense, kjt)                       # (B,)
    >>> out = model.forward_with_vectors(dense, kjt)   # for an L2 penalty
    >>> loss = mse(out.prediction, y) + 1e-4 * model.l2_penalty(out.user, out.item)
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from torchrec.modules.embedding_modules import EmbeddingBagCollectionInterface
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from reccomp.models.layers import FeatureLayout, check_num_dense


class MFOutput(NamedTuple):
    """Predictions ``(B,)`` and the pooled rows they came from, ``(B, d+1)`` each."""

    prediction: Tensor
    user: Tensor
    item: Tensor


class MatrixFactorization(nn.Module):
    """Biased MF: ``score = <p_u, q_i> + b_u + b_i + global_bias``.

    Args:
        embeddings: collection holding ``user_feature`` and ``item_feature``, both of width
            ``d + 1`` with ``d >= 1`` (rows ``[factor, bias]``). Other features, if any, are
            looked up by the collection but ignored here.
        num_dense: accepted for the common ``model_factory(embeddings, num_dense)`` signature;
            MF has no dense input and ignores ``dense``.
        user_feature: feature name of the user id.
        item_feature: feature name of the item id.
        init_global_bias: initial global bias (e.g. the mean training rating).

    Shapes: ``forward(dense (B, num_dense), sparse KJT of batch B) -> (B,)``.
    """

    def __init__(
        self,
        embeddings: EmbeddingBagCollectionInterface,
        num_dense: int,
        *,
        user_feature: str = "user",
        item_feature: str = "item",
        init_global_bias: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_dense = check_num_dense(num_dense)
        self.embeddings = embeddings
        self.user_feature = user_feature
        self.item_feature = item_feature
        layout = FeatureLayout(embeddings)
        user_idx, item_idx = layout.index(user_feature), layout.index(item_feature)
        if user_idx == item_idx:
            raise ValueError("user_feature and item_feature must differ")
        width = layout.dims[user_idx]
        if layout.dims[item_idx] != width or width < 2:
            raise ValueError(
                f"MF needs user and item embeddings of the same width d+1 >= 2 "
                f"([factor, bias]); got {user_feature}:{width}, "
                f"{item_feature}:{layout.dims[item_idx]}"
            )
        self._layout = layout
        self._user_offset = layout.offsets[user_idx]
        self._item_offset = layout.offsets[item_idx]
        self.width = width  # d + 1
        self.global_bias = nn.Parameter(torch.tensor(float(init_global_bias)))

    # ---- pooled rows -------------------------------------------------------------------
    def _rows(self, kt: KeyedTensor, offset: int, key: str) -> Tensor:
        if kt.keys() == self._layout.keys:  # TorchRec's order: slice without a lookup
            return kt.values().narrow(1, offset, self.width)  # (B, d+1)
        return kt[key]  # (B, d+1)

    def user_vectors(self, sparse: KeyedJaggedTensor) -> Tensor:
        """Pooled user rows ``[p_u, b_u]``, ``(B, d+1)``."""
        return self._rows(self.embeddings(sparse), self._user_offset, self.user_feature)

    def item_vectors(self, sparse: KeyedJaggedTensor) -> Tensor:
        """Pooled item rows ``[q_i, b_i]``, ``(B, d+1)``.

        To embed a list of items alone, pass a KJT with the ids under the item key and empty
        bags under every other key (see :meth:`lookup_items`): SUM-pooled empty bags are
        zero vectors and are simply not used.
        """
        return self._rows(self.embeddings(sparse), self._item_offset, self.item_feature)

    def _lookup_one(self, ids: Tensor, feature: str, offset: int) -> Tensor:
        # One id per row under `feature`, empty bags elsewhere: (N,) ids -> (N, d+1).
        n = ids.numel()
        lengths = torch.zeros(len(self._layout.keys), n, dtype=torch.int64, device=ids.device)
        lengths[self._layout.index(feature)] = 1  # (F, N), key-major like a KJT
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=self._layout.keys, values=ids.reshape(-1).long(), lengths=lengths.reshape(-1)
        )
        return self._rows(self.embeddings(kjt), offset, feature)  # (N, d+1)

    def lookup_items(self, item_ids: Tensor) -> Tensor:
        """Rows of the given item ids, ``(I,) -> (I, d+1)``, e.g. all items for retrieval.

        Example:
            >>> items = model.lookup_items(torch.arange(num_items))   # (I, d+1)
            >>> scores = model.score_all(model.user_vectors(kjt), items)  # (B, I)
        """
        return self._lookup_one(item_ids, self.item_feature, self._item_offset)

    def lookup_users(self, user_ids: Tensor) -> Tensor:
        """Rows of the given user ids, ``(U,) -> (U, d+1)``."""
        return self._lookup_one(user_ids, self.user_feature, self._user_offset)

    # ---- scores ------------------------------------------------------------------------
    def score_pairs(self, user: Tensor, item: Tensor) -> Tensor:
        """Row-wise scores of matching pairs: ``(B, d+1), (B, d+1) -> (B,)``."""
        dot = (user[:, :-1] * item[:, :-1]).sum(dim=1)  # (B,)
        return dot + user[:, -1] + item[:, -1] + self.global_bias

    def score_all(self, user_vecs: Tensor, item_vecs: Tensor) -> Tensor:
        """Scores of every user against every item: ``(B, d+1), (I, d+1) -> (B, I)``.

        ``score_all(u, v).diagonal() == score_pairs(u, v)`` when ``B == I``.
        """
        dot = user_vecs[:, :-1] @ item_vecs[:, :-1].T  # (B, I)
        return dot + user_vecs[:, -1:] + item_vecs[:, -1].unsqueeze(0) + self.global_bias

    def forward_with_vectors(self, dense: Tensor, sparse: KeyedJaggedTensor) -> MFOutput:
        """Predictions ``(B,)`` plus the pooled user and item rows ``(B, d+1)``.

        ``dense`` is ignored. One collection call serves both features.
        """
        kt = self.embeddings(sparse)
        user = self._rows(kt, self._user_offset, self.user_feature)  # (B, d+1)
        item = self._rows(kt, self._item_offset, self.item_feature)  # (B, d+1)
        return MFOutput(self.score_pairs(user, item), user, item)

    def forward(self, dense: Tensor, sparse: KeyedJaggedTensor) -> Tensor:
        """Rating predictions ``(B,)``; ``dense`` is ignored."""
        return self.forward_with_vectors(dense, sparse).prediction

    @staticmethod
    def l2_penalty(user: Tensor, item: Tensor) -> Tensor:
        """Batch mean of ``||[p_u, b_u]||^2 + ||[q_i, b_i]||^2`` (biases included), a scalar.

        Multiply by a weight decay ``lambda`` in the task's loss; penalising only the rows
        in the batch is the classic SGD form of MF regularization.
        """
        return (user.square().sum(dim=1) + item.square().sum(dim=1)).mean()
