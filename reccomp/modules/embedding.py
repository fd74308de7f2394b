"""Building the embedding collection of a model from the data schema and a config block.

The collection is a TorchRec ``FusedEmbeddingBagCollection``: FBGEMM's table-batched
embedding (TBE) kernels run the lookups and apply the sparse optimizer inside the backward
pass, so the embedding tables never reach the dense (torch) optimizer.

Compression methods plug in through the registry of :mod:`reccomp.compress` (a config
dataclass plus a per-table module per method, not if/elif): :func:`build_embeddings` returns
a :class:`~reccomp.compress.CompressedEmbeddingBagCollection`, a drop-in for TorchRec's
``EmbeddingBagCollection``, whatever the method.

Example::

    >>> from reccomp.data.schema import Schema, SparseField
    >>> schema = Schema("toy", "ctr", [SparseField("user", 10), SparseField("item", 20)])
    >>> ebc = build_embeddings(schema, EmbeddingSpec(dim=8))
    >>> [c.name for c in ebc.embedding_bag_configs()]
    ['user', 'item']
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.fused_embedding_modules import FusedEmbeddingBagCollection
from torchrec.optim import RowWiseAdagrad

from reccomp.data.schema import Schema

SHARDING_TYPES = ("auto", "table_wise", "row_wise", "column_wise", "table_row_wise")

SPARSE_OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adagrad": torch.optim.Adagrad,
    "rowwise_adagrad": RowWiseAdagrad,
    "adam": torch.optim.Adam,
}


@dataclass
class EmbeddingSpec:
    """The ``embeddings:`` block of a task config.

    Args:
        method: compression method, a name registered in :mod:`reccomp.compress`
            (``full`` = uncompressed; ``reccomp.compress.method_names()`` lists them).
        budget: target memory, as a fraction of the full collection's bytes (<= 1) or
            as bytes (> 1); ``None`` = the method's size options, else 1/4 of each table.
        dim: width of every table, a multiple of 4 (FBGEMM); models document how they use
            it (MF: d factors + 1 bias column).
        optimizer: fused sparse optimizer run by FBGEMM in the backward pass: ``sgd``,
            ``adagrad``, ``rowwise_adagrad`` or ``adam``.
        lr: its learning rate.
        eps: its epsilon (Adagrad, Adam).
        weight_decay: its L2 weight decay.
        init_std: rows start as N(0, init_std^2); ``None`` = 1/sqrt(dim).
        pooling: ``sum`` or ``mean`` pooling of multi-valued fields.
        options: the method's options (its config dataclass's fields).
        tables: per-field overrides, ``{field: {method: NAME, options: {...},
            sharding: TYPE}}``.
        min_rows: tables with fewer rows stay uncompressed (``full``).
        sharding: how ``--trainer.strategy torchrec`` shards the storage tables: ``auto``
            (TorchRec's planner), ``table_wise``, ``row_wise``, ``column_wise`` or
            ``table_row_wise`` (see docs/distributed.md); one process ignores it.
    """

    method: str = "full"
    # ``| str``: jsonargparse hands a command-line ``--model.embeddings.budget null`` over as
    # the string "None" (nested dataclass in a subclass's init_args); __post_init__ reads it
    budget: float | str | None = None
    dim: int = 16
    optimizer: str = "adagrad"
    lr: float = 0.05
    eps: float = 1e-8
    weight_decay: float = 0.0
    init_std: float | str | None = None
    pooling: str = "sum"
    options: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    min_rows: int = 1000
    sharding: str = "auto"

    def __post_init__(self) -> None:
        from reccomp.compress import make_config

        self.budget = _optional_float("budget", self.budget)
        self.init_std = _optional_float("init_std", self.init_std)

        # unknown methods and options of another method fail here, before any training
        try:
            make_config(self.method, self.options)
            for name, o in self.tables.items():
                if set(o) - {"method", "options", "sharding"}:
                    raise ValueError(
                        f"tables.{name}: keys are 'method', 'options' and 'sharding', "
                        f"got {sorted(o)}"
                    )
                if o.get("sharding", "table_wise") not in SHARDING_TYPES[1:]:
                    raise ValueError(
                        f"tables.{name}.sharding: unknown {o['sharding']!r}; "
                        f"known: {SHARDING_TYPES[1:]}"
                    )
                make_config(o.get("method", self.method), o.get("options", {}))
        except ValueError as e:
            raise ValueError(f"embeddings: {e}") from None
        if self.sharding not in SHARDING_TYPES:
            raise ValueError(
                f"embeddings.sharding: unknown {self.sharding!r}; known: {SHARDING_TYPES}"
            )
        if self.min_rows < 0:
            raise ValueError(f"embeddings.min_rows must be >= 0, got {self.min_rows}")
        if self.optimizer not in SPARSE_OPTIMIZERS:
            raise ValueError(
                f"embeddings.optimizer: unknown {self.optimizer!r}; known: {sorted(SPARSE_OPTIMIZERS)}"
            )
        if self.dim < 4 or self.dim % 4:
            # FBGEMM's table-batched kernels take widths that are multiples of 4
            raise ValueError(f"embeddings.dim must be a multiple of 4 (FBGEMM), got {self.dim}")
        if self.lr <= 0:
            raise ValueError(f"embeddings.lr must be > 0, got {self.lr}")
        if self.budget is not None and self.budget <= 0:
            raise ValueError(f"embeddings.budget must be > 0, got {self.budget}")
        if self.pooling not in ("sum", "mean"):
            raise ValueError(f"embeddings.pooling must be 'sum' or 'mean', got {self.pooling!r}")

    def optimizer_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"lr": self.lr, "weight_decay": self.weight_decay}
        if self.optimizer != "sgd":
            kw["eps"] = self.eps
        return kw


def _optional_float(name: str, value: float | str | None) -> float | None:
    if not isinstance(value, str):
        return value
    if value.strip().lower() in ("none", "null", "~", ""):
        return None
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"embeddings.{name} must be a number or null, got {value!r}") from None


def fused_collection(
    tables: list[EmbeddingBagConfig],
    spec: EmbeddingSpec,
    device: torch.device | None = None,
    seed: int = 0,
    inits: list[tuple[float, float, float]] | None = None,
) -> FusedEmbeddingBagCollection:
    """FBGEMM-backed collection with the spec's fused optimizer and a seeded init: table
    ``i`` with ``inits[i] = (mean, power, gain)`` starts as N(mean, (gain * std^power)^2),
    std the spec's ``init_std`` (default ``(0, 1, 1)``: N(0, init_std^2))."""
    ebc = FusedEmbeddingBagCollection(
        tables=tables,
        optimizer_type=SPARSE_OPTIMIZERS[spec.optimizer],
        optimizer_kwargs=spec.optimizer_kwargs(),
        device=device or torch.device("cpu"),
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        inits = inits or [(0.0, 1.0, 1.0)] * len(tables)
        for (_, weight), cfg, (mean, power, gain) in zip(
            ebc.named_parameters(), tables, inits, strict=True
        ):
            std = spec.init_std if spec.init_std is not None else 1.0 / math.sqrt(cfg.embedding_dim)
            w = torch.randn(weight.shape, generator=gen) * (gain * std**power) + mean
            weight.copy_(w.to(weight.device))
        # write the optimizer state once so its pages are mapped now, not on the first steps
        for state in ebc.fused_optimizer().state.values():
            for t in state.values():
                if isinstance(t, torch.Tensor):
                    t.zero_()
    return ebc


def full_bytes(schema: Schema, spec: EmbeddingSpec, bytes_per_value: int = 4) -> int:
    """Bytes of the uncompressed collection: every row of every table in fp32."""
    return sum(f.cardinality * spec.dim * bytes_per_value for f in schema.sparse)


def build_embeddings(
    schema: Schema, spec: EmbeddingSpec, device: torch.device | None = None, data: Any = None
) -> nn.Module:
    """The embedding collection for ``schema`` built by ``spec.method`` (fitted to ``data``,
    a :class:`reccomp.compress.FitData`, when given)."""
    from reccomp.compress import build_collection

    return build_collection(schema, spec, device, data)


def memory_bytes(collection: nn.Module) -> int:
    """What a server must hold for ``collection``: its own count if it has one, else params."""
    fn = getattr(collection, "memory_bytes", None)
    if callable(fn):
        return int(fn())
    return sum(p.numel() * p.element_size() for p in collection.parameters()) + sum(
        b.numel() * b.element_size() for b in collection.buffers()
    )
