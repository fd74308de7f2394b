"""A resumed run is the same run: kill -9 a real ``reccomp fit`` after an epoch, resume it
with ``reccomp fit --resume RUN_DIR``, and get the uninterrupted run's test metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CONFIGS, REPO, shared_dataset

METHODS = {
    "full": [],
    "frequency_hash": ["--model.embeddings.method", "frequency_hash",
                       "--model.embeddings.budget", "0.5"],  # fitted state
    "dnis": ["--model.embeddings.method", "dnis", "--model.embeddings.budget", "0.5",
             "--model.embeddings.options", "{search_epochs: 1}"],  # phases
}  # fmt: skip


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "reccomp", "fit", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _metrics(run_dir: Path) -> dict[str, float]:
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHODS))
def test_kill_after_an_epoch_and_resume_equals_the_uninterrupted_run(
    method: str, tmp_path: Path
) -> None:
    base = ["--config", str(CONFIGS / "ml-100k-mf.yaml"), "--data.root",
            str(shared_dataset("ml-100k")), "--model.init_args.early_stopping_patience", "null",
            "--trainer.max_epochs", "4", *METHODS[method]]  # fmt: skip
    whole = subprocess.run(_cmd(*base), cwd=tmp_path / ".", env=_env(), capture_output=True,
                           text=True, timeout=600)  # fmt: skip
    assert whole.returncode == 0, whole.stderr
    want = _metrics(tmp_path / whole.stdout.strip().splitlines()[-1])

    work = tmp_path / "interrupted"
    work.mkdir()
    proc = subprocess.Popen(_cmd(*base), cwd=work, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    assert proc.stdout is not None
    for line in proc.stdout:  # epoch 1's checkpoint is written before its line is printed
        if line.startswith("Epoch 1:"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(60)
    assert proc.returncode == -signal.SIGKILL
    run = work / "runs" / "ml-100k-mf" / "version_0"
    assert not (run / "metrics.json").exists() or "test/rmse" not in _metrics(run)
    resumed = subprocess.run(_cmd("--resume", str(run)), cwd=work, env=_env(),
                             capture_output=True, text=True, timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert Path(resumed.stdout.strip().splitlines()[-1]).resolve() == run.resolve()
    got = _metrics(run)
    assert got["epochs"] == want["epochs"]
    for k in ("val/rmse", "test/rmse", "test/mae"):
        assert abs(got[k] - want[k]) <= 1e-4, (k, got[k], want[k])
