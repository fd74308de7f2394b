"""``cce``: clustered compositional embeddings, re-clustered by k-means during training.

Tsang & Ahle, "Clustering Embedding Tables, Without First Learning Them", NeurIPS 2023
(arXiv 2210.05974). The embedding is cut into ``c`` columns of width ``dim / c``. Column ``i``
of id ``x`` is ``P_i[ptr_i(x)] + H_i[h_i(x)]``: a *pointer* table indexed by a (learned)
pointer plus a *residual* table indexed by a random hash; the columns are concatenated.
Training starts as a plain compositional hash (every pointer hashed). A few times early in
training (``cluster_times``, every ``cluster_every`` steps) each column is re-clustered: the
current column vectors of the ids are clustered by k-means, the pointer of each id becomes
its cluster, ``P_i`` the centroids, and ``H_i`` gets a fresh hash with each bucket's mean
residual as its rows. Ids that end up alike share rows, and training goes on from there.

The learned pointers are counted in the bytes. A dense map (every id) costs at least
``n c log2(k) / 8`` bytes, more than 0.01 of the full table at dim 16, so only the
``num_learned`` most frequent training ids keep learned pointers (ids sorted in ``kept_``,
found by binary search, as in ``frequency_hash``; pointers in ``ptr_``, one byte each up to
256 rows); every other id keeps hashed pointers. The budget is split between the maps
(``learned_share``) and the rows. Across tables it is shared equally by default
(``budget_power`` 0), not by full size: the ids worth their own embedding are the frequent
ones, and a Zipf-like field has about as many of those whether it has 3k values or 60k.

Re-clustering is a training hook (:class:`reccomp.compress.phases.ReclusterCallback`,
:meth:`CompressedEmbeddingBagCollection.recluster`): it needs every id's embedding in one
place, so a sharded run refuses ``cce`` (train it in one process).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
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
    power_weight,
    top_ids,
    universal_hash,
)
from reccomp.compress.registry import MethodConfig, register

_PARAM_BYTES = 32  # per column: (a, b) of the pointer hash and of the residual hash, int64


@register("cce")
@dataclass
class CCEConfig(MethodConfig):
    """Clustered compositional embeddings (Tsang & Ahle, NeurIPS 2023).

    Args:
        num_rows: ``k``, rows of each column's pointer table and of its residual table;
            ``None`` = from the budget (with ``num_learned``: both or neither).
        num_learned: the most frequent training ids whose pointers are learned (the rest are
            hashed); ``None`` = from the budget.
        columns: ``c``, sub-embeddings per id (``dim / c`` wide, a multiple of 4); each costs
            two lookups per id.
        learned_share: with a budget, the share of the bytes given to the learned pointers.
        cluster_every: training steps between re-clusterings (0: never; then a compositional
            hash of the frequent ids' hashed pointers).
        cluster_times: how many re-clusterings (the paper clusters a few times early on).
        kmeans_iters: Lloyd iterations per column and re-clustering.
        budget_power: across tables the budget goes by ``rows ** budget_power``: 0 (default)
            gives every table an equal share (the ids that need their own embedding are the
            frequent ones, about as many in a large table as in a mid-sized one); 1 shares by
            full size, as most methods do.
    """

    num_rows: int | None = None
    num_learned: int | None = None
    columns: int = 2
    learned_share: float = 0.25
    cluster_every: int = 50
    cluster_times: int = 3
    kmeans_iters: int = 20
    budget_power: float = 0.0
    size_options: ClassVar[tuple[str, ...]] = ("num_rows", "num_learned")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require_together("num_rows", "num_learned")
        if self.num_rows is not None and (self.num_rows < 1 or self.num_learned < 0):
            raise ValueError("cce: num_rows must be >= 1, num_learned >= 0")
        if self.columns < 1:
            raise ValueError(f"cce: columns must be >= 1, got {self.columns}")
        if not 0.0 <= self.learned_share < 1.0:
            raise ValueError("cce: learned_share must be in [0, 1)")
        if self.cluster_every < 0 or self.cluster_times < 0 or self.kmeans_iters < 1:
            raise ValueError("cce: cluster_every, cluster_times >= 0 and kmeans_iters >= 1")
        if self.budget_power < 0:
            raise ValueError("cce: budget_power must be >= 0")


def _width(dim: int, columns: int) -> int:
    if dim % (4 * columns):
        raise ValueError(f"cce: dim {dim} / columns {columns} must be a multiple of 4 (FBGEMM)")
    return dim // columns


def _ptr_dtype(k: int) -> torch.dtype:
    """Pointers into ``k`` rows: one byte up to 256 rows."""
    return torch.uint8 if k <= 256 else index_dtype(k - 1)


def _nbytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _bytes(n: int, dim: int, c: int, k: int, learned: int) -> int:
    per_id = _nbytes(index_dtype(n)) + c * _nbytes(_ptr_dtype(k))
    return 2 * k * dim * BYTES_PER_VALUE + learned * per_id + c * _PARAM_BYTES


class CCETable(TableMethod):
    """Rows ``ptr_i(x)`` of pointer table ``i`` and ``h_i(x)`` of residual table ``i``, for
    each column ``i``; decode: ``concat_i(P_i + H_i)``.

    >>> cfg = CCEConfig(num_rows=8, num_learned=3, columns=2)
    >>> t = CCETable("f", 100, 8, cfg)
    >>> [r.shape for r in t.remap(torch.tensor([5, 7]))], len(t.tables())
    ([torch.Size([2]), torch.Size([2]), torch.Size([2]), torch.Size([2])], 4)
    """

    needs_fit = True

    def __init__(self, field: str, num_embeddings: int, dim: int, config: CCEConfig, **kw) -> None:
        super().__init__(field, num_embeddings, dim, config, **kw)
        self.c = int(config.columns)
        self.w = _width(dim, self.c)
        self.k = int(config.num_rows)  # type: ignore[arg-type]
        self.num_learned = min(int(config.num_learned), num_embeddings)  # type: ignore[arg-type]
        self.rows = [self.k] * (2 * self.c)
        self.recluster_every = int(config.cluster_every)
        self.recluster_times = int(config.cluster_times)
        dt = index_dtype(num_embeddings)
        self.max_id = torch.iinfo(dt).max
        params = [hash_params(field_seed(field, self.seed + j)) for j in range(2 * self.c)]
        self.register_buffer("params_", torch.stack(params))  # (2c, 2): pointer, residual
        # until fit: the first ids stand in for the frequent ones
        self.register_buffer("kept_", torch.arange(self.num_learned, dtype=dt))  # (L,) sorted
        self.register_buffer("ptr_", self._hashed(self.kept_.long()))  # (L, c)
        self.stats: dict[str, Any] = {"learned_ids": self.num_learned, "reclustered_at": []}

    def _hashed(self, ids: torch.Tensor) -> torch.Tensor:
        """(L,) ids -> (L, c) their hashed pointers, in the pointer dtype."""
        cols = [universal_hash(ids, self.params_[i], self.k) for i in range(self.c)]
        return torch.stack(cols, 1).to(_ptr_dtype(self.k))

    def tables(self) -> list[TableSpec]:
        # P + H starts at the spec's init scale
        gain = math.sqrt(0.5)
        return [TableSpec(f":p{i}", self.k, self.w, init_gain=gain) for i in range(self.c)] + [
            TableSpec(f":h{i}", self.k, self.w, init_gain=gain) for i in range(self.c)
        ]

    # -- sizes ---------------------------------------------------------------------------------
    @classmethod
    def table_bytes(cls, num_embeddings: int, dim: int, config: MethodConfig) -> int:
        k, learned = config.num_rows, min(config.num_learned, num_embeddings)
        return _bytes(num_embeddings, dim, config.columns, k, learned)

    @classmethod
    def min_bytes(cls, num_embeddings: int, dim: int, config: MethodConfig) -> int:
        _width(dim, config.columns)
        return _bytes(num_embeddings, dim, config.columns, 1, 0)

    @classmethod
    def budget_weight(cls, num_embeddings: int, dim: int, config: MethodConfig) -> float:
        return power_weight(num_embeddings, dim, config.budget_power)

    @classmethod
    def fit_budget(cls, num_embeddings, dim, config, budget_bytes):
        n, c = num_embeddings, config.columns
        _width(dim, c)
        free = budget_bytes - c * _PARAM_BYTES
        row = 2 * dim * BYTES_PER_VALUE  # one row of every table
        if free < row:
            raise BudgetError("cce needs one row in each column's two tables")
        idb = _nbytes(index_dtype(n))
        best = None
        # pointer width depends on k and k on what the pointers leave: try each width (a
        # width whose range k does not reach is left to the narrower one)
        for pb, kmin, kmax in ((1, 1, 256), (2, 257, 2**15 - 1), (4, 2**15, 2**31 - 1)):
            per_id = idb + c * pb
            learned = min(n, int(config.learned_share * free) // per_id, (free - row) // per_id)
            k = min((free - learned * per_id) // row, kmax, n)
            learned = min(n, (free - k * row) // per_id)  # rows capped: the rest to the maps
            if k >= kmin and (best is None or (k, learned) > best):
                best = (k, learned)
        k, learned = best
        return dataclasses.replace(config, num_rows=int(k), num_learned=int(learned))

    # -- data ----------------------------------------------------------------------------------
    def fit(self, data: Any) -> None:
        counts = np.asarray(data.counts(self.field))
        kept = torch.from_numpy(top_ids(counts, self.num_learned).astype(np.int64))
        self.kept_.copy_(kept.to(self.kept_.dtype))
        self.ptr_.copy_(self._hashed(kept))

    def recluster_due(self, step: int) -> bool:
        return self.num_learned > 0 and super().recluster_due(step)  # no map: nothing to learn

    def recluster(self, weights: list[torch.Tensor], step: int) -> list[torch.Tensor]:
        """Each column: k-means of the learned ids' current column vectors; their pointers
        become their clusters, ``P_i`` the centroids, ``H_i`` a fresh hash whose rows are the
        mean residual (vector - centroid) of the learned ids in each bucket."""
        c, w, k = self.c, self.w, self.k
        if self.num_learned == 0:
            return weights
        ids = self.kept_.long()
        x = self.decode([t[r] for t, r in zip(weights, self.remap(ids), strict=True)])  # (L, dim)
        pointers, residuals, new_ptr = [], [], []
        for i in range(c):
            sub = x[:, i * w : (i + 1) * w]  # (L, w)
            gen = torch.Generator().manual_seed(field_seed(f"{self.field}/kmeans", step * c + i))
            cent, assign = kmeans(sub, k, self.config.kmeans_iters, gen, weights[i])
            params = hash_params(field_seed(self.field, self.seed + 2 * c * step + c + i))
            self.params_[c + i] = params
            bucket = universal_hash(ids, params, k)  # (L,)
            resid = sub - cent[assign]  # (L, w)
            sums = torch.zeros(k, w).index_add_(0, bucket, resid)
            count = torch.bincount(bucket, minlength=k).clamp(min=1)
            pointers.append(cent)
            residuals.append(sums / count[:, None])
            new_ptr.append(assign)
        self.ptr_.copy_(torch.stack(new_ptr, 1).to(self.ptr_.dtype))
        self.stats["reclustered_at"] = [*self.stats["reclustered_at"], step]
        return pointers + residuals

    # -- lookup --------------------------------------------------------------------------------
    def remap(self, ids: torch.Tensor) -> list[torch.Tensor]:
        out: list[torch.Tensor] = []
        if self.num_learned > 0:
            small = ids.clamp(-1, self.max_id).to(self.kept_.dtype)  # same dtype for the search
            pos = torch.searchsorted(self.kept_, small).clamp(max=self.num_learned - 1)
            hit = self.kept_[pos] == small  # (N,) the id has learned pointers
            learned = self.ptr_[pos].long()  # (N, c)
            for i in range(self.c):
                hashed = universal_hash(ids, self.params_[i], self.k)
                out.append(torch.where(hit, learned[:, i], hashed))
        else:
            for i in range(self.c):
                out.append(universal_hash(ids, self.params_[i], self.k))
        for i in range(self.c):
            out.append(universal_hash(ids, self.params_[self.c + i], self.k))
        return out

    def decode(self, pooled: list[torch.Tensor]) -> torch.Tensor:
        # (..., w) parts: c pointer rows then c residual rows -> (..., dim)
        return torch.cat(pooled[: self.c], -1) + torch.cat(pooled[self.c :], -1)


def kmeans(
    x: torch.Tensor, k: int, iters: int, gen: torch.Generator, previous: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded k-means of the rows of ``x`` (m, w): centroids (k, w) and each row's nearest
    centroid (m,) int64. k-means++ seeding (random distinct rows above 1024 centroids) on a
    sample of at most 256 rows per centroid, then Lloyd iterations; an empty cluster keeps its
    centroid. With ``m <= k`` every row is its own centroid and the other centroids are the
    rows of ``previous`` (k, w).

    >>> x = torch.cat([torch.zeros(5, 4), torch.ones(5, 4)])
    >>> cent, a = kmeans(x, 2, 5, torch.Generator().manual_seed(0), torch.zeros(2, 4))
    >>> bool(a[0] != a[9]) and sorted(cent[:, 0].tolist()) == [0.0, 1.0]
    True
    """
    m = x.shape[0]
    if m <= k:
        cent = previous.clone().float()
        cent[:m] = x
        return cent, torch.arange(m)
    pts = x if m <= 256 * k else x[torch.randperm(m, generator=gen)[: 256 * k]]
    if k > 1024:
        cent = pts[torch.randperm(len(pts), generator=gen)[:k]].clone()
    else:
        cent = _plus_plus(pts, k, gen)
    for _ in range(iters):
        a = nearest(pts, cent)
        sums = torch.zeros_like(cent).index_add_(0, a, pts)
        count = torch.bincount(a, minlength=k)
        cent = torch.where(count[:, None] > 0, sums / count.clamp(min=1)[:, None], cent)
    return cent, nearest(x, cent)


def _plus_plus(pts: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ seeds: each next seed drawn with probability ~ squared distance to the
    nearest seed so far (Arthur & Vassilvitskii, 2007)."""
    first = int(torch.randint(len(pts), (1,), generator=gen))
    seeds = [pts[first]]
    d2 = (pts - pts[first]).pow(2).sum(1)  # (m,)
    for _ in range(1, k):
        total = float(d2.sum())
        if total > 0:
            j = int(torch.multinomial(d2 / total, 1, generator=gen))
        else:  # every row sits on a seed already: any row
            j = int(torch.randint(len(pts), (1,), generator=gen))
        seeds.append(pts[j])
        d2 = torch.minimum(d2, (pts - pts[j]).pow(2).sum(1))
    return torch.stack(seeds)


def nearest(x: torch.Tensor, cent: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """(m,) index of the nearest row of ``cent`` (k, w) for each row of ``x`` (m, w)."""
    c2 = cent.pow(2).sum(1)  # (k,)
    out = []
    for s in range(0, x.shape[0], chunk):
        part = x[s : s + chunk]
        out.append((c2[None, :] - 2 * part @ cent.T).argmin(1))  # (b, k) minus |x|^2
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64)


CCEConfig.module = CCETable
