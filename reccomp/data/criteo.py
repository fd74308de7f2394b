"""Criteo click logs (Kaggle ``train.txt``, 1TB ``day_N``): the format and its writer.

A Criteo row holds the click label (0/1), 13 integer features ``I1..I13`` and 26
categorical features ``C1..C26`` (32-bit hashes written as 8 hex digits); an empty field is
a missing value. The Kaggle and 1TB files are headerless TSV; CSV files with a header (any
column order, integers written as floats, comma or tab separated), gzip-compressed files and
Parquet files load the same way, detected from the content (:mod:`reccomp.data.ctr_layout`).
Preprocessing is :func:`reccomp.data.ctr.prepare_ctr`.

Example::

    >>> write_criteo_tsv(p, np.array([1]), np.full((1, 13), np.nan), np.full((1, 26), -1))  # doctest: +SKIP
    >>> schema = prepare_criteo([p], CacheWriter(tmp), split=SplitConfig())  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pv

from reccomp.data.cache import CacheWriter
from reccomp.data.ctr import prepare_ctr
from reccomp.data.ctr_layout import CtrFormat
from reccomp.data.ctr_text import hex_column
from reccomp.data.schema import Schema

__all__ = ["CRITEO", "N_DENSE", "N_SPARSE", "prepare_criteo", "write_criteo_tsv"]

N_DENSE, N_SPARSE = 13, 26
DENSE_NAMES = tuple(f"I{i}" for i in range(1, N_DENSE + 1))
SPARSE_NAMES = tuple(f"C{i}" for i in range(1, N_SPARSE + 1))
COLUMNS = ("label", *DENSE_NAMES, *SPARSE_NAMES)

CRITEO = CtrFormat(
    name="Criteo",
    label="label",
    dense=DENSE_NAMES,
    sparse=SPARSE_NAMES,
    hex_fields=frozenset(SPARSE_NAMES),
    columns=COLUMNS,
)


def criteo_table(
    label: np.ndarray, dense: np.ndarray, cat: np.ndarray, floats: bool = False
) -> pa.Table:
    """Columns ``label, I1..I13, C1..C26`` as Arrow arrays (see :func:`write_criteo_tsv`)."""
    label, dense, cat = np.asarray(label), np.asarray(dense, np.float64), np.asarray(cat)
    n = len(label)
    if dense.shape != (n, N_DENSE) or cat.shape != (n, N_SPARSE):
        raise ValueError(f"need dense (N, 13) and cat (N, 26), got {dense.shape}, {cat.shape}")
    number = np.float64 if floats else np.int64
    cols: dict[str, pa.Array] = {"label": pa.array(label.astype(number))}
    for name, x in zip(DENSE_NAMES, np.ascontiguousarray(dense.T), strict=True):  # (N,) each
        miss = np.isnan(x)
        cols[name] = pa.array(np.rint(np.where(miss, 0, x)).astype(number), mask=miss)
    for name, x in zip(SPARSE_NAMES, np.ascontiguousarray(cat.T), strict=True):
        cols[name] = hex_column(x)
    return pa.table(cols)


def write_criteo_tsv(path: Path, label: np.ndarray, dense: np.ndarray, cat: np.ndarray) -> None:
    """Write Criteo Kaggle-format lines: label, ``I1..I13``, ``C1..C26``, tab separated.

    Args:
        label: (N,) 0/1 clicks.
        dense: (N, 13) floats; rounded to integers, NaN -> empty field (missing).
        cat: (N, 26) ints in [0, 2**32) written as 8 lowercase hex digits; -1 -> empty field.

    Example::

        >>> write_criteo_tsv(p, np.array([1]), np.full((1, 13), np.nan), np.full((1, 26), -1))  # doctest: +SKIP
    """
    opts = pv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
    pv.write_csv(criteo_table(label, dense, cat), str(path), opts)


def prepare_criteo(paths: list[Path], writer: CacheWriter, *, name: str = "criteo",
                   **kw: Any) -> Schema:  # fmt: skip
    """:func:`~reccomp.data.ctr.prepare_ctr` with the Criteo format (same keywords)."""
    return prepare_ctr(paths, writer, CRITEO, name=name, **kw)
