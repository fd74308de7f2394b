"""Multi-phase training inside one ``reccomp fit``: the callback that runs a method's search.

:class:`PhaseCallback` is added by the task when its collection has a search phase
(``collection.search_epochs > 0``, e.g. ``dnis``). During the search it takes one Adam step
of the search parameters (``collection.search_parameters()``) on a validation batch after
each training step (first-order bi-level optimization; the tables' rows are not updated by
validation data), and when epoch ``search_epochs`` starts it prunes the collection
(``collection.advance_phase()``), rebuilds the optimizers, prints the searched widths and
resets checkpointing and early stopping so they only ever see the pruned model.

:class:`ReclusterCallback` is added when some table re-clusters itself during training
(``collection.reclusters()``, e.g. ``cce``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint


class PhaseCallback(Callback):
    """Search on validation batches, then prune (see the module docstring)."""

    def __init__(self) -> None:
        self._val: Iterator[Any] | None = None
        self._opt: torch.optim.Optimizer | None = None

    def _next_val(self, trainer: pl.Trainer) -> Any:
        for _ in range(2):
            if self._val is None:
                dm = trainer.datamodule  # type: ignore[attr-defined]
                # training-format batches of validation data (for retrieval, the
                # validation loader yields users to rank instead)
                loader = getattr(dm, "search_dataloader", dm.val_dataloader)
                self._val = iter(loader())
            try:
                return next(self._val)
            except StopIteration:
                self._val = None
        raise RuntimeError("the search phase needs validation batches")

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        coll = pl_module.embeddings
        if not coll.searching:
            return
        params = coll.search_parameters()
        if self._opt is None:
            groups = [
                {"params": m.search_parameters(), "lr": m.search_lr}
                for m in coll.tables
                if m.search_parameters()
            ]
            self._opt = torch.optim.Adam(groups)
        val = self._next_val(trainer).to(pl_module.device)
        self._opt.zero_grad(set_to_none=True)
        coll.detach_storage = True  # validation data must not move the tables' rows
        log = pl_module.log
        pl_module.log = lambda *a, **k: None  # its loss is not the training loss
        try:
            loss = pl_module.training_step(val, batch_idx)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        finally:
            coll.detach_storage = False
            pl_module.log = log
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        self._opt.step()
        pl_module.log("search/val_loss", loss.detach(), on_step=True, on_epoch=False)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        n = pl_module.embeddings.search_epochs
        last = trainer.max_epochs
        if trainer.fast_dev_run:  # a smoke test: one batch of the search phase
            return
        if pl_module.embeddings.searching and last is not None and 0 <= last <= n:
            raise ValueError(
                f"the search phase takes {n} epochs: trainer.max_epochs must be larger "
                f"(got {last}) so the pruned model trains too"
            )

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if pl_module.embeddings.searching:
            trainer.should_stop = False  # early stopping waits for the pruned model

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        # prune at the start of the first epoch after the search (not at the end of the
        # last search epoch: checkpointing saves after that, with the search model's score)
        coll = pl_module.embeddings
        if not coll.searching or trainer.current_epoch < coll.search_epochs:
            return
        report = coll.advance_phase()
        trainer.strategy.setup_optimizers(trainer)
        self._opt = None
        for cb in trainer.callbacks:  # type: ignore[attr-defined]
            if isinstance(cb, ModelCheckpoint):
                for path in list(cb.best_k_models):  # search-phase models are not artifacts
                    trainer.strategy.remove_checkpoint(path)
                cb.best_model_score, cb.best_model_path, cb.best_k_models = None, "", {}
                cb.kth_best_model_path, cb.kth_value = "", _worst(cb.mode)
            if isinstance(cb, EarlyStopping):
                cb.wait_count, cb.best_score = 0, _worst(cb.mode)
        mem = pl_module.embedding_memory()
        print(f"Search done after epoch {trainer.current_epoch - 1}: pruned to "
              f"{mem['embeddings/bytes'] / 2**20:.2f} MiB ({mem['embeddings/ratio']:.3f} of full)")  # fmt: skip
        for r in report:
            if "widths" in r:
                print(f"  {r['field']}: widths {r['widths']} for block rows {r['block_rows']}")


def _worst(mode: str) -> torch.Tensor:
    """The score every result beats (what checkpointing and early stopping start from)."""
    return torch.tensor(float("inf") if mode == "min" else -float("inf"))


class ReclusterCallback(Callback):
    """Periodic re-clustering (``cce``): after each training step the collection's tables
    that are due (:meth:`~reccomp.compress.base.TableMethod.recluster_due`, by Lightning's
    global step, which a resumed run restores) rebuild their rows and id maps from the
    embeddings the model sees now. Storage keeps its shapes, so the optimizers stay as they
    are; the steps at which each field was re-clustered go to its ``describe()`` stats."""

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        coll = pl_module.embeddings
        step = trainer.global_step
        if coll.recluster_due(step):
            coll.recluster(step)
