"""Throughput of Criteo preprocessing (:func:`reccomp.data.criteo.prepare_criteo`).

Generates a Kaggle-format file in a temporary directory (random labels; 13 integer
features with missing and negative values; 26 hex categoricals, Zipf-distributed, with
cardinalities from 10 to 10**6 and missing values), then times both passes end to end,
writing included (best of ``--repeat`` runs). Target: >= 250k lines/s on a 2-core
development machine.

``--format`` picks the file the same rows are written as: ``tsv`` (Kaggle's headerless
TSV), ``csv`` (comma-separated with a header, numbers as floats), ``parquet``, or ``avazu``
(generated rows in Avazu's ``train`` CSV format, 23 fields).

Usage::

    python benchmarks/criteo_preprocess.py --lines 1000000 --format csv
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from reccomp.data.avazu import prepare_avazu, write_avazu_csv
from reccomp.data.cache import CacheWriter
from reccomp.data.criteo import N_SPARSE, prepare_criteo, write_criteo_tsv
from reccomp.data.splits import SplitConfig


def generate(path: Path, n: int, seed: int = 0) -> None:
    """Write ``n`` Kaggle-format lines with Zipf categoricals to ``path``."""
    rng = np.random.default_rng(seed)
    label = (rng.random(n) < 0.25).astype(np.int64)
    dense = np.floor(rng.exponential(20.0, (n, 13))) - 2  # a few negatives, like I2
    dense[rng.random((n, 13)) < 0.2] = np.nan
    cards = np.logspace(1, 6, N_SPARSE).astype(np.int64)
    cat = np.empty((n, N_SPARSE), np.int64)
    for j, card in enumerate(cards):
        # P(rank >= k) = k**-0.2: Zipf with exponent 1.2, folded into the cardinality
        rank = np.floor(np.minimum((1 - rng.random(n)) ** -5.0, 1e15)) % card  # (N,)
        salt = int(rng.integers(0, 2**32))
        cat[:, j] = (rank.astype(np.int64) * 2654435761 + salt) % 2**32  # 32-bit "hashes"
    cat[rng.random((n, N_SPARSE)) < 0.1] = -1
    write_criteo_tsv(path, label, dense, cat)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--chunk-mb", type=int, default=32)
    ap.add_argument("--split", choices=["random", "temporal"], default="random")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs (the best is reported)")
    ap.add_argument("--format", choices=["tsv", "csv", "parquet", "avazu"], default="tsv")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="criteo-bench-") as tmp:
        src = Path(tmp) / "train.txt"
        t0 = time.perf_counter()
        prepare = prepare_criteo
        if args.format == "avazu":
            src, prepare = Path(tmp) / "train", prepare_avazu
            write_avazu_csv(src, args.lines)
        else:
            generate(src, args.lines)
        if args.format in ("csv", "parquet"):
            import pyarrow as pa
            import pyarrow.csv as pv
            import pyarrow.parquet as pq

            from reccomp.data.criteo import COLUMNS

            table = pv.read_csv(
                src,
                pv.ReadOptions(column_names=list(COLUMNS)),
                pv.ParseOptions(delimiter="\t"),
                pv.ConvertOptions(column_types={c: pa.float64() for c in COLUMNS[:14]}),
            )
            src.unlink()
            if args.format == "parquet":
                src = Path(tmp) / "train.parquet"
                pq.write_table(table, src)
            else:
                src = Path(tmp) / "train.csv"
                pv.write_csv(table, src, pv.WriteOptions(quoting_style="none"))
            del table
        t1 = time.perf_counter()
        size = src.stat().st_size
        print(f"generated {args.lines:,} lines ({size / 2**20:.0f} MiB) in {t1 - t0:.1f} s")
        walls = []
        for r in range(args.repeat):
            writer = CacheWriter(Path(tmp) / f"prep-{r}")
            t2, c2 = time.perf_counter(), time.process_time()
            schema = prepare(
                [src], writer, split=SplitConfig(kind=args.split), chunk_bytes=args.chunk_mb << 20
            )
            writer.finish(schema)
            wall, cpu = time.perf_counter() - t2, time.process_time() - c2
            walls.append(wall)
            print(f"run {r}: {wall:.2f} s wall, {cpu:.2f} s CPU, {args.lines / wall:,.0f} lines/s")
            shutil.rmtree(writer.final_dir)
        best = min(walls)
        print(
            f"{args.format}: prepare ({args.split} split): best {args.lines / best:,.0f} lines/s "
            f"({size / 2**20 / best:.0f} MiB/s), median {args.lines / np.median(walls):,.0f}"
        )
        print(
            f"splits {schema.splits}; cardinalities "
            f"{[f.cardinality for f in schema.sparse][:: N_SPARSE // 5]} ..."
        )


if __name__ == "__main__":
    main()
