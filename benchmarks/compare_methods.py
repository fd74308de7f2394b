"""Train one config with several compression methods at one budget and print a table.

Each method is one ``reccomp fit`` (same seed and settings, only ``--model.embeddings.method``
and ``--model.embeddings.budget`` change); the figures are read back from each run's
``metrics.json``. (``reccomp bench`` is the full grid tool; this is the quick comparison.)

    python benchmarks/compare_methods.py --config configs/ml-1m-mf-retrieval.yaml \
        --data-root ../shared/datasets/ml-1m-head --budget 0.25 \
        --methods full graph_hash double_graph_hash hash double_hash frequency_hash qr
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--data-root", required=True)
    p.add_argument("--budget", type=float, default=0.25)
    p.add_argument("--methods", nargs="+", required=True)
    p.add_argument("--metrics", nargs="+", default=None, help="test metrics to print")
    p.add_argument("--out", default="results/compare", help="where the runs go")
    p.add_argument("--reuse", action="store_true", help="reuse finished runs under --out")
    p.add_argument("extra", nargs="*", help="more CLI overrides, after --")
    a = p.parse_args()
    rows = []
    for m in a.methods:
        budget = "null" if m == "full" else str(a.budget)
        cmd = [
            sys.executable, "-m", "reccomp.cli", "fit", "--config", a.config,
            "--data.root", a.data_root, "--model.embeddings.method", m,
            *(["--model.embeddings.budget", budget] if m != "full" else []),
            "--trainer.logger.init_args.save_dir", a.out,
            "--trainer.logger.init_args.name", f"{Path(a.config).stem}-{m}-{budget}",
            "--trainer.enable_progress_bar", "false", *a.extra,
        ]  # fmt: skip
        done = sorted(Path(a.out, f"{Path(a.config).stem}-{m}-{budget}").glob("*/metrics.json"))
        if a.reuse and done:
            r = json.loads(done[-1].read_text())
            rows.append((m, r, float(r.get("train_seconds", float("nan")))))
            continue
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        secs = time.perf_counter() - t0
        if proc.returncode != 0:
            print(f"{m}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            rows.append((m, None, secs))
            continue
        run_dir = Path(proc.stdout.strip().splitlines()[-1])
        metrics = json.loads((run_dir / "metrics.json").read_text())
        metrics["train_seconds"] = round(secs, 1)
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
        rows.append((m, metrics, secs))
        print(f"{m}: {run_dir} ({secs:.0f} s)", file=sys.stderr)
    keys = a.metrics or sorted(
        k for k in (rows[0][1] or {}) if k.startswith("test/") and "loss" not in k
    )
    head = ["method", "bytes", "ratio", *keys, "clustering s", "train s"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for m, r, secs in rows:
        if r is None:
            print(f"| {m} | failed |")
            continue
        cl = [t.get("cluster_seconds") for t in r.get("embeddings/tables", [])]
        cl = [c for c in cl if c is not None]
        vals = [f"{r[k]:.4f}" if r.get(k) is not None else "-" for k in keys]
        cluster = f"{cl[0]:.1f}" if cl else "-"
        print(
            f"| {m} | {int(r['embeddings/bytes'])} | {r['embeddings/ratio']:.3f} | "
            + " | ".join(vals)
            + f" | {cluster} | {secs:.0f} |"
        )


if __name__ == "__main__":
    main()
