"""``reccomp compress``: a trained checkpoint -> a compressed, evaluated, reloadable one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from reccomp.cli import main, run_cli
from tests.conftest import CONFIGS
from tests.test_cli import write_tiny_ml1m

QUIET = ["--trainer.enable_progress_bar", "false"]


def _tiny(tmp_path: Path) -> list[str]:
    """DeepFM CTR on a tiny MovieLens-1M-format data set written under ``tmp_path``."""
    root = str(write_tiny_ml1m(tmp_path / "ml-1m"))
    return ["--config", str(CONFIGS / "ml-1m-deepfm-ctr.yaml"), "--data.root", root]


def _fit(tmp_path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> Path:
    cfg = _tiny(tmp_path)
    run_cli(["fit", *cfg, "--trainer.max_epochs", "1", "--model.embeddings.min_rows", "25",
             *QUIET, *extra])  # fmt: skip
    run_dir = tmp_path / capsys.readouterr().out.strip().splitlines()[-1]
    return Path(json.loads((run_dir / "metrics.json").read_text())["best_checkpoint"])


@pytest.mark.parametrize(
    ("method", "extra"), [("svd", []), ("fwsvd", []), ("afm", ["--dense-ratio", "0.25"])]
)
def test_compress_evaluates_saves_and_reloads(
    method: str,
    extra: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    ckpt = _fit(tmp_path, capsys)
    out = tmp_path / "small"
    with pytest.raises(SystemExit) as e:
        main(["compress", "--ckpt", str(ckpt), "--method", method, "--budget", "0.8",
              "--finetune-epochs", "1", "--output", str(out), *extra])  # fmt: skip
    assert e.value.code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["embeddings/method"] == method
    assert metrics["embeddings/ratio"] <= 0.8
    assert {"test/auc", "val/auc", "before_finetune/val/auc"} <= set(metrics)
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["model"]["init_args"]["embeddings"]["method"] == method
    if extra:  # dense layers were factorized too: the config rebuilds their shape
        assert cfg["model"]["init_args"]["low_rank_dense"] == metrics["dense/ranks"]
        assert metrics["dense/bytes_after"] < metrics["dense/bytes_before"]
        assert metrics["compressed/bytes"] > metrics["embeddings/bytes"]
    capsys.readouterr()
    run_cli(["test", "--config", str(out / "config.yaml"), "--ckpt_path",
             str(out / "checkpoints" / "compressed.ckpt"), *QUIET])  # fmt: skip
    again = tmp_path / capsys.readouterr().out.strip().splitlines()[-1]
    reloaded = json.loads((again / "metrics.json").read_text())
    assert reloaded["test/auc"] == pytest.approx(metrics["test/auc"], abs=1e-6)
    assert reloaded["embeddings/ratio"] == pytest.approx(metrics["embeddings/ratio"])


def test_maestro_trains_then_truncates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    ckpt = _fit(tmp_path, capsys, "--model.embeddings.method", "maestro",
                "--model.embeddings.options", "{rank: 12, group_lasso: 0.001}")  # fmt: skip
    trained = json.loads((ckpt.parent.parent / "metrics.json").read_text())
    ratios = []
    for r in (12, 8, 4):
        out = tmp_path / f"r{r}"
        with pytest.raises(SystemExit) as e:
            main(["compress", "--ckpt", str(ckpt), "--method", "maestro",
                  "--options", f"{{rank: {r}}}", "--output", str(out)])  # fmt: skip
        assert e.value.code == 0
        metrics = json.loads((out / "metrics.json").read_text())
        ratios.append(metrics["embeddings/ratio"])
        if r == 12:  # all ranks kept: exactly the trained model
            assert metrics["test/auc"] == pytest.approx(trained["test/auc"], abs=1e-6)
        # the tiny data set leaves the model near chance (AUC ~0.5 either side), so the
        # smaller ranks are checked against the trained model, not against 0.5
        assert metrics["test/auc"] == pytest.approx(trained["test/auc"], abs=0.1)
    assert ratios[2] < ratios[1] < ratios[0]


def test_fit_refuses_post_training_methods_and_compress_names_bad_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = _tiny(tmp_path)
    with pytest.raises(SystemExit):
        run_cli(["fit", *cfg, "--model.embeddings.method", "svd", "--model.embeddings.min_rows",
                 "25", "--model.embeddings.budget", "0.8"])  # fmt: skip
    assert "post-training method" in capsys.readouterr().err
    ckpt = _fit(tmp_path, capsys)
    with pytest.raises(SystemExit) as e:
        main(["compress", "--ckpt", str(ckpt), "--method", "hash", "--budget", "0.8"])
    assert e.value.code == 2
    assert "cannot be built from a trained table" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["compress", "--ckpt", str(ckpt), "--method", "svd", "--budget", "0.00001"])
    assert e.value.code == 2
    assert "smallest reachable budget" in capsys.readouterr().err


def test_dnis_searches_prunes_and_keeps_only_the_pruned_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = _tiny(tmp_path)
    run_cli(["fit", *cfg, "--trainer.max_epochs", "3", "--model.embeddings.min_rows", "25",
             "--model.embeddings.method", "dnis", "--model.embeddings.budget", "0.85",
             "--model.embeddings.options", "{search_epochs: 1, blocks: 2}",
             "--model.early_stopping_patience", "null", *QUIET])  # fmt: skip
    out = capsys.readouterr().out
    assert "Search done after epoch 0" in out and "widths" in out
    run_dir = tmp_path / out.strip().splitlines()[-1]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["embeddings/ratio"] <= 0.85
    searched = [t for t in metrics["embeddings/tables"] if t["method"] == "dnis"]
    assert searched and all(t["phase"] == "pruned" for t in searched)
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt"))
    assert all(not n.startswith("best-0") for n in ckpts), ckpts  # no search-phase model kept
    capsys.readouterr()
    run_cli(["test", *cfg, "--model.embeddings.min_rows", "25", "--model.embeddings.method",
             "dnis", "--model.embeddings.budget", "0.85", "--model.embeddings.options",
             "{search_epochs: 1, blocks: 2}", "--ckpt_path", metrics["best_checkpoint"], *QUIET])  # fmt: skip
    again = tmp_path / capsys.readouterr().out.strip().splitlines()[-1]
    reloaded = json.loads((again / "metrics.json").read_text())
    assert reloaded["test/auc"] == pytest.approx(metrics["test/auc"], abs=1e-6)
    assert reloaded["embeddings/ratio"] == pytest.approx(metrics["embeddings/ratio"])


def test_dnis_searches_on_retrieval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Retrieval validates by ranking users; the search still fits its weights on validation
    interactions (the training batch format)."""
    monkeypatch.chdir(tmp_path)
    root = str(write_tiny_ml1m(tmp_path / "ml-1m"))
    run_cli(["fit", "--config", str(CONFIGS / "ml-1m-mf-retrieval.yaml"), "--data.root", root,
             "--trainer.max_epochs", "2", "--model.embeddings.min_rows", "0",
             "--model.embeddings.method", "dnis", "--model.embeddings.budget", "0.5",
             "--model.embeddings.options", "{search_epochs: 1, blocks: 2}", *QUIET])  # fmt: skip
    out = capsys.readouterr().out
    assert "Search done after epoch 0" in out
    metrics = json.loads((tmp_path / out.strip().splitlines()[-1] / "metrics.json").read_text())
    assert metrics["embeddings/ratio"] <= 0.5 and "test/recall@20" in metrics
