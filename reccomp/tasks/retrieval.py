"""Retrieval from implicit feedback: BPR or sampled-negative BCE; Recall@K and NDCG@K.

Evaluation ranks every item for each user, leaving out the items the user interacted with
before (training items; training and validation items when testing).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from reccomp.data.schema import NUM_SPECIAL_ROWS
from reccomp.sparse.batch import Batch, RetrievalBatch
from reccomp.tasks.base import RecTask


class RetrievalTask(RecTask):
    """Args:
    loss: ``bpr`` (one sampled negative per positive) or ``bce`` (``num_negatives``
        sampled negatives, binary cross-entropy).
    num_negatives: negatives per positive for ``bce``.
    l2: L2 penalty on the pooled embeddings in the batch.
    ks: cut-offs of Recall@K and NDCG@K; the first of the largest is monitored.
    (others: see :class:`~reccomp.tasks.base.RecTask`.)
    """

    monitor_mode = "max"

    def __init__(
        self,
        *args: Any,
        loss: str = "bpr",
        num_negatives: int = 4,
        l2: float = 0.0,
        ks: list[int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if loss not in ("bpr", "bce"):
            raise ValueError(f"loss must be 'bpr' or 'bce', got {loss!r}")
        for attr in ("user_vectors", "lookup_items", "score_all"):
            if not hasattr(self.model, attr):
                raise ValueError(
                    f"retrieval needs a model with {attr}() (e.g. MatrixFactorization)"
                )
        s = self.schema
        if s.user_field is None or s.item_field is None:
            raise ValueError("retrieval needs user and item fields in the data")
        self.loss_name, self.num_negatives, self.l2 = loss, num_negatives, l2
        self.ks = sorted(ks or [10, 20])
        self.monitor = f"val/ndcg@{self.ks[-1]}"
        self.n_items = s.field(s.item_field).cardinality
        self._sums: dict[str, torch.Tensor] = {}
        self._items: torch.Tensor | None = None

    # -- training ----------------------------------------------------------------------------
    def _with_negatives(self, kjt: KeyedJaggedTensor, k: int) -> KeyedJaggedTensor:
        """Stride (1 + k) B: the batch's (user, item) pairs, then k blocks of (user, random item)."""
        d = kjt.to_dict()
        users = d[self.schema.user_field].values()
        items = d[self.schema.item_field].values()
        neg = torch.randint(
            NUM_SPECIAL_ROWS,
            self.n_items,
            (k * items.shape[0],),
            dtype=items.dtype,
            device=items.device,
        )
        vals = {
            self.schema.user_field: users.repeat(k + 1),
            self.schema.item_field: torch.cat([items, neg]),
        }
        n = users.shape[0] * (k + 1)
        keys = kjt.keys()
        return KeyedJaggedTensor(
            keys=keys,
            values=torch.cat([vals[key] for key in keys]),
            lengths=torch.ones(n * len(keys), dtype=torch.int32, device=users.device),
        )

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        k = 1 if self.loss_name == "bpr" else self.num_negatives
        kjt = self._with_negatives(batch.sparse, k)
        dense = batch.dense.repeat(k + 1, 1)
        if self.l2 > 0:
            scores, penalty = self.forward_with_penalty(dense, kjt)
        else:
            scores, penalty = self.model(dense, kjt), 0.0
        b = len(batch)
        pos, neg = scores[:b], scores[b:].view(k, b)
        if self.loss_name == "bpr":
            loss = -F.logsigmoid(pos - neg[0]).mean()
        else:
            logits = torch.cat([pos, neg.reshape(-1)])
            labels = torch.cat([torch.ones_like(pos), torch.zeros_like(neg.reshape(-1))])
            loss = F.binary_cross_entropy_with_logits(logits, labels)
        self.log("train/loss", loss, prog_bar=True, batch_size=b)
        return loss + self.l2 * penalty

    # -- evaluation --------------------------------------------------------------------------
    def _all_items(self, device: torch.device) -> torch.Tensor:
        """(I, d) vectors of every item row, computed once per evaluation pass."""
        if self._items is None:
            self._items = self.model.lookup_items(torch.arange(self.n_items, device=device))
        return self._items

    def _eval_step(self, batch: RetrievalBatch, stage: str) -> None:
        scores = self.model.score_all(
            self.model.user_vectors(batch.sparse), self._all_items(batch.target.device)
        )
        scores[:, :NUM_SPECIAL_ROWS] = -torch.inf  # OOV / missing rows are not items
        scores = scores.masked_fill(batch.exclude, -torch.inf)  # (B, I)
        top = scores.topk(max(self.ks), dim=1).indices  # (B, K)
        hits = batch.target.gather(1, top).float()  # (B, K)
        n_t = batch.target.sum(1).float()  # (B,)
        discount = 1.0 / torch.log2(torch.arange(2, max(self.ks) + 2, device=hits.device).float())
        rows = []
        n = len(batch) - batch.pad  # padding users (several ranks) are not scored
        for k in self.ks:
            recall = hits[:n, :k].sum(1) / n_t[:n]
            dcg = (hits[:n, :k] * discount[:k]).sum(1)
            ideal = torch.cumsum(discount[:k], 0)[(n_t[:n].clamp(max=k) - 1).long()]
            rows += [recall.sum(), (dcg / ideal).sum()]
        s = self._sums.setdefault(stage, torch.zeros(2 * len(self.ks) + 1, dtype=torch.float64))
        s += torch.stack([*rows, torch.tensor(float(n))]).double().cpu()

    def _eval_end(self, stage: str) -> None:
        self._items = None
        s = self._sums.pop(stage, None)
        if s is None:
            return
        s = self._sum_ranks(s)
        n = max(s[-1].item(), 1.0)
        for j, k in enumerate(self.ks):
            self.log(f"{stage}/recall@{k}", (s[2 * j] / n).float(), prog_bar=k == self.ks[-1])
            self.log(f"{stage}/ndcg@{k}", (s[2 * j + 1] / n).float(), prog_bar=k == self.ks[-1])
        self.log_memory()

    def predict_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self.model(batch.dense, batch.sparse)
