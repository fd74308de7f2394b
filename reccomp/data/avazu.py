"""Avazu click logs (Kaggle's "Click-Through Rate Prediction", 2014): the format and a writer.

Kaggle's ``train.gz`` is a gzip-compressed CSV with a header and 40,428,967 rows over ten
days, ordered by time::

    id,click,hour,C1,banner_pos,site_id,site_domain,site_category,app_id,app_domain,
    app_category,device_id,device_ip,device_model,device_type,device_conn_type,C14,...,C21

``id`` is left out (unique per row), ``click`` is the label, ``hour`` (``YYMMDDHH``) becomes
two fields, ``hour_of_day`` (0-23) and ``day_of_week`` (0 = Monday), as is common in the CTR
literature; the other 21 columns are categorical fields as they are: 9 hex hashes
(``site_id``, ..., ``device_model``) and 12 integers. Preprocessing is
:func:`reccomp.data.ctr.prepare_ctr` (CSV with a header, plain or gzip, or Parquet; detected
from the content).

Example::

    >>> v, ok = _hour_of_day(np.array([14102100, 14102123]))
    >>> v.tolist(), _day_of_week(np.array([14102100]))[0].tolist()  # 2014-10-21 is a Tuesday
    ([0, 23], [1])
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pv

from reccomp.data.cache import CacheWriter
from reccomp.data.ctr import prepare_ctr
from reccomp.data.ctr_layout import CtrFormat, Derived
from reccomp.data.ctr_text import hex_column
from reccomp.data.schema import Schema

__all__ = ["AVAZU", "AVAZU_COLUMNS", "prepare_avazu", "write_avazu_csv"]

HEX_NAMES = (
    "site_id", "site_domain", "site_category", "app_id", "app_domain", "app_category",
    "device_id", "device_ip", "device_model",
)  # fmt: skip
INT_NAMES = (
    "C1",
    "banner_pos",
    "device_type",
    "device_conn_type",
    *(f"C{i}" for i in range(14, 22)),
)
AVAZU_COLUMNS = (
    "id", "click", "hour", "C1", "banner_pos", *HEX_NAMES, "device_type", "device_conn_type",
    *(f"C{i}" for i in range(14, 22)),
)  # fmt: skip


def _hour_of_day(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N,) YYMMDDHH -> hour of day, valid mask."""
    hh = v % 100
    return hh, (v >= 0) & (v < 10**8) & (hh < 24)


def _day_of_week(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N,) YYMMDDHH -> day of week (0 = Monday), valid mask."""
    yy, mm, dd = v // 10**6, v // 10**4 % 100, v // 100 % 100
    ok = (v >= 0) & (v < 10**8) & (mm >= 1) & (mm <= 12) & (dd >= 1) & (dd <= 31)
    months = (np.where(ok, yy, 0) + 30).astype("datetime64[Y]").astype("datetime64[M]")
    months = months + np.where(ok, mm - 1, 0)  # 20YY-MM
    days = months.astype("datetime64[D]") + np.where(ok, dd - 1, 0)
    ok &= days.astype("datetime64[M]") == months  # no 31 September
    return (days.astype(np.int64) + 3) % 7, ok  # 1970-01-01 was a Thursday


AVAZU = CtrFormat(
    name="Avazu",
    label="click",
    dense=(),
    sparse=tuple(c for c in AVAZU_COLUMNS[3:]),
    hex_fields=frozenset(HEX_NAMES),
    columns=AVAZU_COLUMNS,
    derived=(
        Derived("hour_of_day", "hour", _hour_of_day, "hour is not YYMMDDHH"),
        Derived("day_of_week", "hour", _day_of_week, "hour is not YYMMDDHH"),
    ),
)


def write_avazu_csv(path: Path, n_rows: int, seed: int = 0, compress: bool = False) -> None:
    """Write ``n_rows`` generated rows in Avazu's ``train`` format (header, comma separated;
    gzip-compressed when ``compress``): ids as 20-digit numbers, hours over ten days from
    2014-10-21 in order, Zipf-distributed hashes, integer fields in Avazu's ranges."""
    rng = np.random.default_rng(seed)
    hours = np.sort(rng.integers(0, 240, n_rows))  # (N,) hours since 2014-10-21 00:00
    day, hh = 21 + hours // 24, hours % 24
    cols: dict[str, Any] = {
        "id": pa.array([f"{x:020d}" for x in rng.integers(10**18, 10**19, n_rows, np.uint64)]),
        "click": rng.random(n_rows) < 0.17,
        "hour": 14_10_00_00 + day * 100 + hh,
        "C1": rng.choice([1001, 1002, 1005, 1007, 1008, 1010, 1012], n_rows),
        "banner_pos": rng.choice([0, 1, 2, 3, 4, 5, 7], n_rows, p=[0.7, 0.25, 0.01, 0.01, 0.01, 0.01, 0.01]),
    }  # fmt: skip
    for j, c in enumerate(HEX_NAMES):
        card = [4000, 8000, 26, 8000, 550, 36, 2_600_000, 6_700_000, 8000][j]
        rank = np.floor(np.minimum((1 - rng.random(n_rows)) ** -2.0, 1e15)) % card  # Zipf
        cols[c] = hex_column((rank.astype(np.int64) * 2654435761 + 977 * j) % 2**32)
    cols["device_type"] = rng.choice([0, 1, 2, 4, 5], n_rows, p=[0.05, 0.9, 0.01, 0.02, 0.02])
    cols["device_conn_type"] = rng.choice([0, 2, 3, 5], n_rows, p=[0.85, 0.08, 0.06, 0.01])
    for c, card in zip(INT_NAMES[4:], [2600, 8, 9, 435, 4, 68, 172, 60], strict=True):
        base = {"C20": 100000, "C14": 375}.get(c, 0)
        v = base + np.floor(rng.pareto(1.2, n_rows) * 3).astype(np.int64) % card
        cols[c] = np.where(rng.random(n_rows) < 0.4, -1, v) if c == "C20" else v
    table = pa.table({c: cols[c] for c in AVAZU_COLUMNS})
    table = table.set_column(1, "click", table["click"].cast(pa.int8()))
    opts = pv.WriteOptions(include_header=True, quoting_style="none")
    if compress:
        with gzip.open(path, "wb", compresslevel=1) as f:
            pv.write_csv(table, f, opts)
    else:
        pv.write_csv(table, str(path), opts)


def prepare_avazu(paths: list[Path], writer: CacheWriter, *, name: str = "avazu",
                  **kw: Any) -> Schema:  # fmt: skip
    """:func:`~reccomp.data.ctr.prepare_ctr` with the Avazu format (same keywords)."""
    return prepare_ctr(paths, writer, AVAZU, name=name, **kw)
