"""What reccomp's commands print: the user's figures, not the dependencies' chatter.

By default a command prints the data summary, one progress line per epoch with its metrics,
the final table and the run directory. Lightning's info lines (accelerator banners, cloud
"Tip"s, callback-override notices, checkpoint restore notes, the model summary) and the
dependencies' deprecation and user warnings are hidden. ``--verbose`` on any command, or
``RECCOMP_VERBOSE=1`` in the environment, shows everything.

Example::

    >>> from reccomp.console import quiet
    >>> quiet(verbose=False)  # what the ``reccomp`` command calls first
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from typing import Any

from lightning.pytorch.callbacks import TQDMProgressBar

# loggers whose INFO lines are dependency chatter (Lightning's rank_zero_info goes to these)
_CHATTY = ("lightning", "lightning.pytorch", "lightning.fabric", "lightning_fabric", "torchrec")


def verbose_requested(argv: list[str]) -> tuple[bool, list[str]]:
    """``(verbose, argv without --verbose)``; ``RECCOMP_VERBOSE=1`` also turns it on."""
    env = os.environ.get("RECCOMP_VERBOSE", "").strip().lower() in ("1", "true", "yes")
    rest = [a for a in argv if a != "--verbose"]
    return env or len(rest) != len(argv), rest


def quiet(verbose: bool = False) -> None:
    """Hide dependency warnings and Lightning's info lines unless ``verbose``."""
    if verbose:
        os.environ["RECCOMP_VERBOSE"] = "1"  # subprocesses (bench cells) inherit it
        return
    warnings.filterwarnings("ignore")
    # reccomp's own warnings are meant for the user (deprecations a dependency attributes to
    # reccomp's call sites are not)
    warnings.filterwarnings("default", category=UserWarning, module=r"reccomp(\.|$)")
    quiet_loggers()


def quiet_loggers() -> None:
    """Lightning's and torchrec's info lines off (warnings filters untouched)."""
    for name in _CHATTY:
        logging.getLogger(name).setLevel(logging.WARNING)
    # torch.fx warns about its own API each time torchrec traces, torch.export's serializer
    # about symbols it dropped, torchrec (on the root logger) about exporting KJTs: nothing a
    # user can act on
    for name in ("torch.fx", "torch._export", "torch.export"):
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger().setLevel(logging.ERROR)


def is_verbose() -> bool:
    return os.environ.get("RECCOMP_VERBOSE", "") == "1"


def _fmt(v: Any) -> str:
    x = float(v)
    return f"{x:.4g}" if abs(x) < 1e4 else f"{x:.0f}"


class EpochProgressBar(TQDMProgressBar):
    """One progress bar per epoch that stays on screen with the epoch's metrics.

    On a terminal each epoch's bar updates in place and is left behind when the epoch ends
    (train and validation metrics in its postfix); validation and test bars vanish when done.
    Where stdout is not a terminal (logs, CI, ``make demo`` piped), bars would write a line
    per refresh, so instead each epoch prints one summary line:
    ``Epoch 3: 157 steps, 1.2 s, train/mse=0.252, val/rmse=0.617``.
    """

    def __init__(self, refresh_rate: int = 1) -> None:
        super().__init__(refresh_rate=refresh_rate, leave=True)
        self._tty = sys.stdout.isatty()
        self._epoch_t0 = 0.0

    def get_metrics(self, trainer: Any, pl_module: Any) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)  # the run directory's version, printed at the end anyway
        return items

    # -- bars: on terminals only (Lightning writes them to stdout) ----------------------------
    @property
    def is_disabled(self) -> bool:
        return not self._tty or super().is_disabled

    def init_validation_tqdm(self) -> Any:
        bar = super().init_validation_tqdm()
        bar.leave = False  # also after a standalone validate: the table says it all
        return bar

    def init_test_tqdm(self) -> Any:
        bar = super().init_test_tqdm()
        bar.leave = False
        return bar

    # -- a summary line per epoch where there is no terminal ---------------------------------
    def on_train_epoch_start(self, trainer: Any, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self._epoch_t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._tty or trainer.sanity_checking:
            return
        metrics = self.get_metrics(trainer, pl_module)
        shown = ", ".join(
            f"{k}={_fmt(v)}" for k, v in metrics.items() if k.startswith(("train/", "val/"))
        )
        steps = self.total_train_batches
        seconds = time.perf_counter() - self._epoch_t0
        print(f"Epoch {trainer.current_epoch}: {steps} steps, {seconds:.1f} s, {shown}", flush=True)
