"""Export and serving end to end: fit -> predict -> export -> load / serve -> same predictions."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from reccomp.cli import run_cli
from reccomp.export.cli import export_main
from reccomp.serving import ArtifactError, RequestError, load
from reccomp.serving.server import create_app
from tests.conftest import CONFIGS, REPO, shared_dataset
from tests.test_cli import write_tiny_criteo, write_tiny_ml1m


def _fit_predict(tmp: Path, config: str, args: list[str]) -> tuple[str, list[dict[str, str]]]:
    """Train, then predict the test split; returns the best checkpoint and predictions.csv."""
    common = ["--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir",
              str(tmp / "runs")]  # fmt: skip
    fit = run_cli(["fit", "--config", str(CONFIGS / config), *args, *common])
    run_dir = Path(fit.trainer.log_dir)
    ckpt = json.loads((run_dir / "metrics.json").read_text())["best_checkpoint"]
    pred = run_cli(["predict", "--config", str(run_dir / "config.yaml"), "--ckpt_path", ckpt])
    with (Path(pred.trainer.log_dir) / "predictions.csv").open() as f:
        return ckpt, list(csv.DictReader(f))


def _export(ckpt: str, *args: str) -> Path:
    assert export_main(["--ckpt", ckpt, *args]) == 0
    q = args[args.index("--quantize") + 1] if "--quantize" in args else "none"
    return Path(ckpt).parents[1] / "export" / q


def _rows(preds: list[dict[str, str]], n: int = 50) -> tuple[list[dict[str, Any]], np.ndarray]:
    """The first ``n`` rows' raw values (empty cells left out: missing) and predictions."""
    raw = [{k: v for k, v in r.items() if k not in ("label", "prediction") and v != ""}
           for r in preds[:n]]  # fmt: skip
    return raw, np.array([float(r["prediction"]) for r in preds[:n]])


@pytest.fixture(scope="module")
def ml100k_ctr(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[dict[str, str]]]:
    """DeepFM CTR on ML-100K with every side feature (ints, strings, zip prefixes, genres)."""
    tmp = tmp_path_factory.mktemp("ml100k")
    args = ["--data.root", str(shared_dataset("ml-100k")), "--trainer.max_epochs", "1",
            "--model.embeddings.method", "frequency_hash", "--model.embeddings.budget", "0.5",
            "--model.embeddings.min_rows", "50"]  # fmt: skip
    return _fit_predict(tmp, "ml-1m-deepfm-ctr.yaml", args)


def test_served_predictions_equal_offline_ones(ml100k_ctr: tuple[str, list]) -> None:
    ckpt, preds = ml100k_ctr
    rows, want = _rows(preds)
    assert {"user", "item", "gender", "occupation", "zip", "genres", "year"} <= set(rows[0])
    fp32 = load(_export(ckpt))
    np.testing.assert_allclose(fp32.predict(rows), want, atol=1e-4)
    np.testing.assert_allclose(fp32.predict(rows[:1]), want[:1], atol=1e-4)  # batch of one
    int8 = load(_export(ckpt, "--quantize", "int8"))
    np.testing.assert_allclose(int8.predict(rows), want, atol=0.05)
    assert int8.manifest["serving_bytes"] < fp32.manifest["serving_bytes"]
    import pandas as pd

    frame = pd.DataFrame(rows)  # NaN where a row lacks a field
    np.testing.assert_allclose(fp32.predict(frame), want, atol=1e-4)


def test_manifest_describes_the_artifact(ml100k_ctr: tuple[str, list]) -> None:
    ckpt, _ = ml100k_ctr
    out = _export(ckpt, "--quantize", "int4")
    m = json.loads((out / "manifest.json").read_text())
    assert m["format_version"] == 1 and m["versions"]["torch"] and m["versions"]["torchrec"]
    assert [f["name"] for f in m["schema"]["fields"]][:2] == ["user", "item"]
    kinds = {f["name"]: f["kind"] for f in m["schema"]["fields"]}
    assert kinds["zip"] == "prefix" and kinds["genres"] == "names" and kinds["user"] == "int"
    assert m["schema"]["task"] == "ctr" and "probability" in m["schema"]["output"]
    assert {t["method"] for t in m["tables"]} >= {"frequency_hash"}
    assert 0 < m["ratio_to_full_fp32"] < 0.5
    assert 0.5 < m["test_metrics"]["test/auc"] <= 1
    assert set(m["files"]) >= {"model.pt2", "vocab/user.npy"}
    # the table bytes are the artifact's tensors: program state and constants
    import torch

    ep = torch.export.load(str(out / "model.pt2"))
    tensors = [*ep.state_dict.values(), *ep.constants.values()]
    stored = sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))
    dense = sum(
        t.numel() * t.element_size() for k, t in ep.state_dict.items() if "embeddings" not in k
    )
    assert abs((stored - dense) - m["serving_bytes"]) <= 0.01 * m["serving_bytes"]


def test_load_refuses_a_changed_or_incomplete_artifact(
    ml100k_ctr: tuple[str, list], tmp_path: Path
) -> None:
    art = tmp_path / "art"
    shutil.copytree(_export(ml100k_ctr[0]), art)
    vocab = art / "vocab" / "user.npy"
    vocab.write_bytes(vocab.read_bytes() + b"x")
    with pytest.raises(ArtifactError, match=r"user\.npy: sha256 differs"):
        load(art)
    vocab.unlink()
    with pytest.raises(ArtifactError, match=r"user\.npy: missing"):
        load(art)
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["format_version"] = 99
    (art / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="format version 99"):
        load(art)
    (art / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match=r"manifest\.json: missing"):
        load(art)


def test_serving_imports_no_training_code(ml100k_ctr: tuple[str, list]) -> None:
    art = _export(ml100k_ctr[0], "--quantize", "int8")
    code = (
        "import sys; from reccomp.serving import load; "
        f"m = load({str(art)!r}); m.predict([{{'user': 1, 'item': 1}}]); "
        "bad = [k for k in sys.modules if k.startswith(('lightning', 'reccomp.data', "
        "'reccomp.tasks', 'reccomp.compress', 'reccomp.models', 'reccomp.export'))]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_http_api_answers_and_rejects(ml100k_ctr: tuple[str, list]) -> None:
    ckpt, preds = ml100k_ctr
    rows, want = _rows(preds, 20)
    app = create_app(str(_export(ckpt)), max_rows=100, max_body_bytes=20_000)
    with TestClient(app) as client:
        _check_api(client, rows, want)


def _check_api(client: TestClient, rows: list[dict[str, Any]], want: np.ndarray) -> None:
    assert client.get("/health").json()["status"] == "ok"
    assert client.get("/metadata").json()["schema"]["task"] == "ctr"
    good = client.post("/predict", json={"rows": rows})
    assert good.status_code == 200
    np.testing.assert_allclose(good.json()["predictions"], want, atol=1e-4)
    bad = {
        "malformed JSON": (client.post("/predict", content=b'{"rows": ['), 400, "malformed"),
        "unknown field": (client.post("/predict", json={"rows": [{"usr": 1}]}), 422, "usr"),
        "wrong type": (client.post("/predict", json={"rows": [{"user": "x"}]}), 422, "user"),
        "list for one": (client.post("/predict", json={"rows": [{"age": [1]}]}), 422, "age"),
        "no rows key": (client.post("/predict", json={"row": []}), 422, "rows"),
        "row not object": (client.post("/predict", json={"rows": [3]}), 422, "row 0"),
        "too many rows": (client.post("/predict", json={"rows": [{}] * 101}), 413, "101"),
        "huge body": (client.post("/predict", content=b" " * 30_000), 413, "limit"),
        "not retrieval": (client.post("/recommend", json={"user": 1}), 422, "retrieval"),
    }
    for name, (resp, status, word) in bad.items():
        assert resp.status_code == status, (name, resp.text)
        assert word in resp.json()["detail"], (name, resp.text)
    unseen = client.post("/predict", json={"rows": [{"user": 10**12, "gender": "?"}, {}]})
    assert unseen.status_code == 200 and len(unseen.json()["predictions"]) == 2
    again = client.post("/predict", json={"rows": rows})
    assert again.json() == good.json()


def test_criteo_hex_and_dense_values_round_trip(tmp_path: Path) -> None:
    root = write_tiny_criteo(tmp_path / "criteo" / "train.txt", n=1500).parent
    ckpt, preds = _fit_predict(
        tmp_path, "criteo-kaggle-dlrm.yaml",
        ["--data.root", str(root), "--data.min_count", "1", "--trainer.max_epochs", "1"],
    )  # fmt: skip
    rows, want = _rows(preds)
    assert len(rows[0]["C1"]) == 8 and "I1" in preds[0]
    model = load(_export(ckpt))
    assert model.manifest["schema"]["fields"][0]["kind"] == "hex"
    np.testing.assert_allclose(model.predict(rows), want, atol=1e-4)
    with pytest.raises(RequestError, match="I1"):
        model.predict([{"I1": "many"}])


def test_retrieval_model_recommends(tmp_path: Path) -> None:
    root = write_tiny_ml1m(tmp_path / "ml-1m")
    ckpt, _ = _fit_predict(
        tmp_path, "ml-1m-mf-retrieval.yaml",
        ["--data.root", str(root), "--trainer.max_epochs", "2"],
    )  # fmt: skip
    model = load(_export(ckpt))
    assert "test/recall@20" in model.manifest["test_metrics"]
    top = model.recommend(3, k=5, exclude=[1, 2])
    assert len(top) == 5 and all(item not in (1, 2) for item, _ in top)
    scores = [s for _, s in top]
    assert scores == sorted(scores, reverse=True)
    with TestClient(create_app(str(_export(ckpt)))) as client:
        got = client.post("/recommend", json={"user": 3, "k": 5, "exclude": [1, 2]}).json()
        assert [it["item"] for it in got["items"]] == [it for it, _ in top]
        assert client.post("/recommend", json={"user": 3, "k": 0}).status_code == 422


@pytest.mark.slow
def test_aoti_package_predicts_the_same(ml100k_ctr: tuple[str, list], tmp_path: Path) -> None:
    ckpt, preds = ml100k_ctr
    rows, want = _rows(preds, 30)
    out = tmp_path / "aoti"
    assert export_main(["--ckpt", ckpt, "--quantize", "int8", "--aoti", "--output", str(out)]) == 0
    compiled = load(out)  # auto: the AOTInductor package
    assert compiled.backend == "aoti"
    interpreted = load(out, backend="export")
    np.testing.assert_allclose(compiled.predict(rows), interpreted.predict(rows), atol=1e-5)
    np.testing.assert_allclose(compiled.predict(rows[:1]), interpreted.predict(rows[:1]), atol=1e-5)
    np.testing.assert_allclose(compiled.predict(rows), want, atol=0.05)
