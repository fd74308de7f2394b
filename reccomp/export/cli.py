"""``reccomp export``: a checkpoint -> a self-contained artifact for serving.

    reccomp export --ckpt runs/X/version_0/checkpoints/best-3.ckpt
        [--output DIR] [--quantize none|fp16|int8|int4] [--aoti]

Reads the run's ``config.yaml`` (beside ``checkpoints/``), as ``reccomp compress`` does, and
writes ``DIR`` (default ``<run>/export/<quantize>/``): ``model.pt2`` (a ``torch.export``
program of the whole model: rows in, predictions out), ``vocab/<field>.npy`` (raw value ->
row), optionally ``model.aoti.pt2`` (AOTInductor, CPU) and ``manifest.json`` (versions,
schema, per-table method, options, dtype and bytes, the exported model's own test metrics,
every file's sha256). Load it with :func:`reccomp.serving.load` or ``reccomp serve DIR``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from reccomp.export.program import QUANTIZE


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="reccomp export", description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="checkpoint of a reccomp fit or compress run")
    p.add_argument("--output", default=None, help="directory (default <run>/export/<quantize>)")
    p.add_argument(
        "--quantize",
        default="none",
        choices=QUANTIZE,
        help="row-wise quantization of every storage table (FBGEMM IntNBit kernels)",
    )
    p.add_argument("--aoti", action="store_true", help="also write an AOTInductor package (CPU)")
    p.add_argument("--config", default=None, help="the run's config (default: beside ckpt)")
    p.add_argument("--data.root", dest="data_root", default=None, help="override data root")
    p.add_argument("--limit-batches", type=int, default=None, help="test on this many batches")
    return p


def export_main(argv: list[str]) -> int:
    from reccomp.runs import RunError
    from reccomp.serving import ArtifactError

    try:
        out = export_run(argv)
    except (RunError, ArtifactError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


def export_run(argv: list[str]) -> Path:
    """Run ``reccomp export``; returns the artifact directory."""
    from reccomp.export.artifact import write_artifact
    from reccomp.runs import load_run

    a = _parser().parse_args(argv)
    t0 = time.perf_counter()
    task, dm, run_dir = load_run(a.ckpt, a.config, a.data_root)
    if getattr(task.embeddings, "searching", False):
        raise ValueError("this checkpoint is still in its search phase: export a later one")
    out = Path(a.output) if a.output else run_dir / "export" / a.quantize
    manifest = write_artifact(
        task, dm, out, quantize=a.quantize, aoti=a.aoti, limit_batches=a.limit_batches,
        source={"checkpoint": str(a.ckpt), "run_dir": str(run_dir)},
    )  # fmt: skip
    _summary(manifest, time.perf_counter() - t0)
    return out


def _summary(manifest: dict[str, Any], seconds: float) -> None:
    q = manifest["quantize"]
    kept = [t["name"] for t in manifest["storage_tables"] if t["dtype"] == "fp32"]
    note = f"; kept fp32 (too narrow to gain): {kept}" if q != "none" and kept else ""
    mib = manifest["serving_bytes"] / 2**20
    print(
        f"Exported ({q}) in {seconds:.1f} s: {mib:.3f} MiB of embeddings, "
        f"{manifest['ratio_to_full_fp32']:.4f} of the full fp32 collection{note}"
    )
    shown = {k: round(v, 5) for k, v in manifest["test_metrics"].items()}
    print(f"Exported model's test metrics: {json.dumps(shown)}")
    parity = manifest["program"].get("parity_max_abs")
    if parity is not None:
        print(f"Program against the eager model on a validation batch: max |diff| {parity:.2e}")
