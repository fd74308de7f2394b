"""Budget planning: which method each field gets and the sizes that fit the budget."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from reccomp.compress.base import BYTES_PER_VALUE, BudgetError
from reccomp.compress.registry import MethodConfig, make_config
from reccomp.data.schema import Schema


@dataclass
class TablePlan:
    """The method and resolved options of one field, and its share of the budget."""

    field: str
    num_embeddings: int
    config: MethodConfig
    budget_bytes: int | None = None
    multi_valued: bool = False


def _split_budget(flex: list[tuple[float, int, int]], budget: int) -> list[int] | None:
    """Budget shares from (weight, min bytes, index): proportional to weight, each >= min."""
    alloc = [0] * len(flex)
    pinned: set[int] = set()
    while True:
        rest = budget - sum(alloc[i] for i in pinned)
        free = [j for j in range(len(flex)) if j not in pinned]
        total = sum(flex[j][0] for j in free)
        changed = False
        for j in free:
            alloc[j] = int(rest * flex[j][0] / max(total, 1))
            if alloc[j] < flex[j][1]:
                alloc[j] = flex[j][1]
                pinned.add(j)
                changed = True
        if not changed:
            break
    return alloc if sum(alloc) <= budget else None


def _graph_field(spec: Any, schema: Schema, name: str) -> bool:
    cfg = make_config(spec.method, spec.options)
    if not getattr(type(cfg), "graph_fields", False):
        return False
    return name in (cfg.fields or [schema.user_field, schema.item_field])


def plan_tables(schema: Schema, spec: Any) -> list[TablePlan]:
    """Each field's method and resolved sizes for ``spec`` (an ``EmbeddingSpec``).

    Rules, in order: a per-table override in ``spec.tables``; ``full`` for tables under
    ``spec.min_rows`` rows (except a graph method's two fields); for graph methods, fields other than the user and item field
    take the method's ``fallback``; else ``spec.method``. The budget (a fraction of the full
    collection's bytes if <= 1, else bytes; ``None``: each method's size options, or 1/4 of
    each table) is shared among the tables without fixed sizes, in proportion to their full
    size (or the method's :meth:`~TableMethod.budget_weight`); each method then chooses its
    sizes to fit its share.

    Raises:
        BudgetError: no setting reaches the budget (the message names the method and the
            smallest reachable budget).
    """
    plans: list[TablePlan] = []
    for f in schema.sparse:
        name, options = spec.method, spec.options
        override = spec.tables.get(f.name)
        if override is not None and not set(override) & {"method", "options"}:
            override = None  # only a sharding choice (reccomp.distributed)
        if override is not None:
            name, options = override.get("method", name), override.get("options", {})
        elif f.cardinality < spec.min_rows and not _graph_field(spec, schema, f.name):
            name, options = "full", {}  # (a graph's two fields stay together)
        cfg = make_config(name, options)
        if getattr(type(cfg), "graph_fields", False):
            pair = cfg.fields or [schema.user_field, schema.item_field]
            if None in pair:
                raise ValueError(
                    f"{name} needs a user-item graph: data set {schema.name!r} names no user and "
                    "item fields (set options.fields to two of its fields)"
                )
            if f.name not in pair:
                if override is not None:
                    raise ValueError(
                        f"{name} applies only to the graph fields {pair}, not {f.name!r}"
                    )
                cfg = make_config(cfg.fallback, cfg.fallback_options)
        plans.append(TablePlan(f.name, f.cardinality, cfg, multi_valued=f.max_len > 1))

    dim = spec.dim
    full_total = sum(p.num_embeddings * dim * BYTES_PER_VALUE for p in plans)
    fixed = [p for p in plans if p.config.name == "full" or p.config.sized_explicitly()]
    flex = [p for p in plans if p not in fixed]
    fixed_bytes = sum(
        type(p.config).module.table_bytes(p.num_embeddings, dim, p.config) for p in fixed
    )
    mins = [type(p.config).module.min_bytes(p.num_embeddings, dim, p.config) for p in flex]
    if spec.budget is None:
        shares = [p.num_embeddings * dim * BYTES_PER_VALUE // 4 for p in flex]
        shares = [max(s, m) for s, m in zip(shares, mins, strict=False)]
    else:
        target = int(spec.budget * full_total) if spec.budget <= 1 else int(spec.budget)
        smallest = (fixed_bytes + sum(mins)) / full_total
        split = (
            _split_budget(
                [
                    (type(p.config).module.budget_weight(p.num_embeddings, dim, p.config), m, i)
                    for i, (p, m) in enumerate(zip(flex, mins, strict=False))
                ],
                target - fixed_bytes,
            )
            if target >= fixed_bytes
            else None
        )
        if split is None:
            methods = sorted({p.config.name for p in plans})
            raise BudgetError(
                f"embeddings: method {spec.method!r} cannot reach budget {spec.budget} "
                f"({target} bytes of {full_total}): the smallest reachable budget is "
                f"{smallest:.4g} ({fixed_bytes + sum(mins)} bytes; tables use {methods}, "
                f"full tables: {[p.field for p in fixed if p.config.name == 'full']})"
            )
        shares = split
    for p, share in zip(flex, shares, strict=False):
        cls = type(p.config).module
        try:
            p.config = cls.fit_budget(p.num_embeddings, dim, p.config, share)
        except BudgetError as e:
            raise BudgetError(f"embeddings: field {p.field!r}: {e}") from e
        p.budget_bytes = share
    return plans
