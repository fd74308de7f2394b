"""``robe``: ROBE-Z chunks of one shared array (the shared contract is test_contract.py)."""

from __future__ import annotations

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from reccomp.compress import BudgetError, make_config, plan_tables
from reccomp.compress.collection import storage_name
from reccomp.compress.robe import RobeTable
from reccomp.data.schema import Schema, SparseField
from reccomp.distributed.plan import ShardingError, plan_storage
from reccomp.export.program import _table_spans, quantize_storage
from reccomp.modules.embedding import EmbeddingSpec, build_embeddings

P = 2**31 - 1
# robe fields with an uncompressed one between them: the shared table's features are not
# consecutive in the decodes' order, and a bag field
SCHEMA = Schema(
    "robe",
    "ctr",
    [
        SparseField("a", 3000),
        SparseField("small", 10),
        SparseField("b", 2000),
        SparseField("bag", 500, max_len=3),
    ],
)
DIM = 16


def _coll(budget: float = 0.1, options: dict | None = None, **kw):
    spec = EmbeddingSpec(method="robe", budget=budget, dim=DIM, options=options or {},
                         min_rows=100, optimizer="sgd", lr=0.05, **kw)  # fmt: skip
    return build_embeddings(SCHEMA, spec)


def _batch(b: int = 32, seed: int = 0) -> KeyedJaggedTensor:
    g = torch.Generator().manual_seed(seed)
    vals, lens = [], []
    for f in SCHEMA.sparse:
        n = torch.randint(0 if f.max_len > 1 else 1, f.max_len + 1, (b,), generator=g)
        vals.append(torch.randint(-5, f.cardinality + 5, (int(n.sum()),), generator=g))
        lens.append(n)
    return KeyedJaggedTensor(
        keys=SCHEMA.feature_names, values=torch.cat(vals), lengths=torch.cat(lens).int()
    )


def test_one_array_for_every_robe_field() -> None:
    coll = _coll()
    configs, _ = coll.storage_configs()
    by = {c.name: c for c in configs}
    robe = [m for m in coll.tables if m.config.name == "robe"]
    assert [m.field for m in robe] == ["a", "b", "bag"]
    arr = by["robe"]
    assert arr.embedding_dim == 8  # the default chunk at dim 16: two lookups per id
    assert arr.num_embeddings == sum(m.rows[0] for m in robe)
    assert arr.feature_names == ["a#0", "a#1", "b#0", "b#1", "bag#0", "bag#1"]
    assert all(m.total_rows == arr.num_embeddings for m in robe)
    # every field hashes into the whole array, not its share
    rows = robe[0].remap(torch.arange(3000))
    assert max(int(r.max()) for r in rows) >= robe[0].rows[0]
    # bytes: each field its share, and the shares add up to the array
    array_bytes = arr.num_embeddings * 8 * 4
    params = sum(m.params_.numel() * 8 for m in robe)
    assert sum(coll.memory_by_table()[m.field] for m in robe) == array_bytes + params


def test_forward_is_the_concatenation_of_hashed_chunks() -> None:
    """Direct reference: chunk j of id x is row ((a_j x + b_j) mod p) mod R of the array,
    computed with Python integers; bags sum their ids' embeddings."""
    coll = _coll(options={"chunk": 4})
    kjt = _batch()
    out = coll(kjt).to_dict()
    w = {k.split(".")[1]: v for k, v in coll.storage.state_dict().items()}
    jts = kjt.to_dict()
    for m in coll.tables:
        if m.config.name != "robe":
            continue
        arr = w[storage_name(m.field, m.tables()[0])]  # (R, 4)
        r = arr.shape[0]
        jt = jts[m.field]
        want = torch.zeros(32, DIM)
        for i, (start, n) in enumerate(zip(jt.offsets()[:-1].tolist(), jt.lengths().tolist(),
                                           strict=True)):  # fmt: skip
            for x in jt.values()[start : start + n].tolist():
                chunks = [arr[((int(a) * (x % P) + int(b)) % P) % r] for a, b in m.params_.tolist()]
                want[i] += torch.cat(chunks)
        torch.testing.assert_close(out[m.field], want, rtol=1e-5, atol=1e-6)


def test_serving_copy_scripts_and_a_checkpoint_rebuilds_the_array() -> None:
    coll = _coll()
    kjt = _batch(seed=1)
    scripted = torch.jit.script(coll.to_serving())
    torch.testing.assert_close(scripted(kjt).values(), coll(kjt).values())
    fresh = _coll()
    fresh.load_state_dict(coll.state_dict())
    torch.testing.assert_close(fresh(kjt).values(), coll(kjt).values())


def test_quantized_shares_add_up_to_what_fbgemm_stores() -> None:
    coll = _coll()
    serving = coll.to_serving()
    quantize_storage(serving, "int8")
    robe = [m for m in serving.tables if m.config.name == "robe"]
    span = _table_spans(serving.storage)["robe"]  # the array's bytes in FBGEMM's buffer
    held = sum(m.table_bytes_stored(m.tables()[0]) for m in robe)
    assert span - len(robe) < held <= span  # shares in proportion to rows, rounded down
    # int8 rows of 8 values: 8 bytes + fp16 scale and bias, padded to 16 (half of fp32)
    assert 16 * robe[0].total_rows <= span < 16 * robe[0].total_rows + 64
    assert serving.memory_bytes() < coll.memory_bytes()


def test_array_option_splits_or_unshares() -> None:
    spec = EmbeddingSpec(method="robe", budget=0.1, dim=DIM, min_rows=100,
                         tables={"b": {"method": "robe", "options": {"array": "other"}},
                                 "bag": {"method": "robe", "options": {"array": ""}}})  # fmt: skip
    coll = build_embeddings(SCHEMA, spec)
    names = {c.name: c.num_embeddings for c in coll.storage_configs()[0]}
    assert set(names) == {"robe", "small", "other", "bag"}
    for m in coll.tables:
        if m.config.name == "robe":
            assert m.total_rows == m.rows[0] == names[storage_name(m.field, m.tables()[0])]


def test_one_array_needs_one_chunk_width() -> None:
    spec = EmbeddingSpec(method="robe", budget=0.1, dim=DIM, min_rows=100,
                         tables={"b": {"method": "robe", "options": {"chunk": 4}}})  # fmt: skip
    with pytest.raises(ValueError, match="share table 'robe' but differ in width"):
        build_embeddings(SCHEMA, spec)


def test_a_field_cannot_take_the_array_name() -> None:
    schema = Schema("t", "ctr", [SparseField("robe", 10), SparseField("x", 5000)])
    with pytest.raises(ValueError, match="both name a table 'robe'"):
        build_embeddings(schema, EmbeddingSpec(method="robe", budget=0.1, dim=DIM, min_rows=100))


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="multiple of 4"):
        make_config("robe", {"chunk": 6})
    with pytest.raises(ValueError, match="may not hold"):
        make_config("robe", {"array": "a:b"})
    with pytest.raises(ValueError, match="does not divide dim 16"):
        RobeTable.min_bytes(100, 16, make_config("robe", {"chunk": 12}))
    assert RobeTable.fit_budget(100, 12, make_config("robe"), 10_000).chunk == 12  # 8 ∤ 12


def test_budget_fit_and_smallest_budget() -> None:
    cfg = make_config("robe", {"chunk": 4})
    # 4 hash pairs (64 bytes), then rows of 16 bytes: any budget to within one row
    fitted = RobeTable.fit_budget(10**6, 16, cfg, 64 + 16 * 1000 + 15)
    assert fitted.num_rows == 1000
    assert RobeTable.table_bytes(10**6, 16, fitted) == 64 + 16 * 1000
    # at most dim / Z rows per id
    assert RobeTable.fit_budget(10, 16, cfg, 10**6).num_rows == 40
    with pytest.raises(BudgetError):
        RobeTable.fit_budget(10, 16, cfg, 79)
    # the 26-field dim-16 Criteo-like set: 26 x (one row of 8 + two hash pairs) = 1664 bytes
    cards = [12, 18, 27, 42, 65, 102, 160, 253, 400, 633, 1002, 1587, 2514, 3983, 6299, 9863,
             14728, 20835, 27589, 34317, 41156, 47264, 52065, 56907, 61992, 66217]  # fmt: skip
    schema = Schema("c", "ctr", [SparseField(f"C{i + 1}", n) for i, n in enumerate(cards)])
    full = sum(cards) * 16 * 4
    plans = plan_tables(schema, EmbeddingSpec(method="robe", budget=1664, dim=16, min_rows=0))
    assert sum(RobeTable.table_bytes(p.num_embeddings, 16, p.config) for p in plans) <= 1664
    with pytest.raises(BudgetError, match=f"smallest reachable budget is {1664 / full:.4g}"):
        plan_tables(schema, EmbeddingSpec(method="robe", budget=1663, dim=16, min_rows=0))


def test_sharding_overrides_of_an_array_must_agree() -> None:
    coll = _coll()
    plan = plan_storage(coll, 2, "auto", {"a": "row_wise"})  # one member: the whole array
    assert plan.plan["storage"]["robe"].sharding_type == "row_wise"
    with pytest.raises(ShardingError, match="share storage table 'robe'"):
        plan_storage(coll, 2, "auto", {"a": "row_wise", "b": "table_wise"})
