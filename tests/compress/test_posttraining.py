"""Post-training transforms (svd, fwsvd, maestro truncation) and Maestro's training parts."""

from __future__ import annotations

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from reccomp.compress.collection import CompressedEmbeddingBagCollection
from reccomp.compress.low_rank import truncated_svd
from reccomp.compress.maestro import rank_importance
from reccomp.compress.registry import make_config
from reccomp.compress.transform import (
    compress_collection,
    materialize,
    row_importance,
    storage_weights,
)
from reccomp.data.schema import Schema, SparseField
from reccomp.modules.embedding import EmbeddingSpec, build_embeddings

DIM = 16
SCHEMA = Schema("toy", "ctr", [SparseField("user", 300), SparseField("item", 200)])


def spec(method: str, **kw) -> EmbeddingSpec:
    return EmbeddingSpec(method=method, dim=DIM, min_rows=0, optimizer="sgd", **kw)


def low_rank_full(rank: int = 8, seed: int = 0) -> CompressedEmbeddingBagCollection:
    """A ``full`` collection whose tables have rank ``rank`` exactly."""
    coll = build_embeddings(SCHEMA, spec("full"))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for w in storage_weights(coll).values():
            w.copy_(torch.randn(len(w), rank, generator=g) @ torch.randn(rank, DIM, generator=g))
    return coll


def test_truncated_svd_is_exact_at_the_true_rank_and_weights_shift_the_error() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(100, 4, generator=g) @ torch.randn(4, 16, generator=g)  # rank 4
    a, b = truncated_svd(w, 4)
    assert a.shape == (100, 4) and b.shape == (4, 16)
    torch.testing.assert_close(a @ b, w, atol=1e-4, rtol=1e-4)
    noisy = torch.randn(100, 16, generator=g)
    weight = torch.ones(100)
    weight[:10] = 1000.0  # rows 0..9 matter most
    a0, b0 = truncated_svd(noisy, 4)
    a1, b1 = truncated_svd(noisy, 4, weight)
    err0 = ((a0 @ b0 - noisy)[:10] ** 2).sum()
    err1 = ((a1 @ b1 - noisy)[:10] ** 2).sum()
    assert err1 < 0.5 * err0  # the weighted fit keeps the heavy rows
    a2, b2 = truncated_svd(noisy, 4, torch.ones(100))  # uniform weights = plain SVD
    torch.testing.assert_close(a2 @ b2, a0 @ b0, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method", ["svd", "low_rank", "maestro"])
def test_svd_of_a_low_rank_table_keeps_every_embedding(method: str) -> None:
    src = low_rank_full(rank=8)
    small = compress_collection(src, SCHEMA, spec(method, options={"rank": 8}))
    assert small.memory_bytes() < src.memory_bytes()
    for f in ("user", "item"):
        torch.testing.assert_close(materialize(small, f), materialize(src, f), atol=1e-4, rtol=1e-3)


def test_fwsvd_needs_importance_and_uses_it() -> None:
    src = build_embeddings(SCHEMA, spec("full"))  # random: full rank, so truncation loses
    target = spec("fwsvd", options={"rank": 4})
    with pytest.raises(ValueError, match="Fisher"):
        compress_collection(src, SCHEMA, target)
    imp = {"user": torch.zeros(300), "item": torch.zeros(200)}
    imp["user"][:4] = 1.0  # only users 0..3 were ever seen: rank 4 can hold them
    fw = compress_collection(src, SCHEMA, target, imp)
    sv = compress_collection(src, SCHEMA, spec("svd", options={"rank": 4}))
    full_u = materialize(src, "user")[:4]
    err_fw = ((materialize(fw, "user")[:4] - full_u) ** 2).sum()
    err_sv = ((materialize(sv, "user")[:4] - full_u) ** 2).sum()
    assert err_fw < 1e-3 * err_sv


def test_maestro_truncation_keeps_the_most_important_ranks() -> None:
    src = build_embeddings(SCHEMA, spec("maestro", options={"rank": 12}))
    with torch.no_grad():
        for m in src.tables:
            m.proj.mul_(torch.logspace(2, -2, 12)[:, None])  # leading ranks matter most
    a = storage_weights(src)["user"].detach().clone()
    b = src.tables[0].proj.detach().clone()
    assert rank_importance(a, b).argsort(descending=True)[:4].tolist() == [0, 1, 2, 3]
    small = compress_collection(src, SCHEMA, spec("maestro", options={"rank": 4}))
    expect = a[:, :4] @ b[:4]
    torch.testing.assert_close(materialize(small, "user"), expect, atol=1e-5, rtol=1e-4)


def test_maestro_ordered_dropout_only_in_training_and_group_lasso() -> None:
    coll = build_embeddings(SCHEMA, spec("maestro", options={"rank": 8, "group_lasso": 0.1}))
    kjt = KeyedJaggedTensor(
        keys=["user", "item"], values=torch.arange(64), lengths=torch.ones(64, dtype=torch.int32)
    )
    coll.eval()
    out_eval = coll(kjt).values()
    torch.manual_seed(0)
    coll.train()
    out_train = coll(kjt).values()
    assert not torch.allclose(out_eval, out_train)  # some samples lost trailing ranks
    assert torch.allclose(coll.eval()(kjt).values(), out_eval)
    pen = coll.penalty()
    assert pen is not None and pen.item() > 0
    pen.backward()
    assert coll.tables[0].proj.grad is not None
    assert build_embeddings(SCHEMA, spec("hash", budget=0.5)).penalty() is None


@pytest.mark.parametrize(
    ("sampling", "want"),
    [
        ("uniform", [1 / 3, 1 / 3, 1 / 3]),
        ("log", [6 / 11, 3 / 11, 2 / 11]),
        ("halving", [1 / 2, 0, 1 / 2]),  # 12, then 12 // 2 rounded down to 4
    ],
)
def test_maestro_prefix_sampling(sampling: str, want: list[float]) -> None:
    """Kept prefixes are 4, 8, 12 ranks, with probabilities uniform, ~ 1 / k or halving."""
    coll = build_embeddings(
        SCHEMA, spec("maestro", options={"rank": 12, "prefix_sampling": sampling})
    )
    m = coll.tables[0].train()
    torch.manual_seed(0)
    kept = (m.mask(torch.ones(20000, 1, 12)) != 0).sum(-1)  # (N, 1) ranks each sample kept
    freq = torch.stack([(kept == 4 * k).float().mean() for k in (1, 2, 3)])
    torch.testing.assert_close(freq, torch.tensor(want), atol=0.015, rtol=0)
    assert torch.equal(m.eval().mask(torch.ones(3, 12)), torch.ones(3, 12))
    with pytest.raises(ValueError, match="prefix_sampling"):
        make_config("maestro", {"rank": 12, "prefix_sampling": "geometric"})


def test_row_importance_is_zero_for_unseen_rows() -> None:
    src = build_embeddings(SCHEMA, spec("full"))
    holder: dict[str, torch.nn.Module] = {"emb": src}
    kjt = KeyedJaggedTensor(
        keys=["user", "item"],
        values=torch.tensor([1, 2, 3, 5, 6, 7]),
        lengths=torch.ones(6, dtype=torch.int32),
    )

    def loss(batch: KeyedJaggedTensor) -> torch.Tensor:
        return holder["emb"](batch).values().pow(2).sum()

    imp = row_importance(src, lambda m: holder.update(emb=m), loss, [kjt, kjt])
    assert holder["emb"] is src  # swapped back
    assert set(imp) == {"user", "item"}
    assert (imp["user"][[1, 2, 3]] > 0).all() and imp["user"][[0, 4, 100]].sum() == 0
    assert (imp["item"][[5, 6, 7]] > 0).all() and imp["item"][0] == 0


def test_methods_without_a_transform_say_so() -> None:
    src = build_embeddings(SCHEMA, spec("full"))
    with pytest.raises(ValueError, match="cannot be built from a trained table"):
        compress_collection(src, SCHEMA, spec("hash", budget=0.5))


def test_afm_is_exact_on_the_directions_the_data_uses() -> None:
    """Rows = mu + rank-4 offsets: afm at rank 4 rebuilds every row (the bias carries mu),
    while unseen rows' own directions do not count (they have no frequency)."""
    src = build_embeddings(SCHEMA, spec("full"))
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(DIM, generator=g) * 3
    with torch.no_grad():
        for w in storage_weights(src).values():
            w.copy_(mu + torch.randn(len(w), 4, generator=g) @ torch.randn(4, DIM, generator=g))
    counts = {"user": torch.ones(300), "item": torch.ones(200)}
    small = compress_collection(src, SCHEMA, spec("afm", options={"rank": 4}), counts=counts)
    for f in ("user", "item"):
        torch.testing.assert_close(materialize(small, f), materialize(src, f), atol=1e-4, rtol=1e-3)
    with pytest.raises(ValueError, match="frequencies"):
        compress_collection(src, SCHEMA, spec("afm", options={"rank": 4}))


def test_dense_pca_replaces_layers_that_shrink_and_rebuilds_from_ranks() -> None:
    from reccomp.compress.dense import factorize_linears, pca_dense_layers

    g = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    x = torch.randn(512, 4, generator=g) @ torch.randn(4, 32, generator=g)  # rank-4 inputs
    want = model(x)
    report = pca_dense_layers(model, lambda: model(x), ratio=0.25)
    assert report["dense/ranks"] == {"0": 8}  # the 64 -> 1 layer would not shrink
    assert report["dense/bytes_after"] < report["dense/bytes_before"]
    torch.testing.assert_close(model(x), want, atol=1e-4, rtol=1e-3)  # outputs span rank 4
    fresh = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    factorize_linears(fresh, report["dense/ranks"])
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(fresh(x), model(x))
