"""Sharding plans for the storage tables of a compressed collection.

A method's storage tables are ordinary TorchRec tables (one ``FusedEmbeddingBagCollection``),
so TorchRec's planner and sharders apply to them unchanged. :func:`plan_storage` builds the
plan of ``embeddings.sharding``:

- ``auto``: TorchRec's ``EmbeddingShardingPlanner`` over the machine's topology (ranks,
  device, memory per rank);
- one sharding type for every table (``table_wise``, ``row_wise``, ``column_wise``,
  ``table_row_wise``), with per-field overrides (``embeddings.tables.FIELD.sharding``).

Every table takes FBGEMM's fused kernel: a plan without it hands the tables to the dense
optimizer, which reccomp keeps them away from, and they would never train.

Example::

    >>> plan = plan_storage(task.model, world_size=2, sharding="row_wise")  # doctest: +SKIP
    >>> describe_plan(plan, task.model)["user"]  # doctest: +SKIP
    {'type': 'row_wise', 'ranks': [0, 1], 'bytes_per_rank': [40960, 40960]}
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.planner.storage_reservations import FixedPercentageStorageReservation
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.distributed.sharding_plan import (
    column_wise,
    construct_module_sharding_plan,
    get_default_sharders,
    row_wise,
    table_row_wise,
    table_wise,
)
from torchrec.distributed.types import ShardingPlan, ShardingType

from reccomp.compress.collection import table_fields
from reccomp.modules.embedding import SHARDING_TYPES

FUSED = EmbeddingComputeKernel.FUSED.value


class ShardingError(ValueError):
    """A sharding request that cannot be met (reported before any training)."""


def storage_path(module: nn.Module) -> tuple[str, nn.Module]:
    """The path and module of the one storage collection inside ``module``.

    Raises :class:`ShardingError` when there is none, or more than one.
    """
    from torchrec.modules.fused_embedding_modules import FusedEmbeddingBagCollection

    found = [
        (n, m) for n, m in module.named_modules() if isinstance(m, FusedEmbeddingBagCollection)
    ]
    if len(found) != 1:
        raise ShardingError(
            f"sharding needs exactly one fused storage collection, found {len(found)}"
        )
    return found[0]


def plan_storage(
    module: nn.Module,
    world_size: int,
    sharding: str = "auto",
    overrides: dict[str, str] | None = None,
    local_world_size: int | None = None,
    device_type: str = "cpu",
    pg: Any = None,
    memory_per_rank: int | None = None,
) -> ShardingPlan:
    """The sharding plan of the storage collection in ``module``.

    Args:
        module: what DistributedModelParallel will wrap (the model).
        world_size: number of ranks.
        sharding: ``auto`` or one of :data:`SHARDING_TYPES` for every table.
        overrides: field -> sharding type (every storage table of that field).
        local_world_size: ranks per node (default: all ranks on one node).
        device_type: ``cpu`` or ``cuda``.
        pg: process group; with it, ``auto`` plans on rank 0 and broadcasts the plan.
        memory_per_rank: bytes each rank may hold (``auto`` only; default: the device's).
    """
    if sharding not in SHARDING_TYPES:
        raise ShardingError(f"embeddings.sharding: unknown {sharding!r}; known: {SHARDING_TYPES}")
    path, storage = storage_path(module)
    local = local_world_size or world_size
    per_table = _table_types(storage, sharding, overrides or {})
    if sharding == "auto" and not any(per_table.values()):
        return _auto_plan(
            module, path, storage, world_size, local, device_type, pg, memory_per_rank
        )
    return ShardingPlan({path: _explicit_plan(storage, per_table, world_size, local, device_type)})


def _table_types(storage: nn.Module, sharding: str, overrides: dict[str, str]) -> dict[str, str]:
    """Storage table name -> sharding type ('' = left to the planner)."""
    configs = storage.embedding_bag_configs()
    unknown = [f for f, t in overrides.items() if t not in SHARDING_TYPES[1:]]
    if unknown:
        raise ShardingError(
            f"embeddings.tables.{unknown[0]}.sharding: unknown {overrides[unknown[0]]!r}; "
            f"known: {SHARDING_TYPES[1:]}"
        )
    out = {}
    for c in configs:
        # a table holds one field's rows, or several fields' (a shared table: robe's array)
        fields = table_fields(c)
        chosen = sorted({overrides[f] for f in fields if f in overrides})
        if len(chosen) > 1:
            raise ShardingError(
                f"fields {fields} share storage table {c.name!r}: give them one sharding, "
                f"got {chosen}"
            )
        out[c.name] = chosen[0] if chosen else ("" if sharding == "auto" else sharding)
    if sharding == "auto" and any(out.values()):
        # overrides with auto: the rest goes table-wise, spread over ranks by size
        out = {t: s or "table_wise" for t, s in out.items()}
    return out


def _explicit_plan(
    storage: nn.Module, per_table: dict[str, str], world: int, local: int, device_type: str
) -> Any:
    sizes = {c.name: c.num_embeddings * c.embedding_dim for c in storage.embedding_bag_configs()}
    widths = {c.name: c.embedding_dim for c in storage.embedding_bag_configs()}
    load = [0] * world
    gens = {}
    # largest first, each table-wise table on the least loaded rank: a balanced default
    for name in sorted(per_table, key=lambda t: -sizes[t]):
        kind = per_table[name]
        if kind == "table_wise":
            rank = min(range(world), key=lambda r: load[r])
            load[rank] += sizes[name]
            gens[name] = table_wise(rank=rank, compute_kernel=FUSED)
        elif kind == "row_wise":
            gens[name] = row_wise(compute_kernel=FUSED)
        elif kind == "column_wise":
            # FBGEMM's shards are multiples of 4 columns: at most width/4 of them
            n = max(1, min(world, widths[name] // 4))
            while widths[name] % n or (widths[name] // n) % 4:
                n -= 1
            gens[name] = column_wise(ranks=list(range(n)), compute_kernel=FUSED)
        elif kind == "table_row_wise":
            if world % local:
                raise ShardingError(f"table_row_wise: {world} ranks are not whole nodes of {local}")
            gens[name] = _fused(table_row_wise(host_index=0))
        else:  # pragma: no cover - _table_types only yields known types
            raise ShardingError(f"unknown sharding {kind!r}")
    gens = {n: gens[n] for n in per_table}  # the module's table order
    return construct_module_sharding_plan(
        storage, gens, local_size=local, world_size=world, device_type=device_type
    )


def _fused(gen: Any) -> Any:
    """A sharding generator whose plan uses the fused kernel (table_row_wise takes none)."""

    def wrapped(*args: Any) -> Any:
        ps = gen(*args)
        ps.compute_kernel = FUSED
        return ps

    return wrapped


def _auto_plan(
    module: nn.Module,
    path: str,
    storage: nn.Module,
    world: int,
    local: int,
    device_type: str,
    pg: Any,
    memory_per_rank: int | None,
) -> ShardingPlan:
    # on CPU the planner offers table-wise and column-wise only (row-wise is declared for
    # CUDA, and data-parallel fused tables crash in DDP on CPU); on GPU every type
    kinds = [ShardingType.TABLE_WISE.value, ShardingType.COLUMN_WISE.value]
    if device_type == "cuda":
        kinds += [ShardingType.ROW_WISE.value, ShardingType.TABLE_ROW_WISE.value]
    # column shards of down to width/ranks columns (TorchRec's default floor is 128, wider
    # than most compressed tables): on CPU that is how a table larger than a rank is split
    constraints = {
        c.name: ParameterConstraints(
            sharding_types=kinds,
            compute_kernels=[FUSED],
            min_partition=_min_columns(c.embedding_dim, world),
        )
        for c in storage.embedding_bag_configs()
    }
    cap = memory_per_rank or _memory_per_rank(device_type, local)
    topo = Topology(
        world_size=world,
        local_world_size=local,
        compute_device=device_type,
        hbm_cap=cap if device_type == "cuda" else None,
        ddr_cap=cap if device_type == "cpu" else None,
    )
    # a fixed reservation: the heuristic one counts the whole model as dense tensors
    planner = EmbeddingShardingPlanner(
        topology=topo,
        constraints=constraints,
        storage_reservation=FixedPercentageStorageReservation(percentage=0.15),
    )
    sharders = get_default_sharders()
    plan = (
        planner.collective_plan(module, sharders, pg)
        if pg is not None
        else planner.plan(module, sharders)
    )
    if path not in plan.plan:
        raise ShardingError("the planner left the storage collection unsharded")
    return plan


def _min_columns(width: int, world: int) -> int:
    """The narrowest column shard: width/world, a multiple of 4 (FBGEMM) dividing width."""
    n = max(4, width // world // 4 * 4)
    while width % n:
        n -= 4
    return max(n, 4)


def _memory_per_rank(device_type: str, local: int) -> int:
    if device_type == "cuda":
        return torch.cuda.get_device_properties(0).total_memory
    import os

    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return pages // max(local, 1)


def describe_plan(plan: ShardingPlan, module: nn.Module) -> dict[str, dict[str, Any]]:
    """Per storage table: its sharding type, its ranks and the bytes each rank holds
    (fp32 weights; the fused optimizer's state comes on top)."""
    path, storage = storage_path(module)
    widths = {c.name: c for c in storage.embedding_bag_configs()}
    out: dict[str, dict[str, Any]] = {}
    for name, ps in plan.plan[path].items():  # type: ignore[union-attr]
        cfg = widths[name]
        ranks = list(ps.ranks or [])
        per_rank = [0] * len(ranks)
        if ps.sharding_spec is not None:
            for i, shard in enumerate(ps.sharding_spec.shards):  # type: ignore[attr-defined]
                rows, cols = shard.shard_sizes
                per_rank[i] = rows * cols * 4
        else:
            per_rank = [cfg.num_embeddings * cfg.embedding_dim * 4] * len(ranks)
        out[name] = {"type": ps.sharding_type, "ranks": ranks, "bytes_per_rank": per_rank}
    return out


def format_plan(desc: dict[str, dict[str, Any]]) -> str:
    """The plan as a few lines for the console."""
    lines = []
    for name, d in desc.items():
        mib = ", ".join(
            f"r{r} {b / 2**20:.2f}" for r, b in zip(d["ranks"], d["bytes_per_rank"], strict=True)
        )
        lines.append(f"  {name}: {d['type']} ({mib} MiB)")
    return "\n".join(lines)
