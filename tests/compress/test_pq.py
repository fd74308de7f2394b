"""``pq``: bit-packed codes, the budget fit and its floor, the k-means transform against a
direct computation, serving forms with two frequency groups, and ``reccomp compress``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from reccomp.compress import BudgetError, make_config
from reccomp.compress.planning import plan_tables
from reccomp.compress.pq import PQTable, code_bits, pack, unpack, weighted_kmeans
from reccomp.compress.transform import compress_collection, materialize, storage_weights
from reccomp.data.schema import Schema, SparseField
from reccomp.export.program import build_program, export_program
from reccomp.models import DLRM
from reccomp.modules.embedding import EmbeddingSpec, build_embeddings

DIM = 16
SCHEMA = Schema("toy", "ctr", [SparseField("user", 3000), SparseField("item", 700)])
# two frequency groups: the top 60 ids choose among 32 codewords, the rest among the first 4
GROUPED = {"num_subvectors": 2, "codewords": 32, "rare_codewords": 4, "num_frequent": 60}


def spec(method: str, **kw) -> EmbeddingSpec:
    return EmbeddingSpec(method=method, dim=DIM, min_rows=0, optimizer="sgd", **kw)


def zipf_counts(n: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.as_tensor(rng.permutation(1000.0 / np.arange(1, n + 1) ** 1.2))


def trained_full(seed: int = 0):
    coll = build_embeddings(SCHEMA, spec("full"))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for w in storage_weights(coll).values():
            w.copy_(torch.randn(w.shape, generator=g))
    return coll


def counts() -> dict[str, torch.Tensor]:
    return {f.name: zipf_counts(f.cardinality, i) for i, f in enumerate(SCHEMA.sparse)}


def unpack_np(packed: torch.Tensor, count: int, bits: int) -> np.ndarray:
    """Independent unpacking: little-endian bit fields of the byte string."""
    if bits == 16:
        return packed.numpy().view(np.uint16)[:count].astype(np.int64)
    raw = np.unpackbits(packed.numpy(), bitorder="little").reshape(-1, bits)
    return (raw * (1 << np.arange(bits))).sum(1)[:count]


@pytest.mark.parametrize("bits", [1, 2, 4, 8, 16])
def test_pack_unpack_round_trip(bits: int) -> None:
    codes = torch.randint(0, 2**bits, (101, 3))
    packed = pack(codes, bits)
    assert packed.numel() * packed.element_size() == -(-303 * bits // 8)
    idx = torch.arange(303).reshape(101, 3)
    assert torch.equal(unpack(packed, idx, bits), codes)
    assert np.array_equal(unpack_np(packed, 303, bits), codes.reshape(-1).numpy())


def test_budget_fit_fills_the_budget_and_groups_frequent_ids_when_tight() -> None:
    cfg = make_config("pq")
    n = 66217  # the largest synthetic-Criteo field
    for ratio in (0.003, 0.01, 0.02, 0.05, 0.2):
        budget = int(ratio * n * DIM * 4)
        fitted = PQTable.fit_budget(n, DIM, cfg, budget)
        used = PQTable.table_bytes(n, DIM, fitted)
        assert 0.9 * budget <= used <= budget, (ratio, fitted)
    tight = PQTable.fit_budget(n, DIM, cfg, int(0.01 * n * DIM * 4))
    # 4-bit codes for every id would be 0.0078 of the table: two groups do better
    assert (tight.rare_codewords, tight.codewords) == (2, 256) and tight.num_frequent > 1000
    plain = PQTable.fit_budget(n, DIM, make_config("pq", {"frequency_groups": False}), budget)
    assert plain.num_frequent == 0 and plain.rare_codewords == plain.codewords


@pytest.mark.parametrize("options", [{}, {"num_subvectors": 4}])
@pytest.mark.parametrize("n", [3, 9, 1024, 70000])
def test_min_bytes_is_reachable(options: dict, n: int) -> None:
    cfg = make_config("pq", options)
    low = PQTable.min_bytes(n, DIM, cfg)
    assert low == -(-n * cfg.num_subvectors // 8) + min(2, n) * DIM * 4
    assert PQTable.table_bytes(n, DIM, PQTable.fit_budget(n, DIM, cfg, low)) <= low
    with pytest.raises(BudgetError, match="a code per id"):
        PQTable.fit_budget(n, DIM, cfg, low - 1)


def test_floor_on_the_criteo_tables_is_above_one_thousandth() -> None:
    cards = [12, 18, 27, 42, 65, 102, 160, 253, 400, 633, 1002, 1587, 2514, 3983, 6299, 9863,
             14728, 20835, 27589, 34317, 41156, 47264, 52065, 56907, 61992, 66217]  # fmt: skip
    schema = Schema("c", "ctr", [SparseField(f"C{i}", c) for i, c in enumerate(cards)])
    floor = (sum(-(-c // 8) for c in cards) + len(cards) * 2 * DIM * 4) / (sum(cards) * DIM * 4)
    assert 0.002 < floor < 0.0021
    with pytest.raises(BudgetError, match=f"smallest reachable budget is {floor:.4g}"):
        plan_tables(schema, spec("pq", budget=0.001))
    plan_tables(schema, spec("pq", budget=0.0021))


def test_weighted_kmeans_is_a_constrained_lloyd_fixed_point() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 4, generator=g)
    w = zipf_counts(500).float() + 0.01
    frequent = w > torch.quantile(w, 0.9)
    book, code = weighted_kmeans(x, w, 16, 4, frequent, 200, g)
    assert (code[~frequent] < 4).all() and code[frequent].max() >= 4
    # each point takes its nearest allowed centroid ...
    d = torch.cdist(x, book)
    d[~frequent, 4:] = float("inf")
    assert torch.equal(code, d.argmin(1))
    # ... and each used centroid is the weighted mean of its points
    for c in code.unique():
        m = code == c
        torch.testing.assert_close(book[c], (x[m] * w[m, None]).sum(0) / w[m].sum())


def test_compress_codes_and_output_match_a_direct_computation() -> None:
    src, cnt = trained_full(), counts()
    small = compress_collection(src, SCHEMA, spec("pq", options=GROUPED), counts=cnt)
    book = storage_weights(small)["user"].detach()  # (S * K, dim / S)
    m = small.tables[0]
    n, s, k = 3000, 2, 32
    kept = np.sort(np.argsort(-cnt["user"].numpy(), kind="stable")[:60])
    assert np.array_equal(m.kept_.numpy(), kept)
    lo = unpack_np(m.codes_, n * s, code_bits(4)).reshape(n, s)
    hi = unpack_np(m.hi_codes_, 60 * s, code_bits(32)).reshape(60, s)
    code = lo.copy()
    code[kept] = hi
    assert lo.max() < 4 and hi.max() >= 4
    want = torch.cat([book[j * k + torch.as_tensor(code[:, j])] for j in range(s)], 1)
    got = materialize(small, "user")
    torch.testing.assert_close(got, want)
    assert m.remap(torch.tensor([kept[0]]))[1].item() == k + code[kept[0], 1]
    # the frequent ids, weighted by their counts, are kept far better than the rare ones
    dense = materialize(src, "user")
    err = (got - dense).pow(2).sum(1) / dense.pow(2).sum(1)
    rare = np.setdiff1d(np.arange(n), kept)
    assert err[kept].mean() < 0.5 * err[rare].mean()
    assert 0 < m.stats["pq_relative_error"] < 1


def test_a_clustered_table_is_recovered_exactly() -> None:
    """Rows drawn from 8 points per sub-space: 8 codewords hold every row."""
    src = build_embeddings(SCHEMA, spec("full"))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for w in storage_weights(src).values():
            centers = torch.randn(2, 8, DIM // 2, generator=g) * 5
            pick = torch.randint(0, 8, (len(w), 2), generator=g)
            w.copy_(torch.cat([centers[0, pick[:, 0]], centers[1, pick[:, 1]]], 1))
    uniform = {f.name: torch.ones(f.cardinality) for f in SCHEMA.sparse}
    opts = {"num_subvectors": 2, "codewords": 8, "kmeans_iters": 100}
    small = compress_collection(src, SCHEMA, spec("pq", options=opts), counts=uniform)
    for f in ("user", "item"):
        torch.testing.assert_close(materialize(small, f), materialize(src, f), atol=1e-4, rtol=0)


def test_two_group_serving_forms_match_eager() -> None:
    coll = compress_collection(trained_full(), SCHEMA, spec("pq", options=GROUPED), counts=counts())
    kjt = KeyedJaggedTensor(
        keys=["user", "item"],
        values=torch.tensor([5, -3, 2999, 10**9, 4, 0, 699, 3000]),
        lengths=torch.tensor([1, 1, 1, 1, 1, 1, 1, 1], dtype=torch.int32),
    )
    want = coll(kjt).values()
    assert torch.isfinite(want).all()
    scripted = torch.jit.script(coll.to_serving())
    torch.testing.assert_close(scripted(kjt).values(), want)
    model = DLRM(coll, 3, bottom_mlp=(16, DIM), top_mlp=(8,)).eval()
    prog, _ = build_program(model, ["user", "item"], "ctr")
    dense = torch.randn(4, 3)
    ep, _ = export_program(prog, (dense, kjt.values(), kjt.lengths().long()))
    raw, _ = ep.module()(dense, kjt.values(), kjt.lengths().long())
    with torch.no_grad():
        torch.testing.assert_close(raw, model(dense, kjt), atol=1e-5, rtol=0)


def test_compress_fine_tunes_codebooks_with_codes_fixed_and_reloads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from reccomp.cli import main, run_cli
    from tests.test_compress_cli import QUIET, _fit, _tiny

    monkeypatch.chdir(tmp_path)
    ckpt = _fit(tmp_path, capsys)
    outs = {}
    for epochs in (0, 1):
        out = outs[epochs] = tmp_path / f"pq{epochs}"
        with pytest.raises(SystemExit) as e:
            main(["compress", "--ckpt", str(ckpt), "--method", "pq", "--budget", "0.7",
                  "--finetune-epochs", str(epochs), "--output", str(out)])  # fmt: skip
        assert e.value.code == 0
    metrics = json.loads((outs[1] / "metrics.json").read_text())
    assert metrics["embeddings/method"] == "pq" and metrics["embeddings/ratio"] <= 0.7
    assert {"test/auc", "before_finetune/val/auc"} <= set(metrics)
    states = [torch.load(o / "checkpoints" / "compressed.ckpt", weights_only=False)["state_dict"]
              for o in outs.values()]  # fmt: skip
    codes = [k for k in states[0] if k.endswith(("codes_", "kept_"))]
    books = [k for k in states[0] if "storage" in k and k.endswith("weight")]
    assert codes and books
    assert all(torch.equal(states[0][k], states[1][k]) for k in codes)
    assert any(not torch.equal(states[0][k], states[1][k]) for k in books)
    capsys.readouterr()
    run_cli(["test", "--config", str(outs[1] / "config.yaml"), "--ckpt_path",
             str(outs[1] / "checkpoints" / "compressed.ckpt"), *QUIET])  # fmt: skip
    again = tmp_path / capsys.readouterr().out.strip().splitlines()[-1]
    reloaded = json.loads((again / "metrics.json").read_text())
    assert reloaded["test/auc"] == pytest.approx(metrics["test/auc"], abs=1e-6)
    assert reloaded["embeddings/ratio"] == pytest.approx(metrics["embeddings/ratio"])
    with pytest.raises(SystemExit):
        run_cli(["fit", *_tiny(tmp_path), "--model.embeddings.method", "pq",
                 "--model.embeddings.min_rows", "25", "--model.embeddings.budget", "0.7"])  # fmt: skip
    assert "post-training method" in capsys.readouterr().err
