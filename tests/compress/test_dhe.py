"""``dhe`` (Deep Hash Embedding): its math against a direct computation, its budget fit and
floor, grouped fields, and a collection with no storage table at all."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from reccomp.compress import BudgetError, make_config
from reccomp.compress.base import field_seed, hash_params, universal_hash
from reccomp.compress.dhe import DHETable, flops_per_id, layer_shapes
from reccomp.data.schema import Schema, SparseField
from reccomp.modules.embedding import EmbeddingSpec, build_embeddings

DIM = 16
CARDS = [12, 18, 27, 42, 65, 102, 160, 253, 400, 633, 1002, 1587, 2514, 3983, 6299, 9863,
         14728, 20835, 27589, 34317, 41156, 47264, 52065, 56907, 61992, 66217]  # fmt: skip
CRITEO = Schema("criteo-like", "ctr", [SparseField(f"C{i + 1}", c) for i, c in enumerate(CARDS)])
BAGS = Schema("bags", "ctr", [SparseField("a", 500), SparseField("b", 800, max_len=4)])


def table(num_embeddings: int = 1000, **options) -> DHETable:
    options = {"num_hashes": 12, "hidden": 8, **options}
    return DHETable("f", num_embeddings, DIM, make_config("dhe", options))


def reference(m: DHETable, ids: torch.Tensor) -> torch.Tensor:
    """(N,) ids -> (N, dim), spelled out: k universal hashes scaled to [-1, 1], then
    Linear + Mish per hidden layer and a final Linear, from the flat weights."""
    m_ = m.buckets
    codes = [universal_hash(ids, hash_params(field_seed("dhe", j)), m_) for j in range(m.k)]
    x = torch.stack(codes, 1).double() * 2 / (m_ - 1) - 1  # (N, k)
    flat = (m.weight * m.lr_scale).double()
    o = 0
    shapes = layer_shapes(m.k, m.h, m.layers, DIM)
    for i, (a, b) in enumerate(shapes):
        w, o = flat[o : o + a * b].reshape(a, b), o + a * b
        bias, o = flat[o : o + b], o + b
        x = x @ w + bias
        if i < len(shapes) - 1:
            x = F.mish(x)
    return x.float()


@pytest.mark.parametrize("layers", [1, 3])
def test_embed_is_the_hash_encoding_through_the_network(layers: int) -> None:
    m = table(layers=layers, buckets=1000)
    ids = torch.tensor([0, 5, 999, 123456789, -7, 2**40, 5])
    lengths = torch.tensor([2, 0, 1, 3, 1])  # bags of 2, 0, 1, 3 and 1 ids
    rows = reference(m, ids)  # (7, dim)
    want = torch.stack([rows[:2].sum(0), torch.zeros(DIM), rows[2], rows[3:6].sum(0), rows[6]])
    torch.testing.assert_close(m.embed(ids, lengths, 5), want, rtol=1e-5, atol=1e-6)
    assert m.encode(ids).min() >= -1 and m.encode(ids).max() <= 1
    assert torch.equal(m.encode(ids)[1], m.encode(ids)[6])  # a function of the id alone


def test_group_paths_equal_each_field_alone() -> None:
    """Training (distinct ids, padded per group) and serving (one slot per bag) both give
    each field's own embed(); an empty bag of a single-valued field embeds to zero."""
    ms = [DHETable(f, 300, DIM, make_config("dhe", {"num_hashes": 6, "hidden": 5}))
          for f in ("a", "b", "c")]  # fmt: skip
    g = torch.Generator().manual_seed(0)
    values = [torch.randint(0, 300, (n,), generator=g) for n in (4, 5, 5)]
    lengths = [torch.tensor([1, 1, 0, 1, 1]), torch.ones(5, dtype=torch.long)] * 1
    lengths.append(torch.ones(5, dtype=torch.long))
    want = torch.stack([m.embed(v, n, 5) for m, v, n in zip(ms, values, lengths, strict=True)], 1)
    params = [m.group_param() for m in ms]
    for training in (True, False):
        ms[0].train(training)
        got = ms[0].embed_group(values, lengths, params, 5)  # (B, n, dim)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert torch.equal(want[2, 0], torch.zeros(DIM))


def test_gradients_of_the_distinct_path_equal_the_direct_ones() -> None:
    m = table()
    ids, lengths = torch.tensor([3, 3, 7, 9, 3]), torch.tensor([2, 1, 2])
    m.train()
    m.embed_group([ids], [lengths], [m.group_param()], 3).pow(2).sum().backward()
    got, m.weight.grad = m.weight.grad.clone(), None
    m.embed(ids, lengths, 3).pow(2).sum().backward()
    torch.testing.assert_close(got, m.weight.grad, rtol=1e-4, atol=1e-6)


def test_budget_fit_uses_the_budget() -> None:
    config = make_config("dhe")
    for budget in (200, 1_107, 11_077, 100_000):
        fitted = DHETable.fit_budget(1000, DIM, config, budget)
        used = DHETable.table_bytes(1000, DIM, fitted)
        assert used <= budget
        assert budget - used < 4 * fitted.hidden + 8  # no room for one more hash
        assert fitted.num_hashes >= round(config.hash_ratio * fitted.hidden)
    # one hidden unit more would not fit
    f = DHETable.fit_budget(1000, DIM, config, 11_077)
    bigger = make_config("dhe", {"num_hashes": 4 * (f.hidden + 1), "hidden": f.hidden + 1})
    assert DHETable.table_bytes(1000, DIM, bigger) > 11_077


def test_smallest_budget() -> None:
    """Floor per field: k = 4 hashes (hash_ratio 4 of h = 1), one hidden unit:
    4 (k h + h + h dim + dim) + 8 k bytes = 180 at dim 16."""
    config = make_config("dhe")
    assert DHETable.min_bytes(10**9, DIM, config) == 4 * (4 + 1 + 16 + 16) + 8 * 4 == 180
    full = sum(CARDS) * DIM * 4
    floor = 26 * 180 / full  # 1.625e-4 of the full collection
    coll = build_embeddings(CRITEO, EmbeddingSpec(method="dhe", budget=floor, dim=DIM, min_rows=0))
    assert coll.memory_bytes() <= 26 * 180
    with pytest.raises(BudgetError, match=r"smallest reachable budget is 0\.0001625"):
        build_embeddings(
            CRITEO, EmbeddingSpec(method="dhe", budget=floor * 0.99, dim=DIM, min_rows=0)
        )


def test_equal_shares_group_every_field_and_stats() -> None:
    coll = build_embeddings(CRITEO, EmbeddingSpec(method="dhe", budget=0.01, dim=DIM, min_rows=0))
    assert coll._groups() == [(0, 26, False)]  # equal shapes: one batched network call
    assert 0.9 * 0.01 <= coll.memory_bytes() / coll.full_bytes() <= 0.01
    m = coll.tables[0]
    assert (m.k, m.h) == (94, 23)
    row = coll.describe()[0]
    assert row["flops_per_id"] == flops_per_id(94, 23, 1, DIM) == 2 * (94 * 23 + 23 * 16)
    assert row["hashes_per_id"] == 94
    proportional = build_embeddings(
        CRITEO,
        EmbeddingSpec(method="dhe", budget=0.01, dim=DIM, min_rows=0,
                      options={"budget_power": 1.0}),
    )  # fmt: skip
    assert proportional.tables[-1].h > m.h > proportional.tables[0].h


def test_collection_without_storage_trains_scripts_and_exports() -> None:
    from reccomp.distributed.strategy import ShardingError, refuse_unshardable
    from reccomp.export.program import build_program, export_program
    from reccomp.models import DLRM

    coll = build_embeddings(BAGS, EmbeddingSpec(method="dhe", budget=0.1, dim=DIM, min_rows=0))
    assert not coll._has_storage and list(coll.storage.parameters()) == []
    g = torch.Generator().manual_seed(1)
    lengths = torch.cat([torch.ones(6, dtype=torch.long), torch.randint(0, 4, (6,), generator=g)])
    values = torch.randint(0, 500, (int(lengths.sum()),), generator=g)
    kjt = KeyedJaggedTensor(keys=["a", "b"], values=values, lengths=lengths)
    coll(kjt).values().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in coll.parameters())
    scripted = torch.jit.script(coll.to_serving())
    torch.testing.assert_close(scripted(kjt).values(), coll(kjt).values())
    with pytest.raises(ShardingError, match="nothing to shard"):
        refuse_unshardable(coll)

    torch.manual_seed(0)
    model = DLRM(coll, 3, bottom_mlp=(16, DIM), top_mlp=(8,)).eval()
    prog, dtypes = build_program(model, ["a", "b"], "ctr")
    assert dtypes == {}
    dense = torch.randn(6, 3)
    ep, _ = export_program(prog, (dense, values, lengths))
    with torch.no_grad():
        raw, _ = ep.module()(dense, values, lengths)
        torch.testing.assert_close(raw, model(dense, kjt), atol=1e-5, rtol=0)


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="both num_hashes and hidden"):
        make_config("dhe", {"hidden": 8})
    with pytest.raises(ValueError, match="layers must be >= 1"):
        make_config("dhe", {"layers": 0})
    with pytest.raises(ValueError, match="budget_power"):
        make_config("dhe", {"budget_power": 2.0})
