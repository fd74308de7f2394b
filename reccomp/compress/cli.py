"""``reccomp compress``: a trained checkpoint -> a compressed one, evaluated (and fine-tuned).

    reccomp compress --ckpt runs/X/version_0/checkpoints/best-3.ckpt --method svd --budget 0.25
        [--options '{rank: 16}'] [--finetune-epochs N] [--output DIR] [--data.root DIR]

The run's ``config.yaml`` (beside ``checkpoints/``) rebuilds the task and data; the method's
:meth:`~reccomp.compress.base.TableMethod.from_trained` builds the new tables (``svd``,
``fwsvd``: factorize; ``maestro``: truncate a Maestro model; ``full``: copy); the result is
validated and tested, optionally fine-tuned, and written to ``--output`` (default
``<run>/compressed/<method>-b<budget>``): ``config.yaml`` (the resolved config, now naming the
compressed method), ``checkpoints/compressed.ckpt`` and ``metrics.json``. Reload it with
``reccomp test --config OUT/config.yaml --ckpt_path OUT/checkpoints/compressed.ckpt``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="reccomp compress", description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="checkpoint of a reccomp fit run")
    p.add_argument("--method", required=True, help="target method (svd, fwsvd, maestro, ...)")
    p.add_argument("--budget", type=float, default=None, help="fraction (<= 1) or bytes")
    p.add_argument("--options", default=None, help="the method's options, YAML")
    p.add_argument("--finetune-epochs", type=int, default=0, help="fine-tune after compressing")
    p.add_argument(
        "--dense-ratio", type=float, default=None,
        help="also replace dense layers by output-PCA pairs keeping this share of ranks (afm)",
    )  # fmt: skip
    p.add_argument(
        "--stat-batches", type=int, default=20, help="training batches for --dense-ratio"
    )
    p.add_argument(
        "--limit-batches", type=int, default=None,
        help="at most this many batches per pass (importance, statistics, fine-tuning, "
        "evaluation): smoke tests such as reccomp bench --quick",
    )  # fmt: skip
    p.add_argument("--output", default=None, help="output directory")
    p.add_argument("--data.root", dest="data_root", default=None, help="override data root")
    p.add_argument("--config", default=None, help="the run's config (default: beside ckpt)")
    return p


def _swap(task: Any, module: torch.nn.Module) -> None:
    task.model.embeddings = module  # task.embeddings reads it from there


def compress_main(argv: list[str]) -> int:
    """``reccomp compress``: exit status 0, or 2 with the error on stderr."""
    try:
        compress_run(argv)
    except CompressError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


class CompressError(ValueError):
    """Bad input to ``reccomp compress`` (reported without a traceback)."""


def compress_run(argv: list[str]) -> tuple[Any, Any, Path]:
    """Run ``reccomp compress``; returns the compressed task, its data module and the output
    directory (the bench's post-training cells time the model from these)."""
    from reccomp.compress.transform import compress_collection, needs, row_importance
    from reccomp.runs import RunError, build_run, run_config

    a = _parser().parse_args(argv)
    ckpt = Path(a.ckpt)
    if not ckpt.exists():
        raise CompressError(f"no checkpoint {ckpt}")
    try:
        cfg, run_dir = run_config(ckpt, a.config)
    except RunError as e:
        raise CompressError(str(e)) from None
    options = yaml.safe_load(a.options) if a.options else {}
    if a.budget is None and not options:
        raise CompressError("give --budget or the method's size in --options")
    size = (
        f"b{a.budget:g}"
        if a.budget is not None
        else "-".join(f"{k}{v}" for k, v in options.items())
    )
    out = Path(a.output) if a.output else run_dir / "compressed" / f"{a.method}-{size}"
    for k in ("ckpt_path", "weights_only"):
        cfg.pop(k, None)
    if a.data_root:
        cfg["data"]["root"] = a.data_root
    cfg["trainer"]["max_epochs"] = max(a.finetune_epochs, 1)
    if a.limit_batches is not None:
        for stage in ("train", "val", "test"):
            cfg["trainer"][f"limit_{stage}_batches"] = a.limit_batches
        a.stat_batches = min(a.stat_batches, a.limit_batches)
    cfg["trainer"]["logger"] = {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": str(out), "name": "", "version": ""},
    }
    cli = build_run(cfg)
    task, dm, trainer = cli.model, cli.datamodule, cli.trainer
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    task.load_state_dict(state)
    source = task.embeddings
    try:
        spec = dataclasses.replace(task.spec, method=a.method, budget=a.budget, options=options)
        importance = None
        t0 = time.perf_counter()
        if needs(task.schema, spec, "importance"):
            dm.setup("fit")
            batches = getattr(spec_config(spec), "importance_batches", None)
            if a.limit_batches is not None:
                batches = min(batches or a.limit_batches, a.limit_batches)
            task.train()
            task.log = lambda *x, **k: None  # type: ignore[method-assign]  (no loop to log to)
            importance = row_importance(
                source, lambda m: _swap(task, m), lambda b: task.training_step(b, 0),
                dm.train_dataloader(), batches,
            )  # fmt: skip
            del task.log
            print(f"Fisher importance from {batches or 'all'} training batches")
        counts = None
        if needs(task.schema, spec, "counts"):
            from reccomp.compress.data import FitData

            fit_data = FitData.from_schema(dm.schema)
            counts = {
                f.name: torch.as_tensor(fit_data.counts(f.name)).float() for f in task.schema.sparse
            }
        new = compress_collection(source, task.schema, spec, importance, counts=counts)
    except ValueError as e:
        raise CompressError(str(e)) from None
    print(f"Compressed to {a.method} in {time.perf_counter() - t0:.1f} s")
    _swap(task, new)
    task.spec = spec
    dense_report: dict[str, Any] = {}
    if a.dense_ratio is not None:
        from reccomp.compress.dense import pca_dense_layers

        dm.setup("fit")
        task.eval()

        def run() -> None:
            with torch.no_grad():
                for i, b in enumerate(dm.train_dataloader()):
                    if i >= a.stat_batches:
                        break
                    task(b.to(task.device))

        dense_report = pca_dense_layers(task.model, run, a.dense_ratio, skip=task.embeddings)
        task.train()
        print(f"Dense layers: {dense_report['dense/bytes_before']} -> "
              f"{dense_report['dense/bytes_after']} bytes, ranks {dense_report['dense/ranks']}")  # fmt: skip
        task.hparams["low_rank_dense"] = dense_report["dense/ranks"]
    task.hparams["embeddings"] = dataclasses.asdict(spec)
    mem = task.embedding_memory()
    print(f"Embeddings: {a.method}, {mem['embeddings/bytes'] / 2**20:.2f} MiB "
          f"({mem['embeddings/ratio']:.3f} of the full collection)")  # fmt: skip
    metrics: dict[str, Any] = {
        "source_checkpoint": str(ckpt),
        "finetune_epochs": a.finetune_epochs,
        **dense_report,
    }
    if a.finetune_epochs > 0:
        trainer.validate(task, datamodule=dm, verbose=False)
        metrics.update({f"before_finetune/{k}": float(v) for k, v in
                        trainer.callback_metrics.items() if k.startswith("val/")})  # fmt: skip
        trainer.fit(task, datamodule=dm)
        metrics.update(task.training_stats())
    best = "best" if a.finetune_epochs > 0 and trainer.checkpoint_callback else None
    trainer.validate(task, datamodule=dm, verbose=False, ckpt_path=best)
    metrics.update(_metrics(trainer))
    trainer.test(task, datamodule=dm, ckpt_path=best)
    metrics.update(_metrics(trainer))
    metrics.update({"embeddings/method": a.method, "embeddings/budget": a.budget,
                    "embeddings/tables": task.embedding_report()})  # fmt: skip
    if dense_report:  # afm's memory figure counts the dense layers it changed
        used = metrics["embeddings/bytes"] + dense_report["dense/bytes_after"]
        full = metrics["embeddings/bytes"] / metrics["embeddings/ratio"]
        metrics["compressed/bytes"] = used
        metrics["compressed/ratio"] = used / (full + dense_report["dense/bytes_before"])
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(out / "checkpoints" / "compressed.ckpt")
    emb = cfg["model"]["init_args"]["embeddings"]
    emb.update({"method": a.method, "budget": a.budget, "options": options})
    if dense_report:
        cfg["model"]["init_args"]["low_rank_dense"] = dense_report["dense/ranks"]
    (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True) + "\n")
    print(out)
    return task, dm, out


def spec_config(spec: Any) -> Any:
    from reccomp.compress import make_config

    return make_config(spec.method, spec.options)


def _metrics(trainer: Any) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in trainer.callback_metrics.items()
        if k.startswith(("val/", "test/", "embeddings/"))
    }
