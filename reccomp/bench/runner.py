"""Running a grid: one subprocess per cell (``--quick`` / ``--in-process``: all in this
process), resumable, a failing cell recorded and skipped, a cell of a changed config rerun.

Layout of ``results/<name>/``::

    bench.json                the resolved bench config (the report reads it)
    cells/<cell>.json         one result per cell (``status`` ok or failed, the ``args`` it
                              ran with), written last, by the grid (the cell writes .part)
    runs/<cell>/version_N/    each cell's run directory (config.yaml, metrics.json, ckpts)
    table.md table.csv timing.md pareto.png     from :mod:`reccomp.bench.report`
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from reccomp.bench.config import BenchConfig, cell_id, post_training

# Set by the bench's SIGINT / SIGTERM handler. Lightning's trainer catches the
# KeyboardInterrupt the handler raises (its "graceful shutdown") and exits 1, so an
# in-process cell would otherwise look failed and the grid would go on.
INTERRUPTED = threading.Event()


def interrupt(signum: int, frame: object) -> None:
    """Signal handler of a running grid: stop the grid and its running cell."""
    INTERRUPTED.set()
    raise KeyboardInterrupt


def compress_args(cfg: BenchConfig, out: Path, method: str, budget: float, seed: int) -> list[str]:
    """The ``reccomp compress`` arguments of a post-training cell: from the best checkpoint
    of the ``full`` cell of the same seed."""
    full = out / "cells" / f"{cell_id('full', 1.0, seed)}.json"
    ckpt = (
        json.loads(full.read_text()).get("metrics", {}).get("best_checkpoint")
        if cell_done(full)
        else None
    )
    if not ckpt:
        raise ValueError(
            f"{method} compresses a trained full model: cell {full.stem} did not finish"
        )
    args = ["compress", "--ckpt", ckpt, "--method", method, "--budget", repr(budget),
            "--finetune-epochs", str(cfg.finetune_epochs),
            "--output", str(out / "runs" / cell_id(method, budget, seed)),
            *cfg.compress_overrides]  # fmt: skip
    if cfg.data_root:
        args += ["--data.root", cfg.data_root]
    return args


def fit_args(cfg: BenchConfig, out: Path, method: str, budget: float, seed: int) -> list[str]:
    """The ``reccomp fit`` arguments of one cell."""
    args = ["fit", "--config", cfg.train_config, "--model.embeddings.method", method]
    if method != "full":
        args += ["--model.embeddings.budget", repr(budget)]
    args += ["--seed_everything", str(seed)]
    if cfg.data_root:
        args += ["--data.root", cfg.data_root]
    args += [
        "--trainer.logger.init_args.save_dir", str(out / "runs"),
        "--trainer.logger.init_args.name", cell_id(method, budget, seed),
        "--trainer.enable_progress_bar", "false",
        *cfg.overrides,
        *cfg.method_overrides.get(method, []),
    ]  # fmt: skip
    return args


def _write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def cell_done(path: Path, args: list[str] | None = None) -> bool:
    """Whether the cell at ``path`` finished; with ``args``, also that it ran with those
    arguments (a cell of a changed config is stale; a cell written before reccomp stored
    its arguments counts as done)."""
    if not path.exists():
        return False
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return False
    return data.get("status") == "ok" and (args is None or data.get("args", args) == args)


def _cell_args(cfg: BenchConfig, out: Path, method: str, budget: float, seed: int) -> list[str]:
    make = compress_args if post_training(method) else fit_args
    return make(cfg, out, method, budget, seed)


def _todo(cfg: BenchConfig, out: Path, force: bool) -> tuple[list[tuple], int]:
    """The cells to run, in grid order, and how many of them are stale (finished with other
    arguments, or a post-training cell of a ``full`` cell that reruns: it compresses that
    cell's checkpoint)."""
    todo, stale, rerun_full = [], 0, set()
    for method, budget, seed in cfg.cells():
        path = out / "cells" / f"{cell_id(method, budget, seed)}.json"
        try:
            args = _cell_args(cfg, out, method, budget, seed)
        except ValueError:  # its full cell has not finished: it cannot have either
            args = None
        redo = force or not cell_done(path, args) or (post_training(method) and seed in rerun_full)
        if redo:
            todo.append((method, budget, seed))
            stale += cell_done(path) and not force
            if method == "full":
                rerun_full.add(seed)
    return todo, stale


@contextlib.contextmanager
def _lightning_logs_to(stream: io.StringIO) -> Iterator[None]:
    """Lightning's loggers hold the real stderr (redirect_stderr misses them): their info
    lines ("Seed set to 0", "GPU available") would break the progress bar of an in-process
    grid. Send them where the cell's stderr goes for the time of the cell."""
    loggers = [logging.getLogger(n) for n in ("lightning", "lightning.pytorch", "lightning.fabric")]
    saved = [lg.handlers for lg in loggers]
    for lg in loggers:
        lg.handlers = [logging.StreamHandler(stream)] if lg.handlers else []
    try:
        yield
    finally:
        for lg, handlers in zip(loggers, saved, strict=True):
            lg.handlers = handlers


def _run_cell(path: Path, args: list[str], in_process: bool) -> subprocess.CompletedProcess:
    """One cell, writing its result to ``path``: its own Python process (the default: a crash
    or leak stays in it), or this process (``in_process``: saves the interpreter and import
    start-up of every cell, about 10 s on 2 vCPUs, which dominates small cells)."""
    if not in_process:
        cmd = [sys.executable, "-m", "reccomp.bench.cell", str(path), "--", *args]
        child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = child.communicate()
        except BaseException:  # Ctrl-C or SIGTERM of the grid: the running cell stops too
            child.kill()
            child.wait()
            raise
        return subprocess.CompletedProcess(cmd, child.returncode, out, err)
    from reccomp.bench.cell import main as cell_main

    err = io.StringIO()
    code: int | str | None = 0
    # as in a process of its own: LightningCLI warns when sys.argv holds arguments besides
    # the ones it is given (here the bench's), a warning that buried the cells' real errors
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        with (
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(err),
            _lightning_logs_to(err),
        ):
            cell_main([str(path), "--", *args])
    except SystemExit as e:  # argparse, LightningCLI and budget errors exit
        code = e.code
    except Exception:
        err.write(traceback.format_exc())
        code = 1
    finally:
        sys.argv = argv
    if INTERRUPTED.is_set():  # the cell swallowed the interrupt: stop, record nothing
        raise KeyboardInterrupt
    rc = 0 if code is None else code if isinstance(code, int) else 1  # as a process exits
    return subprocess.CompletedProcess(args, rc, "", err.getvalue())


def run_grid(
    cfg: BenchConfig, out: Path, force: bool = False, in_process: bool = False
) -> dict[str, int]:
    """Run every cell not yet finished (all with ``force``); returns counts by outcome.
    ``in_process``: run the cells in this process (see :func:`_run_cell`)."""
    INTERRUPTED.clear()
    out.mkdir(parents=True, exist_ok=True)
    (out / "cells").mkdir(exist_ok=True)
    (out / "bench.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
    cells = cfg.cells()
    todo, stale = _todo(cfg, out, force)
    counts = {"skipped": len(cells) - len(todo), "ok": 0, "failed": 0}
    if counts["skipped"]:
        print(f"{counts['skipped']} of {len(cells)} cells already finished (--force reruns them)")
    if stale:
        print(
            f"{stale} finished cells are stale (run with other arguments, or compressing a full "
            "cell that reruns): rerun"
        )
    bar = tqdm(todo, desc="bench", unit="cell", dynamic_ncols=True)
    for method, budget, seed in bar:
        cid = cell_id(method, budget, seed)
        bar.set_description(f"bench {cid}")
        path = out / "cells" / f"{cid}.json"
        # the cell writes `part`; only this process publishes `path`, with the grid's keys,
        # so a cell that outlives a killed grid never leaves a result without them
        part = path.with_name(path.name + ".part")
        part.unlink(missing_ok=True)
        t0 = time.perf_counter()
        args: list[str] = []
        try:
            args = _cell_args(cfg, out, method, budget, seed)
        except ValueError as e:
            proc = subprocess.CompletedProcess([], 2, "", f"error: {e}")
        else:
            proc = _run_cell(part, args, in_process)
        secs = time.perf_counter() - t0
        base = {"cell": cid, "method": method, "budget": budget, "seed": seed, "wall_seconds": secs}
        if proc.returncode == 0 and cell_done(part):
            data = json.loads(part.read_text())
            _write(path, {**data, **base, "args": args})
            part.unlink()
            counts["ok"] += 1
        else:
            err = (proc.stderr or proc.stdout)[-3000:]
            lines = [ln for ln in err.strip().splitlines() if ln.strip()]
            _write(path, {**base, "status": "failed", "error": lines[-1] if lines else "",
                          "log_tail": err, "returncode": proc.returncode, "args": args})  # fmt: skip
            counts["failed"] += 1
            tqdm.write(f"{cid}: failed: {lines[-1] if lines else proc.returncode}")
    return counts
