"""``tt_rec``: tensor-train embeddings, a table as the product of three small cores.

Yin et al., "TT-Rec: Tensor Train Compression for Deep Learning Recommendation Model
Embeddings", MLSys 2021. The (n x dim) table is read as a tensor of shape
(n1 d1) x (n2 d2) x (n3 d3) with ``n <= n1 n2 n3`` and ``dim = d1 d2 d3``, stored in
tensor-train form with rank ``R``: id ``x`` has mixed-radix digits ``(i1, i2, i3)`` and its
row is the chain product of one slice of each core,
``E[x] = G1[i1] (d1 x R) . G2[i2] (R x d2 x R) . G3[i3] (R x d3)``, flattened to ``dim``.
Memory is ``n1 d1 R + n2 R d2 R + n3 R d3`` values: about ``3 n^(1/3)`` rows instead of ``n``.

Each core is an ordinary TorchRec table with one row per digit value (core k: ``n_k`` rows
of width ``d1 R``, ``R d2 R``, ``R d3``): a core slice is a row lookup, so FBGEMM's fused
kernels look the slices up and train them with the sparse optimizer (each core row is one
embedding row), and TorchRec's planner shards them like any table. The decode is the chain
product, which is not linear in the pooled rows: multi-valued fields are refused.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import ClassVar

import torch

from reccomp.compress.base import (
    BYTES_PER_VALUE,
    BudgetError,
    TableMethod,
    TableSpec,
    ceil_div,
    in_range,
)
from reccomp.compress.registry import MethodConfig, register

CORES = 3
MIN_VALID_RANK = 4  # R = 4 makes every width a multiple of 4, whatever the dim factors


@register("tt_rec")
@dataclass
class TTRecConfig(MethodConfig):
    """Tensor-train cores (Yin et al., MLSys 2021).

    Args:
        rank: ``R``, the TT-rank of both inner bonds; ``None`` = the largest that fits the
            budget. Every core width (``d1 R``, ``R d2 R``, ``R d3``) must be a multiple of 4
            (FBGEMM): an odd ``R`` needs every ``d_k`` to be a multiple of 4 (dim % 64 == 0),
            ``R`` = 2 mod 4 needs even ``d1`` and ``d3``; a multiple of 4 always works.
        dim_factors: ``[d1, d2, d3]`` with product ``dim``; ``None`` = the most balanced
            factors valid for ``R`` (ties: smallest ``d2``, the middle core being ``R^2 d2``
            wide, then smallest ``d1``).
    """

    rank: int | None = None
    dim_factors: list[int] | None = None
    size_options: ClassVar[tuple[str, ...]] = ("rank",)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rank is not None and self.rank < 1:
            raise ValueError(f"tt_rec: rank must be >= 1, got {self.rank}")
        if self.dim_factors is not None:
            self.dim_factors = [int(d) for d in self.dim_factors]
            if len(self.dim_factors) != CORES or min(self.dim_factors) < 1:
                raise ValueError(
                    f"tt_rec: dim_factors must be {CORES} positive ints, got {self.dim_factors}"
                )


def row_factors(n: int) -> tuple[int, int, int]:
    """``(n1, n2, n3)``, each about ``n^(1/3)``, with ``n1 n2 n3 >= n`` (few spare ids).

    >>> row_factors(66217), row_factors(3), row_factors(1)
    ((41, 41, 40), (2, 2, 1), (1, 1, 1))
    """
    n = max(int(n), 1)
    n1 = max(1, round(n ** (1 / 3)))
    while n1**3 < n:
        n1 += 1
    while n1 > 1 and (n1 - 1) ** 3 >= n:
        n1 -= 1
    n2 = max(1, math.isqrt(ceil_div(n, n1)))
    while n1 * n2 * n2 < n:
        n2 += 1
    return n1, n2, ceil_div(n, n1 * n2)


def _widths(d: tuple[int, int, int], r: int) -> tuple[int, int, int]:
    return d[0] * r, r * d[1] * r, r * d[2]


def _valid(d: tuple[int, int, int], r: int) -> bool:
    return all(w % 4 == 0 for w in _widths(d, r))


def dim_factors(dim: int, rank: int, fixed: list[int] | None = None) -> tuple[int, int, int] | None:
    """The factors ``(d1, d2, d3)`` of ``dim`` used at ``rank`` (None: no factors give
    FBGEMM widths at this rank).

    >>> dim_factors(16, 8), dim_factors(12, 2), dim_factors(16, 3), dim_factors(64, 1)
    ((2, 2, 4), (2, 3, 2), None, (4, 4, 4))
    """
    if fixed is not None:
        d = (fixed[0], fixed[1], fixed[2])
        if d[0] * d[1] * d[2] != dim:
            raise ValueError(f"tt_rec: dim_factors {list(fixed)} do not multiply to dim {dim}")
        return d if _valid(d, rank) else None
    divisors = [k for k in range(1, dim + 1) if dim % k == 0]
    cands = [
        (a, b, dim // (a * b))
        for a, b in itertools.product(divisors, divisors)
        if dim % (a * b) == 0 and _valid((a, b, dim // (a * b)), rank)
    ]
    if not cands:
        return None
    return min(cands, key=lambda d: (Fraction(max(d), min(d)), d[1], d[0]))


def tt_bytes(num_embeddings: int, dim: int, rank: int, fixed: list[int] | None = None) -> int:
    """Bytes of the three cores at ``rank`` (``-1`` when the rank is not valid for ``dim``)."""
    d = dim_factors(dim, rank, fixed)
    if d is None:
        return -1
    n = row_factors(num_embeddings)
    return sum(nk * w for nk, w in zip(n, _widths(d, rank), strict=True)) * BYTES_PER_VALUE


def _checked_factors(dim: int, rank: int, fixed: list[int] | None) -> tuple[int, int, int]:
    d = dim_factors(dim, rank, fixed)
    if d is None:
        raise ValueError(
            f"tt_rec: rank {rank} gives no core widths that are multiples of 4 for dim {dim}"
            f"{'' if fixed is None else f' and dim_factors {list(fixed)}'} (FBGEMM); "
            "a multiple of 4 always works"
        )
    return d


def _max_rank(num_embeddings: int, d: tuple[int, int, int]) -> int:
    """Ranks past this one add bytes but no expressiveness: TT-ranks of a tensor with modes
    (n1 d1, n2 d2, n3 d3) are at most min(n1 d1, n2 d2 n3 d3) and min(n1 d1 n2 d2, n3 d3)."""
    n1, n2, n3 = row_factors(num_embeddings)
    a, b, c = n1 * d[0], n2 * d[1], n3 * d[2]
    return max(min(a, b * c), min(a * b, c))


class TTRecTable(TableMethod):
    """Digits ``(i1, i2, i3)`` of the id -> rows of the three core tables -> chain product.

    >>> cfg = TTRecConfig(rank=4)
    >>> t = TTRecTable("f", 1000, 16, cfg)
    >>> t.rows, [s.width for s in t.tables()]
    ([10, 10, 10], [8, 32, 16])
    """

    def __init__(
        self, field: str, num_embeddings: int, dim: int, config: TTRecConfig, **kw
    ) -> None:
        super().__init__(field, num_embeddings, dim, config, **kw)
        if self.multi_valued:
            # the decode is a product of the pooled core rows, and a product of pools is not
            # the pool of the ids' products for bags of more than one id
            raise ValueError(
                f"tt_rec on multi-valued field {field!r}: its decode is a product of core "
                "rows, not linear in the pooled rows (use qr with combiner 'add', or hash)"
            )
        self.rank = int(config.rank)  # type: ignore[arg-type]
        self.d1, self.d2, self.d3 = _checked_factors(dim, self.rank, config.dim_factors)
        self.rows = list(row_factors(num_embeddings))
        self.n23 = self.rows[1] * self.rows[2]  # ids per value of the first digit
        self.n3 = self.rows[2]

    def tables(self) -> list[TableSpec]:
        # each core starts at std gain * init_std^(1/3): an output entry sums R^2 products
        # of three core entries, so gain = R^(-1/3) gives it std init_std (the paper's
        # point: a product of three default-scale cores starts far too small or too large)
        gain = float(self.rank) ** (-1.0 / CORES)
        widths = _widths((self.d1, self.d2, self.d3), self.rank)
        return [
            TableSpec(f":{k}", r, w, init_power=1.0 / CORES, init_gain=gain)
            for k, (r, w) in enumerate(zip(self.rows, widths, strict=True))
        ]

    # -- sizes ---------------------------------------------------------------------------------
    @classmethod
    def table_bytes(cls, num_embeddings: int, dim: int, config: MethodConfig) -> int:
        _checked_factors(dim, config.rank, config.dim_factors)
        return tt_bytes(num_embeddings, dim, config.rank, config.dim_factors)

    @classmethod
    def min_bytes(cls, num_embeddings: int, dim: int, config: MethodConfig) -> int:
        # R = 4 is valid with every factorization, so no rank above 4 costs less
        sizes = [tt_bytes(num_embeddings, dim, r, config.dim_factors) for r in range(1, 5)]
        return min(b for b in sizes if b >= 0)

    @classmethod
    def fit_budget(cls, num_embeddings, dim, config, budget_bytes):
        """The largest valid rank whose cores fit ``budget_bytes`` (bytes are not monotone
        in R: the factors change with R mod 4), capped where more rank adds nothing."""
        n1, n2, n3 = row_factors(num_embeddings)
        top = max(n1, n3) * dim  # above every factorization's _max_rank
        best = None
        r = 1
        # every core-2 row holds at least R^2 values: past this R nothing fits
        while n2 * r * r * BYTES_PER_VALUE <= budget_bytes and r <= top:
            b = tt_bytes(num_embeddings, dim, r, config.dim_factors)
            if 0 <= b <= budget_bytes:
                d = dim_factors(dim, r, config.dim_factors)
                if best is None or r <= _max_rank(num_embeddings, d):  # type: ignore[arg-type]
                    best = r
            r += 1
        if best is None:
            raise BudgetError(
                "tt_rec needs its smallest valid rank "
                f"({cls.min_bytes(num_embeddings, dim, config)} bytes for this table)"
            )
        return dataclasses.replace(config, rank=best)

    # -- lookup --------------------------------------------------------------------------------
    def remap(self, ids: torch.Tensor) -> list[torch.Tensor]:
        """(N,) ids -> three (N,) digit streams, one per core table."""
        x = in_range(ids, self.num_embeddings)
        i1 = torch.div(x, self.n23, rounding_mode="floor")
        i2 = torch.div(x, self.n3, rounding_mode="floor").remainder(self.rows[1])
        return [i1, i2, x.remainder(self.n3)]

    def decode(self, pooled: list[torch.Tensor]) -> torch.Tensor:
        """Core rows (..., d1 R), (..., R d2 R), (..., R d3) -> (..., dim): the chain product
        as two batched matrix products, contracted left to right (d1 R d2 R + d1 d2 R d3
        multiply-adds per id, the fewest of the two orders for balanced factors).

        Element-wise over the leading dims, so the base ``decode_group`` serves a stacked
        (B, n, W) group as is; the collection groups fields only when all their storage
        tables have one width, which three cores never have, so each field decodes alone.
        """
        r = self.rank
        a = pooled[0].unflatten(-1, [self.d1, r])  # (..., d1, R)
        b = pooled[1].unflatten(-1, [r, self.d2 * r])  # (..., R, d2 R)
        c = pooled[2].unflatten(-1, [r, self.d3])  # (..., R, d3)
        ab = torch.matmul(a, b).unflatten(-1, [self.d2, r]).flatten(-3, -2)  # (..., d1 d2, R)
        return torch.matmul(ab, c).flatten(-2)  # (..., d1 d2 d3)


TTRecConfig.module = TTRecTable
