"""``graph_hash`` and ``double_graph_hash``: ids share the row of their graph cluster.

Wu et al., "GraphHash: Graph Clustering Enables Parameter Efficiency in Recommender
Systems", WWW 2025. The bipartite user-item graph of the *training split* is clustered by
modularity (:mod:`reccomp.compress.graph`); each user and each item takes its cluster's row
of the user or item table, so ids that interact with the same things share parameters (a
cheap stand-in for message passing). ``double_graph_hash`` adds a universal-hash row to the
cluster row (the paper's DoubleGraphHash, better for CTR). Ids absent from the training graph
(and out-of-range ids) fall back to hashing. Only the schema's user and item fields are
clustered; other fields use ``fallback`` (default ``hash``).

The budget sets the rows: the clustering is searched for at most as many user + item
clusters as the two tables' rows allow, then each table is sized to its own cluster count,
so the achieved memory is at or a few percent under the target.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from reccomp.compress.base import (
    BYTES_PER_VALUE,
    BudgetError,
    TableMethod,
    TableSpec,
    field_seed,
    hash_params,
    index_dtype,
    universal_hash,
)
from reccomp.compress.registry import MethodConfig, register


@register("graph_hash")
@dataclass
class GraphHashConfig(MethodConfig):
    """GraphHash (Wu et al., WWW 2025).

    Args:
        num_clusters: rows of this field's table; ``None`` = from the budget. The search
            aims at the user and item tables' rows together.
        fields: the two single-valued fields whose co-occurrence in training rows is the
            graph; ``None`` = the data set's user and item fields.
        edges: the graph's edges on CTR data: ``positive`` (clicked rows only), ``all``
            rows, or ``auto`` (= ``positive``); retrieval and rating data use every row.
        fallback: method of the fields that are neither the user nor the item field.
        fallback_options: that method's options.
        seed: Leiden's seed.
        tolerance: the clustering stops once its count is within this share under target.
    """

    num_clusters: int | None = None
    fields: list[str] | None = None
    edges: str = "auto"
    fallback: str = "hash"
    fallback_options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    tolerance: float = 0.05
    size_options: ClassVar[tuple[str, ...]] = ("num_clusters",)
    graph_fields: ClassVar[bool] = True  # only user/item fields; others use the fallback
    hash_rows: ClassVar[bool] = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_clusters is not None and self.num_clusters < 1:
            raise ValueError(f"{self.name}: num_clusters must be >= 1")
        if not 0 < self.tolerance < 1:
            raise ValueError(f"{self.name}: tolerance must be in (0, 1)")
        if self.fields is not None and (len(self.fields) != 2 or self.fields[0] == self.fields[1]):
            raise ValueError(f"{self.name}: fields must name two different fields")
        if self.edges not in ("auto", "positive", "all"):
            raise ValueError(f"{self.name}: edges must be 'auto', 'positive' or 'all'")
        if self.fallback in ("graph_hash", "double_graph_hash"):
            raise ValueError(f"{self.name}: fallback must be a method that needs no graph")


@register("double_graph_hash")
@dataclass
class DoubleGraphHashConfig(GraphHashConfig):
    """DoubleGraphHash (Wu et al., WWW 2025): cluster row + universal-hash row, summed.

    Args:
        num_buckets: rows of the hashed table; ``None`` = ``hash_share`` of the budget.
        hash_share: with a budget, the share of the rows given to the hashed table.
    """

    num_buckets: int | None = None
    hash_share: float = 0.5
    size_options: ClassVar[tuple[str, ...]] = ("num_clusters", "num_buckets")
    hash_rows: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.hash_share < 1:
            raise ValueError("double_graph_hash: hash_share must be in (0, 1)")
        if (self.num_clusters is None) != (self.num_buckets is None):
            raise ValueError("double_graph_hash: give num_clusters and num_buckets, or neither")


def _map_bytes(num_embeddings: int, rows: int) -> int:
    return num_embeddings * torch.empty((), dtype=index_dtype(rows)).element_size()


class GraphHashTable(TableMethod):
    """Row of id ``x``: ``map_[x]`` (its cluster, or its hash if absent from the graph)."""

    needs_fit = True

    def __init__(
        self, field: str, num_embeddings: int, dim: int, config: GraphHashConfig, **kw
    ) -> None:
        super().__init__(field, num_embeddings, dim, config, **kw)
        self.double = type(config).hash_rows
        self.clusters = int(config.num_clusters)  # type: ignore[arg-type]
        self.buckets = int(config.num_buckets) if self.double else 1  # type: ignore[attr-defined]
        self.rows = [self.clusters, self.buckets] if self.double else [self.clusters]
        s = field_seed(field, self.seed)
        self.register_buffer("params_", torch.stack([hash_params(s), hash_params(s + 1)]))
        # until fit: every id hashed into the cluster table
        ids = torch.arange(num_embeddings)
        init = universal_hash(ids, self.params_[0], self.clusters)
        self.register_buffer("map_", init.to(index_dtype(self.clusters)))
        self.stats: dict[str, float] = {}

    def tables(self) -> list[TableSpec]:
        if self.double:
            return [
                TableSpec(":g", self.clusters, self.dim),
                TableSpec(":h", self.buckets, self.dim),
            ]
        return [TableSpec("", self.clusters, self.dim)]

    @classmethod
    def table_bytes(cls, num_embeddings: int, dim: int, config: MethodConfig) -> int:
        rows = config.num_clusters + (config.num_buckets if type(config).hash_rows else 0)
        return rows * dim * BYTES_PER_VALUE + _map_bytes(num_embeddings, config.num_clusters) + 32

    @classmethod
    def min_bytes(cls, num_embeddings: int, dim: int, config: MethodConfig) -> int:
        rows = 2 if type(config).hash_rows else 1
        return rows * dim * BYTES_PER_VALUE + _map_bytes(num_embeddings, 1) + 32

    @classmethod
    def fit_budget(cls, num_embeddings, dim, config, budget_bytes):
        row = dim * BYTES_PER_VALUE
        # the map is int16 while the rows fit in it, else int32
        rows = (budget_bytes - 32 - _map_bytes(num_embeddings, 1)) // row
        if rows >= 2**15:
            rows = max((budget_bytes - 32 - _map_bytes(num_embeddings, 2**15)) // row, 2**15 - 1)
        if rows < (2 if type(config).hash_rows else 1):
            raise BudgetError(f"{config.name} needs an id map of {num_embeddings} entries")
        rows = int(rows)
        rows = min(rows, num_embeddings)
        kw: dict[str, Any] = {"num_clusters": rows}
        if type(config).hash_rows:
            kw["num_buckets"] = max(1, int(rows * config.hash_share))
            kw["num_clusters"] = max(1, rows - kw["num_buckets"])
        return dataclasses.replace(config, **kw)

    @classmethod
    def fit_group(cls, modules: list[TableMethod], data: Any) -> None:
        from reccomp.compress.graph import cluster_bipartite

        by_field = {m.field: m for m in modules}
        cfg = modules[0].config
        pair = tuple(cfg.fields) if cfg.fields else (data.user_field, data.item_field)
        user, item = by_field.get(pair[0]), by_field.get(pair[1])
        if user is None or item is None or len(by_field) != 2:
            raise ValueError(
                f"{cfg.name} clusters two fields together, {pair}; its tables are {sorted(by_field)}"
            )
        users, items = data.interactions(pair, positive_only=cfg.edges != "all")
        c = cluster_bipartite(
            users,
            items,
            user.num_embeddings,
            item.num_embeddings,
            target=user.clusters + item.clusters,
            seed=cfg.seed,
            tolerance=cfg.tolerance,
        )
        for m, assign, k in (
            (user, c.user_cluster, c.num_user_clusters),
            (item, c.item_cluster, c.num_item_clusters),
        ):
            m.set_clusters(assign, max(k, 1))
            m.stats = {
                "clusters": float(k),
                "resolution": c.resolution,
                "cluster_seconds": c.seconds,
                "absent_ids": float((assign < 0).sum()),
                "leiden_runs": float(len(c.trials)),
            }

    def set_clusters(self, assign: np.ndarray, k: int) -> None:
        """Rows from a clustering: cluster ``assign[x]``, or a hash row where it is -1."""
        a = torch.from_numpy(np.asarray(assign, dtype=np.int64))
        hashed = universal_hash(torch.arange(self.num_embeddings), self.params_[0], k)
        self.clusters = k
        self.rows[0] = k
        self.map_ = torch.where(a >= 0, a, hashed).to(index_dtype(k)).to(self.map_.device)

    def resize(self, rows: list[int], widths: list[int] | None = None) -> None:
        super().resize(rows, widths)
        self.clusters = rows[0]
        if self.map_.dtype != index_dtype(self.clusters):  # checkpoint loads map_ next
            self.map_ = self.map_.to(index_dtype(self.clusters))

    def remap(self, ids: torch.Tensor) -> list[torch.Tensor]:
        valid = (ids >= 0) & (ids < self.num_embeddings)
        safe = torch.where(valid, ids, torch.zeros_like(ids))
        rows = torch.where(
            valid, self.map_[safe].long(), universal_hash(ids, self.params_[0], self.clusters)
        )
        if self.double:
            return [rows, universal_hash(ids, self.params_[1], self.buckets)]
        return [rows]


GraphHashConfig.module = GraphHashTable
DoubleGraphHashConfig.module = GraphHashTable
