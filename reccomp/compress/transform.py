"""Post-training transforms: a trained collection -> a smaller one of another method.

:func:`compress_collection` reads every field of a trained collection as the dense table
the model sees (each id looked up alone, so any method can be the source), optionally with
each row's Fisher importance (:func:`row_importance`), and lets the target method build its
storage rows and parameters from it (:meth:`TableMethod.from_trained`). ``reccomp compress``
wraps this for checkpoints.

Example::

    >>> small = compress_collection(trained.embeddings, schema, spec_svd_025)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from reccomp.compress.base import TrainedTable
from reccomp.compress.collection import (
    CompressedEmbeddingBagCollection,
    build_collection,
    plan_tables,
    storage_name,
)
from reccomp.data.schema import Schema


@torch.no_grad()
def materialize(
    coll: CompressedEmbeddingBagCollection, field: str, chunk: int = 65536
) -> torch.Tensor:
    """(num_embeddings, dim): the embedding of every id of ``field``, each looked up alone."""
    keys = [p.field for p in coll.plans]
    n = next(p.num_embeddings for p in coll.plans if p.field == field)
    was_training = coll.training
    coll.eval()
    out = []
    for start in range(0, n, chunk):
        ids = torch.arange(start, min(n, start + chunk), dtype=torch.int64)  # (b,)
        b = len(ids)
        lengths = torch.cat(
            [torch.ones(b, dtype=torch.int32) if k == field else torch.zeros(b, dtype=torch.int32)
             for k in keys]
        )  # fmt: skip
        kjt = KeyedJaggedTensor(keys=keys, values=ids, lengths=lengths)
        out.append(coll(kjt)[field].detach().float().cpu())  # (b, dim)
    coll.train(was_training)
    return torch.cat(out)


def storage_weights(coll: CompressedEmbeddingBagCollection) -> dict[str, torch.Tensor]:
    """Storage table name -> its (rows, width) weight (a view of the live parameter)."""
    prefix = "embedding_bags."
    return {
        name[len(prefix) : -len(".weight")]: p
        for name, p in coll.storage.named_parameters()
        if name.startswith(prefix)
    }


def optimizer_states(coll: CompressedEmbeddingBagCollection) -> dict[str, list[torch.Tensor]]:
    """Storage table name -> the fused optimizer's state tensors of that table (views of the
    live state, sorted by state name; Adagrad: one (rows, width) or, row-wise, (rows,))."""
    fused = getattr(coll.storage, "fused_optimizer", None)
    if fused is None or not callable(fused):
        # plain EmbeddingBagCollection (serving): no optimizer; a sharded storage holds
        # shards of it (reccomp.distributed.checkpoint reads those)
        return {}
    opt = fused()
    out = {}
    for name, param in opt.params.items():
        state = opt.state.get(param, {})
        out[name[: -len(".weight")]] = [
            state[k] for k in sorted(state) if isinstance(state[k], torch.Tensor)
        ]
    return out


def trained_tables(
    coll: CompressedEmbeddingBagCollection,
    importance: dict[str, torch.Tensor] | None = None,
    counts: dict[str, torch.Tensor] | None = None,
) -> dict[str, TrainedTable]:
    """Every field of a trained collection as a :class:`TrainedTable`."""
    weights = storage_weights(coll)
    out = {}
    for m in coll.tables:
        # a shared table (robe's array) comes whole, for each of its fields
        w = [weights[storage_name(m.field, t)].detach().float().cpu() for t in m.tables()]
        imp = None if importance is None else importance.get(m.field)
        cnt = None if counts is None else counts.get(m.field)
        out[m.field] = TrainedTable(m, w, materialize(coll, m.field), imp, cnt)
    return out


def compress_collection(
    source: CompressedEmbeddingBagCollection,
    schema: Schema,
    spec: Any,
    importance: dict[str, torch.Tensor] | None = None,
    device: torch.device | None = None,
    counts: dict[str, torch.Tensor] | None = None,
) -> CompressedEmbeddingBagCollection:
    """A collection of ``spec.method`` at ``spec.budget`` built from the trained ``source``
    (``importance``: per-row Fisher information; ``counts``: per-row training frequencies,
    for the methods that ask for them)."""
    target = build_collection(schema, spec, device)
    if target.needs_fit:
        raise ValueError(f"{spec.method} learns from the data: train it with reccomp fit")
    src = trained_tables(source, importance, counts)
    weights = storage_weights(target)
    with torch.no_grad():
        for m in target.tables:
            rows = m.from_trained(src[m.field])
            for t, w in zip(m.tables(), rows, strict=True):
                dst = weights[storage_name(m.field, t)]
                if tuple(w.shape) != tuple(dst.shape):
                    raise ValueError(f"{m.field}: {spec.method} gave {tuple(w.shape)} rows, "
                                     f"the table is {tuple(dst.shape)}")  # fmt: skip
                dst.copy_(w.to(dst.device, dst.dtype))
    target.fitted = True
    return target


def needs(schema: Schema, spec: Any, what: str) -> bool:
    """Whether some table of ``spec`` wants ``what`` (``"importance"``: per-row Fisher
    information, ``"counts"``: per-row training frequencies) from the trained model; read
    from the plan, before any table is built."""
    return any(getattr(type(p.config).module, f"needs_{what}") for p in plan_tables(schema, spec))


def row_importance(
    source: CompressedEmbeddingBagCollection,
    swap: Callable[[nn.Module], None],
    loss_fn: Callable[[Any], torch.Tensor],
    batches: Iterable[Any],
    max_batches: int | None = None,
) -> dict[str, torch.Tensor]:
    """Per field, (num_embeddings,) the summed squared gradients of the training loss with
    respect to each row of the dense table (the diagonal Fisher information, summed over
    the row's columns as in Hsu et al., 2022).

    ``swap(module)`` puts a stand-in collection into the model (and back: ``swap(source)``);
    ``loss_fn(batch)`` is the training loss of a batch.
    """
    keys = [p.field for p in source.plans]
    dense = {k: materialize(source, k) for k in keys}
    pool = PoolingType.SUM if source.pooling == "sum" else PoolingType.MEAN
    configs = [
        EmbeddingBagConfig(name=k, embedding_dim=source.dim, num_embeddings=len(dense[k]),
                           feature_names=[k], pooling=pool)
        for k in keys
    ]  # fmt: skip
    plain = EmbeddingBagCollection(tables=configs, device=torch.device("cpu"))
    params = dict(plain.named_parameters())
    with torch.no_grad():
        for k in keys:
            params[f"embedding_bags.{k}.weight"].copy_(dense[k])
    fisher = {k: torch.zeros(len(dense[k]), dtype=torch.float64) for k in keys}
    swap(plain)
    try:
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            plain.zero_grad(set_to_none=True)
            loss_fn(batch).backward()
            for k in keys:
                g = params[f"embedding_bags.{k}.weight"].grad
                if g is not None:
                    fisher[k] += g.double().pow(2).sum(1)  # (n,)
    finally:
        swap(source)
    return {k: v.float() for k, v in fisher.items()}
