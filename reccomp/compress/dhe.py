"""``dhe``: Deep Hash Embedding: no table; k hashes of the id, decoded by a small network.

Kang et al., "Learning to Embed Categorical Features without Embedding Tables for
Recommendation", KDD 2021. Id ``x`` is encoded as ``k`` universal hashes
``((a_j x + b_j) mod p) mod m``, each scaled to ``[-1, 1]`` (the paper's uniform encoding), and
an MLP ``k -> h -> ... -> h -> dim`` with Mish activations decodes that dense (k,) code into
the id's embedding; bags are pooled by sum. Nothing is stored per id: the bytes are the
network's weights and the (k, 2) hash parameters, and serving costs an MLP per id instead of
a row read (``stats['flops_per_id']``).

The collection has no storage table for such a field: it calls :meth:`DHETable.embed_group`
with the ids of a run of fields of equal shapes, which encodes them all in one pass (every
field uses the same k hashes; each has its own network) and runs the networks as batched
matrix products.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from reccomp.compress.base import (
    BYTES_PER_VALUE,
    BudgetError,
    TableMethod,
    TableSpec,
    field_seed,
    hash_params,
    power_weight,
)
from reccomp.compress.registry import MethodConfig, register

HASH_BYTES = 8  # (a, b) of one hash as int32: a, b < 2^31
_MISH_SQ = 0.452  # E[mish(z)^2] for z ~ N(0, 1): keeps the init's output at init_scale


@register("dhe")
@dataclass
class DHEConfig(MethodConfig):
    """Deep Hash Embedding (Kang et al., KDD 2021).

    Args:
        num_hashes: ``k``, hash functions (the width of the dense encoding); ``None`` =
            ``hash_ratio * hidden`` from the budget.
        hidden: ``h``, width of every hidden layer; ``None`` = the largest that fits the budget.
        layers: hidden layers (each ``h`` wide, Mish after each), >= 1.
        buckets: ``m``, each hash's range before it is scaled to ``[-1, 1]`` (the paper: 10^6).
        hash_ratio: ``k / h`` when the budget chooses the sizes: ``h`` is the largest with
            ``k = hash_ratio * h`` in the budget, then ``k`` takes the bytes left over.
        budget_power: with a budget shared among fields, a field's share is proportional to
            ``cardinality ** budget_power`` (1: to its full table, as other methods; 0: equal
            shares, the default). A network's capacity is needed for the ids that matter,
            which grow slower than the cardinality: on synthetic Criteo (26 fields, 0.01 of
            the full bytes) equal shares gave 0.781 test AUC, power 0.5 0.744.
        init_scale: standard deviation of the initial embeddings (the output layer's init).
        lr_scale: the network learns this many times faster than the task's other dense
            parameters: its weights are stored divided by it and multiplied back in the
            forward, and Adam's steps do not depend on a parameter's scale.
    """

    num_hashes: int | None = None
    hidden: int | None = None
    layers: int = 1
    buckets: int = 1_000_000
    hash_ratio: float = 4.0
    budget_power: float = 0.0
    init_scale: float = 0.05
    lr_scale: float = 10.0
    size_options: ClassVar[tuple[str, ...]] = ("num_hashes", "hidden")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require_together("num_hashes", "hidden")
        if self.hidden is not None and (self.hidden < 1 or self.num_hashes < 1):
            raise ValueError("dhe: num_hashes and hidden must be >= 1")
        if self.layers < 1:
            raise ValueError(f"dhe: layers must be >= 1, got {self.layers}")
        if not 2 <= self.buckets < 2**31:
            raise ValueError(f"dhe: buckets must be in [2, 2^31), got {self.buckets}")
        if min(self.hash_ratio, self.init_scale, self.lr_scale) <= 0:
            raise ValueError("dhe: hash_ratio, init_scale and lr_scale must be > 0")
        if not 0.0 <= self.budget_power <= 1.0:
            raise ValueError(f"dhe: budget_power must be in [0, 1], got {self.budget_power}")


def layer_shapes(k: int, h: int, layers: int, dim: int) -> list[tuple[int, int]]:
    """(in, out) of every linear layer: ``k -> h``, ``layers - 1`` times ``h -> h``, ``h -> dim``.

    >>> layer_shapes(8, 4, 2, 16)
    [(8, 4), (4, 4), (4, 16)]
    """
    return [(k, h)] + [(h, h)] * (layers - 1) + [(h, dim)]


def _bytes(k: int, h: int, layers: int, dim: int) -> int:
    params = sum(i * o + o for i, o in layer_shapes(k, h, layers, dim))
    return params * BYTES_PER_VALUE + k * HASH_BYTES


def _k(h: int, config: DHEConfig) -> int:
    return max(1, round(config.hash_ratio * h))


def flops_per_id(k: int, h: int, layers: int, dim: int) -> int:
    """Multiply-adds of one id's network, counted as 2 FLOPs each (biases, activations and
    the k hashes not included)."""
    return 2 * sum(i * o for i, o in layer_shapes(k, h, layers, dim))


class DHETable(TableMethod):
    """One field's network; its weights are one flat parameter (one stacked block per group).

    The encoding of id ``x``: ``2 ((a_j x + b_j) mod p mod m) / (m - 1) - 1``, j < k.
    """

    def __init__(self, field: str, num_embeddings: int, dim: int, config: DHEConfig, **kw) -> None:
        super().__init__(field, num_embeddings, dim, config, **kw)
        self.k, self.h = int(config.num_hashes), int(config.hidden)  # type: ignore[arg-type]
        self.layers, self.buckets = config.layers, config.buckets
        self.shapes = layer_shapes(self.k, self.h, self.layers, dim)
        self.rows = []  # no storage table
        # the same k hashes for every field (seeded by the method, not the field), so a group
        # of fields is encoded in one pass; each field decodes with its own network
        pairs = torch.stack([hash_params(field_seed("dhe", j)) for j in range(self.k)])
        self.register_buffer("hashes_", pairs.to(torch.int32))  # (k, 2)
        self.lr_scale = float(config.lr_scale)
        self.weight = nn.Parameter(self._init(config.init_scale) / self.lr_scale)
        self.stats = {
            "flops_per_id": flops_per_id(self.k, self.h, self.layers, dim),
            "hashes_per_id": self.k,
        }

    def _init(self, scale: float) -> torch.Tensor:
        """Flat (P,) weights, layer by layer ``W (in, out)`` then ``b (out,)``: unit-variance
        pre-activations (the encoding has variance 1/3), He init between hidden layers, and
        an output layer whose outputs start with std ``scale``."""
        g = torch.Generator().manual_seed(field_seed(self.field, self.seed))
        parts = []
        last = len(self.shapes) - 1
        for i, (fan_in, fan_out) in enumerate(self.shapes):
            std = math.sqrt(3.0 / fan_in) if i == 0 else math.sqrt(2.0 / fan_in)
            if i == last:
                std = scale / math.sqrt(fan_in * _MISH_SQ)
            parts += [torch.randn(fan_in * fan_out, generator=g) * std, torch.zeros(fan_out)]
        return torch.cat(parts)

    # -- sizes ---------------------------------------------------------------------------------
    @classmethod
    def table_bytes(cls, num_embeddings: int, dim: int, config: MethodConfig) -> int:
        return _bytes(config.num_hashes, config.hidden, config.layers, dim)

    @classmethod
    def min_bytes(cls, num_embeddings: int, dim: int, config: MethodConfig) -> int:
        return _bytes(_k(1, config), 1, config.layers, dim)

    @classmethod
    def budget_weight(cls, num_embeddings: int, dim: int, config: MethodConfig) -> float:
        return power_weight(num_embeddings, dim, config.budget_power)

    @classmethod
    def fit_budget(cls, num_embeddings, dim, config, budget_bytes):
        def size(h: int) -> int:
            return _bytes(_k(h, config), h, config.layers, dim)

        if size(1) > budget_bytes:
            raise BudgetError(f"dhe needs {size(1)} bytes (k = h = 1) for {config.layers} layers")
        lo, hi = 1, 2
        while size(hi) <= budget_bytes:  # bytes grow with h: double, then bisect
            lo, hi = hi, hi * 2
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if size(mid) <= budget_bytes else (lo, mid)
        # the bytes left over go to more hashes: each costs a row of the first layer
        fixed = _bytes(0, lo, config.layers, dim)
        k = max(_k(lo, config), (budget_bytes - fixed) // (lo * BYTES_PER_VALUE + HASH_BYTES))
        return dataclasses.replace(config, num_hashes=int(k), hidden=lo)

    # -- the module ----------------------------------------------------------------------------
    def tables(self) -> list[TableSpec]:
        return []

    def remap(self, ids: torch.Tensor) -> list[torch.Tensor]:
        out: list[torch.Tensor] = []  # nothing to look up
        return out

    def decode_signature(self) -> tuple:
        # multi-valued fields embed alone (their bags are pooled by segment, not by slot)
        alone = self.field if self.multi_valued else ""
        return (type(self).__name__, tuple(self.shapes), self.buckets, alone)

    def group_param(self) -> torch.Tensor:
        """The network's flat (P,) weights (the stored parameter times ``lr_scale``)."""
        return self.weight * self.lr_scale

    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        """(...) int64 ids -> (..., k) float codes in [-1, 1]."""
        p = 2147483647  # base._PRIME, spelled out for TorchScript
        ab = self.hashes_.long()  # (k, 2)
        x = ids.remainder(p).unsqueeze(-1)  # (..., 1), in [0, p): a x + b fits int64
        h = (x * ab[:, 0] + ab[:, 1]).remainder(p).remainder(self.buckets)  # (..., k)
        return h.float() * (2.0 / (self.buckets - 1)) - 1.0

    def network(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """(n, R, k) codes and (n, P) flat weights of n fields -> (n, R, dim) embeddings."""
        o = 0
        last = len(self.shapes) - 1
        for i, (fan_in, fan_out) in enumerate(self.shapes):
            w = weights[:, o : o + fan_in * fan_out].reshape(-1, fan_in, fan_out)
            o += fan_in * fan_out
            b = weights[:, o : o + fan_out].unsqueeze(1)  # (n, 1, out)
            o += fan_out
            x = torch.baddbmm(b, x, w)  # (n, R, out)
            if i < last:
                x = F.mish(x)
        return x

    def embed(self, ids: torch.Tensor, lengths: torch.Tensor, batch_size: int) -> torch.Tensor:
        """(N,) ids, (B,) bag lengths -> (B, dim): every id's network output, summed per bag."""
        weights = self.group_param().unsqueeze(0)  # (1, P)
        rows = self.network(self.encode(ids).unsqueeze(0), weights)[0]  # (N, dim)
        seg = torch.repeat_interleave(
            torch.arange(batch_size, device=ids.device), lengths.long(), output_size=ids.shape[0]
        )  # (N,) bag of each id
        out = torch.zeros(batch_size, self.dim, dtype=rows.dtype, device=rows.device)
        return out.index_add(0, seg, rows)

    def embed_group(
        self,
        values: list[torch.Tensor],
        lengths: list[torch.Tensor],
        params: list[torch.Tensor],
        batch_size: int,
    ) -> torch.Tensor:
        """n fields' ids ((N_j,) each), bag lengths ((B,) each) and flat weights -> (B, n, dim).

        Training runs each network once per *distinct* id of the batch (about 1/7 of the ids
        of a Criteo-like batch). Serving and evaluation place each field's id in its bag's
        slot (fields of a group hold at most one id per bag) and run (n, B) ids at once.
        """
        if self.training and not torch.jit.is_scripting():
            return self._embed_distinct(values, lengths, params, batch_size)
        if len(values) == 1:
            return self.embed(values[0], lengths[0], batch_size).unsqueeze(1)
        ids, present = [], []
        slots = torch.arange(batch_size, device=values[0].device)
        for j in range(len(values)):  # (TorchScript has no zip(strict=))
            v, n = values[j], lengths[j]
            seg = torch.repeat_interleave(slots, n.long(), output_size=v.shape[0])  # (N_j,)
            ids.append(torch.zeros(batch_size, dtype=v.dtype, device=v.device).index_put((seg,), v))
            present.append((n > 0).to(torch.float32))
        rows = self.network(self.encode(torch.stack(ids)), torch.stack(params))  # (n, B, dim)
        rows = rows * torch.stack(present).unsqueeze(-1)  # empty bags embed to zero
        return rows.transpose(0, 1)  # (B, n, dim)

    @torch.jit.unused
    def _embed_distinct(
        self,
        values: list[torch.Tensor],
        lengths: list[torch.Tensor],
        params: list[torch.Tensor],
        batch_size: int,
    ) -> torch.Tensor:
        n = len(values)
        found = [torch.unique(v, return_inverse=True) for v in values]  # (U_j,), (N_j,)
        width = max(int(u.shape[0]) for u, _ in found)
        ids = torch.stack([F.pad(u, (0, width - u.shape[0])) for u, _ in found])  # (n, U)
        rows = self.network(self.encode(ids), torch.stack(params))  # (n, U, dim)
        # one gather and one scatter for the whole group: row j * U + inverse of field j's
        # ids, summed into output row bag * n + j of the (B, n, dim) block
        slots = torch.arange(batch_size, device=ids.device)
        src, dst = [], []
        for j, ((_, inv), lens) in enumerate(zip(found, lengths, strict=True)):
            src.append(inv + j * width)
            bags = torch.repeat_interleave(slots, lens.long(), output_size=inv.shape[0])
            dst.append(bags * n + j)
        picked = rows.reshape(n * width, self.dim).index_select(0, torch.cat(src))  # (N, dim)
        out = torch.zeros(batch_size * n, self.dim, dtype=rows.dtype, device=rows.device)
        return out.index_add(0, torch.cat(dst), picked).reshape(batch_size, n, self.dim)


DHEConfig.module = DHETable
