"""The ``reccomp`` command: every shipped config runs (fast_dev_run, tiny data), errors are clear."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from reccomp.cli import main, run_cli
from reccomp.modules.embedding import EmbeddingSpec
from tests.conftest import CONFIGS, shared_dataset

TINY_ML = '{"n_users": 60, "n_items": 120, "n_ratings": 3000, "seed": 1}'
TINY_CRITEO = '{"n_rows": 3000, "max_card": 1000, "seed": 1}'


def write_tiny_ml1m(root: Path) -> Path:
    """A small MovieLens-1M-format release (``::`` separated, ISO-8859-1 titles)."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    genres = ["Action", "Comedy", "Drama", "Children's"]
    with (root / "movies.dat").open("w", encoding="latin-1") as f:
        for m in range(1, 41):
            g = "|".join(rng.choice(genres, size=rng.integers(1, 3), replace=False))
            f.write(f"{m}::Film {m} Misérables ({1980 + m % 20})::{g}\n")
    with (root / "users.dat").open("w") as f:
        for u in range(1, 31):
            f.write(f"{u}::{'MF'[u % 2]}::{[1, 18, 25, 35][u % 4]}::{u % 21}::{10000 + u * 37}\n")
    with (root / "ratings.dat").open("w") as f:
        for u in range(1, 31):
            for m in rng.choice(np.arange(1, 41), size=15, replace=False):
                f.write(
                    f"{u}::{m}::{rng.integers(1, 6)}::{978300000 + int(rng.integers(0, 10**6))}\n"
                )
    return root


def write_tiny_criteo(path: Path, n: int = 600) -> Path:
    rng = np.random.default_rng(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for _ in range(n):
            ints = [str(int(x)) if rng.random() > 0.1 else "" for x in rng.integers(-2, 50, 13)]
            cats = [f"{int(x):08x}" if rng.random() > 0.05 else "" for x in rng.integers(0, 30, 26)]
            f.write("\t".join([str(int(rng.random() < 0.25)), *ints, *cats]) + "\n")
    return path


def _method(config: str) -> str:
    return yaml.safe_load((CONFIGS / config).read_text())["model"]["init_args"]["embeddings"][
        "method"
    ]


def data_overrides(config: str, tmp_path: Path) -> list[str]:
    if config.startswith("synthetic-movielens"):
        return ["--data.synthetic", TINY_ML]
    if config.startswith("synthetic-criteo"):
        # cardinalities 10..1000: compress from 100 rows so the method runs
        small = (
            ["--model.embeddings.min_rows", "100", "--model.embeddings.budget", "0.5"]
            if "full" not in _method(config)
            else []
        )
        return ["--data.synthetic", TINY_CRITEO, *small]
    if config.startswith("ml-100k"):
        return ["--data.root", str(shared_dataset("ml-100k"))]
    if config.startswith("ml-1m"):
        # 30 users, 40 items: compress from 25 rows so the method runs (small tables stay full)
        small = (
            ["--model.embeddings.min_rows", "25", "--model.embeddings.budget", "0.8"]
            if "full" not in _method(config)
            else []
        )
        return ["--data.root", str(write_tiny_ml1m(tmp_path / "ml-1m")), *small]
    if config.startswith("criteo"):
        return [
            "--data.root",
            str(write_tiny_criteo(tmp_path / "criteo" / "train.txt").parent),
            "--data.min_count",
            "1",
        ]
    if config.startswith("avazu"):
        from reccomp.data.avazu import write_avazu_csv

        (tmp_path / "avazu").mkdir()
        write_avazu_csv(tmp_path / "avazu" / "train.gz", 600, compress=True)
        return ["--data.root", str(tmp_path / "avazu"), "--data.min_count", "1"]
    raise AssertionError(f"no tiny data for {config}")


SHIPPED = sorted(p.name for p in CONFIGS.glob("*.yaml"))


def test_shipped_configs_are_the_documented_ones() -> None:
    expected = {
        "synthetic-movielens-mf.yaml",
        "synthetic-criteo-dlrm.yaml",
        "ml-100k-mf.yaml",
        "ml-1m-mf-retrieval.yaml",
        "ml-1m-deepfm-ctr.yaml",
        "criteo-kaggle-dlrm.yaml",
        "criteo-kaggle-dcnv2.yaml",
        "avazu-dlrm.yaml",
    }
    assert expected <= set(SHIPPED)


@pytest.mark.parametrize("config", SHIPPED)
def test_fast_dev_run(
    config: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["fit", "--config", str(CONFIGS / config), "--trainer.fast_dev_run", "true"]
    run_cli(args + data_overrides(config, tmp_path) + ["--trainer.enable_progress_bar", "false"])
    out = capsys.readouterr().out
    assert "test/" in out  # the test metrics table
    assert "embeddings/ratio" in out
    assert out.strip().splitlines()[-1].startswith("fast_dev_run")


def test_wrong_key_fails_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = str(CONFIGS / "synthetic-movielens-mf.yaml")
    with pytest.raises(SystemExit):
        run_cli(["fit", "--config", cfg, "--model.init_args.embeddings.dimm", "8"])
    assert "dimm" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_cli(["fit", "--config", cfg, "--data.batch_size", "many"])
    assert "batch_size" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_bad_method_and_dim_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = str(CONFIGS / "synthetic-movielens-mf.yaml")
    with pytest.raises(SystemExit):
        run_cli(
            [
                "fit",
                "--config",
                cfg,
                "--model.embeddings.method",
                "nonsense",
                "--data.synthetic",
                TINY_ML,
            ]
        )
    assert "nonsense" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_cli(
            ["fit", "--config", cfg, "--model.embeddings.dim", "6", "--data.synthetic", TINY_ML]
        )
    assert "multiple of 4" in capsys.readouterr().err


def test_budget_null_on_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--model.embeddings.budget null`` clears a config's budget (jsonargparse passes it on
    as the string "None"; the spec reads it as no budget)."""
    monkeypatch.chdir(tmp_path)
    cfg = str(CONFIGS / "ml-1m-deepfm64-ctr-maestro.yaml")
    with pytest.raises(SystemExit):
        run_cli(["fit", "--config", cfg, "--model.embeddings.budget", "null", "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    spec = EmbeddingSpec(**printed["model"]["init_args"]["embeddings"])
    assert spec.budget is None
    assert EmbeddingSpec(budget="0.5", init_std="null").budget == 0.5
    with pytest.raises(ValueError, match="budget must be a number or null"):
        EmbeddingSpec(budget="half")


def test_test_and_predict_from_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = ["--config", str(CONFIGS / "synthetic-movielens-mf.yaml"), "--data.synthetic", TINY_ML]
    quiet = ["--trainer.enable_progress_bar", "false"]
    run_cli(["fit", *cfg, "--trainer.max_epochs", "2", *quiet])
    fit_dir = tmp_path / capsys.readouterr().out.strip().splitlines()[-1]
    fit_metrics = json.loads((fit_dir / "metrics.json").read_text())
    assert {"val/rmse", "test/rmse", "test/mae"} <= set(fit_metrics)
    ckpt = fit_metrics["best_checkpoint"]
    run_cli(["test", *cfg, "--ckpt_path", ckpt, *quiet])
    test_dir = tmp_path / capsys.readouterr().out.strip().splitlines()[-1]
    again = json.loads((test_dir / "metrics.json").read_text())
    assert again["test/rmse"] == pytest.approx(fit_metrics["test/rmse"], rel=1e-5)
    run_cli(["predict", *cfg, "--ckpt_path", ckpt, *quiet])
    pred_dir = tmp_path / capsys.readouterr().out.strip().splitlines()[-1]
    lines = (pred_dir / "predictions.csv").read_text().splitlines()
    assert lines[0] == "user,item,label,prediction" and len(lines) == 301  # the 10% test split


def test_data_prepare_and_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = str(CONFIGS / "synthetic-criteo-dlrm.yaml")
    tiny = ["--config", cfg, "--data.synthetic", TINY_CRITEO, "--data.cache_dir", str(tmp_path)]
    with pytest.raises(SystemExit) as e:
        main(["data", "prepare", *tiny])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "oracle_auc" in out and "C26" in out
    with pytest.raises(SystemExit) as e:
        main(["data", "info", *tiny])
    assert e.value.code == 0
    assert "cached" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(
            [
                "data",
                "prepare",
                "--config",
                str(CONFIGS / "ml-1m-deepfm-ctr.yaml"),
                "--data.root",
                str(tmp_path / "none"),
            ]
        )
    assert e.value.code == 1
    assert "reccomp data download ml-1m" in capsys.readouterr().err


def test_data_download_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`reccomp data download` end to end against a local server, then offline."""
    import dataclasses
    import hashlib
    import http.server
    import io
    import threading
    import zipfile
    from functools import partial

    from reccomp.data import download as dl

    def spec_files() -> tuple[str, ...]:
        return tuple(dl.DATASETS["ml-100k"].files)

    served = tmp_path / "served"
    served.mkdir()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in spec_files():
            zf.writestr(f"ml-100k/{name}", "1\t10\t5\t881250949\n")
    (served / "ml-100k.zip").write_bytes(buf.getvalue())
    spec = dataclasses.replace(
        dl.DATASETS["ml-100k"], md5=hashlib.md5(buf.getvalue()).hexdigest(), sha256=None, size=None
    )
    monkeypatch.setitem(dl.DATASETS, "ml-100k", spec)
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/"
        with pytest.raises(SystemExit) as e:
            main(["data", "download", "ml-100k", "--root", str(tmp_path / "data"), "--url", base])
        assert e.value.code == 0
        out = capsys.readouterr().out.strip().splitlines()[-1]
        assert (Path(out) / "u.data").exists()
    finally:
        server.shutdown()
        server.server_close()
    # a closed port stands for "no internet": a clear message, exit code 1
    with pytest.raises(SystemExit) as e:
        main(["data", "download", "ml-100k", "--root", str(tmp_path / "other"), "--url", base])
    assert e.value.code == 1
    assert "127.0.0.1" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["--model.embeddings.method", "nope"], "unknown compression method 'nope'"),
        (["--model.embeddings.method", "qr", "--model.embeddings.options", "{num_buckets: 9}"],
         "'qr' has no option 'num_buckets'"),
        (["--model.embeddings.method", "graph_hash", "--model.embeddings.budget", "0.0001"],
         "'graph_hash' cannot reach budget 0.0001 .*: the smallest reachable budget is 0.0"),
    ],
)  # fmt: skip
def test_compression_errors_before_training(
    override: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = str(CONFIGS / "ml-1m-mf-retrieval.yaml")
    root = str(write_tiny_ml1m(tmp_path / "ml-1m"))
    args = ["fit", "--config", cfg, "--data.root", root, "--model.embeddings.min_rows", "0"]
    with pytest.raises(SystemExit):
        run_cli(args + override)
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "runs").exists()


def test_compiled_dense_part_trains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``compile: true`` runs the model's dense part through torch.compile."""
    monkeypatch.chdir(tmp_path)
    cfg = str(CONFIGS / "synthetic-criteo-dlrm.yaml")
    args = ["fit", "--config", cfg, "--data.synthetic", TINY_CRITEO, "--model.compile", "true"]
    run_cli([*args, "--trainer.fast_dev_run", "true", "--trainer.enable_progress_bar", "false"])
    assert "test/auc" in capsys.readouterr().out
