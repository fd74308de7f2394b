"""The compressed embedding collection: a drop-in for TorchRec's ``EmbeddingBagCollection``.

:class:`CompressedEmbeddingBagCollection` holds one :class:`~reccomp.compress.base.TableMethod`
per sparse field and one TorchRec collection (``storage``) with every storage table. Forward:
remap each field's ids (tensor code), look all rows up in one call of ``storage`` (FBGEMM's
table-batched kernels; shardable by TorchRec's planner), decode each field's pooled rows.

Example::

    >>> from reccomp.data.schema import Schema, SparseField
    >>> from reccomp.modules.embedding import EmbeddingSpec
    >>> schema = Schema("toy", "ctr", [SparseField("user", 5000), SparseField("item", 3000)])
    >>> ebc = build_collection(schema, EmbeddingSpec(method="hash", budget=0.25, dim=8))
    >>> round(ebc.memory_bytes() / ebc.full_bytes(), 2) <= 0.25
    True
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from reccomp.compress.base import (
    BYTES_PER_VALUE,
    BudgetError,
    TableMethod,
    TableSpec,
    field_seed,
)
from reccomp.compress.planning import TablePlan, plan_tables
from reccomp.compress.registry import METHODS
from reccomp.data.schema import Schema


class CompressedEmbeddingBagCollection(nn.Module):
    """Compressed tables behind the ``EmbeddingBagCollection`` interface.

    Args:
        plans: one :class:`TablePlan` per field, in KeyedJaggedTensor key order.
        dim: output width of every field.
        storage_factory: builds the storage collection from TorchRec table configs and
            per-table inits (the fused FBGEMM collection for training).
        pooling: ``sum`` or ``mean``.

    ``forward(KeyedJaggedTensor) -> KeyedTensor`` with keys = field names and ``dim`` columns
    each, as ``EmbeddingBagCollection`` would give.
    """

    __jit_unused_properties__ = ["needs_fit", "post_training", "search_epochs", "searching"]  # noqa: RUF012  (TorchScript reads this name)

    def __init__(
        self,
        plans: list[TablePlan],
        dim: int,
        storage_factory: Any,
        pooling: str = "sum",
    ) -> None:
        super().__init__()
        self.plans = plans
        self.dim = dim
        self.pooling = pooling
        self._keys = [p.field for p in plans]
        self._dims = [dim] * len(plans)
        self.tables = nn.ModuleList(
            [
                type(p.config).module(
                    p.field,
                    p.num_embeddings,
                    dim,
                    p.config,
                    seed=field_seed(p.field),
                    multi_valued=p.multi_valued,
                )
                for p in plans
            ]
        )
        self._storage_factory = storage_factory
        self.detach_storage = False  # True: looked-up rows carry no gradient (search steps)
        self.fitted = not self.needs_fit
        self._build_storage()

    # -- storage -------------------------------------------------------------------------------
    def _groups(self) -> list[tuple[int, int, bool]]:
        """Runs of consecutive fields with one method and shape: (first, size, slot_major).

        A group's rows are decoded together as one block. ``slot_major`` groups (one lookup
        per table) store lookup slot j of every field side by side, so the block is
        (B, k, n, W) and each slot is one strided view; others are (B, n, k, W). A field
        whose storage tables differ in width (mixed dimensions) is a group of its own.
        """
        sig = [m.decode_signature() for m in self.tables]
        groups: list[list[int]] = []
        for i in range(len(self.tables)):
            if groups and sig[i] == sig[groups[-1][0]]:
                groups[-1].append(i)
            else:
                groups.append([i])
        out = []
        for g in groups:
            specs = self.tables[g[0]].tables()
            if not specs:  # no storage (dhe): the group embeds its ids in one call
                out.append((g[0], len(g), False))
            elif len({t.width for t in specs}) != 1:
                out += [(i, 1, False) for i in g]  # mixed widths: split, not reshaped
            else:
                out.append((g[0], len(g), all(t.lookups == 1 for t in specs)))
        return out

    def _slots(self) -> list[tuple[int, int]]:
        """(field, storage table) pairs in the order the decodes read their pooled rows
        (see :meth:`_groups`)."""
        out = []
        for first, size, slot_major in self._groups():
            fields = list(range(first, first + size))
            ntab = len(self.tables[first].tables())
            out += (
                [(i, j) for j in range(ntab) for i in fields]
                if slot_major
                else [(i, j) for i in fields for j in range(ntab)]
            )
        return out

    def storage_configs(self) -> tuple[list[EmbeddingBagConfig], list[tuple[float, float, float]]]:
        """TorchRec configs of the storage tables (one feature per lookup) and their inits
        ``(mean, power, gain)`` (see :class:`TableSpec`), in the order their pooled rows come
        out (see :meth:`_groups`). A table several fields share (``TableSpec.shared``) is one
        config at its first member's place, with every member's features and the sum of
        their rows."""
        pool = PoolingType.SUM if self.pooling == "sum" else PoolingType.MEAN
        # table name -> its first member's spec, every member's features, the members
        tables: dict[str, tuple[TableSpec, list[str], list[str]]] = {}
        rows: dict[str, int] = {}
        for i, j in self._slots():
            m = self.tables[i]
            t = m.tables()[j]
            name = storage_name(m.field, t)
            if name not in tables:
                tables[name], rows[name] = (t, [], []), 0
            first, feats, fields = tables[name]
            if fields and not (t.shared and first.shared):  # a field's table, not a shared one
                raise ValueError(f"fields {fields[0]!r} and {m.field!r} both name a table {name!r}")
            if (t.width, t.init_mean, t.init_power, t.init_gain) != (
                first.width, first.init_mean, first.init_power, first.init_gain
            ):  # fmt: skip
                raise ValueError(
                    f"fields {fields[0]!r} and {m.field!r} share table {name!r} but differ in "
                    f"width or init ({first} vs {t})"
                )
            feats += feature_names(m.field, t)
            fields.append(m.field)
            rows[name] += t.rows
        configs = [
            EmbeddingBagConfig(name=name, embedding_dim=t.width, num_embeddings=rows[name],
                               feature_names=feats, pooling=pool)
            for name, (t, feats, _) in tables.items()
        ]  # fmt: skip
        means = [(t.init_mean, t.init_power, t.init_gain) for t, _, _ in tables.values()]
        return configs, means

    def _build_storage(self) -> None:
        configs, inits = self.storage_configs()
        # members of a shared table hash into all of it: they learn its size before a remap
        totals = {c.name: c.num_embeddings for c in configs}
        for m in self.tables:
            for t in m.tables():
                if t.shared:
                    m.set_shared_rows(t.shared, totals[t.shared])
        # every field computes its own rows (dhe): no TorchRec table at all
        self._has_storage = len(configs) > 0
        self.storage = self._storage_factory(configs, inits) if configs else NoStorage()
        self._direct = [len(m.tables()) == 0 for m in self.tables]
        self._storage_keys = [f for c in configs for f in c.feature_names]
        # the decodes' order; it differs from the storage's only where fields share a table
        self._layout_keys = [
            f for i, j in self._slots()
            for f in feature_names(self.tables[i].field, self.tables[i].tables()[j])
        ]  # fmt: skip
        self._lookups = [sum(t.lookups for t in m.tables()) for m in self.tables]
        # remap() yields streams field by field; the storage wants them in its key order
        first_stream = [sum(self._lookups[:i]) for i in range(len(self.tables))]
        index = {}
        for i, m in enumerate(self.tables):
            feats = [f for t in m.tables() for f in feature_names(m.field, t)]
            index.update({f: first_stream[i] + s for s, f in enumerate(feats)})
        self._stream_order = [index[k] for k in self._storage_keys]
        if not configs:  # (dhe) unread, but never empty: TorchScript types a list by its elements
            self._storage_keys, self._layout_keys, self._stream_order = [""], [""], [0]
        self._group_size = [0] * len(self.tables)
        self._slot_major = [False] * len(self.tables)
        # per field: are its lookups' widths mixed (split the block), and those widths
        # (never empty lists: TorchScript infers the attribute's type from its elements)
        self._mixed = [False] * len(self.tables)
        self._widths = [[0] for _ in self.tables]
        cols = []
        for first, size, slot_major in self._groups():
            self._group_size[first] = size
            self._slot_major[first] = slot_major
            widths = [t.width for t in self.tables[first].tables() for _ in range(t.lookups)]
            self._widths[first] = widths or [0]
            self._mixed[first] = len(set(widths)) > 1
            cols.append(size * sum(widths))
        self._split_cols = cols
        # every field one identity lookup (full, hash, ...): storage output is the output
        self._passthrough = all(
            k == 1 and m.tables()[0].width == self.dim
            for k, m in zip(self._lookups, self.tables, strict=True)
        )

    # -- the EmbeddingBagCollection interface ----------------------------------------------------
    def embedding_bag_configs(self) -> list[EmbeddingBagConfig]:
        """The *logical* tables (as the uncompressed collection would have them)."""
        pool = PoolingType.SUM if self.pooling == "sum" else PoolingType.MEAN
        return [
            EmbeddingBagConfig(
                name=p.field,
                embedding_dim=self.dim,
                num_embeddings=p.num_embeddings,
                feature_names=[p.field],
                pooling=pool,
            )
            for p in self.plans
        ]

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        jts = features.to_dict()
        streams: list[torch.Tensor] = []
        stream_lengths: list[torch.Tensor] = []
        for i, m in enumerate(self.tables):
            jt = jts[self._keys[i]]
            for rows, lens in m.remap_jagged(jt.values().long(), jt.lengths()):
                streams.append(rows)
                stream_lengths.append(lens)
        if self._has_storage:
            values = [streams[j] for j in self._stream_order]
            lengths = [stream_lengths[j] for j in self._stream_order]
            kjt = KeyedJaggedTensor(
                keys=self._storage_keys, values=torch.cat(values), lengths=torch.cat(lengths)
            )
            pooled = _in_order(self.storage(kjt), self._layout_keys)  # (B, sum of widths)
        else:
            pooled = torch.zeros(features.stride(), 0)  # (B, 0): every field embeds itself
        if self.detach_storage:
            pooled = pooled.detach()
        if self._passthrough:
            return KeyedTensor(keys=self._keys, length_per_key=self._dims, values=pooled)
        b = pooled.shape[0]
        # split / unbind give views whose backward is a single cat / stack
        blocks = torch.split(pooled, self._split_cols, dim=1)
        params: list[torch.Tensor] = []  # per field: its share of a group decode
        for m in self.tables:
            params.append(m.group_param())
        outs: list[torch.Tensor] = []
        g = 0
        for i, m in enumerate(self.tables):
            n = self._group_size[i]  # > 0: field i leads a group of n fields
            if n > 0 and self._direct[i]:  # no storage rows: the method embeds the ids
                vals = [jts[self._keys[j]].values().long() for j in range(i, i + n)]
                lens = [jts[self._keys[j]].lengths() for j in range(i, i + n)]
                emb = m.embed_group(vals, lens, params[i : i + n], b)  # (B, n, dim)
                outs.append(emb.reshape(b, n, self.dim))
                g += 1
            elif n > 0:
                k = self._lookups[i]
                if self._mixed[i]:
                    parts = list(torch.split(blocks[g], self._widths[i], dim=1))  # k x (B, W_j)
                elif self._slot_major[i]:
                    parts = list(blocks[g].reshape(b, k, n, -1).unbind(1))  # k x (B, n, W)
                else:
                    parts = list(blocks[g].reshape(b, n, k, -1).unbind(2))  # k x (B, n, W)
                # (B, n, dim), possibly a strided view (batched decodes): the cat below
                # is its only copy
                outs.append(m.decode_group(parts, params[i : i + n]).reshape(b, n, self.dim))
                g += 1
        values = outs[0] if len(outs) == 1 else torch.cat(outs, 1)  # (B, F, dim)
        return KeyedTensor(keys=self._keys, length_per_key=self._dims, values=values.reshape(b, -1))

    def penalty(self) -> torch.Tensor | None:
        """The methods' regularizers, summed (None when no method has one)."""
        out: torch.Tensor | None = None
        for m in self.tables:
            p = m.penalty()
            if p is not None:
                out = p if out is None else out + p
        return out

    @property
    def post_training(self) -> bool:
        """Some table is built only from a trained model (``reccomp compress``)."""
        return any(m.post_training for m in self.tables)

    # -- memory --------------------------------------------------------------------------------
    def memory_by_table(self) -> dict[str, int]:
        """Bytes a server holds per field: storage rows, id maps, hash parameters."""
        return {m.field: m.memory_bytes() for m in self.tables}

    def memory_bytes(self) -> int:
        return sum(self.memory_by_table().values())

    def full_bytes(self) -> int:
        return sum(p.num_embeddings * self.dim * BYTES_PER_VALUE for p in self.plans)

    def describe(self) -> list[dict[str, Any]]:
        """Per field: method, resolved options, rows, bytes, ratio, fit statistics."""
        out = []
        for p, m in zip(self.plans, self.tables, strict=False):
            full = p.num_embeddings * self.dim * BYTES_PER_VALUE
            out.append(
                {
                    "field": p.field,
                    "method": p.config.name,
                    "options": p.config.to_dict(),
                    "rows": list(m.rows),
                    "bytes": m.memory_bytes(),
                    "ratio": m.memory_bytes() / full,
                    **{k: v for k, v in getattr(m, "stats", {}).items()},
                }
            )
        return out

    # -- data ----------------------------------------------------------------------------------
    @property
    def needs_fit(self) -> bool:
        return any(m.needs_fit for m in self.tables)

    def fit(self, data: Any) -> CompressedEmbeddingBagCollection:
        """Build data-dependent state from training statistics (a
        :class:`~reccomp.compress.data.FitData`); resizes storage where the data decides sizes."""
        groups: dict[type, list[TableMethod]] = {}
        for m in self.tables:
            if m.needs_fit:
                groups.setdefault(type(m), []).append(m)
        before = self._shapes()
        for cls, mods in groups.items():
            cls.fit_group(mods, data)
        if self._shapes() != before:
            self._build_storage()
        self.fitted = True
        return self

    # -- checkpoints: data-sized tables are rebuilt before their weights load --------------------
    # -- phases (multi-phase methods such as dnis: search, then prune) ------------------------
    @property
    def search_epochs(self) -> int:
        """Epochs of the first phase of a multi-phase method (0: one phase)."""
        return max([m.search_epochs for m in self.tables] + [0])

    @property
    def searching(self) -> bool:
        return any(m.searching for m in self.tables)

    def search_parameters(self) -> list[nn.Parameter]:
        """Parameters trained on validation batches in the search phase (not by the task)."""
        return [p for m in self.tables for p in m.search_parameters()]

    def advance_phase(self) -> list[dict[str, Any]]:
        """End the search phase: each searching table prunes itself; storage is rebuilt with
        the new widths, every table's trained rows and its fused optimizer state (a pruned
        table keeps the state of its kept columns: restarted Adagrad sums would make every
        row's next step full-size, and rare rows get memorised)."""
        from reccomp.compress.transform import optimizer_states, storage_weights

        old = {k: v.detach().clone() for k, v in storage_weights(self).items()}
        old_state = {k: [t.clone() for t in v] for k, v in optimizer_states(self).items()}
        new: dict[str, torch.Tensor] = {}
        new_state: dict[str, list[torch.Tensor]] = {}
        for m in self.tables:
            if m.searching:
                names = [storage_name(m.field, t) for t in m.tables()]
                new.update(zip(names, m.advance([old[n] for n in names]), strict=True))
                states = [old_state.get(n, []) for n in names]
                for j in range(min(len(s) for s in states)):  # one kind of state at a time
                    kept = m.advance_state([s[j] for s in states])
                    for n, t in zip(names, kept, strict=True):  # same names, new widths
                        new_state.setdefault(n, []).append(t)
        self._build_storage()
        with torch.no_grad():
            for name, w in storage_weights(self).items():
                w.copy_(new.get(name, old.get(name, w)).to(w.device))
            for name, ts in optimizer_states(self).items():
                src = new_state.get(name, old_state.get(name, []))
                for t, s in zip(ts, src, strict=False):
                    if t.shape == s.shape:
                        t.copy_(s.to(t.device))
        return self.describe()

    # -- periodic re-clustering (cce; see reccomp.compress.phases.ReclusterCallback) -----------
    def reclusters(self) -> bool:
        """Some table rewrites its rows and id maps during training (a method, not a property:
        TorchScript compiles properties)."""
        return any(m.recluster_every > 0 and m.recluster_times > 0 for m in self.tables)

    def recluster_due(self, step: int) -> bool:
        return any(m.recluster_due(step) for m in self.tables)

    def recluster(self, step: int) -> list[str]:
        """Re-cluster the tables due after training step ``step`` from their current rows;
        returns their fields. Storage keeps its shapes (rows are rewritten in place).
        A rewritten table's optimizer state restarts at its mean: its rows now stand for other
        ids, and zero Adagrad sums would make every row's next step full-size."""
        from reccomp.compress.transform import optimizer_states, storage_weights

        weights, states = storage_weights(self), optimizer_states(self)
        done = []
        for m in self.tables:
            if not m.recluster_due(step):
                continue
            names = [storage_name(m.field, t) for t in m.tables()]
            old = [weights[n].detach().float().cpu().clone() for n in names]
            new = m.recluster(old, step)
            with torch.no_grad():
                for n, w in zip(names, new, strict=True):
                    weights[n].copy_(w.to(weights[n].device, weights[n].dtype))
                    for s in states.get(n, []):
                        s.fill_(float(s.float().mean()))
            done.append(m.field)
        return done

    def _shapes(self) -> tuple[list[list[int]], list[list[int]]]:
        return [list(m.rows) for m in self.tables], [
            [t.width for t in m.tables()] for m in self.tables
        ]

    def get_extra_state(self) -> dict[str, Any]:
        from reccomp.compress.transform import optimizer_states

        rows, widths = self._shapes()
        phases = [m.phase for m in self.tables]
        # the fused optimizer's state (Adagrad sums) lives inside FBGEMM's tables, outside
        # any state_dict: without it a resumed run restarts every row's step size
        states = {k: [t.detach().clone() for t in v] for k, v in optimizer_states(self).items()}
        return {"rows": rows, "widths": widths, "phases": phases, "fitted": self.fitted,
                "optimizer": states}  # fmt: skip

    def set_extra_state(self, state: dict[str, Any]) -> None:
        rows, widths = state["rows"], state.get("widths")
        phases = state.get("phases") or [""] * len(self.tables)
        before = self._shapes()
        for i, m in enumerate(self.tables):
            if phases[i] and widths is not None:
                m.set_phase(phases[i], widths[i])
            m.resize(rows[i], None if widths is None else widths[i])
        if self._shapes() != before:
            self._build_storage()
        self.fitted = bool(state["fitted"])
        from reccomp.compress.transform import optimizer_states

        saved = state.get("optimizer") or {}
        with torch.no_grad():
            for name, tensors in optimizer_states(self).items():
                for t, s in zip(tensors, saved.get(name, []), strict=False):
                    if t.shape == s.shape:
                        t.copy_(s.to(t.device))

    # -- serving -------------------------------------------------------------------------------
    def to_serving(self) -> CompressedEmbeddingBagCollection:
        """A copy for inference and TorchScript: storage becomes TorchRec's plain
        ``EmbeddingBagCollection`` (FBGEMM's fused training module does not script) with
        the same weights.

        >>> scripted = torch.jit.script(collection.to_serving())  # doctest: +SKIP
        """
        configs, _ = self.storage_configs()
        plain: nn.Module = NoStorage()
        if configs:
            plain = EmbeddingBagCollection(tables=configs, device=torch.device("cpu"))
            src = {k: v for k, v in self.storage.state_dict().items()}
            plain.load_state_dict({k: v.detach().cpu() for k, v in src.items()})
        storage, self.storage = self.storage, nn.Identity()  # don't deep-copy FBGEMM state
        factory, self._storage_factory = self._storage_factory, None
        try:
            out = copy.deepcopy(self)
        finally:
            self.storage, self._storage_factory = storage, factory
        out.storage = plain
        return out.eval()


class NoStorage(nn.Module):
    """The storage of a collection whose every field computes its rows itself (``dhe``):
    no table, nothing to look up, shard or quantize."""

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        return KeyedTensor(keys=[], length_per_key=[], values=torch.zeros(features.stride(), 0))


def storage_name(field: str, t: TableSpec) -> str:
    """The TorchRec table holding storage table ``t`` of ``field``: the field's name and the
    spec's suffix (``user``, ``user:q``), or the name of a table several fields share
    (``t.shared``). Every storage table is named through here.

    >>> storage_name("user", TableSpec(":q", 10, 4))
    'user:q'
    >>> storage_name("user", TableSpec("", 10, 4, shared="robe"))
    'robe'
    """
    return t.shared or f"{field}{t.suffix}"


def feature_names(field: str, t: TableSpec) -> list[str]:
    """The storage features of ``field``'s lookups into ``t``: ``FIELD`` and the suffix, plus
    ``#k`` per lookup when there are several. Always the field's own, so a shared table has
    distinct features of each member."""
    name = f"{field}{t.suffix}"
    return [name] if t.lookups == 1 else [f"{name}#{k}" for k in range(t.lookups)]


def table_fields(config: EmbeddingBagConfig) -> list[str]:
    """The fields whose rows storage table ``config`` holds (several for a shared table),
    read from its feature names (see :func:`feature_names`; field names hold no ``:``/``#``).

    >>> table_fields(EmbeddingBagConfig(num_embeddings=8, embedding_dim=4, name="robe",
    ...                                 feature_names=["a#0", "a#1", "b:q"]))
    ['a', 'b']
    """
    out: list[str] = []
    for f in config.feature_names:
        field = f.split("#")[0].split(":")[0]
        if field not in out:
            out.append(field)
    return out


def _in_order(kt: KeyedTensor, keys: list[str]) -> torch.Tensor:
    """The pooled rows of ``keys``, side by side in that order. A sharded or quantized
    storage may return its tables in another order (grouped by rank or data type): read by
    key, never by position."""
    if kt.keys() == keys:
        return kt.values()
    return torch.cat([kt[k] for k in keys], dim=1)


def build_collection(
    schema: Schema,
    spec: Any,
    device: torch.device | None = None,
    data: Any = None,
) -> CompressedEmbeddingBagCollection:
    """The collection of ``spec.method`` for ``schema``; fitted now if ``data`` is given."""
    from reccomp.modules.embedding import fused_collection

    def factory(configs: list[EmbeddingBagConfig], inits: list[tuple[float, float, float]]):
        return fused_collection(configs, spec, device, inits=inits)

    coll = CompressedEmbeddingBagCollection(
        plan_tables(schema, spec), spec.dim, factory, spec.pooling
    )
    if data is not None and coll.needs_fit:
        coll.fit(data)
    return coll


__all__ = [
    "METHODS",
    "BudgetError",
    "CompressedEmbeddingBagCollection",
    "TablePlan",
    "build_collection",
    "feature_names",
    "plan_tables",
    "storage_name",
    "table_fields",
]
