"""``reccomp bench``: the quick grid end to end, resume, report regeneration, failing cells."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from reccomp.bench.config import BenchConfig
from reccomp.cli import main
from tests.test_cli import CONFIGS, TINY_ML

BENCH_CONFIGS = sorted((CONFIGS / "bench").glob("*.yaml"))


def _bench_yaml(tmp_path: Path) -> Path:
    """A small grid on embedded data; 0.01 of 60 users cannot be reached: failing cells."""
    cfg = {
        "name": "tiny",
        "train_config": str(CONFIGS / "synthetic-movielens-mf.yaml"),
        "methods": ["full", "hash", "qr", "svd"],
        "budgets": [0.5, 0.01],
        "seeds": [0],
        "metrics": ["test/rmse"],
        "lower_is_better": ["test/rmse"],
        "overrides": ["--data.synthetic", TINY_ML, "--model.embeddings.min_rows", "0"],
        "quick_budgets": [0.5, 0.01],
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run(args: list[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["bench", *args])
    assert e.value.code == 0


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "out"
    _run(["--config", str(_bench_yaml(tmp)), "--quick", "--output", str(out)])
    return out


def test_quick_grid_end_to_end(grid: Path) -> None:
    cells = {p.stem: json.loads(p.read_text()) for p in (grid / "cells").glob("*.json")}
    assert set(cells) == {
        "full-b1-s0",
        "hash-b0.5-s0",
        "hash-b0.01-s0",
        "qr-b0.5-s0",
        "qr-b0.01-s0",
        "svd-b0.5-s0",
        "svd-b0.01-s0",
    }
    ok = cells["hash-b0.5-s0"]
    assert ok["status"] == "ok"
    assert ok["metrics"]["embeddings/ratio"] <= 0.5
    for key in ("test/rmse", "val/rmse", "train/samples_per_s", "model/parameters"):
        assert key in ok["metrics"]
    assert set(ok["latency_ms"]) == {"1", "1024"} and "torch" in ok["versions"]
    assert "embeddings:" in ok["config"]  # the resolved training config
    for name in ("table.md", "table.csv", "timing.md", "pareto.png"):
        assert (grid / name).stat().st_size > 0
    # numbers in the table are the cells' numbers
    assert f"{ok['metrics']['test/rmse']:.4f}" in (grid / "table.md").read_text()


def test_post_training_cells_compress_the_full_cells_checkpoint(grid: Path) -> None:
    svd = json.loads((grid / "cells" / "svd-b0.5-s0.json").read_text())
    assert svd["status"] == "ok", svd.get("error")
    full = json.loads((grid / "cells" / "full-b1-s0.json").read_text())
    assert svd["metrics"]["source_checkpoint"] == full["metrics"]["best_checkpoint"]
    assert svd["metrics"]["embeddings/ratio"] <= 0.5 and "test/rmse" in svd["metrics"]
    assert svd["metrics"]["finetune_epochs"] == 1  # --quick fine-tunes one (short) epoch
    assert set(svd["latency_ms"]) == {"1", "1024"}


def test_a_failing_cell_is_recorded_and_the_grid_goes_on(grid: Path) -> None:
    failed = json.loads((grid / "cells" / "qr-b0.01-s0.json").read_text())
    assert failed["status"] == "failed"
    assert "cannot reach budget 0.01" in failed["error"]
    assert json.loads((grid / "cells" / "qr-b0.5-s0.json").read_text())["status"] == "ok"
    # listed under failed cells, one line per method and error
    assert (
        "- `qr` at 0.01 (seeds 0): error: embeddings: method 'qr' cannot reach the budget"
        in (grid / "table.md").read_text()
    )


def test_report_rebuilds_from_result_files(grid: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (grid / "table.md").read_text()
    for name in ("table.md", "table.csv", "timing.md", "pareto.png"):
        (grid / name).unlink()
    _run(["report", str(grid)])
    assert (grid / "table.md").read_text() == before
    assert (grid / "pareto.png").exists()


def test_rerun_finishes_only_missing_cells(grid: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (grid / "table.md").read_text()
    ok = sum(json.loads(p.read_text())["status"] == "ok" for p in (grid / "cells").glob("*.json"))
    old = json.loads((grid / "cells" / "hash-b0.5-s0.json").read_text())
    (grid / "cells" / "hash-b0.5-s0.json").unlink()  # as if killed before this cell ended
    cfg = json.loads((grid / "bench.json").read_text())
    path = grid.parent / "again.yaml"
    path.write_text(yaml.safe_dump(cfg))
    _run(["--config", str(path), "--output", str(grid)])
    out = capsys.readouterr().out
    assert f"{ok - 1} of 7 cells already finished" in out  # failed cells are retried too
    new = json.loads((grid / "cells" / "hash-b0.5-s0.json").read_text())
    assert new["metrics"]["test/rmse"] == old["metrics"]["test/rmse"]  # same seed, same result
    assert (grid / "table.md").read_text() == before


def test_a_killed_grid_resumes_to_the_uninterrupted_table(grid: Path, tmp_path: Path) -> None:
    """SIGKILL the grid process (no handler runs) after its first cell, rerun: only the
    missing cells run and the table equals the uninterrupted grid's (same seeds)."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "reccomp.cli", "bench", "--config", str(_bench_yaml(tmp_path))]
    cmd += ["--quick", "--output", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 600
    while not list(out.glob("cells/*.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the grid ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list(out.glob("cells/*.json")))
    assert 1 <= done < 7
    result = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert f"{done} of 7 cells already finished" in result.stdout
    assert (out / "table.md").read_text() == (grid / "table.md").read_text()


@pytest.mark.parametrize("path", BENCH_CONFIGS, ids=lambda p: p.stem)
def test_shipped_bench_configs_parse(path: Path) -> None:
    cfg = BenchConfig(**yaml.safe_load(path.read_text()))
    assert (CONFIGS.parent / cfg.train_config).exists()
    assert cfg.cells()


def test_shipped_bench_config_names() -> None:
    names = {p.stem for p in BENCH_CONFIGS}
    assert {
        "ml-100k-rating",
        "ml-1m-retrieval",
        "ml-1m-ctr",
        "synthetic-criteo",
        "criteo-kaggle",
        "avazu",
    } <= names


def test_changed_config_reruns_stale_cells(grid: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Runs last (it rewrites bench.json): a cell finished with other arguments is rerun, and
    a post-training cell reruns with the full cell whose checkpoint it compresses."""
    old_full = json.loads((grid / "cells" / "full-b1-s0.json").read_text())
    old_svd = json.loads((grid / "cells" / "svd-b0.5-s0.json").read_text())
    assert old_full["args"][:1] == ["fit"] and old_svd["args"][:1] == ["compress"]
    cfg = json.loads((grid / "bench.json").read_text())
    cfg.update(methods=["full", "svd"], budgets=[0.5])
    cfg["overrides"] += ["--data.eval_batch_size", "512"]  # a changed config
    path = grid.parent / "changed.yaml"
    path.write_text(yaml.safe_dump(cfg))
    _run(["--config", str(path), "--output", str(grid), "--in-process"])
    out = capsys.readouterr().out
    assert "2 finished cells are stale" in out  # full, and svd (it compresses full)
    assert "2 cells run, 0 failed, 0 reused" in out
    full = json.loads((grid / "cells" / "full-b1-s0.json").read_text())
    svd = json.loads((grid / "cells" / "svd-b0.5-s0.json").read_text())
    assert full["args"][-2:] == ["--data.eval_batch_size", "512"]
    assert svd["metrics"]["source_checkpoint"] == full["metrics"]["best_checkpoint"]
    assert svd["metrics"]["source_checkpoint"] != old_svd["metrics"]["source_checkpoint"]
    # the cells wrote .part files; only the grid publishes (and removes them)
    assert not list((grid / "cells").glob("*.part"))


def test_an_interrupt_that_lightning_swallows_stops_an_in_process_grid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lightning turns the KeyboardInterrupt of Ctrl-C / SIGTERM into exit code 1: an
    in-process grid must stop there, not record a failed cell and go on."""
    import reccomp.bench.cell as cell
    from reccomp.bench import runner

    def swallowed(argv: list[str]) -> None:
        runner.INTERRUPTED.set()  # what the signal handler did before Lightning caught it
        raise SystemExit(1)

    monkeypatch.setattr(cell, "main", swallowed)
    cfg = BenchConfig(**yaml.safe_load(_bench_yaml(tmp_path).read_text()))
    with pytest.raises(KeyboardInterrupt):
        runner.run_grid(cfg, tmp_path / "out", in_process=True)
    assert not list((tmp_path / "out" / "cells").iterdir())


def _cell(method: str, budget: float, seed: int, auc: float, oracle: float) -> dict:
    metrics = {"test/auc": auc, "test/oracle_auc": oracle, "embeddings/bytes": 100 * budget}
    metrics["embeddings/ratio"] = budget
    return {"method": method, "budget": budget, "seed": seed, "status": "ok",
            "metrics": metrics, "latency_ms": {"1": 1.0, "1024": 2.0}}  # fmt: skip


def test_shown_metrics_appear_in_the_table() -> None:
    """``show`` metrics (the data's oracle AUC) are printed once above the tables."""
    from reccomp.bench.report import tables

    cfg = BenchConfig(name="t", train_config="x.yaml", methods=["full", "hash"], budgets=[0.5],
                      seeds=[0, 1], show=["test/oracle_auc"])  # fmt: skip
    cells = [_cell("full", 1, s, 0.77, 0.8143) for s in (0, 1)]
    cells += [_cell("hash", 0.5, s, 0.76 + s / 100, 0.8143) for s in (0, 1)]
    md, rows, _ = tables(cfg, cells)
    assert "`test/oracle_auc`: 0.8143, over 4 finished cells." in md
    assert "| hash |  | **0.7650 ± 0.0071** |" in md
    assert "test/oracle_auc_mean" in rows[0]
    cells[-1]["metrics"]["test/oracle_auc"] = 0.8
    md, _, _ = tables(cfg, cells)
    assert "(range 0.8000 to 0.8143)" in md


def test_cells_of_other_budgets_stay_out_of_the_table() -> None:
    """A directory can hold cells of an earlier config: only this grid's cells count,
    failed ones included."""
    from reccomp.bench.report import tables

    cfg = BenchConfig(name="t", train_config="x.yaml", methods=["full", "hash"], budgets=[0.5],
                      seeds=[0])  # fmt: skip
    stale = {**_cell("hash", 0.25, 0, 0.7, 0.8), "status": "failed", "error": "old budget"}
    md, _, _ = tables(cfg, [_cell("full", 1, 0, 0.77, 0.8), stale])
    assert "old budget" not in md and "Failed cells" not in md


def test_lightning_info_lines_of_an_in_process_cell_go_to_its_stderr() -> None:
    """They held the real stderr and broke the progress bar."""
    import io
    import logging

    import lightning.pytorch  # noqa: F401  (installs its handlers)

    from reccomp.bench.runner import _lightning_logs_to

    logger = logging.getLogger("lightning.pytorch")
    before, level = logger.handlers, logger.level
    logger.setLevel(logging.INFO)  # as with --verbose (quiet() raises it to WARNING)
    stream = io.StringIO()
    try:
        with _lightning_logs_to(stream):
            logging.getLogger("lightning.pytorch.utilities.rank_zero").info("Seed set to 0")
    finally:
        logger.setLevel(level)
    assert stream.getvalue() == "Seed set to 0\n"
    assert logger.handlers is before
