"""The contract every registered method keeps (shared test matrix over the registry)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from reccomp.compress import BudgetError, FitData, make_config, method_names
from reccomp.compress.collection import CompressedEmbeddingBagCollection, storage_name
from reccomp.data.schema import Schema, SparseField
from reccomp.modules.embedding import EmbeddingSpec, build_embeddings

DIM = 32
SCHEMA = Schema(
    "toy",
    "ctr",
    [
        SparseField("user", 3000),
        SparseField("item", 2000),
        SparseField("side", 1200),
        SparseField("small", 10),
        SparseField("bag", 50, max_len=3),
    ],
    user_field="user",
    item_field="item",
)
# every registered method, plus option variants worth their own row
CASES = [(m, {}) for m in method_names()] + [
    ("qr", {"combiner": "add"}),
    ("qr", {"combiner": "concat"}),
    ("double_hash", {"combiner": "concat", "shared": True}),
]


def fit_data(seed: int = 0) -> FitData:
    """Ten communities: users of community c interact with items of community c."""
    rng = np.random.default_rng(seed)
    users = rng.integers(2, 3000, 20000)
    items = (rng.integers(2, 200, 20000) * 10 + users % 10) % 2000
    counts = {f.name: rng.zipf(1.5, f.cardinality).astype(np.int64) for f in SCHEMA.sparse}
    return FitData(counts, "user", "item", users, items)


def build(
    method: str, options: dict, budget: float | None = 0.25, **kw
) -> CompressedEmbeddingBagCollection:
    spec = EmbeddingSpec(
        method=method,
        budget=None if method == "full" else budget,
        dim=DIM,
        options=options,
        min_rows=100,
        optimizer="sgd",
        lr=0.05,
        **kw,
    )
    coll = build_embeddings(SCHEMA, spec, data=fit_data())
    if coll.search_epochs:  # multi-phase methods (dnis): the contract holds for the final form
        coll.advance_phase()
    return coll


def batch(b: int = 16, seed: int = 0, lo: int = 0, hi: int | None = None) -> KeyedJaggedTensor:
    g = torch.Generator().manual_seed(seed)
    vals, lens = [], []
    for f in SCHEMA.sparse:
        n = torch.randint(0 if f.max_len > 1 else 1, f.max_len + 1, (b,), generator=g)
        top = f.cardinality if hi is None else hi
        vals.append(torch.randint(lo, top, (int(n.sum()),), generator=g))
        lens.append(n)
    return KeyedJaggedTensor(
        keys=SCHEMA.feature_names, values=torch.cat(vals), lengths=torch.cat(lens).int()
    )


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0]}{c[1] or ''}")
def case(request: pytest.FixtureRequest) -> tuple[str, dict]:
    return request.param


def test_output_matches_full_collection(case: tuple[str, dict]) -> None:
    ref = EmbeddingBagCollection(
        tables=[
            EmbeddingBagConfig(
                name=f.name, embedding_dim=DIM, num_embeddings=f.cardinality, feature_names=[f.name]
            )
            for f in SCHEMA.sparse
        ]
    )
    kjt = batch()
    want = ref(kjt)
    got = build(*case)(kjt)
    assert got.keys() == want.keys()
    assert got.length_per_key() == want.length_per_key()
    assert got.values().shape == want.values().shape
    assert got.values().dtype == want.values().dtype
    assert [c.embedding_dim for c in build(*case).embedding_bag_configs()] == [DIM] * 5


def test_forward_equals_remap_lookup_decode(case: tuple[str, dict]) -> None:
    """The output is decode(pool(rows of remap(ids))) computed by hand from the weights."""
    coll = build(*case)
    kjt = batch(b=8)
    out = coll(kjt).to_dict()
    weights = {k.split(".")[1]: v for k, v in coll.storage.state_dict().items()}
    jts = kjt.to_dict()
    for m in coll.tables:
        ids, lens = jts[m.field].values().long(), jts[m.field].lengths()
        if not m.tables():  # no storage (dhe): the field's own embed(), one field alone
            torch.testing.assert_close(out[m.field], m.embed(ids, lens, 8), rtol=1e-5, atol=1e-6)
            continue
        pooled = []
        streams = iter(m.remap_jagged(ids, lens))
        for t in m.tables():
            for _ in range(t.lookups):
                rows, rlens = next(streams)
                seg = torch.repeat_interleave(torch.arange(8), rlens.long())
                w = weights[storage_name(m.field, t)]  # all of a shared table
                pooled.append(torch.zeros(8, t.width).index_add_(0, seg, w[rows]))
        torch.testing.assert_close(out[m.field], m.decode(pooled), rtol=1e-5, atol=1e-6)


def test_gradients_reach_parameters(case: tuple[str, dict]) -> None:
    coll = build(*case)
    kjt = batch(b=512)  # every storage table (small frequency blocks too) gets some ids
    # training module: FBGEMM applies the update to the storage tables inside backward;
    # a method's own dense parameters (projections) get ordinary gradients
    storage = list(coll.storage.parameters())
    dense = [p for p in coll.parameters() if all(p is not s for s in storage)]
    before = [p.detach().clone() for p in storage]
    coll(kjt).values().pow(2).sum().backward()
    changed = [not torch.equal(b, p.detach()) for b, p in zip(before, storage, strict=True)]
    assert all(changed), f"tables not updated: {changed}"
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in dense)
    # serving copy: ordinary autograd gradients on every table
    serve = coll.to_serving().train()
    serve(kjt).values().pow(2).sum().backward()
    grads = [p.grad for p in serve.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("budget", [0.5, 0.25, 0.1])
def test_memory_under_budget_and_counted_independently(
    case: tuple[str, dict], budget: float
) -> None:
    method, options = case
    try:
        coll = build(method, options, budget=budget)
    except BudgetError as e:  # allowed only below the method's smallest reachable budget
        smallest = float(str(e).split("smallest reachable budget is ")[1].split()[0])
        assert smallest > budget
        return
    full = sum(f.cardinality * DIM * 4 for f in SCHEMA.sparse)
    independent = sum(p.numel() * p.element_size() for p in coll.parameters()) + sum(
        b.numel() * b.element_size() for b in coll.buffers()
    )
    assert coll.memory_bytes() == independent
    assert sum(coll.memory_by_table().values()) == coll.memory_bytes()
    assert coll.full_bytes() == full
    if method != "full":
        assert coll.memory_bytes() <= budget * full
        assert coll.memory_bytes() >= 0.5 * budget * full  # the budget is used, not wasted


def test_budget_in_bytes(case: tuple[str, dict]) -> None:
    if case[0] == "full":
        return
    coll = build(*case, budget=240_000)  # bytes (0.3 of the full 801,280)
    assert coll.memory_bytes() <= 240_000


def test_torchscript_serving_copy_matches(case: tuple[str, dict]) -> None:
    coll = build(*case)
    kjt = batch(seed=3)
    scripted = torch.jit.script(coll.to_serving())
    torch.testing.assert_close(scripted(kjt).values(), coll(kjt).values())


def test_config_round_trip_through_yaml(case: tuple[str, dict]) -> None:
    method, options = case
    coll = build(method, options)
    for p in coll.plans:
        text = yaml.safe_dump({"method": p.config.name, "options": p.config.to_dict()})
        back = yaml.safe_load(text)
        assert make_config(back["method"], back["options"]) == p.config
    # and the whole embeddings block rebuilds the same collection
    spec_text = yaml.safe_dump({"method": method, "options": options, "dim": DIM, "min_rows": 100})
    spec = EmbeddingSpec(**yaml.safe_load(spec_text), budget=None if method == "full" else 0.25)
    again = build_embeddings(SCHEMA, spec, data=fit_data())
    assert [list(m.rows) for m in again.tables] == [list(m.rows) for m in coll.tables]


def test_unseen_and_out_of_range_ids_never_raise(case: tuple[str, dict]) -> None:
    coll = build(*case)
    for lo, hi in ((-50, 0), (3000, 10**6), (2**40, 2**40 + 100)):
        out = coll(batch(lo=lo, hi=hi))
        assert torch.isfinite(out.values()).all()


def test_checkpoint_round_trip(case: tuple[str, dict]) -> None:
    """A fresh, unfitted collection restores a fitted one from its state dict alone."""
    coll = build(*case)
    spec = EmbeddingSpec(
        method=case[0], budget=None if case[0] == "full" else 0.25, dim=DIM, options=case[1],
        min_rows=100, optimizer="sgd", lr=0.05,
    )  # fmt: skip
    fresh = build_embeddings(SCHEMA, spec)  # no data
    fresh.load_state_dict(coll.state_dict())
    assert fresh.fitted
    kjt = batch(seed=5)
    torch.testing.assert_close(fresh(kjt).values(), coll(kjt).values())
    assert fresh.memory_bytes() == coll.memory_bytes()


def _sized_methods() -> list[str]:
    """Methods trained at a budget (the post-training ones size themselves from a model)."""
    out = []
    for m in method_names():
        module = type(make_config(m)).module
        if not module.post_training:
            out.append(m)
    return out


@pytest.mark.parametrize("method", _sized_methods())
# 9 and 1024: perfect squares (qr once missed its minimum there); 3: a Criteo field
@pytest.mark.parametrize(
    ("num_embeddings", "dim"), [(3, 16), (9, 16), (10, 16), (1024, 16), (70000, 64)]
)
def test_min_bytes_is_reachable(method: str, num_embeddings: int, dim: int) -> None:
    """The planner trusts ``min_bytes``: a table given exactly that many bytes must fit
    (frequency_hash once said one row but its sizing needed room for an id map too)."""
    config = make_config(method)
    module = type(config).module
    low = module.min_bytes(num_embeddings, dim, config)
    fitted = module.fit_budget(num_embeddings, dim, config, low)
    assert module.table_bytes(num_embeddings, dim, fitted) <= low
    with pytest.raises(BudgetError):
        module.fit_budget(num_embeddings, dim, config, low - 1)
