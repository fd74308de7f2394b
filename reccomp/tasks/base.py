"""The LightningModule shared by all tasks: builds the collection and the model, optimizes.

A task owns the embedding collection (built from the data schema and the ``embeddings:``
config block) and hands it to the model constructor, so the model never knows which
method is inside. Embedding tables are trained by FBGEMM's fused optimizer in the backward
pass; every other parameter by the dense optimizer given in config.

Example (YAML)::

    model:
      class_path: reccomp.tasks.CTRTask
      init_args:
        model: {class_path: reccomp.models.DLRM, init_args: {bottom_mlp: [64]}}
        embeddings: {method: full, dim: 16, optimizer: adagrad, lr: 0.05}
        optimizer: {class_path: torch.optim.Adam, init_args: {lr: 0.001}}
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from torch import nn

from reccomp.compress.data import FitData
from reccomp.data.schema import Schema
from reccomp.modules.embedding import EmbeddingSpec, build_embeddings, full_bytes, memory_bytes

ModelFactory = Callable[[nn.Module, int], nn.Module]
OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]


def _default_optimizer(params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=1e-3)


class RecTask(pl.LightningModule):
    """Base task.

    Args:
        model: the model class with its hyperparameters; called as ``model(embeddings,
            num_dense)``.
        embeddings: the embedding collection's config (method, budget, dim, sparse optimizer).
        optimizer: the dense parameters' optimizer (default Adam, lr 1e-3).
        early_stopping_patience: stop after this many validation epochs without
            improvement of :attr:`monitor` (None: never).
        compile: compile the model's dense part (``model.interact``, everything after the
            embedding lookup) with ``torch.compile``: fewer passes over the (B, F, D)
            activations; costs a compilation of about 30 s at the start (and one per new
            batch shape). The embedding collection stays eager (FBGEMM kernels).
        schema: the data schema, linked from the data module by the CLI.
        low_rank_dense: linear layers of the model (paths) stored as two low-rank layers,
            ``{path: rank}``; written by ``reccomp compress --dense-ratio`` so a compressed
            checkpoint rebuilds from its config.
    """

    monitor: str = "val/loss"
    monitor_mode: str = "min"

    def __init__(
        self,
        model: ModelFactory,
        embeddings: EmbeddingSpec = EmbeddingSpec(),  # noqa: B008  (a frozen-in default, copied)
        optimizer: OptimizerFactory = _default_optimizer,
        early_stopping_patience: int | None = None,
        schema: dict[str, Any] | None = None,
        compile: bool = False,
        low_rank_dense: dict[str, int] | None = None,
    ) -> None:
        super().__init__()
        if type(self) is RecTask:
            raise TypeError("RecTask is a base class: use RatingTask, CTRTask or RetrievalTask")
        if schema is None:
            raise ValueError("a task needs the data schema (the CLI links it from the data module)")
        if isinstance(schema, Schema):
            schema = schema.to_dict()
        embeddings = dataclasses.replace(embeddings)  # never share the default instance
        self.save_hyperparameters(ignore=["model", "optimizer"])
        # plain data in checkpoints: torch.load(weights_only=True) refuses reccomp's classes
        self.hparams["embeddings"] = dataclasses.asdict(embeddings)
        self.hparams["schema"] = schema
        self.schema = Schema.from_dict(schema)
        self.spec = embeddings
        self.optimizer_factory = optimizer
        self.early_stopping_patience = early_stopping_patience
        # the collection lives at one path, model.embeddings (``self.embeddings`` reads it):
        # TorchRec's planner would plan a module reachable at two paths twice
        self.model = model(build_embeddings(self.schema, embeddings), self.schema.num_dense)
        if low_rank_dense:
            from reccomp.compress.dense import factorize_linears

            factorize_linears(self.model, low_rank_dense)
        if compile:
            interact = getattr(self.model, "interact", None)
            if interact is None:
                raise ValueError(f"compile: {type(self.model).__name__} has no interact()")
            self.model.interact = torch.compile(interact)

    @property
    def embeddings(self) -> nn.Module:
        """The embedding collection (``model.embeddings``)."""
        return self.model.embeddings

    def __setattr__(self, name: str, value: Any) -> None:
        # nn.Module would register a module assigned to ``embeddings`` under the task (a
        # second path) before any property setter runs: it goes to the model instead
        if name == "embeddings":
            self.model.embeddings = value
        else:
            super().__setattr__(name, value)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        # checkpoints written before the collection had one path hold it twice
        # (embeddings.* and model.embeddings.*): the second copy is the same tensors
        if any(k.startswith("embeddings.") for k in state_dict):
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith("embeddings.")}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # -- several ranks: each evaluates its share of every batch ---------------------------------
    def _world(self) -> int:
        dist = torch.distributed
        return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1

    def _sum_ranks(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over ranks (itself in one process)."""
        if self._world() > 1:
            t = t.to(self.device, copy=True)  # NCCL reduces device tensors only
            torch.distributed.all_reduce(t)
            t = t.cpu()
        return t

    def _cat_ranks(self, t: torch.Tensor) -> torch.Tensor:
        """The rows of ``t`` of every rank, rank by rank (rows may differ in number)."""
        if self._world() == 1:
            return t
        dist = torch.distributed
        n = torch.tensor([t.shape[0]], device=self.device)
        sizes = [torch.zeros_like(n) for _ in range(self._world())]
        dist.all_gather(sizes, n)
        top = int(max(s.item() for s in sizes))
        padded = torch.zeros((top, *t.shape[1:]), dtype=t.dtype, device=self.device)
        padded[: t.shape[0]] = t
        parts = [torch.zeros_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
        return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes, strict=True)]).cpu()

    # -- data-dependent compression state (frequency ranks, graph clusters) -------------------
    def setup(self, stage: str) -> None:
        emb = self.embeddings
        if not getattr(emb, "needs_fit", False) or getattr(emb, "fitted", True):
            return
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        schema = getattr(dm, "schema", None)
        if schema is None or getattr(schema, "root", None) is None:
            raise ValueError(
                f"embeddings.method {self.spec.method!r} learns from the training data: "
                "run it with a reccomp data module (or call task.embeddings.fit(FitData))"
            )
        t0 = time.perf_counter()
        emb.fit(FitData.from_schema(schema))
        mem = self.embedding_memory()
        print(
            f"Embeddings fitted to the training split in {time.perf_counter() - t0:.1f} s: "
            f"{mem['embeddings/bytes'] / 2**20:.2f} MiB ({mem['embeddings/ratio']:.3f} of full)"
        )

    # -- resume: the same run, not a similar one -----------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        import random

        import numpy as np

        name, keys, pos, has_gauss, gauss = np.random.get_state()
        # plain types and tensors only: checkpoints load with torch.load(weights_only=True)
        checkpoint["rng_states"] = {
            "torch": torch.get_rng_state(),
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
            "python": list(random.getstate()),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        import random

        import numpy as np

        rng = checkpoint.get("rng_states")
        if rng:  # dropout, negative sampling and rank dropout go on as they would have
            torch.set_rng_state(rng["torch"])
            name, keys, pos, has_gauss, gauss = rng["numpy"]
            np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
            version, internal, gauss_next = rng["python"]
            random.setstate((version, tuple(internal), gauss_next))

    # -- memory ------------------------------------------------------------------------------
    def embedding_memory(self) -> dict[str, float]:
        """Bytes of the collection, its ratio to the uncompressed one, and per table."""
        used = memory_bytes(self.embeddings)
        full = full_bytes(self.schema, self.spec)
        out = {"embeddings/bytes": float(used), "embeddings/ratio": used / max(full, 1)}
        per_table = getattr(self.embeddings, "memory_by_table", None)
        if callable(per_table):
            out.update({f"embeddings/bytes/{k}": float(v) for k, v in per_table().items()})
        return out

    def embedding_report(self) -> list[dict[str, Any]]:
        """Per table: method, resolved options, rows, bytes and ratio (for metrics.json)."""
        describe = getattr(self.embeddings, "describe", None)
        return describe() if callable(describe) else []

    # -- optimization ------------------------------------------------------------------------
    def configure_optimizers(self) -> torch.optim.Optimizer:
        # the fused storage updates its own tables in backward: keep them out (a method's
        # dense parameters, e.g. low_rank's projection, go to the dense optimizer)
        storage = getattr(self.embeddings, "storage", self.embeddings)
        sparse = {id(p) for p in storage.parameters()}
        # a search phase's parameters train on validation batches (PhaseCallback)
        search = getattr(self.embeddings, "search_parameters", None)
        sparse |= {id(p) for p in (search() if callable(search) else [])}
        dense = [p for p in self.parameters() if id(p) not in sparse and p.requires_grad]
        if not dense:  # e.g. a model whose only parameters are embeddings
            dense = [nn.Parameter(torch.zeros(1))]
        return self.optimizer_factory(dense)

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        # a method's regularizer (e.g. maestro's group lasso) joins every task's loss here
        fn = getattr(self.embeddings, "penalty", None)
        penalty = fn() if callable(fn) else None
        if penalty is not None:
            self.log("train/penalty", penalty.detach(), on_step=True, on_epoch=False)
            loss = loss + penalty
        super().backward(loss, *args, **kwargs)

    def configure_callbacks(self) -> list[Callback]:
        cbs: list[Callback] = []
        trainer = self._trainer
        if trainer is None or trainer.checkpoint_callback is not None:
            # replace the trainer's checkpointing (unless turned off) with one on our metric
            cbs.append(self._checkpoint())
        if self.early_stopping_patience is not None:
            cbs.append(
                EarlyStopping(
                    self.monitor, patience=self.early_stopping_patience, mode=self.monitor_mode
                )
            )
        if getattr(self.embeddings, "search_epochs", 0) > 0:
            from reccomp.compress.phases import PhaseCallback

            cbs.append(PhaseCallback())  # after EarlyStopping: it may undo its stop
        reclusters = getattr(self.embeddings, "reclusters", None)
        if callable(reclusters) and reclusters():
            from reccomp.compress.phases import ReclusterCallback

            cbs.append(ReclusterCallback())
        return cbs

    def _checkpoint(self) -> ModelCheckpoint:
        return ModelCheckpoint(
            monitor=self.monitor,
            mode=self.monitor_mode,
            save_last=True,
            filename="best-{epoch}",
            auto_insert_metric_name=False,
        )

    def forward_with_penalty(
        self, dense: torch.Tensor, sparse: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predictions (B,) and the L2 penalty of the pooled rows (models such as MF)."""
        fwd = getattr(self.model, "forward_with_vectors", None)
        if fwd is None:
            raise ValueError(
                f"l2 > 0 needs a model with forward_with_vectors(), not {type(self.model).__name__}"
            )
        out = fwd(dense, sparse)
        return out.prediction, self.model.l2_penalty(out.user, out.item)

    # -- evaluation: subclasses accumulate in _eval_step and log in _eval_end ---------------
    def _eval_step(self, batch: Any, stage: str) -> None:
        raise NotImplementedError

    def _eval_end(self, stage: str) -> None:
        raise NotImplementedError

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")

    # -- training time (samples/s in metrics.json and benchmark tables) -----------------------
    def on_train_epoch_start(self) -> None:
        self._epoch_t0 = time.perf_counter()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # sharded: every rank trains on an equal share of the global batch
        world = self.trainer.world_size if self._trainer is not None else 1
        self.train_samples_ = getattr(self, "train_samples_", 0) + len(batch) * world

    def on_train_epoch_end(self) -> None:
        t0 = getattr(self, "_epoch_t0", None)
        if t0 is not None:
            self.train_seconds_ = getattr(self, "train_seconds_", 0.0) + time.perf_counter() - t0

    def training_stats(self) -> dict[str, float]:
        """Seconds spent in training epochs, samples seen, and the parameter count."""
        secs = float(getattr(self, "train_seconds_", 0.0))
        n = int(getattr(self, "train_samples_", 0))
        return {
            "train/seconds": round(secs, 3),
            "train/samples": float(n),
            "train/samples_per_s": round(n / secs, 1) if secs > 0 else 0.0,
            "model/parameters": float(sum(p.numel() for p in self.parameters())),
        }

    def log_memory(self) -> None:
        for k, v in self.embedding_memory().items():
            self.log(k, v, on_step=False, on_epoch=True)
