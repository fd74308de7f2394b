"""One bench cell, run in its own process: ``reccomp fit``, then CPU inference latency.

    python -m reccomp.bench.cell OUT.json -- fit --config ... (reccomp fit arguments)
    python -m reccomp.bench.cell OUT.json -- compress --ckpt ... (post-training methods)

Writes ``OUT.json`` (atomically, last) with the run's metrics, memory, training speed,
latency per batch of 1 and 1024, parameter count, resolved config and versions.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("reccomp", "torch", "torchrec", "fbgemm-gpu-cpu", "fbgemm-gpu", "lightning"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


def latency_ms(task: Any, dm: Any, batch_size: int, reps: int = 20) -> float:
    """Median wall time of the model's forward on one test batch of ``batch_size`` (CPU)."""
    from reccomp.data.loader import BatchIterator

    split = dm.tensors_["test"]
    it = BatchIterator(split, dm.schema.feature_names, batch_size, shuffle=False)
    batch = next(iter(it))
    model = task.model.eval()
    times = []
    with torch.no_grad():
        for i in range(reps + 3):
            t0 = time.perf_counter()
            model(batch.dense, batch.sparse)
            if i >= 3:
                times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def run_cell(out: Path, fit_args: list[str]) -> dict[str, Any]:
    """``fit_args``: ``fit ...`` (train), or ``compress ...`` (a post-training method built
    from another cell's checkpoint)."""
    if fit_args[:1] == ["compress"]:
        from reccomp.compress.cli import compress_run

        task, dm, run_dir = compress_run(fit_args[1:])
    else:
        from reccomp.cli import run_cli

        cli = run_cli(fit_args)
        task, dm = cli.model, cli.datamodule
        run_dir = Path(cli.trainer.log_dir or ".")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    result = {
        "status": "ok",
        "metrics": metrics,
        "latency_ms": {str(b): latency_ms(task, dm, b) for b in (1, 1024)},
        "config": (run_dir / "config.yaml").read_text(),
        "run_dir": str(run_dir),
        "versions": versions(),
        "threads": torch.get_num_threads(),
    }
    return result


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    out = Path(argv[0])
    fit_args = argv[2:] if argv[1:2] == ["--"] else argv[1:]
    from reccomp.runtime import tune_malloc

    tune_malloc()
    from reccomp.compress.cli import CompressError

    try:
        result = run_cell(out, fit_args)
    except CompressError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1, sort_keys=True))
    os.replace(tmp, out)


if __name__ == "__main__":
    main()
