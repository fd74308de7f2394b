"""``reccomp bench``: run a grid, or rebuild its report.

reccomp bench --config configs/bench/ml-1m-ctr.yaml [--output DIR] [--data.root DIR]
              [--quick] [--in-process] [--force] [--methods '[hash, qr]'] [--budgets '[0.25]'] ...
reccomp bench report results/ml-1m-ctr
"""

from __future__ import annotations

import dataclasses
import signal
import sys
import time
from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser

from reccomp.bench.config import BenchConfig
from reccomp.bench.report import build_report
from reccomp.bench.runner import interrupt, run_grid


def _parser() -> ArgumentParser:
    p = ArgumentParser(prog="reccomp bench", description=__doc__)
    p.add_argument("--config", action=ActionConfigFile, help="bench config (YAML)")
    p.add_class_arguments(BenchConfig, nested_key=None, as_group=False)
    p.add_argument("--output", default=None, help="results directory (default results/<name>)")
    p.add_argument(
        "--data.root", dest="data_root_override", default=None, help="data of every cell"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny grid (one budget, seed, few batches; cells run in this process)",
    )
    p.add_argument(
        "--in-process",
        action="store_true",
        help="run the cells in this process, not one process each: saves the interpreter and "
        "import start-up per cell (about 10 s on 2 vCPUs); a crashing cell stops the grid",
    )
    p.add_argument("--force", action="store_true", help="rerun finished cells")
    return p


def bench_main(argv: list[str]) -> int:
    if argv[:1] == ["report"]:
        if len(argv) != 2 or argv[1] in ("-h", "--help"):
            help_asked = argv[1:] in (["-h"], ["--help"])
            print(
                "usage: reccomp bench report RESULTS_DIR\n\nRebuild table.md, table.csv, "
                "timing.md and pareto.png from a grid's result files (no training).",
                file=sys.stdout if help_asked else sys.stderr,
            )
            return 0 if help_asked else 2
        out = Path(argv[1])
        if not (out / "bench.json").exists():
            print(f"error: {out} holds no bench results (bench.json)", file=sys.stderr)
            return 2
        for p in build_report(out):
            print(p)
        return 0
    p = _parser()
    # dataclass fields at the top level: --name, --methods, --budgets, ... (and in YAML)
    args = p.parse_args(argv)
    fields = [f.name for f in dataclasses.fields(BenchConfig)]
    try:
        cfg = BenchConfig(**{k: args[k] for k in fields})
    except (ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.data_root_override:
        cfg.data_root = args.data_root_override
    if args.quick:
        cfg = cfg.quick()
    out = Path(args.output or Path("results") / cfg.name)
    t0 = time.perf_counter()
    # `kill PID` stops like Ctrl-C; both also stop an in-process cell (see runner.INTERRUPTED)
    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        counts = run_grid(cfg, out, force=args.force, in_process=args.quick or args.in_process)
    except KeyboardInterrupt:
        # the running cell wrote nothing (its result file is written last): rerun resumes
        print(f"\ninterrupted: rerun the same command to finish the missing cells of {out}")
        return 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    mins = (time.perf_counter() - t0) / 60
    print(
        f"{counts['ok']} cells run, {counts['failed']} failed, {counts['skipped']} reused, "
        f"{mins:.1f} min"
    )
    for path in build_report(out):
        print(path)
    print(out)
    return 0
