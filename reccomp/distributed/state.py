"""A sharded model's state: full tensors in, shards out, and back.

Three operations share one notion of state (the task's ``state_dict`` keys, as one process
has them, plus the fused optimizer's state inside the collection's extra state):

- :func:`load_full_state`: copy an ordinary (one-process) state into a sharded model, each
  rank taking its shards. Used right after DistributedModelParallel (which re-initialises
  the tables it shards) and to load ordinary checkpoints into a sharded run, on any number
  of ranks and any plan.
- :func:`consolidated_state_dict`: gather the shards into an ordinary state on rank 0,
  what ``reccomp test``, ``predict``, ``compress`` and ``export`` read.
- :func:`save_sharded` / :func:`load_sharded`: ``torch.distributed.checkpoint`` (DCP), each
  rank writing its own shards; DCP reshards on load, so another plan or rank count loads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor

from reccomp.distributed.plan import storage_path

_OPT = "optimizer"  # the collection's extra-state entry with the fused optimizer's state


def _collection(model: nn.Module) -> tuple[str, nn.Module]:
    """Path and module of the compressed collection holding the (possibly sharded) storage."""
    from reccomp.compress.collection import CompressedEmbeddingBagCollection

    for name, m in model.named_modules():
        if isinstance(m, CompressedEmbeddingBagCollection):
            return name, m
    raise ValueError("no compressed embedding collection in the model")


def is_sharded(model: nn.Module) -> bool:
    """Whether the collection's storage has been sharded by DistributedModelParallel."""
    from torchrec.distributed.types import ShardedModule

    return isinstance(_collection(model)[1].storage, ShardedModule)


def _copy_full_into(dst: torch.Tensor, src: torch.Tensor) -> None:
    """Copy the full tensor ``src`` into ``dst``: its local shards if sharded."""
    if isinstance(dst, ShardedTensor):
        for shard in dst.local_shards():
            md = shard.metadata
            idx = tuple(
                slice(o, o + s) for o, s in zip(md.shard_offsets, md.shard_sizes, strict=True)
            )
            shard.tensor.detach().copy_(src[idx].to(shard.tensor.device))
    else:
        dst.detach().copy_(src.to(dst.device))


def _fused_states(storage: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """Table -> {state name -> (sharded) tensor} of a sharded storage's fused optimizer."""
    state = storage.fused_optimizer.state_dict()["state"]  # type: ignore[union-attr]
    prefix, suffix = "embedding_bags.", ".weight"
    return {k[len(prefix) : -len(suffix)]: v for k, v in state.items()}


def load_full_state(model: nn.Module, state: dict[str, Any]) -> None:
    """Load an ordinary state dict of ``model`` (one-process keys) into its sharded form."""
    path, coll = _collection(model)
    live = model.state_dict()
    plain = {k: v for k, v in state.items() if not isinstance(live.get(k), ShardedTensor)}
    missing, unexpected = model.load_state_dict(plain, strict=False)
    absent = [k for k in missing if not isinstance(live.get(k), ShardedTensor)]
    if absent or unexpected:
        raise KeyError(f"state does not fit the model: missing {absent}, unexpected {unexpected}")
    for k, v in live.items():
        if isinstance(v, ShardedTensor):
            if k not in state:
                raise KeyError(f"state has no {k}")
            _copy_full_into(v, state[k])
    extra = state.get(f"{path}._extra_state".lstrip("."), {}) or {}
    saved = extra.get(_OPT) or {}
    for table, tensors in _fused_states(coll.storage).items():
        for t, s in zip([tensors[k] for k in sorted(tensors)], saved.get(table, []), strict=False):
            if tuple(t.size()) == tuple(s.shape):
                _copy_full_into(t, s)


def consolidated_state_dict(model: nn.Module) -> dict[str, Any]:
    """The ordinary state dict of a sharded ``model`` on rank 0 ({} on the others).

    Every rank sends its local shards (weights and fused optimizer state) to rank 0 in one
    ``gather_object``: a rank holds only the optimizer state of the tables it owns, so a
    per-tensor collective would not line up across ranks.
    """
    path, coll = _collection(model)
    state = model.state_dict()
    pieces: list[tuple[str, tuple[int, ...], list[int], torch.Tensor]] = []

    def add(key: str, t: torch.Tensor) -> None:
        if isinstance(t, ShardedTensor):
            for sh in t.local_shards():
                pieces.append((key, tuple(t.size()), list(sh.metadata.shard_offsets),
                               sh.tensor.detach().cpu()))  # fmt: skip

    for k, v in state.items():
        add(k, v)
    for table, tensors in _fused_states(coll.storage).items():
        for name in sorted(tensors):
            add(f"{_OPT}/{table}/{name}", tensors[name])
    rank0 = dist.get_rank() == 0
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.gather_object(pieces, everyone if rank0 else None, dst=0)
    if not rank0:
        return {}
    full: dict[str, torch.Tensor] = {}
    for key, size, offsets, t in (p for rank in everyone for p in rank):
        dst = full.setdefault(key, torch.zeros(size, dtype=t.dtype))
        idx = tuple(slice(o, o + n) for o, n in zip(offsets, t.shape, strict=True))
        dst[idx] = t
    out: dict[str, Any] = {}
    for k, v in state.items():
        out[k] = full[k] if isinstance(v, ShardedTensor) else v
    states: dict[str, list[torch.Tensor]] = {}
    for key in sorted(k for k in full if k.startswith(f"{_OPT}/")):
        _, table, _name = key.split("/", 2)
        states.setdefault(table, []).append(full[key])
    extra = f"{path}._extra_state".lstrip(".")
    out[extra] = {**out.get(extra, {}), _OPT: states}
    return out


def save_sharded(model: nn.Module, directory: str | Path) -> None:
    """Write every rank's shards (weights and fused optimizer state) with DCP."""
    import torch.distributed.checkpoint as dcp

    _, coll = _collection(model)
    state = {"model": _tensors(model.state_dict()), "fused": _fused_flat(coll.storage)}
    dcp.save(state, checkpoint_id=str(directory))


def load_sharded(model: nn.Module, directory: str | Path) -> None:
    """Load a DCP checkpoint of :func:`save_sharded` into ``model``, whatever plan or rank
    count wrote it (DCP reads each rank's rows from whichever shards hold them)."""
    import torch.distributed.checkpoint as dcp

    _, coll = _collection(model)
    live = _tensors(model.state_dict())
    fused = _fused_flat(coll.storage)
    state = {"model": live, "fused": fused}
    dcp.load(state, checkpoint_id=str(directory))  # in place: shards are views of the tables
    model.load_state_dict({k: v for k, v in live.items() if not isinstance(v, ShardedTensor)},
                          strict=False)  # fmt: skip
    for table, tensors in _fused_states(coll.storage).items():
        for name, t in tensors.items():
            _copy_local(t, fused[f"{table}/{name}"])


def _tensors(state: dict[str, Any]) -> dict[str, Any]:
    # DCP keeps tensors; the collection's extra state (shapes, fitted flag) is rebuilt from
    # the config on load and its fused-optimizer entry is saved as "fused" below
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _fused_flat(storage: nn.Module) -> dict[str, torch.Tensor]:
    return {f"{t}/{n}": v for t, d in _fused_states(storage).items() for n, v in d.items()}


def _copy_local(dst: torch.Tensor, src: torch.Tensor) -> None:
    if dst is src:
        return
    if isinstance(dst, ShardedTensor):
        for a, b in zip(dst.local_shards(), src.local_shards(), strict=True):  # type: ignore[union-attr]
            a.tensor.detach().copy_(b.tensor)
    else:
        dst.detach().copy_(src)


__all__ = [
    "consolidated_state_dict",
    "is_sharded",
    "load_full_state",
    "load_sharded",
    "save_sharded",
    "storage_path",
]
