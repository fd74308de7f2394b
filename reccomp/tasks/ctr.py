"""Click-through-rate prediction: binary cross-entropy, AUC and log loss."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from reccomp.metrics import binary_auc
from reccomp.sparse.batch import Batch
from reccomp.tasks.base import RecTask


class CTRTask(RecTask):
    """Predict clicks. Logs AUC and log loss; for synthetic data also the oracle AUC."""

    monitor = "val/auc"
    monitor_mode = "max"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._outs: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.model(batch.dense, batch.sparse)  # (B,) logits

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss = F.binary_cross_entropy_with_logits(self(batch), batch.labels)
        self.log("train/logloss", loss, prog_bar=True, batch_size=len(batch))
        return loss

    def _eval_step(self, batch: Batch, stage: str) -> None:
        n = len(batch) - batch.pad  # padding rows (several ranks) are not scored
        self._outs.setdefault(stage, []).append(
            (self(batch).detach().float()[:n], batch.labels[:n])
        )

    def _eval_end(self, stage: str) -> None:
        outs = self._outs.pop(stage, [])
        if not outs:
            return
        logits = self._cat_ranks(torch.cat([o[0] for o in outs]))
        labels = self._cat_ranks(torch.cat([o[1] for o in outs]))
        logloss = F.binary_cross_entropy_with_logits(logits.double(), labels.double()).item()
        auc = binary_auc(labels.numpy(), logits.numpy())
        self.log(f"{stage}/auc", auc if not math.isnan(auc) else 0.5, prog_bar=True)
        self.log(f"{stage}/logloss", logloss)
        self.log(f"{stage}/loss", logloss)
        oracle = self.schema.stats.get("oracle_auc")
        if stage == "test" and oracle is not None:
            self.log("test/oracle_auc", float(oracle))
        self.log_memory()

    def predict_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return torch.sigmoid(self(batch))
