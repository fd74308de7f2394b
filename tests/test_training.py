"""Real training runs (seconds each): the quality bounds the docs promise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reccomp.cli import run_cli
from tests.conftest import CONFIGS, shared_dataset


@pytest.mark.slow
def test_mf_ml100k_rmse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Biased MF on ML-100K, random 80/10/10 split, seed 0: test RMSE <= 0.93."""
    root = shared_dataset("ml-100k")
    monkeypatch.chdir(tmp_path)
    run_cli(
        [
            "fit",
            "--config",
            str(CONFIGS / "ml-100k-mf.yaml"),
            "--data.root",
            str(root),
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    run_dir = tmp_path / capsys.readouterr().out.strip().splitlines()[-1]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test/rmse"] <= 0.93
    assert (run_dir / "config.yaml").exists()
    assert list((run_dir / "checkpoints").glob("best-*.ckpt"))
