"""Sharded training (TorchRec DistributedModelParallel on gloo ranks) against one process.

The contract test spawns 2 ranks once for the whole registry (each spawn costs seconds of
imports); the end-to-end tests launch ``torchrun`` as a user would.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from reccomp.data.loader import rank_share
from tests.compress.test_contract import CASES
from tests.conftest import CONFIGS, REPO, shared_dataset
from tests.distributed import workers

SHARDINGS = ("table_wise", "column_wise", "row_wise")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def contract_results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("sharded")
    mp.spawn(workers.contract, args=(2, _port(), CASES, str(out)), nprocs=2)
    results = torch.load(out / "results.pt")
    assert "error" not in results, results.get("error")
    return results


@pytest.mark.parametrize("case", CASES, ids=[f"{m}{o or ''}" for m, o in CASES])
def test_every_method_trains_sharded_as_in_one_process_or_refuses(
    contract_results: dict, case: tuple
) -> None:
    from tests.compress.test_contract import build

    method, options = case
    r = contract_results[f"{method}{options or ''}"]
    coll = build(method, options)
    if coll.post_training or coll.search_epochs or coll.reclusters():
        assert "refused" in r, f"{method} neither trains sharded nor refuses"
        assert ("reccomp compress" in r["refused"]) or ("one process" in r["refused"])
        return
    assert "refused" not in r, r.get("refused")
    for kind in SHARDINGS:
        assert r[kind] == pytest.approx(r["one"], abs=1e-5), kind
    assert r["one"][-1] < r["one"][0]  # it trains: the comparison is not between idle runs


def test_dcp_checkpoint_of_a_table_wise_run_loads_into_a_row_wise_plan(
    contract_results: dict,
) -> None:
    r = contract_results["qr"]
    assert r["after_rw"] == pytest.approx(r["after_tw"], abs=1e-6)


def test_rank_shares_have_one_size() -> None:
    assert [rank_share(0, 7, r, 2) for r in range(2)] == [(0, 3, 0), (3, 6, 0)]
    assert [rank_share(0, 7, r, 2, "pad") for r in range(2)] == [(0, 4, 0), (4, 7, 1)]
    assert [rank_share(0, 1, r, 2, "pad") for r in range(2)] == [(0, 1, 0), (1, 1, 1)]
    assert rank_share(10, 17, 0, 1) == (10, 17, 0)


def test_a_table_larger_than_a_rank_is_split_by_the_planner() -> None:
    from reccomp.data.schema import Schema, SparseField
    from reccomp.distributed.plan import describe_plan, plan_storage
    from reccomp.modules.embedding import EmbeddingSpec, build_embeddings

    schema = Schema("big-user", "ctr", [SparseField("user", 20000), SparseField("item", 100)])
    model = torch.nn.Module()
    model.embeddings = build_embeddings(schema, EmbeddingSpec(method="full", dim=32))
    user = 20000 * 32 * 4  # the large table's weights, in bytes
    for world in (2, 8):
        # the table does not fit one rank; half of it does
        plan = plan_storage(model, world, "auto", memory_per_rank=int(user * 0.9))
        d = describe_plan(plan, model)
        assert len(d["user"]["ranks"]) > 1
        assert max(d["user"]["bytes_per_rank"]) < user
        assert sum(d["user"]["bytes_per_rank"]) == user


# -- as a user runs it ---------------------------------------------------------------------------
def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("RECCOMP_VERBOSE", None)
    return env


def _fit(cwd: Path, *extra: str, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    args = ["fit", "--config", str(CONFIGS / "ml-100k-mf.yaml"),
            "--data.root", str(shared_dataset("ml-100k")), "--trainer.max_epochs", "2",
            "--seed_everything", "0", "--model.embeddings.method", "qr",
            "--model.embeddings.budget", "0.25", *extra]  # fmt: skip
    cmd = [*(launcher or [sys.executable]), "-m", "reccomp", *args]
    p = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *args]


def _run_dir(p: subprocess.CompletedProcess, cwd: Path) -> Path:
    return cwd / p.stdout.strip().splitlines()[-1]


@pytest.mark.slow
def test_torchrun_fit_matches_one_process_and_its_checkpoint_serves_the_tool_chain(
    tmp_path: Path,
) -> None:
    one = _fit(tmp_path)
    sharded = _fit(tmp_path, "--trainer.strategy", "torchrec",
                   "--model.embeddings.sharding", "row_wise",
                   launcher=_torchrun("--standalone", "--nproc_per_node", "2"))  # fmt: skip
    assert sharded.stdout.count("Data: ml-100k") == 1  # rank 0 speaks for the run
    m1 = json.loads((_run_dir(one, tmp_path) / "metrics.json").read_text())
    run = _run_dir(sharded, tmp_path)
    m2 = json.loads((run / "metrics.json").read_text())
    assert abs(m2["test/rmse"] - m1["test/rmse"]) < 0.002
    plan = m2["embeddings/sharding"]
    assert {d["type"] for d in plan.values()} == {"row_wise"}
    assert all(d["ranks"] == [0, 1] for d in plan.values())
    assert (run / "checkpoints" / "last.dcp").is_dir()
    # the consolidated checkpoint: ordinary reccomp test in one process
    ckpt = run / "checkpoints" / "last.ckpt"
    test = subprocess.run(
        [sys.executable, "-m", "reccomp", "test", "--config", str(run / "config.yaml"),
         "--ckpt_path", str(ckpt), "--trainer.strategy", "auto"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert test.returncode == 0, test.stderr[-3000:]
    # resume the 2-rank run in one process with one more epoch
    resumed = _fit(tmp_path, "--resume", str(run), "--trainer.max_epochs", "3",
                   "--trainer.strategy", "auto")  # fmt: skip
    m3 = json.loads((_run_dir(resumed, tmp_path) / "metrics.json").read_text())
    assert m3["epochs"] == 3


@pytest.mark.slow
def test_two_nodes_of_one_process_on_loopback(tmp_path: Path) -> None:
    port = str(_port())
    common = ["--nnodes", "2", "--nproc_per_node", "1", "--rdzv-backend", "c10d",
              "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "reccomp-test"]  # fmt: skip
    args = ["fit", "--config", str(CONFIGS / "ml-100k-mf.yaml"),
            "--data.root", str(shared_dataset("ml-100k")), "--trainer.max_epochs", "1",
            "--trainer.strategy", "torchrec", "--model.embeddings.sharding", "table_wise"]  # fmt: skip
    procs = [
        subprocess.Popen(
            [*_torchrun(*common, "--node-rank", str(n)), "-m", "reccomp", *args],
            cwd=tmp_path,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in (0, 1)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
    run = tmp_path / outs[0][0].strip().splitlines()[-1]
    plan = json.loads((run / "metrics.json").read_text())["embeddings/sharding"]
    assert sorted(r for d in plan.values() for r in d["ranks"]) == [0, 1]  # one table each


@pytest.mark.gpu
def test_nccl_sharded_fit_on_two_gpus(tmp_path: Path) -> None:
    """`make test-gpu`: NCCL, FBGEMM's CUDA kernels, every sharding type on 2 GPUs."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA devices and fbgemm-gpu's CUDA build")
    for kind in ("table_wise", "row_wise", "column_wise", "table_row_wise", "auto"):
        p = _fit(tmp_path, "--trainer.strategy", "torchrec", "--trainer.accelerator", "gpu",
                 "--model.embeddings.sharding", kind,
                 launcher=_torchrun("--standalone", "--nproc_per_node", "2"))  # fmt: skip
        plan = json.loads((_run_dir(p, tmp_path) / "metrics.json").read_text())
        assert "embeddings/sharding" in plan
