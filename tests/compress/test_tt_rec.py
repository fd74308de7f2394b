"""``tt_rec``: the tensor-train math against a direct reconstruction, sizes, init, limits."""

from __future__ import annotations

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from reccomp.compress import BudgetError, make_config
from reccomp.compress.tt_rec import TTRecTable, dim_factors, row_factors, tt_bytes
from reccomp.data.schema import Schema, SparseField
from reccomp.modules.embedding import EmbeddingSpec, build_embeddings

CRITEO_SYNTH = [12, 18, 27, 42, 65, 102, 160, 253, 400, 633, 1002, 1587, 2514, 3983, 6299,
                9863, 14728, 20835, 27589, 34317, 41156, 47264, 52065, 56907, 61992, 66217]  # fmt: skip


def _collection(n: int, dim: int = 16, init_std: float | None = None, **options):
    schema = Schema("t", "ctr", [SparseField("f", n)])
    spec = EmbeddingSpec(
        method="tt_rec", dim=dim, min_rows=0, init_std=init_std, options=options, budget=None
    )  # fmt: skip  (budget None: a quarter of the table, at least the smallest rank)
    return build_embeddings(schema, spec)


def _embed(coll, ids: torch.Tensor) -> torch.Tensor:
    kjt = KeyedJaggedTensor(keys=["f"], values=ids, lengths=torch.ones(len(ids), dtype=torch.int32))
    with torch.no_grad():
        return coll(kjt).values()  # (N, dim)


def _cores(coll) -> list[torch.Tensor]:
    w = {k.split(".")[1]: v for k, v in coll.storage.state_dict().items()}
    return [w["f:0"], w["f:1"], w["f:2"]]


@pytest.mark.parametrize(("n", "dim", "rank"), [(1000, 16, 4), (5000, 16, 6), (700, 32, 2)])
def test_rows_are_the_tensor_train_reconstruction(n: int, dim: int, rank: int) -> None:
    """Every id's row equals the TT tensor built directly from the cores with einsum."""
    coll = _collection(n, dim, rank=rank)
    m = coll.tables[0]
    n1, n2, n3 = m.rows
    d1, d2, d3 = m.d1, m.d2, m.d3
    g1, g2, g3 = _cores(coll)
    full = torch.einsum(
        "air,brjs,csk->abcijk",
        g1.reshape(n1, d1, rank),
        g2.reshape(n2, rank, d2, rank),
        g3.reshape(n3, rank, d3),
    ).reshape(n1 * n2 * n3, dim)[:n]  # mixed radix: x = (i1 n2 + i2) n3 + i3
    ids = torch.arange(n)
    torch.testing.assert_close(_embed(coll, ids), full, rtol=1e-5, atol=1e-6)
    # and the digits give every id its own triple of core rows
    triples = set(zip(*(s.tolist() for s in m.remap(ids)), strict=True))
    assert len(triples) == n


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7])
def test_tiny_tables_work(n: int) -> None:
    coll = _collection(n)
    m = coll.tables[0]
    assert m.rows[0] * m.rows[1] * m.rows[2] >= n
    out = _embed(coll, torch.tensor([*range(n), -1, n, 10**12]))
    assert torch.isfinite(out).all()
    # out-of-range ids take row 0
    torch.testing.assert_close(out[n:], out[:1].expand(3, -1))


def test_row_factors_are_balanced_and_cover_the_ids() -> None:
    for n in [1, 2, 7, 8, 9, 27, 28, 1000, 66217, 10**7]:
        n1, n2, n3 = row_factors(n)
        assert n1 * n2 * n3 >= n
        assert max(n1, n2, n3) <= round(n ** (1 / 3)) + 1
    assert dim_factors(16, 8) == (2, 2, 4)  # balanced, cheapest middle core
    assert dim_factors(16, 1) is None and dim_factors(16, 3) is None  # widths not % 4


@pytest.mark.parametrize("init_std", [0.05, 0.01])
@pytest.mark.parametrize("rank", [2, 8])
def test_init_gives_the_product_the_spec_std(init_std: float, rank: int) -> None:
    coll = _collection(66217, init_std=init_std, rank=rank)
    specs = coll.tables[0].tables()
    assert all(abs(t.init_power - 1 / 3) < 1e-12 for t in specs)
    std = float(_embed(coll, torch.randint(0, 66217, (20000,))).std())
    assert 0.85 * init_std < std < 1.15 * init_std


def test_budget_takes_the_largest_rank_that_fits() -> None:
    cfg = make_config("tt_rec")
    for n, budget in [(66217, 42_378), (66217, 200_000), (3000, 20_000), (1200, 6_000)]:
        fitted = TTRecTable.fit_budget(n, 16, cfg, budget)
        used = TTRecTable.table_bytes(n, 16, fitted)
        assert used <= budget
        # no larger valid rank fits (brute force; bytes are not monotone in the rank)
        fits = [r for r in range(1, 200) if 0 <= tt_bytes(n, 16, r) <= budget]
        assert fitted.rank == max(fits)
    # at 0.01 the largest synthetic-Criteo field gets rank 8: rank 10 is 42,480 bytes
    assert TTRecTable.fit_budget(66217, 16, cfg, 42_378).rank == 8


def test_rank_is_capped_where_it_adds_nothing() -> None:
    # a 12-row table has TT-ranks of at most 12: a big budget buys no rank past that
    fitted = TTRecTable.fit_budget(12, 16, make_config("tt_rec"), 10**6)
    n1, n2, n3 = row_factors(12)
    d = dim_factors(16, fitted.rank)
    assert fitted.rank <= max(
        min(n1 * d[0], n2 * d[1] * n3 * d[2]), min(n1 * d[0] * n2 * d[1], n3 * d[2])
    )


def test_smallest_reachable_budget_is_the_smallest_valid_rank() -> None:
    cfg = make_config("tt_rec")
    # dim 16: rank 1 gives no FBGEMM widths, rank 2 with (2, 2, 4): widths 4, 8, 8
    assert TTRecTable.min_bytes(66217, 16, cfg) == 4 * (41 * 4 + 41 * 8 + 40 * 8)
    assert TTRecTable.fit_budget(66217, 16, cfg, 3248).rank == 2
    # dim 64: rank 1 with (4, 4, 4)
    assert TTRecTable.fit_budget(66217, 64, cfg, 4 * 4 * (41 + 41 + 40)).rank == 1
    # the 26 synthetic-Criteo fields at dim 16: 38,656 bytes, 0.00134 of the full 28.8 MB
    schema = Schema("c", "ctr", [SparseField(f"C{i}", n) for i, n in enumerate(CRITEO_SYNTH)])
    with pytest.raises(BudgetError, match=r"smallest reachable budget is 0.001342 \(38656 bytes"):
        build_embeddings(schema, EmbeddingSpec(method="tt_rec", budget=0.001, dim=16, min_rows=0))
    coll = build_embeddings(
        schema, EmbeddingSpec(method="tt_rec", budget=38656, dim=16, min_rows=0)
    )
    assert coll.memory_bytes() == 38656


def test_explicit_rank_and_dim_factors() -> None:
    coll = _collection(5000, rank=12, dim_factors=[4, 1, 4])
    m = coll.tables[0]
    assert (m.d1, m.d2, m.d3) == (4, 1, 4)
    assert [t.width for t in m.tables()] == [48, 144, 48]
    with pytest.raises(ValueError, match="no core widths that are multiples of 4"):
        _collection(5000, rank=3)
    with pytest.raises(ValueError, match="do not multiply to dim 16"):
        _collection(5000, rank=4, dim_factors=[2, 2, 2])
    with pytest.raises(ValueError, match="rank must be >= 1"):
        make_config("tt_rec", {"rank": 0})


def test_refuses_multi_valued_fields() -> None:
    schema = Schema("t", "ctr", [SparseField("bag", 5000, max_len=4)])
    with pytest.raises(ValueError, match="tt_rec on multi-valued field 'bag'"):
        build_embeddings(schema, EmbeddingSpec(method="tt_rec", budget=0.25, dim=16, min_rows=0))
