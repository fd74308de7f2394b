"""Sharded training figures: the planner's bytes per rank, and samples/s with 1 and 2 ranks.

Two parts (``--part plan``, ``--part speed`` or both):

- **plan** (no training, no process group): the storage of DLRM's Criteo Kaggle collection
  (the 26 cardinalities of the full data set, 33.8M rows, dim 16, ``full`` and ``qr``) planned
  by TorchRec's planner for 2 and 8 ranks, each rank allowed ``--rank-mib`` MiB (1536 for 2 ranks, 448 for 8). Tables are
  built on the meta device (no memory is allocated). Prints each rank's bytes and every
  table that is split over ranks: the 10M-row table does not fit one rank and is split.
- **speed**: ``reccomp fit`` on ``--config`` for one epoch in one process and under
  ``torchrun --nproc_per_node 2`` (gloo, ``--sharding``), alternating in ``--rounds``
  rounds; prints ``train/samples_per_s`` from each run's ``metrics.json``.

    python benchmarks/distributed.py
    python benchmarks/distributed.py --part speed --config configs/synthetic-criteo-dlrm.yaml
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Criteo Kaggle (Display Advertising Challenge) cardinalities as DLRM's preprocessing counts them
CRITEO_KAGGLE = [1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593,
                 3194, 27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105,
                 142572]  # fmt: skip


def plan_part(rank_mib: dict[int, int], device_type: str) -> None:
    import logging

    import torch
    from torch import nn

    from reccomp.data.schema import Schema, SparseField
    from reccomp.distributed.plan import describe_plan, plan_storage
    from reccomp.modules.embedding import EmbeddingSpec, build_embeddings

    schema = Schema("criteo-kaggle", "ctr",
                    [SparseField(f"C{i + 1}", n) for i, n in enumerate(CRITEO_KAGGLE)])  # fmt: skip
    logging.getLogger("torchrec").setLevel(logging.ERROR)  # the planner's advice lines
    caps = ", ".join(f"{w} ranks {m} MiB" for w, m in rank_mib.items())
    print(f"Planner only: Criteo Kaggle's 26 tables, dim 16, memory per rank: {caps}; "
          f"{device_type} topology ({device_type} sharding types)")  # fmt: skip
    for method, budget in (("full", None), ("qr", 0.25)):
        model = nn.Module()
        model.embeddings = build_embeddings(
            schema, EmbeddingSpec(method=method, budget=budget, dim=16, min_rows=0),
            device=torch.device("meta"),
        )  # fmt: skip
        total = model.embeddings.memory_bytes()
        print(f"\n{method}: {total / 2**20:,.1f} MiB of weights in all")
        for world, mib in rank_mib.items():
            plan = plan_storage(model, world, "auto", device_type=device_type,
                                memory_per_rank=mib * 2**20)  # fmt: skip
            d = describe_plan(plan, model)
            per_rank = [0] * world
            for t in d.values():
                for r, b in zip(t["ranks"], t["bytes_per_rank"], strict=True):
                    per_rank[r] += b
            largest = max(d.values(), key=lambda t: sum(t["bytes_per_rank"]))
            split = {n: t for n, t in d.items() if len(t["ranks"]) > 1}
            print(f"  {world} ranks: MiB per rank "
                  + " ".join(f"{b / 2**20:.1f}" for b in per_rank)
                  + f" (each may hold {mib})")  # fmt: skip
            print(f"    largest table {sum(largest['bytes_per_rank']) / 2**20:.1f} MiB; "
                  f"split tables: {len(split)}")  # fmt: skip
            for n, t in sorted(split.items(), key=lambda x: -sum(x[1]["bytes_per_rank"]))[:4]:
                shards = ", ".join(
                    f"r{r} {b / 2**20:.1f}"
                    for r, b in zip(t["ranks"], t["bytes_per_rank"], strict=True)
                )
                print(f"    {n}: {t['type']} ({shards} MiB)")


def _fit(config: str, extra: list[str], ranks: int, sharding: str, out: Path) -> float:
    args = ["fit", "--config", config, "--trainer.max_epochs", "1", "--seed_everything", "0",
            "--trainer.default_root_dir", str(out), *extra]  # fmt: skip
    if ranks > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", str(ranks), "-m", "reccomp", *args,
               "--trainer.strategy", "torchrec", "--model.embeddings.sharding", sharding]  # fmt: skip
    else:
        cmd = [sys.executable, "-m", "reccomp", *args]
    # the 2 vCPUs: one process takes both threads, two ranks one each
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, os.cpu_count() // ranks))}
    p = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stderr[-3000:]}")
    run = out / p.stdout.strip().splitlines()[-1]
    return float(json.loads((run / "metrics.json").read_text())["train/samples_per_s"])


def speed_part(config: str, extra: list[str], sharding: str, rounds: int) -> None:
    config = str(Path(config).resolve())
    print(f"\nsamples/s of `reccomp fit --config {Path(config).name}` (1 epoch), "
          f"1 process against 2 gloo ranks ({sharding}), {os.cpu_count()} CPUs")  # fmt: skip
    got: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for ranks in (1, 2) if r % 2 == 0 else (2, 1):  # alternate: the machine drifts
                t = time.perf_counter()
                got[ranks].append(_fit(config, extra, ranks, sharding, Path(tmp)))
                print(f"  round {r + 1}, {ranks} rank(s): {got[ranks][-1]:,.0f} samples/s "
                      f"({time.perf_counter() - t:.0f} s with start-up)", flush=True)  # fmt: skip
    best = {k: max(v) for k, v in got.items()}
    print(f"  best of {rounds}: 1 process {best[1]:,.0f}, 2 ranks {best[2]:,.0f} samples/s "
          f"(2 ranks / 1 = {best[2] / best[1]:.2f})")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["plan", "speed", "both"], default="both")
    ap.add_argument("--rank-mib", default="2:1536,8:448",
                    help="WORLD:MiB,... ranks to plan for and the memory of each (plan)")  # fmt: skip
    ap.add_argument("--device-type", choices=["cpu", "cuda"], default="cpu",
                    help="topology the planner plans for (plan; no device is used)")  # fmt: skip
    ap.add_argument("--config", default=str(REPO / "configs/synthetic-criteo-dlrm.yaml"))
    ap.add_argument("--sharding", default="table_wise")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("extra", nargs="*", help="more `reccomp fit` arguments (after --)")
    a = ap.parse_args()
    if a.part in ("plan", "both"):
        caps = dict(map(int, x.split(":")) for x in a.rank_mib.split(","))
        plan_part(caps, a.device_type)
    if a.part in ("speed", "both"):
        speed_part(a.config, a.extra, a.sharding, a.rounds)


if __name__ == "__main__":
    main()
