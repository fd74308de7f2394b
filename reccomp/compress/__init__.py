"""Compressed embedding collections: methods, the registry, budgets.

Importing this package registers every built-in method. See :mod:`.collection` for the
drop-in module and :mod:`.base` for what a method implements.
"""

from reccomp.compress import (  # noqa: F401  (registration side effects)
    afm,
    cce,
    dhe,
    dnis,
    double_hash,
    frequency_hash,
    full,
    graph_hash,
    hash,
    low_rank,
    maestro,
    mixed_dim,
    pq,
    qr,
    robe,
    svd,
    tt_rec,
)
from reccomp.compress.base import BudgetError, TableMethod
from reccomp.compress.collection import (
    CompressedEmbeddingBagCollection,
    build_collection,
    plan_tables,
)
from reccomp.compress.data import FitData
from reccomp.compress.registry import METHODS, MethodConfig, make_config, method_names, register

__all__ = [
    "METHODS",
    "BudgetError",
    "CompressedEmbeddingBagCollection",
    "FitData",
    "MethodConfig",
    "TableMethod",
    "build_collection",
    "make_config",
    "method_names",
    "plan_tables",
    "register",
]
