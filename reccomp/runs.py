"""A run directory's task and data, rebuilt from its ``config.yaml`` and a checkpoint.

``reccomp compress``, ``reccomp export`` and the bench read runs this way: the resolved config
beside ``checkpoints/`` rebuilds the task and data module exactly as ``reccomp fit`` built them,
then the checkpoint's weights (and the fitted compression state, restored by the collection's
extra state) are loaded.

Example::

    task, dm, run_dir = load_run("runs/ml-100k-mf/version_0/checkpoints/best-3.ckpt")
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
import yaml


class RunError(ValueError):
    """A checkpoint or its run directory cannot be read (reported without a traceback)."""


def run_config(ckpt: Path, config: str | Path | None = None) -> tuple[dict[str, Any], Path]:
    """The run's resolved config and its directory (the one holding ``config.yaml``)."""
    if config is not None:
        return yaml.safe_load(Path(config).read_text()), Path(config).parent
    for d in (ckpt.parent, ckpt.parent.parent):
        if (d / "config.yaml").exists():
            return yaml.safe_load((d / "config.yaml").read_text()), d
    raise RunError(f"no config.yaml beside {ckpt} (give --config)")


def build_run(cfg: dict[str, Any], trainer: dict[str, Any] | None = None) -> Any:
    """A LightningCLI (``run=False``) of ``cfg``: its ``model``, ``datamodule``, ``trainer``."""
    from reccomp.cli import RecCLI
    from reccomp.data.datamodule import RecDataModule
    from reccomp.tasks.base import RecTask

    cfg = dict(cfg)
    for k in ("ckpt_path", "weights_only"):
        cfg.pop(k, None)
    argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns about argv it does not read
    try:
        return RecCLI(
            RecTask,
            RecDataModule,
            subclass_mode_model=True,
            run=False,
            args=cfg,
            auto_configure_optimizers=False,
            save_config_callback=None,
            trainer_defaults={
                "num_sanity_val_steps": 0,
                "inference_mode": False,
                "enable_progress_bar": False,
                **(trainer or {}),
            },
        )
    finally:
        sys.argv = argv


def load_run(
    ckpt: str | Path, config: str | Path | None = None, data_root: str | None = None
) -> tuple[Any, Any, Path]:
    """``(task, datamodule, run_dir)`` of a checkpoint, weights loaded, in eval mode."""
    ckpt = Path(ckpt)
    if not ckpt.exists():
        raise RunError(f"no checkpoint {ckpt}")
    cfg, run_dir = run_config(ckpt, config)
    if data_root:
        cfg["data"]["root"] = data_root
    cfg.setdefault("trainer", {})["logger"] = False
    cli = build_run(cfg)
    task = cli.model
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    task.load_state_dict(state)
    return task.eval(), cli.datamodule, run_dir
