"""What a new user meets first: the README's Python example runs, commands print little."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from reccomp.cli import SUBCOMMANDS
from tests.conftest import REPO

RECCOMP = [sys.executable, "-m", "reccomp"]


def _readme_python_block(heading: str) -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index(f"## {heading}") :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, f"no python block under '## {heading}'"
    return match.group(1)


def test_readme_python_api_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    scope: dict[str, object] = {}
    exec(compile(_readme_python_block("Python API"), "README.md", "exec"), scope)
    metrics, task = scope["metrics"], scope["task"]
    assert 0.5 < metrics["test/rmse"] < 1.2  # type: ignore[index]
    ratio = task.embedding_memory()["embeddings/ratio"]  # type: ignore[attr-defined]
    assert 0.2 < ratio <= 0.25
    assert (tmp_path / "runs" / "notebook" / "version_0" / "checkpoints").is_dir()
    printed = capsys.readouterr().out
    assert "Tip" not in printed and "litlogger" not in printed


def _run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RECCOMP, *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_fit_prints_what_a_user_needs(tmp_path: Path) -> None:
    config = str(REPO / "configs" / "synthetic-movielens-mf.yaml")
    out = _run(["fit", "--config", config], tmp_path)
    assert out.returncode == 0, out.stderr
    lines = (out.stderr + out.stdout).splitlines()  # stdout last: the run directory
    assert len(lines) <= 40, "\n".join(lines)
    for noise in ("Tip", "litlogger", "deprecated", "GPU available", "will override"):
        assert not [ln for ln in lines if noise in ln], noise
    assert any(
        ln.startswith("Data: synthetic-movielens (rating), rows: train 160,000") for ln in lines
    )
    assert any(ln.startswith("Epoch 0: ") and "val/rmse=" in ln for ln in lines)
    assert any("test/rmse" in ln for ln in lines)
    assert (tmp_path / lines[-1] / "metrics.json").exists()  # the run directory, last

    verbose = _run(["fit", "--config", config, "--trainer.max_epochs", "1", "--verbose"], tmp_path)
    assert verbose.returncode == 0
    assert "GPU available" in verbose.stdout + verbose.stderr


def test_help_names_every_subcommand(tmp_path: Path) -> None:
    out = _run(["--help"], tmp_path)
    assert out.returncode == 0
    listed = re.findall(r"^  (\w+)  ", out.stdout, re.M)
    assert listed == list(SUBCOMMANDS)
    assert {"fit", "test", "compress", "bench", "data"} <= set(listed)


@pytest.mark.parametrize(
    "sub",
    [
        *([s] for s in SUBCOMMANDS),
        ["bench", "report"],
        ["data", "download"],
        ["data", "prepare"],
        ["data", "info"],
    ],
    ids=" ".join,
)
def test_every_subcommand_has_help(sub: list[str], tmp_path: Path) -> None:
    out = _run([*sub, "--help"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert "usage" in out.stdout.lower()


def test_unknown_subcommand_fails(tmp_path: Path) -> None:
    out = _run(["frobnicate"], tmp_path)
    assert out.returncode == 2
    assert "unknown subcommand 'frobnicate'" in out.stderr
