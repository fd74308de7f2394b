"""Rating regression (MovieLens explicit ratings): MSE loss, RMSE and MAE."""

from __future__ import annotations

from typing import Any

import torch

from reccomp.sparse.batch import Batch
from reccomp.tasks.base import RecTask


class RatingTask(RecTask):
    """Predict ratings; predictions are clipped to the training rating range for evaluation.

    Args:
        l2: weight of an L2 penalty on the pooled embeddings of each example (classic MF
            regularization: only rows in the batch are penalized).
        (others: see :class:`~reccomp.tasks.base.RecTask`.)
    """

    monitor = "val/rmse"
    monitor_mode = "min"

    def __init__(self, *args: Any, l2: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.l2 = l2
        stats = self.schema.stats
        self.low, self.high = (
            float(stats.get("label_min", -1e9)),
            float(stats.get("label_max", 1e9)),
        )
        self._sums: dict[str, torch.Tensor] = {}

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.model(batch.dense, batch.sparse)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        if self.l2 > 0:
            pred, penalty = self.forward_with_penalty(batch.dense, batch.sparse)
        else:
            pred, penalty = self(batch), 0.0
        mse = torch.nn.functional.mse_loss(pred, batch.labels)
        self.log("train/mse", mse, prog_bar=True, batch_size=len(batch))
        return mse + self.l2 * penalty

    def _eval_step(self, batch: Batch, stage: str) -> None:
        n = len(batch) - batch.pad  # padding rows (several ranks) are not scored
        pred = self(batch).clamp(self.low, self.high)[:n]
        err = pred - batch.labels[:n]
        s = self._sums.setdefault(stage, torch.zeros(3, dtype=torch.float64))
        s += torch.stack([err.pow(2).sum(), err.abs().sum(), torch.tensor(float(n))]).double()

    def _eval_end(self, stage: str) -> None:
        s = self._sum_ranks(self._sums.pop(stage, torch.zeros(3, dtype=torch.float64)))
        n = max(s[2].item(), 1.0)
        self.log(f"{stage}/rmse", (s[0] / n).sqrt().float(), prog_bar=True)
        self.log(f"{stage}/mae", (s[1] / n).float())
        self.log(f"{stage}/loss", (s[0] / n).float())
        self.log_memory()

    def predict_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self(batch).clamp(self.low, self.high)
