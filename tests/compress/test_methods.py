"""Method-specific behaviour, budgets and errors (the shared contract is test_contract.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from reccomp.compress import BudgetError, FitData, make_config
from reccomp.compress.graph import cluster_bipartite
from reccomp.compress.low_rank import BatchedProjection
from reccomp.data.schema import Schema, SparseField
from reccomp.modules.embedding import EmbeddingSpec, build_embeddings
from tests.compress.test_contract import SCHEMA, batch, build, fit_data


def test_unknown_method_is_named() -> None:
    with pytest.raises(ValueError, match=r"unknown compression method 'nope'.*known: \["):
        EmbeddingSpec(method="nope")


def test_option_of_another_method_is_named() -> None:
    with pytest.raises(ValueError, match=r"'qr' has no option 'num_buckets'.*'hash'"):
        EmbeddingSpec(method="qr", options={"num_buckets": 10})


def test_unreachable_budget_names_method_and_smallest_budget() -> None:
    with pytest.raises(BudgetError, match=r"'qr' cannot reach budget 0.001.*smallest reachable"):
        build("qr", {}, budget=0.001)
    with pytest.raises(
        BudgetError, match=r"'full' cannot reach budget 0.5.*smallest reachable budget is 1"
    ):
        build_embeddings(SCHEMA, EmbeddingSpec(method="full", budget=0.5, dim=8, min_rows=100))


def test_budget_and_explicit_size_mix() -> None:
    """Explicitly sized tables are fixed; the budget is shared by the others."""
    spec = EmbeddingSpec(
        method="hash", budget=0.25, dim=8, min_rows=100,
        tables={"item": {"method": "qr", "options": {"num_collisions": 10}}},
    )  # fmt: skip
    coll = build_embeddings(SCHEMA, spec)
    assert coll.memory_bytes() <= 0.25 * coll.full_bytes()
    by = {p.field: p.config for p in coll.plans}
    assert by["item"].name == "qr" and by["item"].num_collisions == 10
    assert by["small"].name == "full"  # under min_rows


def test_qr_rows_are_unique_per_id() -> None:
    coll = build("qr", {})
    m = coll.tables[0]
    q, r = m.remap(torch.arange(3000))
    pairs = set(zip(q.tolist(), r.tolist(), strict=True))
    assert len(pairs) == 3000  # no two ids share both rows


def test_qr_mult_refuses_multi_valued_fields() -> None:
    schema = Schema("t", "ctr", [SparseField("bag", 5000, max_len=4)])
    with pytest.raises(ValueError, match="multi-valued field 'bag'"):
        build_embeddings(schema, EmbeddingSpec(method="qr", budget=0.25, dim=8))
    build_embeddings(
        schema, EmbeddingSpec(method="qr", budget=0.25, dim=8, options={"combiner": "add"})
    )


def test_frequency_hash_keeps_the_most_frequent_ids_apart() -> None:
    coll = build("frequency_hash", {})
    m = coll.tables[0]
    counts = fit_data().counts("user")
    top = np.argsort(-counts, kind="stable")[: m.k]
    rows = m.remap(torch.from_numpy(top))[0]
    assert len(set(rows.tolist())) == m.k and int(rows.max()) < m.k  # own rows
    rare = np.argsort(counts, kind="stable")[:50]
    assert (m.remap(torch.from_numpy(rare))[0] >= m.k).all()  # hashed rows


def test_clustering_hits_target_and_recovers_communities() -> None:
    d = fit_data()
    users, items = d.interactions()
    c = cluster_bipartite(users, items, 3000, 2000, target=200)
    assert c.total <= 200 and c.total >= 0.8 * 200
    # users of one community (id % 10) mostly share clusters with that community's items
    u = c.user_cluster[users]
    i = c.item_cluster[items]
    assert (u >= 0).all() and (i >= 0).all()


def test_graph_hash_maps_absent_ids_to_hash_rows_and_other_fields_to_fallback() -> None:
    coll = build("graph_hash", {"fallback": "qr"})
    by = {p.field: p.config.name for p in coll.plans}
    assert by == {
        "user": "graph_hash",
        "item": "graph_hash",
        "side": "qr",
        "small": "full",
        "bag": "full",
    }
    user = coll.tables[0]
    assert user.stats["absent_ids"] > 0  # ids 0, 1 (and never-seen users) are not in the graph
    assert user.rows[0] == int(user.stats["clusters"])
    rows = user.remap(torch.tensor([0, 1, 10**9, -7]))[0]
    assert (rows >= 0).all() and (rows < user.rows[0]).all()


def test_graph_hash_needs_a_graph() -> None:
    schema = Schema("c", "ctr", [SparseField("c1", 5000), SparseField("c2", 4000)])
    with pytest.raises(ValueError, match="names no user and item fields"):
        build_embeddings(schema, EmbeddingSpec(method="graph_hash", budget=0.25, dim=8))
    # another pair of fields can be named
    spec = EmbeddingSpec(method="graph_hash", budget=0.25, dim=8, options={"fields": ["c1", "c2"]})
    rng = np.random.default_rng(0)
    cols = {"c1": rng.integers(0, 5000, 9000), "c2": rng.integers(0, 4000, 9000)}
    data = FitData({k: np.ones(n) for k, n in (("c1", 5000), ("c2", 4000))}, columns=cols)
    coll = build_embeddings(schema, spec, data=data)
    assert coll.memory_bytes() <= 0.25 * coll.full_bytes()


def test_task_fits_from_the_data_module_before_training() -> None:
    """Through the CLI path the collection is fitted in setup (covered in test_cli); here:
    an unfitted data-dependent collection says so."""
    coll = build_embeddings(
        SCHEMA, EmbeddingSpec(method="graph_hash", budget=0.25, dim=8, min_rows=100)
    )
    assert coll.needs_fit and not coll.fitted
    coll.fit(fit_data())
    assert coll.fitted
    assert torch.isfinite(coll(batch()).values()).all()


def test_make_config_round_trip() -> None:
    cfg = make_config("double_graph_hash", {"hash_share": 0.3, "fields": ["a", "b"]})
    assert make_config("double_graph_hash", cfg.to_dict()) == cfg


def test_graph_fields_stay_together_under_min_rows() -> None:
    schema = Schema(
        "t", "ctr", [SparseField("u", 500), SparseField("i", 400), SparseField("s", 600)],
        user_field="u", item_field="i",
    )  # fmt: skip
    spec = EmbeddingSpec(method="graph_hash", budget=0.5, dim=8, min_rows=1000)
    coll = build_embeddings(schema, spec)
    assert [p.config.name for p in coll.plans] == ["graph_hash", "graph_hash", "full"]


def test_ctr_graph_uses_clicked_rows() -> None:
    users, items = np.array([2, 3, 4, 5]), np.array([7, 8, 9, 10])
    data = FitData({}, "user", "item", users, items, labels=np.array([1.0, 0.0, 1.0, 0.0]))
    u, i = data.interactions(positive_only=True)
    assert u.tolist() == [2, 4] and i.tolist() == [7, 9]
    assert data.interactions()[0].tolist() == [2, 3, 4, 5]
    with pytest.raises(ValueError, match="edges must be"):
        make_config("graph_hash", {"edges": "clicks"})


def test_mixed_dim_gives_popular_blocks_wider_rows_and_one_lookup_per_id() -> None:
    coll = build("mixed_dim", {"blocks": 4, "temperature": 0.5}, budget=0.25)
    user = coll.tables[0]
    assert user.widths == sorted(user.widths, reverse=True) and user.widths[0] > user.widths[-1]
    assert user.rows[0] < user.rows[-1]  # small head block, large tail
    flat = build("mixed_dim", {"blocks": 4, "temperature": 0.0}, budget=0.25).tables[0]
    assert len(set(flat.widths)) == 1
    counts = fit_data().counts("user")
    top = int(np.argmax(counts))
    ids = torch.tensor([top, top, 5])
    streams = user.remap_jagged(ids, torch.tensor([1, 2], dtype=torch.int32))
    assert sum(len(v) for v, _ in streams) == 3  # each id in exactly one block
    assert [int(x) for x in sum((lens for _, lens in streams), torch.zeros(2))] == [1, 2]
    assert streams[0][1][0] == 1  # the most frequent id sits in the head block
    # across tables, bigger tables get a smaller share of their full size (alpha > 0)
    ratio = {m.field: m.memory_bytes() / (m.num_embeddings * 32 * 4) for m in coll.tables[:3]}
    assert ratio["user"] < ratio["side"]


def test_dnis_prunes_to_the_dimensions_alpha_selects() -> None:
    spec = EmbeddingSpec(method="dnis", budget=0.25, dim=32, min_rows=100, optimizer="sgd",
                         options={"blocks": 2})  # fmt: skip
    coll = build_embeddings(SCHEMA, spec, data=fit_data())
    assert coll.searching and coll.search_epochs == 2
    assert coll.memory_bytes() > 0.9 * coll.full_bytes()  # the search runs at full width
    user = coll.tables[0]
    with torch.no_grad():
        user.alpha.zero_()
        user.alpha[0, 8:16] = 1.0  # head block: dims 8..15 matter
        user.alpha[1, 20:24] = 1.0  # tail block: dims 20..23
    coll.advance_phase()
    assert not coll.searching
    assert coll.memory_bytes() <= 0.25 * coll.full_bytes()
    assert user.widths[1] == 4  # the big tail block keeps only what it must
    off = 0
    for b, w in enumerate(user.widths):
        kept = user.proj[off : off + w].abs().sum(0).nonzero().flatten().tolist()
        off += w
        assert set(kept) <= set(range(8, 16) if b == 0 else range(20, 24))
        assert kept  # the selected dims survive, scaled by alpha


def test_dnis_pruning_keeps_the_optimizer_state_of_the_kept_columns() -> None:
    from reccomp.compress.transform import optimizer_states

    spec = EmbeddingSpec(method="dnis", budget=0.25, dim=32, min_rows=100, optimizer="adagrad",
                         options={"blocks": 2})  # fmt: skip
    coll = build_embeddings(SCHEMA, spec, data=fit_data())
    with torch.no_grad():
        for name, states in optimizer_states(coll).items():
            for s in states:  # a distinct value per (table, row, column)
                s.copy_(torch.arange(s.numel(), dtype=s.dtype).reshape(s.shape) + hash(name) % 97)
    before = {k: [s.clone() for s in v] for k, v in optimizer_states(coll).items()}
    coll.advance_phase()
    after = optimizer_states(coll)
    user = coll.tables[0]
    for b, cols in enumerate(user.kept_):
        name = f"user:{b}"
        torch.testing.assert_close(after[name][0], before[name][0][:, cols])
    side = [m.field for m in coll.tables if not m.searching and m.config.name == "full"]
    assert side and torch.equal(after[side[0]][0], before[side[0]][0])  # untouched tables too


def test_batched_projection_matches_bmm_in_values_and_gradients() -> None:
    x = torch.randn(6, 3 * 4, dtype=torch.double, requires_grad=True)  # storage rows (B, n*r)
    p = torch.randn(3, 4, 5, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b: BatchedProjection.apply(a.view(6, 3, 4), b), (x, p)
    )
    out = BatchedProjection.apply(x.view(6, 3, 4), p)
    assert out.is_contiguous()  # batch-major: the collection returns it without a copy
    ref = torch.bmm(x.view(6, 3, 4).transpose(0, 1), p).transpose(0, 1)
    torch.testing.assert_close(out, ref)


def test_low_rank_collection_output_needs_no_copy() -> None:
    spec = EmbeddingSpec(method="low_rank", options={"rank": 8}, dim=16, min_rows=0)
    schema = Schema("toy", "ctr", [SparseField("a", 100), SparseField("b", 200)])
    coll = build_embeddings(schema, spec)
    kjt = KeyedJaggedTensor(
        keys=["a", "b"], values=torch.tensor([1, 2, 3, 4]), lengths=torch.tensor([1, 1, 1, 1])
    )
    out = coll(kjt).values()  # (2, 2 * 16)
    assert out.shape == (2, 32) and out.is_contiguous()
    proj = torch.stack([t.proj for t in coll.tables])  # (2, 8, 16)
    rows = coll.storage(
        KeyedJaggedTensor(keys=coll._storage_keys, values=kjt.values(), lengths=kjt.lengths())
    ).values()  # (2, 2 * 8)
    ref = torch.bmm(rows.view(2, 2, 8).transpose(0, 1), proj).transpose(0, 1).reshape(2, -1)
    torch.testing.assert_close(out, ref)
