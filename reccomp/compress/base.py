"""The per-table part of a compression method: remap ids -> TorchRec lookup -> decode.

A :class:`TableMethod` owns one sparse field. It maps the field's ids to rows of one or
more *storage tables* (:meth:`TableMethod.remap`, plain tensor code that TorchScript
compiles), the collection looks those rows up in ordinary TorchRec tables (FBGEMM kernels,
shardable by the planner), and :meth:`TableMethod.decode` turns the pooled rows into the
field's ``dim``-wide embedding (sum, product, concatenation, ...).

Sizes come from a byte budget through :meth:`TableMethod.fit_budget` (class method, no data);
data-dependent state (frequency ranks, cluster maps) is built in :meth:`fit` and held in
buffers with a trailing ``_``, so a checkpoint restores it without the data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from reccomp.compress.registry import MethodConfig

BYTES_PER_VALUE = 4  # fp32 tables
_PRIME = 2147483647  # 2^31 - 1: a*x + b stays inside int64 for x, a, b < 2^31


class BudgetError(ValueError):
    """No setting of a method reaches the requested memory."""


@dataclass(frozen=True)
class TableSpec:
    """One storage table: ``rows`` x ``width``, initialized N(init_mean, std^2).

    ``lookups`` > 1 when several remapped id streams index the same table (a shared table).
    ``init_power`` and ``init_gain`` scale the init: std = ``init_gain * init_std **
    init_power`` for the spec's ``init_std``; one of k factors of a product (``tt_rec``'s
    cores) takes power 1/k, so that the product starts at the spec's scale.
    ``shared``: the specs of several fields with one non-empty ``shared`` name are *one*
    TorchRec table (``robe``'s array) named so: ``rows`` is this field's share, the table
    has the sum of the shares, and the collection tells every member that sum
    (:meth:`TableMethod.set_shared_rows`) before its first remap.
    """

    suffix: str
    rows: int
    width: int
    init_mean: float = 0.0
    lookups: int = 1
    init_power: float = 1.0
    init_gain: float = 1.0
    shared: str = ""


def hash_params(seed: int) -> torch.Tensor:
    """(2,) int64 ``[a, b]`` of a seeded universal hash ``((a x + b) mod p) mod m``."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(1, _PRIME, (1,), generator=g, dtype=torch.int64)
    b = torch.randint(0, _PRIME, (1,), generator=g, dtype=torch.int64)
    return torch.cat([a, b])


def universal_hash(ids: torch.Tensor, params: torch.Tensor, m: int) -> torch.Tensor:
    """Rows in ``[0, m)`` of int64 ``ids`` (any value, negative included). Same shape."""
    p = 2147483647  # _PRIME, spelled out for TorchScript
    x = ids.remainder(p)  # in [0, p): the product below fits int64
    return (x * params[0] + params[1]).remainder(p).remainder(m)


def index_dtype(max_value: int) -> torch.dtype:
    """The smallest signed int type holding ``max_value`` (id maps are counted in bytes)."""
    if max_value < 2**15:
        return torch.int16
    return torch.int32 if max_value < 2**31 else torch.int64


def field_seed(field: str, salt: int = 0) -> int:
    """A stable per-field seed (Python's ``hash`` is salted per process)."""
    h = 0
    for ch in f"{field}/{salt}":
        h = (h * 1000003 + ord(ch)) % _PRIME
    return h


@dataclass
class TrainedTable:
    """One field of a trained collection, the input of a post-training transform.

    Args:
        module: the trained collection's per-field module (its method and options).
        weights: its storage tables' rows, in ``module.tables()`` order, each (rows, width).
        dense: (num_embeddings, dim) what the model sees for each id (each id looked up alone).
        importance: (num_embeddings,) accumulated squared gradients of the training loss
            per row (Fisher information), when the transform asked for them.
        counts: (num_embeddings,) training frequency of each row, when asked for.
    """

    module: TableMethod
    weights: list[torch.Tensor]
    dense: torch.Tensor
    importance: torch.Tensor | None = None
    counts: torch.Tensor | None = None


class TableMethod(nn.Module):
    """Base of a method's per-field module.

    Args:
        field: the sparse field (KeyedJaggedTensor key).
        num_embeddings: rows of the uncompressed table (the field's cardinality).
        dim: output width.
        config: the method's options with every size resolved (see :meth:`fit_budget`).
        seed: seeds the hash parameters.
        multi_valued: the field may hold bags of several ids (decoders that are not
            linear in the pooled rows refuse such fields).
    """

    needs_fit: bool = False  # True: fit() must see the training data before training
    post_training: bool = False  # True: only built from a trained model (reccomp compress)
    needs_importance: bool = False  # True: from_trained() wants per-row Fisher importance
    needs_counts: bool = False  # True: from_trained() wants per-row training frequencies
    # multi-phase methods (dnis): a search phase of ``search_epochs`` epochs comes first
    # (no annotations: TorchScript would resolve them as the type of dnis's instance values)
    search_epochs = 0
    searching = False
    search_lr = 0.0  # Adam learning rate of search_parameters() (validation batches)
    phase = ""  # saved in checkpoints; "" for one-phase methods
    # periodic re-clustering (cce): after every ``recluster_every``-th training step, up to
    # ``recluster_times`` times, the collection rewrites the table with :meth:`recluster`
    recluster_every = 0
    recluster_times = 0

    def __init__(
        self,
        field: str,
        num_embeddings: int,
        dim: int,
        config: MethodConfig,
        seed: int = 0,
        multi_valued: bool = False,
    ) -> None:
        super().__init__()
        self.field = field
        self.num_embeddings = num_embeddings
        self.dim = dim
        self.config = config
        self.seed = seed
        self.multi_valued = multi_valued
        self.rows: list[int] = []  # rows of each storage table; set by subclasses

    # -- sizes ---------------------------------------------------------------------------------
    @classmethod
    def table_bytes(cls, num_embeddings: int, dim: int, config: MethodConfig) -> int:
        """Bytes (tables + maps + parameters) of a table with this resolved ``config``."""
        raise NotImplementedError

    @classmethod
    def min_bytes(cls, num_embeddings: int, dim: int, config: MethodConfig) -> int:
        """The fewest bytes any setting of the method needs for this table."""
        raise NotImplementedError

    @classmethod
    def budget_weight(cls, num_embeddings: int, dim: int, config: MethodConfig) -> float:
        """This table's weight when a budget is shared among tables (default: its full size)."""
        return float(num_embeddings * dim * BYTES_PER_VALUE)

    @classmethod
    def fit_budget(
        cls, num_embeddings: int, dim: int, config: MethodConfig, budget_bytes: int
    ) -> MethodConfig:
        """``config`` with its size options chosen to use at most ``budget_bytes``."""
        raise NotImplementedError

    def tables(self) -> list[TableSpec]:
        """Storage tables, in the order :meth:`remap` returns their id streams."""
        one = len(self.rows) == 1
        return [TableSpec("" if one else f":{i}", r, self.dim) for i, r in enumerate(self.rows)]

    def map_bytes(self) -> int:
        """Bytes held besides the storage rows: buffers (id maps, hash parameters) and the
        method's own parameters (projections)."""
        tensors = [*self.buffers(), *self.parameters()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def table_bytes_stored(self, t: TableSpec) -> int:
        """Bytes of storage table ``t``: fp32 rows, or what a quantized serving copy stores
        (``storage_bytes``, set by :func:`reccomp.export.program.quantize_storage`)."""
        stored: dict[str, int] = getattr(self, "storage_bytes", {})
        return stored.get(t.suffix, t.rows * t.width * BYTES_PER_VALUE)

    def memory_bytes(self) -> int:
        return self.map_bytes() + sum(self.table_bytes_stored(t) for t in self.tables())

    def set_shared_rows(self, name: str, rows: int) -> None:
        """The shared storage table ``name`` (a :class:`TableSpec` ``shared`` name of this
        field) has ``rows`` rows over all its member fields. Called by the collection
        whenever it builds its storage, from the plans alone (a checkpoint rebuilds it)."""

    def resize(self, rows: list[int], widths: list[int] | None = None) -> None:
        """Set storage rows (and widths, for methods whose data decides them): a checkpoint
        of a data-sized table restores them this way."""
        self.rows = list(rows)

    # -- data ----------------------------------------------------------------------------------
    def fit(self, data: Any) -> None:
        """Build data-dependent state (see :class:`reccomp.compress.data.FitData`)."""

    @classmethod
    def fit_group(cls, modules: list[TableMethod], data: Any) -> None:
        """Fit all of a collection's tables that use this method (default: one by one)."""
        for m in modules:
            m.fit(data)

    def from_trained(self, src: TrainedTable) -> list[torch.Tensor]:
        """Post-training transform: this method's storage rows (in :meth:`tables` order) from
        a trained table, setting the method's own parameters (projections) on the way."""
        raise ValueError(
            f"{self.config.name} cannot be built from a trained table; "
            "post-training methods: svd, fwsvd, maestro (truncation), full (copy)"
        )

    # -- phases (see reccomp.compress.phases) ------------------------------------------------
    def search_parameters(self) -> list[nn.Parameter]:
        """Parameters trained on validation batches during the search phase."""
        return []

    def advance(self, weights: list[torch.Tensor]) -> list[torch.Tensor]:
        """End the search: new storage rows from the searched ones (multi-phase methods)."""
        raise NotImplementedError(f"{self.config.name} has a single phase")

    def advance_state(self, states: list[torch.Tensor]) -> list[torch.Tensor]:
        """After :meth:`advance`: one kind of the searched tables' optimizer state (one tensor
        per old storage table, (rows, width) or (rows,)) -> the new tables' state."""
        raise NotImplementedError(f"{self.config.name} has a single phase")

    def recluster_due(self, step: int) -> bool:
        """Whether :meth:`recluster` runs after global training step ``step`` (1-based)."""
        every = self.recluster_every
        return (
            every > 0 and step > 0 and step % every == 0 and step // every <= self.recluster_times
        )

    def recluster(self, weights: list[torch.Tensor], step: int) -> list[torch.Tensor]:
        """Re-fit during training from the current storage rows (:meth:`tables` order) to new
        rows of the same shapes; id maps and hash parameters change in place (buffers:
        checkpoints keep them)."""
        raise NotImplementedError(f"{self.config.name} does not re-cluster")

    def set_phase(self, phase: str, widths: list[int]) -> None:
        """Restore a checkpoint's phase (shapes only; one-phase methods have nothing to do)."""

    def penalty(self) -> torch.Tensor | None:
        """A regularizer added to the training loss (None: none)."""
        return None

    # -- lookup --------------------------------------------------------------------------------
    def embed(self, ids: torch.Tensor, lengths: torch.Tensor, batch_size: int) -> torch.Tensor:
        """Methods without storage tables (:meth:`tables` is empty, e.g. ``dhe``) compute
        the pooled embedding of every bag themselves: (N,) ids and (B,) bag lengths ->
        (B, dim). Methods with tables never get this call."""
        raise NotImplementedError("a method with storage tables is looked up, not embedded")

    def embed_group(
        self,
        values: list[torch.Tensor],
        lengths: list[torch.Tensor],
        params: list[torch.Tensor],
        batch_size: int,
    ) -> torch.Tensor:
        """:meth:`embed` for a group of n fields with equal :meth:`decode_signature` (their
        ids, bag lengths and :meth:`group_param`) -> (B, n, dim). Default: a group of one
        (the default signature of a method without tables names its field)."""
        return self.embed(values[0], lengths[0], batch_size).unsqueeze(1)

    def remap(self, ids: torch.Tensor) -> list[torch.Tensor]:
        """(N,) int64 ids -> (N,) int64 rows, one tensor per lookup of each storage table."""
        raise NotImplementedError

    def remap_jagged(
        self, ids: torch.Tensor, lengths: torch.Tensor
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Jagged form of :meth:`remap`: (values, lengths) per lookup stream. Default: every
        id looked up in every stream. Methods that send each id to *one* of several tables
        (frequency blocks) override this and give each stream only its ids (bags of the
        others' ids come out empty, i.e. zero)."""
        return [(rows, lengths) for rows in self.remap(ids)]

    def decode_signature(self) -> tuple:
        """Fields with equal signatures decode as one stacked block (same code, same shapes)."""
        shapes = tuple((t.width, t.lookups) for t in self.tables())
        if not shapes:  # embedded, not looked up: alone unless the method groups (embed_group)
            return (type(self).__name__, self.field)
        return (type(self).__name__, shapes, getattr(self.config, "combiner", None))

    def group_param(self) -> torch.Tensor:
        """This field's share of a group decode (its projection); empty when the decode has
        no per-field parameter. The collection hands a group's lead every member's tensor."""
        return torch.empty(0)

    def decode_group(self, pooled: list[torch.Tensor], params: list[torch.Tensor]) -> torch.Tensor:
        """Decode a group of n fields at once: ``pooled`` parts are (B, n, W) and ``params``
        holds the n fields' :meth:`group_param`. Default: :meth:`decode` (no per-field
        parameters, so one decode serves all fields)."""
        return self.decode(pooled)

    def decode(self, pooled: list[torch.Tensor]) -> torch.Tensor:
        """Pooled rows, one (..., width) per lookup -> (..., dim). Default: their sum.

        Element-wise over the leading dims: called with (B, W) parts or, for a group of
        fields, (B, n, W) parts.
        """
        out = pooled[0]
        for p in pooled[1:]:
            out = out + p
        return out


def in_range(ids: torch.Tensor, n: int) -> torch.Tensor:
    """``ids`` with everything outside ``[0, n)`` sent to row 0 (the out-of-vocabulary row)."""
    return torch.where((ids >= 0) & (ids < n), ids, torch.zeros_like(ids))


def top_ids(counts: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` most frequent ids, sorted by id (ties broken towards smaller ids)."""
    k = min(k, len(counts))
    order = np.lexsort((np.arange(len(counts)), -counts))  # by count desc, then id
    return np.sort(order[:k])


def power_weight(num_embeddings: int, dim: int, power: float) -> float:
    """A table's budget weight ``rows ** power`` (in full-table units at power 1): power 0
    shares a budget equally between tables, 1 in proportion to their full size."""
    return float(num_embeddings) ** power * dim * BYTES_PER_VALUE


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


__all__ = [
    "BYTES_PER_VALUE",
    "BudgetError",
    "TableMethod",
    "TableSpec",
    "TrainedTable",
    "ceil_div",
    "field_seed",
    "hash_params",
    "in_range",
    "index_dtype",
    "power_weight",
    "top_ids",
    "universal_hash",
]
