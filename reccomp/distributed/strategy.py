"""``--trainer.strategy torchrec``: Lightning training on TorchRec's DistributedModelParallel.

Lightning has no TorchRec strategy, and its DDP strategy would wrap the model a second time.
:class:`TorchRecStrategy` is a ``DDPStrategy`` (process groups, torchrun, barriers, the
rank-0 logger) that shards instead of wrapping:

- ``setup``: the model's storage collection is planned (``embeddings.sharding``) and sharded
  by DistributedModelParallel; the state taken before (seeded init, a loaded checkpoint,
  the fused optimizer's sums) is copied into the shards, since DMP re-initialises them.
- backward: sharded tables are updated by FBGEMM's fused optimizer inside the backward
  pass (their gradients arrive by all-to-all); every other gradient is averaged over ranks
  in one all-reduce, as DDP would.
- checkpoints: every rank writes its shards with DCP (``NAME.dcp/``) and rank 0 writes the
  consolidated ordinary ``NAME.ckpt``, which the rest of reccomp reads unchanged and which
  loads into any plan or rank count.

Launch::

    torchrun --standalone --nproc_per_node 2 -m reccomp fit --config configs/X.yaml \\
        --trainer.strategy torchrec --model.embeddings.sharding row_wise
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.fabric.utilities.optimizer import _optimizers_to_device
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn

from reccomp.distributed.plan import ShardingError, describe_plan, format_plan, plan_storage
from reccomp.distributed.state import (
    _collection,
    consolidated_state_dict,
    is_sharded,
    load_full_state,
    save_sharded,
)


class TorchRecStrategy(DDPStrategy):
    """DDP processes whose embedding storage is sharded by TorchRec (see module docstring).

    Args:
        save_sharded: also write each checkpoint's shards with DCP (``NAME.dcp/``).
        (others: those of Lightning's ``DDPStrategy``.)
    """

    strategy_name = "torchrec"

    def __init__(self, save_sharded: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.save_sharded = save_sharded
        self.sharding_: dict[str, dict[str, Any]] = {}
        self.dmp_: Any = None

    # -- processes -----------------------------------------------------------------------------
    def setup_environment(self) -> None:
        super().setup_environment()
        from reccomp.console import is_verbose

        if self.global_rank != 0 and not is_verbose():
            # one voice: rank 0 prints what a user needs; the others only their errors
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (lives as long as the process)

    # -- sharding ------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer) -> None:
        assert self.accelerator is not None and self.model is not None
        self.accelerator.setup(trainer)
        task = self.lightning_module
        if not is_sharded(task.model):  # a later validate/test on the same trainer: done
            self.model_to_device()
            self.dmp_, self.sharding_ = shard_model(
                task, self.root_device, self.world_size, self.local_world()
            )
            print(f"Sharding over {self.world_size} ranks:\n{format_plan(self.sharding_)}")
        if trainer.state.fn == TrainerFn.FITTING:
            self.setup_optimizers(trainer)
        self.setup_precision_plugin()
        if trainer.state.fn == TrainerFn.FITTING:
            _optimizers_to_device(self.optimizers, self.root_device)

    def local_world(self) -> int:
        return int(os.environ.get("LOCAL_WORLD_SIZE", self.world_size))

    def configure_ddp(self) -> None:  # DMP shards the tables; dense gradients: post_backward
        pass

    def post_backward(self, closure_loss: torch.Tensor) -> None:
        average_gradients(self.lightning_module.parameters())

    # -- checkpoints ---------------------------------------------------------------------------
    def lightning_module_state_dict(self) -> dict[str, Any]:
        return consolidated_state_dict(self.lightning_module)

    def load_model_state_dict(self, checkpoint: dict[str, Any], strict: bool = True) -> None:
        task = self.lightning_module
        state = checkpoint["state_dict"]
        if is_sharded(task.model):
            load_full_state(task, state)
        else:
            task.load_state_dict(state, strict=strict)

    def save_checkpoint(
        self, checkpoint: dict[str, Any], filepath: _PATH, storage_options: Any = None
    ) -> None:
        if self.save_sharded:
            save_sharded(self.lightning_module, sharded_path(filepath))
        super().save_checkpoint(checkpoint, filepath, storage_options)

    def remove_checkpoint(self, filepath: _PATH) -> None:
        super().remove_checkpoint(filepath)
        if self.is_global_zero:
            shutil.rmtree(sharded_path(filepath), ignore_errors=True)


def average_gradients(params: Any) -> None:
    """Average the gradients of ``params`` over ranks in one all-reduce (what DDP does for
    the dense layers; the sharded tables' fused update has already happened)."""
    grads = [p.grad for p in params if p.grad is not None]
    world = dist.get_world_size()
    if not grads or world == 1:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])  # (sum of numel,)
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def sharded_path(filepath: _PATH) -> Path:
    """``checkpoints/last.ckpt`` -> ``checkpoints/last.dcp`` (its DCP directory)."""
    return Path(filepath).with_suffix(".dcp")


def shard_model(
    task: Any, device: torch.device, world_size: int, local_world_size: int
) -> tuple[Any, dict[str, dict[str, Any]]]:
    """Shard ``task.model`` by ``task.spec`` (see :func:`shard_module`)."""
    return shard_module(task.model, task.spec, device, world_size, local_world_size)


def shard_module(
    model: nn.Module, spec: Any, device: torch.device, world_size: int, local_world_size: int
) -> tuple[Any, dict[str, dict[str, Any]]]:
    """Plan (``spec.sharding``, ``spec.tables``) and shard the storage inside ``model`` in
    place. Returns the DistributedModelParallel (kept by the caller, not registered in the
    model: one path to every module) and the plan per table
    (:func:`~reccomp.distributed.plan.describe_plan`)."""
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.sharding_plan import get_default_sharders
    from torchrec.distributed.types import ShardingEnv

    _, coll = _collection(model)
    refuse_unshardable(coll)
    same_fit_everywhere(coll)
    overrides = {f: o["sharding"] for f, o in spec.tables.items() if "sharding" in o}
    plan = plan_storage(
        model,
        world_size,
        spec.sharding,
        overrides,
        local_world_size=local_world_size,
        device_type=device.type,
        pg=dist.group.WORLD,
    )
    desc = describe_plan(plan, model)
    before = model.state_dict()  # DMP re-initialises what it shards: keep this
    dmp = DistributedModelParallel(
        model,
        env=ShardingEnv.from_process_group(dist.group.WORLD),
        device=device,
        plan=plan,
        sharders=get_default_sharders(),
        init_data_parallel=False,  # dense gradients: TorchRecStrategy.post_backward
    )
    load_full_state(model, before)
    return dmp, desc


def refuse_unshardable(coll: nn.Module) -> None:
    """Methods that cannot train sharded say so before training."""
    if getattr(coll, "search_epochs", 0) > 0:
        names = sorted({m.config.name for m in coll.tables if m.search_epochs > 0})
        raise ShardingError(
            f"{', '.join(names)} rebuilds its storage tables between its search and training "
            "phases, which a sharded model cannot follow: train it in one process"
        )
    if not getattr(coll, "_has_storage", True):
        names = sorted({m.config.name for m in coll.tables})
        raise ShardingError(
            f"{', '.join(names)}: no field of this collection has a storage table, so there "
            "is nothing to shard: train it in one process"
        )
    if getattr(coll, "post_training", False):
        raise ShardingError("post-training methods are built by reccomp compress, not trained")
    reclusters = getattr(coll, "reclusters", None)
    if callable(reclusters) and reclusters():
        names = sorted({m.config.name for m in coll.tables if m.recluster_every > 0})
        raise ShardingError(
            f"{', '.join(names)} re-clusters its tables during training from every id's "
            "embedding, which needs all rows in one place (a sharded table holds a part of "
            "them on each rank): train it in one process"
        )


def same_fit_everywhere(coll: nn.Module) -> None:
    """Data-dependent state (frequency ranks, clusters, block sizes) is computed by every
    rank from the same cache, deterministically; check that it came out the same."""
    h = hashlib.sha256()
    for name, b in sorted(coll.named_buffers()):
        if ".storage." in f".{name}":
            continue
        h.update(name.encode())
        h.update(b.detach().cpu().contiguous().numpy().tobytes())
    h.update(repr(coll._shapes()).encode())
    mine = int.from_bytes(h.digest()[:7], "little")
    got = [None] * dist.get_world_size()
    dist.all_gather_object(got, mine)
    if len(set(got)) > 1:
        raise ShardingError(
            "the data-dependent fit differs across ranks (do all ranks read the same cache?)"
        )


StrategyRegistry.register(
    "torchrec", TorchRecStrategy, description="TorchRec DistributedModelParallel (reccomp)"
)
