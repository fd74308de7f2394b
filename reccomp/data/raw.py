"""What a source parser hands to preprocessing: raw columns plus a report of skipped lines.

Parsers (MovieLens, synthetic generators) return :class:`RawData`; preprocessing
(:mod:`reccomp.data.prepare`) builds vocabularies on the training split, encodes rows, and
writes the cache. Criteo files larger than memory bypass this and stream into the cache
directly (:mod:`reccomp.data.criteo`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


class MalformedInputError(ValueError):
    """Raised for a malformed line when parsing is strict (``strict: true``)."""


@dataclass
class ParseReport:
    """Counts of lines read and skipped, with a few examples of why.

    Example::

        >>> r = ParseReport(source="u.data")
        >>> r.add_skipped(7, "expected 4 columns, got 3")
        >>> r.lines = 10
        >>> r.summary()
        'u.data: 1 of 10 lines skipped: line 7: expected 4 columns, got 3'
    """

    source: str = ""
    lines: int = 0
    skipped: int = 0
    padded: int = 0
    examples: list[str] = field(default_factory=list)
    strict: bool = False

    def add_skipped(self, line_no: int, why: str, count: int = 1) -> None:
        if self.strict:
            raise MalformedInputError(f"{self.source}: line {line_no}: {why}")
        self.skipped += count
        if len(self.examples) < 5:
            self.examples.append(f"line {line_no}: {why}")

    def merge(self, other: ParseReport) -> None:
        self.lines += other.lines
        self.skipped += other.skipped
        self.padded += other.padded
        self.examples = (self.examples + other.examples)[:5]

    def summary(self) -> str:
        msg = f"{self.source}: {self.skipped} of {self.lines} lines skipped"
        if self.examples and self.skipped:
            msg += ": " + "; ".join(self.examples)
        if self.padded:
            msg += f" ({self.padded} short lines padded with empty fields)"
        return msg

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "lines": self.lines,
            "skipped": self.skipped,
            "padded": self.padded,
            "examples": self.examples,
        }


@dataclass
class RawData:
    """Parsed interactions, one row per example, before vocabularies and splits.

    Args:
        sparse: field name -> raw values, shape ``(N,)`` (ints or strings) for single-valued
            fields or ``(N, L)`` int64 padded with -1 for multi-valued bags (e.g. genres).
            Missing single values are given by ``missing[name]``.
        dense: ``(N, n_dense)`` float32 (NaN allowed: treated as missing), or ``None``.
        dense_names: names of the dense columns.
        label: ``(N,)`` float32: the rating (MovieLens) or the click (Criteo).
        time: ``(N,)`` int64 timestamps (or row order) for temporal splits, or ``None``.
        missing: field name -> ``(N,)`` bool mask of missing values (optional).
        user_field / item_field: names of the user and item id fields, if any.
        reports: one :class:`ParseReport` per source file.
        extra: per-row arrays to carry through splits (e.g. ``prob``, the true click
            probability of synthetic data).
        stats: data-set level facts to keep in the schema.
    """

    name: str
    sparse: dict[str, np.ndarray]
    label: np.ndarray
    dense: np.ndarray | None = None
    dense_names: list[str] = field(default_factory=list)
    time: np.ndarray | None = None
    missing: dict[str, np.ndarray] = field(default_factory=dict)
    user_field: str | None = None
    item_field: str | None = None
    reports: list[ParseReport] = field(default_factory=list)
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.label)

    def select(self, idx: np.ndarray) -> RawData:
        """Rows ``idx`` of every per-row array (used by task framing, e.g. implicit feedback)."""
        return RawData(
            name=self.name,
            sparse={k: v[idx] for k, v in self.sparse.items()},
            label=self.label[idx],
            dense=None if self.dense is None else self.dense[idx],
            dense_names=self.dense_names,
            time=None if self.time is None else self.time[idx],
            missing={k: v[idx] for k, v in self.missing.items()},
            user_field=self.user_field,
            item_field=self.item_field,
            reports=self.reports,
            extra={k: v[idx] for k, v in self.extra.items()},
            stats=self.stats,
        )
