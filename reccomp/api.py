"""The Python entry points for notebooks: what ``reccomp fit`` does, without the CLI.

A config's ``data:`` block is a :class:`~reccomp.data.datamodule.RecDataModule`, its
``model:`` block a task (:class:`~reccomp.tasks.RatingTask`, ``CTRTask``, ``RetrievalTask``)
holding a model class and an :class:`~reccomp.modules.embedding.EmbeddingSpec`;
:func:`make_trainer` is the Lightning ``Trainer`` with the settings the CLI uses.

Example (the README's Python API section, which a test runs)::

    >>> import reccomp
    >>> dm = reccomp.RecDataModule("synthetic-movielens", task="rating",
    ...     synthetic={"n_users": 2000, "n_items": 3000, "n_ratings": 50000, "seed": 0})
    >>> task = reccomp.RatingTask(model=reccomp.models.MatrixFactorization,  # a model class
    ...     embeddings=reccomp.EmbeddingSpec(method="hash", budget=0.25, dim=32), schema=dm.schema)
    >>> trainer = reccomp.make_trainer(max_epochs=2)
    >>> trainer.fit(task, dm)                                        # doctest: +SKIP
    >>> trainer.test(task, dm, ckpt_path="best")[0]["test/rmse"]     # doctest: +SKIP
    >>> task.embedding_memory()["embeddings/ratio"]                  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger

from reccomp.console import EpochProgressBar, quiet_loggers
from reccomp.runtime import tune_malloc


def make_trainer(
    run_dir: str | Path = "runs/notebook", verbose: bool = False, **kwargs: Any
) -> Trainer:
    """A ``Trainer`` set up as ``reccomp fit`` sets it up; ``kwargs`` override any setting.

    Args:
        run_dir: where the CSV logs and checkpoints go (``<run_dir>/version_N``).
        verbose: keep Lightning's info lines (accelerator banners, tips, restore notes).
            Warnings filters are left as the caller set them.
        kwargs: ``Trainer`` arguments (``max_epochs``, ``accelerator``, ...).
    """
    if not verbose:
        quiet_loggers()
    tune_malloc()  # about 2x on FBGEMM's fused CPU step (see reccomp.runtime)
    run_dir = Path(run_dir)
    settings: dict[str, Any] = {
        "logger": CSVLogger(save_dir=str(run_dir.parent), name=run_dir.name),
        "callbacks": [EpochProgressBar()],
        "num_sanity_val_steps": 0,
        # FBGEMM's fused CPU lookups dispatch through autograd: no inference_mode
        "inference_mode": False,
        "log_every_n_steps": 20,
        "enable_model_summary": False,
    }
    settings.update(kwargs)
    return Trainer(**settings)
