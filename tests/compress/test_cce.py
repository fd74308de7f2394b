"""cce: its remap/decode against a direct computation, its budget, k-means and re-clustering
(the map changes, training goes on improving, checkpoints taken afterwards reload)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from reccomp.compress import BudgetError, FitData, make_config
from reccomp.compress.base import universal_hash
from reccomp.compress.cce import CCETable, _bytes, kmeans
from reccomp.compress.transform import optimizer_states, storage_weights
from reccomp.data.schema import Schema, SparseField
from reccomp.modules.embedding import EmbeddingSpec, build_embeddings
from tests.compress.test_contract import batch, build

N, DIM = 2000, 16
TOY = Schema("toy", "ctr", [SparseField("a", N)])


def toy_data() -> FitData:
    counts = (np.arange(N)[::-1] + 1).astype(np.int64)  # id 0 the most frequent
    return FitData({"a": counts})


def toy(options: dict | None = None, **kw) -> torch.nn.Module:
    opts = {"num_rows": 16, "num_learned": 400, "columns": 2, **(options or {})}
    spec = EmbeddingSpec(method="cce", dim=DIM, min_rows=0, options=opts, **kw)
    return build_embeddings(TOY, spec, data=toy_data())


def lookup(coll: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    kjt = KeyedJaggedTensor(keys=["a"], values=ids, lengths=torch.ones(len(ids), dtype=torch.int32))
    return coll(kjt)["a"]  # (B, dim)


def test_embedding_is_concat_of_pointer_plus_hashed_rows() -> None:
    coll = toy()
    m = coll.tables[0]
    w = storage_weights(coll)
    ids = torch.tensor([0, 5, 399, 400, 1999, 10**7, -3])
    want = []
    for x in ids.tolist():
        cols = []
        for i in range(m.c):
            if 0 <= x < 400:  # among the 400 most frequent: a learned pointer
                p = int(m.ptr_[int((m.kept_ == x).nonzero())][i])
            else:
                p = int(universal_hash(torch.tensor([x]), m.params_[i], m.k))
            h = int(universal_hash(torch.tensor([x]), m.params_[m.c + i], m.k))
            cols.append(w[f"a:p{i}"][p] + w[f"a:h{i}"][h])
        want.append(torch.cat(cols))
    torch.testing.assert_close(lookup(coll, ids), torch.stack(want))
    assert m.kept_.tolist() == list(range(400))  # the most frequent training ids


def test_budget_fit_uses_the_budget_and_counts_the_map() -> None:
    cfg = make_config("cce")
    mod = cfg.module
    for n, budget in [(70000, 42_000), (70000, 5_000), (2000, 3_000), (12, 5_000)]:
        fitted = mod.fit_budget(n, DIM, cfg, budget)
        used = mod.table_bytes(n, DIM, fitted)
        assert used <= budget
        if n > 100:
            assert used >= 0.95 * budget
        assert fitted.num_learned <= n and fitted.num_rows <= n
    big = mod.fit_budget(70000, DIM, cfg, 42_000)
    # int32 ids (70000 > 2^15) and one byte per pointer and column (rows <= 256)
    assert big.num_rows <= 256
    maps = big.num_learned * (4 + 2)
    assert 0.2 * 42_000 <= maps <= 0.3 * 42_000  # learned_share 0.25


def test_smallest_budget_is_one_row_per_table() -> None:
    cfg = make_config("cce")
    # 2 columns x (pointer + residual table) x 1 row of width 8, and 4 (a, b) hash pairs
    assert cfg.module.min_bytes(66217, 16, cfg) == 2 * 16 * 4 + 4 * 16 == 192
    fitted = cfg.module.fit_budget(66217, 16, cfg, 192)
    assert (fitted.num_rows, fitted.num_learned) == (1, 0)
    with pytest.raises(BudgetError):
        cfg.module.fit_budget(66217, 16, cfg, 191)
    assert _bytes(66217, 16, 2, 300, 10) == 2 * 300 * 64 + 10 * (4 + 2 * 2) + 64  # int16 pointers


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="both num_rows and num_learned"):
        make_config("cce", {"num_rows": 4})
    with pytest.raises(ValueError, match="multiple of 4"):
        CCETable("a", 100, 16, make_config("cce", {"num_rows": 4, "num_learned": 2, "columns": 3}))


def test_kmeans_finds_separated_clusters() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(6, 4, generator=g) * 10
    labels = torch.arange(600) % 6
    x = centres[labels] + 0.1 * torch.randn(600, 4, generator=g)
    cent, assign = kmeans(x, 6, 10, torch.Generator().manual_seed(1), torch.zeros(6, 4))
    # one cluster per centre: the assignment is the labelling up to names
    pairs = set(zip(labels.tolist(), assign.tolist(), strict=True))
    assert len(pairs) == 6
    torch.testing.assert_close(cent[assign], centres[labels], atol=0.05, rtol=0)
    again = kmeans(x, 6, 10, torch.Generator().manual_seed(1), torch.zeros(6, 4))
    assert torch.equal(again[1], assign)  # seeded: the same clustering


def test_recluster_points_each_id_at_its_nearest_centroid_plus_mean_residual() -> None:
    """The re-clustered table against a direct computation from the embeddings before."""
    coll = toy()
    m = coll.tables[0]
    ids = torch.arange(400)  # the learned ids
    old = lookup(coll, ids).detach()  # (400, dim)
    assert coll.recluster_due(50) and not coll.recluster_due(49)
    assert coll.recluster(50) == ["a"]
    new = lookup(coll, ids).detach()
    w = storage_weights(coll)
    for i in range(m.c):
        cols = slice(i * m.w, (i + 1) * m.w)
        p, h = w[f"a:p{i}"].detach(), w[f"a:h{i}"].detach()
        # each learned id points at the centroid nearest to its old column vector
        dist = torch.cdist(old[:, cols], p)  # (400, k)
        ptr = m.ptr_[:, i].long()
        torch.testing.assert_close(dist[ids, ptr], dist.min(1).values)
        # the residual table has a fresh hash; each bucket holds its ids' mean residual, so
        # the learned ids' errors sum to zero in every bucket
        bucket = universal_hash(ids, m.params_[m.c + i], m.k)
        torch.testing.assert_close(new[:, cols], p[ptr] + h[bucket])
        err = torch.zeros(m.k, m.w).index_add_(0, bucket, old[:, cols] - new[:, cols])
        torch.testing.assert_close(err, torch.zeros_like(err), atol=1e-5, rtol=0)
    assert m.stats["reclustered_at"] == [50]


def test_recluster_changes_the_map_and_training_keeps_improving() -> None:
    """100 ids whose targets fall into 8 groups: after re-clustering the ids of a group share
    their pointer rows, the loss does not jump, and it goes on falling."""
    torch.manual_seed(0)
    coll = toy({"num_rows": 64, "num_learned": 100}, optimizer="adagrad", lr=0.1)
    m = coll.tables[0]
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(8, DIM, generator=g)
    group = torch.randint(0, 8, (100,), generator=g)

    def step() -> float:
        ids = torch.randint(0, 100, (256,), generator=g)
        loss = (lookup(coll, ids) - centres[group[ids]]).pow(2).sum(1).mean()
        loss.backward()  # FBGEMM's fused Adagrad updates the rows
        return float(loss.detach())

    before = [step() for _ in range(150)]
    old_ptr = m.ptr_.clone()
    coll.recluster(50)
    assert not torch.equal(m.ptr_, old_ptr)  # the map changed
    for i in range(m.c):  # every pointer row now holds ids of one group
        ptr = m.ptr_[:, i].long()
        majority = sum(int(group[ptr == p].bincount().max()) for p in ptr.unique())
        assert majority >= 95
    states = optimizer_states(coll)
    assert all(len(s.unique()) == 1 for s in states["a:p0"])  # restarted at the table's mean
    after = [step() for _ in range(150)]
    assert np.mean(after[:5]) < 1.2 * np.mean(before[-5:])  # the re-clustering kept the fit
    assert np.mean(after[-5:]) < 0.5 * np.mean(before[-5:])


def test_checkpoint_after_recluster_reloads_to_the_same_outputs_and_steps() -> None:
    coll = toy(optimizer="adagrad", lr=0.1)
    ids = torch.arange(0, N, 7)
    lookup(coll, ids).pow(2).sum().backward()  # some training, then the re-clustering
    coll.recluster(50)
    state = coll.state_dict()
    spec = EmbeddingSpec(method="cce", dim=DIM, min_rows=0, optimizer="adagrad", lr=0.1,
                         options={"num_rows": 16, "num_learned": 400, "columns": 2})  # fmt: skip
    fresh = build_embeddings(TOY, spec)  # unfitted: ids, pointers and hashes come from the state
    fresh.load_state_dict(state)
    torch.testing.assert_close(lookup(fresh, ids), lookup(coll, ids))
    for c in (coll, fresh):  # the optimizer state came along: the next step is the same
        lookup(c, ids).pow(2).sum().backward()
    torch.testing.assert_close(lookup(fresh, ids), lookup(coll, ids))


def test_callback_reclusters_at_the_scheduled_steps() -> None:
    from types import SimpleNamespace

    from reccomp.compress.phases import ReclusterCallback

    coll = toy({"cluster_every": 10, "cluster_times": 2})
    cb, task = ReclusterCallback(), SimpleNamespace(embeddings=coll)
    for s in range(1, 41):
        cb.on_train_batch_end(SimpleNamespace(global_step=s), task, None, None, s - 1)
    assert coll.tables[0].stats["reclustered_at"] == [10, 20]
    assert not toy({"cluster_times": 0}).reclusters()


def test_sharding_refuses_a_reclustering_collection() -> None:
    from reccomp.distributed.plan import ShardingError
    from reccomp.distributed.strategy import refuse_unshardable

    with pytest.raises(ShardingError, match=r"cce re-clusters.*one process"):
        refuse_unshardable(build("cce", {}))
    refuse_unshardable(build("cce", {"cluster_times": 0}))  # a plain compositional hash


def test_contract_batch_runs_after_recluster() -> None:
    coll = build("cce", {})
    coll.recluster(50)
    assert torch.isfinite(coll(batch()).values()).all()
