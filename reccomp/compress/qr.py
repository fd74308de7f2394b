"""``qr``: quotient-remainder compositional embeddings.

Shi et al., "Compositional Embeddings Using Complementary Partitions for Memory-Efficient
Recommendation Systems", KDD 2020. Id ``x`` takes row ``x // c`` of a quotient table
(``ceil(n / c)`` rows) and row ``x % c`` of a remainder table (``c`` rows); no two ids get
the same pair, so every id keeps a unique embedding at about ``n / c + c`` rows.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
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

_COMBINERS = ("mult", "add", "concat")


@register("qr")
@dataclass
class QRConfig(MethodConfig):
    """Quotient-remainder trick (Shi et al., KDD 2020).

    Args:
        num_collisions: ``c``, ids per quotient row (= remainder rows); ``None`` = the
            smallest ``c`` that fits the budget.
        combiner: ``mult`` (element-wise product, the paper's best), ``add``, or
            ``concat`` of two half-width rows (dim % 8 == 0).
    """

    num_collisions: int | None = None
    combiner: str = "mult"
    size_options: ClassVar[tuple[str, ...]] = ("num_collisions",)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.combiner not in _COMBINERS:
            raise ValueError(f"qr: combiner must be one of {_COMBINERS}, got {self.combiner!r}")
        if self.num_collisions is not None and self.num_collisions < 1:
            raise ValueError(f"qr: num_collisions must be >= 1, got {self.num_collisions}")


def _width(dim: int, config: QRConfig) -> int:
    if config.combiner == "concat":
        if dim % 8:
            raise ValueError(f"qr concat needs dim % 8 == 0 (FBGEMM widths), got {dim}")
        return dim // 2
    return dim


def _rows(n: int, c: int) -> int:
    return ceil_div(n, c) + c


def _fewest(n: int) -> int:
    """The c with the fewest rows ceil(n / c) + c: isqrt(n) or one more (at a perfect square
    one more costs a row more). ``min_bytes`` and ``fit_budget`` both end there."""
    c = max(1, math.isqrt(n))
    return c if _rows(n, c) <= _rows(n, c + 1) else c + 1


class QRTable(TableMethod):
    """Rows ``x // c`` (quotient table) and ``x % c`` (remainder table).

    With ``mult`` the remainder table starts at 1 + noise, so training begins from the
    quotient rows instead of from a product of two small numbers.
    """

    def __init__(self, field: str, num_embeddings: int, dim: int, config: QRConfig, **kw) -> None:
        super().__init__(field, num_embeddings, dim, config, **kw)
        if config.combiner == "mult" and self.multi_valued:
            # a product of pooled rows is not the pool of products for bags of > 1 id
            raise ValueError(
                f"qr combiner 'mult' on multi-valued field {field!r}: use 'add' or 'concat'"
            )
        self.c = int(config.num_collisions)  # type: ignore[arg-type]
        self.rows = [ceil_div(num_embeddings, self.c), self.c]
        self.width = _width(dim, config)
        self.mode = _COMBINERS.index(config.combiner)

    def tables(self) -> list[TableSpec]:
        mean = 1.0 if self.mode == 0 else 0.0
        return [
            TableSpec(":q", self.rows[0], self.width),
            TableSpec(":r", self.rows[1], self.width, mean),
        ]

    @classmethod
    def table_bytes(cls, num_embeddings: int, dim: int, config: MethodConfig) -> int:
        return _rows(num_embeddings, config.num_collisions) * _width(dim, config) * BYTES_PER_VALUE

    @classmethod
    def min_bytes(cls, num_embeddings: int, dim: int, config: MethodConfig) -> int:
        return (
            _rows(num_embeddings, _fewest(num_embeddings)) * _width(dim, config) * BYTES_PER_VALUE
        )

    @classmethod
    def fit_budget(cls, num_embeddings, dim, config, budget_bytes):
        row = _width(dim, config) * BYTES_PER_VALUE
        n = num_embeddings
        # rows(c) does not rise as c grows to _fewest(n): the smallest c that fits keeps most rows
        lo, hi = 1, _fewest(n)
        if _rows(n, hi) * row > budget_bytes:
            raise BudgetError("qr needs about 2 sqrt(n) rows")
        while lo < hi:
            mid = (lo + hi) // 2
            if _rows(n, mid) * row <= budget_bytes:
                hi = mid
            else:
                lo = mid + 1
        return dataclasses.replace(config, num_collisions=lo)

    def remap(self, ids: torch.Tensor) -> list[torch.Tensor]:
        x = in_range(ids, self.num_embeddings)
        return [torch.div(x, self.c, rounding_mode="floor"), x.remainder(self.c)]

    def decode(self, pooled: list[torch.Tensor]) -> torch.Tensor:
        if self.mode == 0:
            return pooled[0] * pooled[1]
        if self.mode == 1:
            return pooled[0] + pooled[1]
        return torch.cat(pooled, dim=-1)  # (B, dim)


QRConfig.module = QRTable
