"""``reccomp data download|prepare|info``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from reccomp.data.schema import Schema


def _datamodule(config: str | None, overrides: list[str]) -> Any:
    """A RecDataModule from a run config's ``data:`` block plus ``--data.KEY VALUE`` overrides."""
    from jsonargparse import ArgumentParser

    from reccomp.data.datamodule import RecDataModule

    parser = ArgumentParser(prog="reccomp data", exit_on_error=True)
    parser.add_class_arguments(RecDataModule, "data")
    args: list[str] = []
    if config:
        block = (yaml.safe_load(Path(config).read_text()) or {}).get("data") or {}
        args += ["--data", json.dumps(block)]
    cfg = parser.parse_args(args + overrides)
    return parser.instantiate(cfg).data


def print_info(schema: Schema) -> None:
    s = schema
    print(f"data set   {s.name}  (task: {s.task})")
    print(f"prepared   {s.root}")
    print("splits     " + ", ".join(f"{k}={v:,}" for k, v in s.splits.items()))
    if s.user_field:
        print(f"user/item  {s.user_field} / {s.item_field}")
    print(f"dense      {len(s.dense)} features: {', '.join(s.dense) if s.dense else '-'}")
    print(
        f"sparse     {len(s.sparse)} fields, {sum(f.cardinality for f in s.sparse):,} rows in all"
    )
    print(f"  {'field':<14}{'rows':>12}{'max_len':>9}{'train count':>14}{'top row share':>15}")
    for f in s.sparse:
        counts = s.counts(f.name) if s.root else np.zeros(1)
        total = max(int(counts.sum()), 1)
        top = counts.max() / total if counts.size else 0.0
        print(f"  {f.name:<14}{f.cardinality:>12,}{f.max_len:>9}{total:>14,}{top:>15.3f}")
    st = s.stats
    for key in ("label_mean", "label_min", "label_max", "oracle_auc", "prepare_seconds"):
        if key in st:
            print(
                f"{key:<11}{st[key]:.4f}" if isinstance(st[key], float) else f"{key:<11}{st[key]}"
            )
    for r in st.get("parse_reports", []):
        print(
            f"source     {r['source']}: {r['lines']:,} lines, {r['skipped']} skipped, {r['padded']} padded"
        )


def data_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="reccomp data", description="Download, prepare and inspect data sets."
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("download", help="download a public data set")
    d.add_argument("name", help="ml-100k, ml-1m, ml-20m, ml-25m, ml-latest-small or criteo-kaggle")
    d.add_argument("--root", default="data", help="where to put it (default: ./data)")
    d.add_argument("--url", default=None, help="another address (a mirror)")
    d.add_argument("--force", action="store_true", help="download again even if present")
    for name in ("prepare", "info"):
        q = sub.add_parser(
            name, help=f"{name} the data of a run config (overrides: --data.KEY VALUE)"
        )
        q.add_argument("--config", default=None, help="a run config (its data: block is used)")
    if len(argv) >= 2 and argv[0] == "info" and not argv[1].startswith("-"):
        print_info(Schema.load(Path(argv[1])))  # reccomp data info PREPARED_DIR
        return 0
    args, rest = p.parse_known_args(argv)
    if args.cmd == "download":
        from reccomp.data.download import DownloadError, download

        try:
            path = download(args.name, args.root, url=args.url, force=args.force)
        except (DownloadError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(path)
        return 0
    try:
        dm = _datamodule(args.config, rest)
        schema = dm.prepare()
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print_info(schema)
    return 0
