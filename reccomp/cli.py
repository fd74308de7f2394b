"""The ``reccomp`` command.

    reccomp fit|validate|test|predict --config configs/X.yaml [--data.root DIR] [--key value ...]
    reccomp data download NAME --root DIR
    reccomp data prepare --config configs/X.yaml [--data.root DIR]
    reccomp data info (--config configs/X.yaml | PREPARED_DIR)
    reccomp bench --config configs/bench/NAME.yaml [--output DIR] [--data.root DIR] [--quick]
    reccomp bench report results/NAME
    reccomp compress --ckpt CKPT --method svd --budget 0.25 [--finetune-epochs N]

Training runs go through LightningCLI: every key of the YAML can be overridden on the
command line, a wrong key or type fails before training and names it. Each run prints its
run directory as the last line; it holds ``config.yaml`` (the resolved config),
``metrics.json``, ``checkpoints/`` and the CSV logs.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import BasePredictionWriter, Callback, ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from reccomp.console import EpochProgressBar, is_verbose, quiet, verbose_requested
from reccomp.data.datamodule import RecDataModule
from reccomp.runtime import tune_malloc
from reccomp.tasks.base import RecTask

RUN_SUBCOMMANDS = ("fit", "validate", "test", "predict")


def _run_name(argv: list[str]) -> str:
    """The stem of the first ``--config`` file (``runs/<stem>/version_N``), else ``run``."""
    for i, a in enumerate(argv):
        if a == "--config" and i + 1 < len(argv):
            return Path(argv[i + 1]).stem
        if a.startswith("--config="):
            return Path(a.split("=", 1)[1]).stem
    return "run"


def _innermost(msg: str) -> str:
    """The most specific line of jsonargparse's nested "does not validate" messages."""
    lines = [ln.strip(" -") for ln in msg.splitlines()]
    useful = [
        ln
        for ln in lines
        if ln
        and not ln.startswith(
            (
                "Does not validate",
                "Subtypes:",
                "Errors:",
                "Expected a <class 'NoneType'>",
                "Given value",
            )
        )
    ]
    return useful[0] if useful else msg


class PredictionWriter(BasePredictionWriter):
    """Writes ``predictions.csv``: each row's raw feature values (one column per field, as a
    served model takes them), its label and the prediction."""

    def __init__(self) -> None:
        super().__init__(write_interval="epoch")

    def write_on_epoch_end(
        self, trainer: Trainer, pl_module: Any, predictions: Any, batch_indices: Any
    ) -> None:
        import csv

        preds = torch.cat([p.reshape(-1) for p in predictions]).float()
        batches = list(trainer.predict_dataloaders)  # type: ignore[arg-type]
        labels = torch.cat([b.labels for b in batches])
        columns = _raw_columns(trainer, batches)
        out = Path(trainer.log_dir or ".") / "predictions.csv"
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow([*columns, "label", "prediction"])
            cols = list(columns.values())
            for i, (y, p) in enumerate(zip(labels.tolist(), preds.tolist(), strict=True)):
                w.writerow([*(c[i] for c in cols), f"{y:g}", f"{p:.9g}"])
        print(f"Wrote {len(preds)} predictions to {out}")


def _raw_columns(trainer: Trainer, batches: list[Any]) -> dict[str, list[str]]:
    """Raw values of every field for the predicted rows (empty when the data module has no
    prepared schema)."""
    from reccomp.export.fields import raw_columns

    dm = trainer.datamodule
    schema = getattr(dm, "schema", None)
    if schema is None or schema.root is None:
        return {}
    single = [f.name for f in schema.sparse if f.max_len == 1]
    sparse, dense = [], []
    bags: dict[str, list[np.ndarray]] = {f.name: [] for f in schema.sparse if f.max_len > 1}
    for b in batches:
        jts = b.sparse.to_dict()
        cols = [jts[name].values().numpy() for name in single]
        sparse.append(np.stack(cols, 1) if cols else np.zeros((len(b), 0), np.int64))
        for name, parts in bags.items():
            jt = jts[name]
            width = max(int(jt.lengths().max()) if len(b) else 0, 1)
            parts.append(jt.to_padded_dense(desired_length=width, padding_value=-1).numpy())
        dense.append(b.dense.numpy())
    stacked = {k: _pad_cat(v) for k, v in bags.items()}
    return raw_columns(schema, dm.dataset, np.concatenate(sparse), stacked, np.concatenate(dense))


def _pad_cat(parts: list[np.ndarray]) -> np.ndarray:
    width = max(p.shape[1] for p in parts)
    return np.concatenate([np.pad(p, ((0, 0), (0, width - p.shape[1])), constant_values=-1)
                           for p in parts])  # fmt: skip


class InterruptCheckpoint(Callback):
    """Ctrl-C or SIGTERM during ``fit`` saves ``last.ckpt`` where it stands, so
    ``reccomp fit --resume RUN_DIR`` goes on from there (an interruption between epochs
    resumes exactly; one inside an epoch repeats that epoch's data order from its start)."""

    def on_exception(self, trainer: Trainer, pl_module: Any, exception: BaseException) -> None:
        interrupted = isinstance(exception, KeyboardInterrupt) or (
            type(exception).__name__ == "SIGTERMException"
        )
        cb = trainer.checkpoint_callback
        if not interrupted or not isinstance(cb, ModelCheckpoint) or not cb.dirpath:
            return
        path = Path(cb.dirpath) / "last.ckpt"
        trainer.save_checkpoint(path)
        run = Path(trainer.log_dir or ".")
        print(f"\nInterrupted: saved {path}; go on with: reccomp fit --resume {run}", flush=True)


def _torchrun_devices(config: dict[str, Any]) -> None:
    """Under torchrun, the process count is torchrun's: devices per node and nodes follow
    from it unless the config sets them (Lightning's CPU default is one device)."""
    local, world = os.environ.get("LOCAL_WORLD_SIZE"), os.environ.get("WORLD_SIZE")
    if local is None or world is None or "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    if config.get("devices") in (None, "auto"):
        config["devices"] = int(local)
    if config.get("num_nodes") in (None, 1):
        config["num_nodes"] = int(world) // int(local)


class RecCLI(LightningCLI):
    """LightningCLI wired for reccomp: schema linking, test after fit, metrics.json."""

    def instantiate_classes(self) -> None:
        # config values are validated when the classes are built (dataclass __post_init__,
        # data preparation): report those errors plainly, before any training starts
        try:
            super().instantiate_classes()
        except (ValueError, TypeError, FileNotFoundError) as e:
            print(f"error: {_innermost(str(e))}", file=sys.stderr)
            raise SystemExit(2) from None

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        # one bar per epoch (or a summary line off a terminal) unless the config turns bars
        # off or brings its own
        given = [*(config.get("callbacks") or []), *callbacks]
        if config.get("enable_progress_bar") is not False and not any(
            isinstance(c, ProgressBar) for c in given
        ):
            callbacks = [*callbacks, EpochProgressBar()]
        _torchrun_devices(config)
        return super()._instantiate_trainer(config, callbacks)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.schema_dict", "model.init_args.schema", apply_on="instantiate")

    # -- results -----------------------------------------------------------------------------
    def _collect(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in self.trainer.callback_metrics.items():
            if k.startswith(("val/", "test/", "embeddings/")):
                x = float(v)
                out[k] = None if math.isnan(x) else x
        return out

    def _write_metrics(self, extra: dict[str, Any] | None = None) -> Path | str:
        trainer = self.trainer
        if trainer.fast_dev_run:  # Lightning turns loggers and checkpoints off for it
            return "fast_dev_run: no run directory (loggers and checkpoints are off)"
        run_dir = Path(trainer.log_dir or ".")  # every rank asks: it is a broadcast
        if not trainer.is_global_zero:
            return run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / "metrics.json"
        metrics: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        metrics.update(extra or {})
        metrics.update(self._collect())
        path.write_text(json.dumps(metrics, indent=1, sort_keys=True) + "\n")
        return run_dir

    def _best_ckpt(self) -> str | None:
        cb = self.trainer.checkpoint_callback
        if isinstance(cb, ModelCheckpoint):
            if cb.best_model_path:
                return cb.best_model_path
            if cb.last_model_path:
                return cb.last_model_path
        return None

    def after_fit(self) -> None:
        if self.trainer.interrupted:  # InterruptCheckpoint saved last.ckpt and said so
            print(self.trainer.log_dir)
            raise SystemExit(130)
        ckpt = self._best_ckpt()
        cb = self.trainer.checkpoint_callback
        if isinstance(cb, ModelCheckpoint) and cb.best_model_score is not None and ckpt:
            print(f"Best {cb.monitor} {float(cb.best_model_score):.4g} ({Path(ckpt).name}): test")
        fast = bool(self.trainer.fast_dev_run)
        ckpt_arg = None if fast or ckpt is None else ckpt
        self.trainer.validate(
            self.model, datamodule=self.datamodule, ckpt_path=ckpt_arg, verbose=False
        )
        val = self._collect()
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt_arg)
        extra: dict[str, Any] = {"best_checkpoint": ckpt, "epochs": self.trainer.current_epoch}
        if hasattr(self.model, "training_stats"):
            extra.update(self.model.training_stats())
        if hasattr(self.model, "embedding_report"):
            extra["embeddings/method"] = self.model.spec.method
            extra["embeddings/budget"] = self.model.spec.budget
            extra["embeddings/tables"] = self.model.embedding_report()
        sharding = getattr(self.trainer.strategy, "sharding_", None)
        if sharding:
            extra["embeddings/sharding"] = sharding
        run_dir = self._write_metrics({**val, **extra})
        print(run_dir)

    def after_validate(self) -> None:
        print(self._write_metrics())

    def after_test(self) -> None:
        print(self._write_metrics())

    def after_predict(self) -> None:
        print(Path(self.trainer.log_dir or "."))

    def before_fit(self) -> None:
        if getattr(self.model.embeddings, "post_training", False):
            m = self.model.spec.method
            print(
                f"error: {m} is a post-training method: train a model (e.g. method full), then "
                f"reccomp compress --ckpt CKPT --method {m} --budget B [--finetune-epochs N]",
                file=sys.stderr,
            )
            raise SystemExit(2)
        mem = self.model.embedding_memory() if hasattr(self.model, "embedding_memory") else {}
        if mem:
            print(
                f"Embeddings: {self.model.spec.method}, {mem['embeddings/bytes'] / 2**20:.2f} MiB "
                f"({mem['embeddings/ratio']:.3f} of the full collection)"
            )


def run_cli(argv: list[str] | None) -> RecCLI:
    """Run a LightningCLI subcommand; ``argv=None`` reads the command line."""
    import reccomp.distributed.strategy  # noqa: F401  (registers --trainer.strategy torchrec)

    name = _run_name(sys.argv[1:] if argv is None else argv)
    return RecCLI(
        RecTask,
        RecDataModule,
        subclass_mode_model=True,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": "runs", "name": name},
            },
            "callbacks": [PredictionWriter(), InterruptCheckpoint()],
            "num_sanity_val_steps": 0,
            # FBGEMM's fused CPU lookups dispatch through autograd: inference_mode skips that
            # key and finds no CPU kernel, so evaluation runs under no_grad instead
            "inference_mode": False,
            "log_every_n_steps": 20,
            "enable_model_summary": is_verbose(),
        },
        args=argv,
    )


# one line per subcommand: `reccomp --help`
SUBCOMMANDS = {
    "fit": "train from a config (--resume RUN_DIR: go on with an interrupted run), then test",
    "validate": "evaluate a checkpoint on the validation split",
    "test": "evaluate a checkpoint on the test split",
    "predict": "write a checkpoint's predictions (predictions.csv in the run directory)",
    "compress": "compress a trained checkpoint (svd, fwsvd, afm, maestro), evaluate, fine-tune",
    "export": "export a checkpoint for serving (torch.export program, optionally quantized)",
    "serve": "serve an exported model over HTTP (POST /predict, /recommend)",
    "bench": "run a grid of methods x budgets x seeds, or rebuild its report",
    "data": "download, prepare and inspect data sets",
}


def usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = [
        "usage: reccomp SUBCOMMAND [options]   (reccomp SUBCOMMAND --help: its options)",
        "",
        "Train, compress, compare and evaluate recommender models with compressed TorchRec",
        "embedding tables.",
        "",
        "subcommands:",
        *(f"  {name:<{width}}  {text}" for name, text in SUBCOMMANDS.items()),
        "",
        "options:",
        "  --verbose   show everything Lightning and the dependencies print (or RECCOMP_VERBOSE=1)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from_command_line = argv is None
    verbose, argv = verbose_requested(list(sys.argv[1:] if argv is None else argv))
    quiet(verbose)
    tune_malloc()
    if not verbose and os.environ.get("RANK", "0") != "0":
        # torchrun: rank 0 speaks for the run; the other ranks print only their errors
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (lives as long as the process)
    if argv and argv[0] == "data":
        from reccomp.data.cli import data_main

        sys.exit(data_main(argv[1:]))
    if argv and argv[0] == "compress":
        from reccomp.compress.cli import compress_main

        sys.exit(compress_main(argv[1:]))
    if argv and argv[0] == "export":
        from reccomp.export.cli import export_main

        sys.exit(export_main(argv[1:]))
    if argv and argv[0] == "serve":
        from reccomp.serving.cli import serve_main

        sys.exit(serve_main(argv[1:]))
    if argv and argv[0] == "bench":
        from reccomp.bench.cli import bench_main

        sys.exit(bench_main(argv[1:]))
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        sys.exit(0)
    if argv[0] not in RUN_SUBCOMMANDS:
        print(f"error: unknown subcommand {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        sys.exit(2)
    if argv[0] == "fit" and "--resume" in argv:
        argv = resume_args(argv)
    if argv[0] == "fit":  # SIGTERM (kill PID, a scheduler) stops like Ctrl-C: checkpoint saved
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    if from_command_line:
        sys.argv = [sys.argv[0], *argv]  # LightningCLI reads sys.argv; --verbose is ours
    run_cli(None if from_command_line else argv)


def resume_args(argv: list[str]) -> list[str]:
    """``fit --resume RUN_DIR [--key value ...]`` -> the run's own config, its last
    checkpoint and its own directory (metrics and checkpoints go on where they were)."""
    i = argv.index("--resume")
    if i + 1 >= len(argv):
        print("error: --resume takes a run directory (runs/<config>/version_N)", file=sys.stderr)
        sys.exit(2)
    run = Path(argv[i + 1])
    ckpt = run / "checkpoints" / "last.ckpt"
    for need in (run / "config.yaml", ckpt):
        if not need.exists():
            print(f"error: --resume {run}: no {need.name} there", file=sys.stderr)
            sys.exit(2)
    rest = argv[1:i] + argv[i + 2 :]
    logger = {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": str(run.parent.parent), "name": run.parent.name,
                      "version": run.name},
    }  # fmt: skip
    return ["fit", "--config", str(run / "config.yaml"), "--ckpt_path", str(ckpt),
            "--trainer.logger", json.dumps(logger), *rest]  # fmt: skip


if __name__ == "__main__":
    main()
