"""Models over plain and fused TorchRec collections: shapes, gradients, formulas, errors."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
import torch
from jsonargparse import ArgumentParser
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import (
    EmbeddingBagCollection,
    EmbeddingBagCollectionInterface,
)
from torchrec.modules.fused_embedding_modules import FusedEmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from reccomp.models import (
    DLRM,
    MLP,
    DCNv2,
    DeepFM,
    FeatureLayout,
    LogisticRegression,
    MatrixFactorization,
)
from reccomp.models.fused import fm_deep

B = 6
NUM_DENSE = 3
ROWS = 20
# "c" is the multi-valued feature (bags of 0..3 ids, one empty); "b" and "c" share a table.
BAG_LENGTHS = {"a": [1] * B, "b": [1] * B, "c": [2, 0, 3, 1, 2, 1]}


def make_collection(dims: dict[str, int], fused: bool) -> EmbeddingBagCollectionInterface:
    """Tables: t_a -> [a], t_bc -> [b, c] (sharing), t_<f> for any other feature."""
    torch.manual_seed(0)
    groups = [["a"], ["b", "c"]] if {"a", "b", "c"} <= dims.keys() else [[f] for f in dims]
    tables = [
        EmbeddingBagConfig(
            name="t_" + "".join(g),
            embedding_dim=dims[g[0]],
            num_embeddings=ROWS,
            feature_names=g,
        )
        for g in groups
    ]
    if fused:
        return FusedEmbeddingBagCollection(
            tables, torch.optim.Adagrad, {"lr": 0.1}, device=torch.device("cpu")
        )
    return EmbeddingBagCollection(tables=tables)


def make_kjt(lengths: dict[str, list[int]], seed: int = 1) -> KeyedJaggedTensor:
    g = torch.Generator().manual_seed(seed)
    keys = list(lengths)
    flat = torch.tensor([n for k in keys for n in lengths[k]])  # key-major
    values = torch.randint(0, ROWS, (int(flat.sum()),), generator=g)
    return KeyedJaggedTensor.from_lengths_sync(keys, values, flat)


def make_dense(num_dense: int) -> torch.Tensor:
    return torch.randn(B, num_dense, generator=torch.Generator().manual_seed(2))


def uniform(d: int) -> dict[str, int]:
    return dict.fromkeys("abc", d)


# name -> (factory(embeddings, num_dense), feature dims, batch lengths)
MODELS: dict[str, tuple[Callable[..., nn.Module], dict[str, int], dict[str, list[int]]]] = {
    "lr": (LogisticRegression, uniform(4), BAG_LENGTHS),
    "dlrm": (lambda e, n: DLRM(e, n, bottom_mlp=[8], top_mlp=[8, 4]), uniform(4), BAG_LENGTHS),
    "deepfm": (lambda e, n: DeepFM(e, n, deep_mlp=[8, 4]), uniform(8), BAG_LENGTHS),
    "dcn": (
        lambda e, n: DCNv2(e, n, num_cross_layers=2, deep_mlp=[8]),
        {"a": 4, "b": 8, "c": 8},
        BAG_LENGTHS,
    ),
    "dcn_lowrank_parallel": (
        lambda e, n: DCNv2(e, n, low_rank=2, deep_mlp=[8], structure="parallel"),
        {"a": 4, "b": 8, "c": 8},
        BAG_LENGTHS,
    ),
    "mf": (
        lambda e, n: MatrixFactorization(e, n, init_global_bias=3.5),
        {"user": 8, "item": 8},
        {"user": [1] * B, "item": [1] * B},
    ),
}
CASES = [
    (name, fused, num_dense)
    for name, fused in itertools.product(MODELS, [False, True])
    for num_dense in ([NUM_DENSE, 0] if name in {"dlrm", "deepfm", "dcn"} else [NUM_DENSE])
]


@pytest.mark.parametrize(("name", "fused", "num_dense"), CASES)
def test_forward_backward(name: str, fused: bool, num_dense: int) -> None:
    factory, dims, lengths = MODELS[name]
    model = factory(make_collection(dims, fused), num_dense)
    out = model(make_dense(num_dense), make_kjt(lengths))
    assert out.shape == (B,)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()

    emb_before = [p.detach().clone() for p in model.embeddings.parameters()]
    dense_params = {n: p for n, p in model.named_parameters() if not n.startswith("embeddings.")}
    assert dense_params
    (out - torch.linspace(-1, 1, B)).square().mean().backward()
    for n, p in dense_params.items():
        assert p.grad is not None, n
        assert torch.isfinite(p.grad).all(), n
        assert p.grad.abs().sum() > 0, n
    emb_after = list(model.embeddings.parameters())
    if fused:  # the fused optimizer stepped inside backward
        assert all(not torch.equal(b, a) for b, a in zip(emb_before, emb_after, strict=True))
    else:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in emb_after)


def test_dlrm_matches_naive_interactions() -> None:
    for num_dense in (NUM_DENSE, 0):
        model = DLRM(make_collection(uniform(4), False), num_dense, bottom_mlp=[8], top_mlp=[])
        dense, kjt = make_dense(num_dense), make_kjt(BAG_LENGTHS)
        emb = model.embeddings(kjt).to_dict()
        vecs = [emb[k] for k in "abc"]
        if num_dense:
            head = model.bottom(dense)
            vecs = [head, *vecs]
        else:
            head = torch.cat(vecs, dim=1)
        dots = [(x * y).sum(1) for x, y in itertools.combinations(vecs, 2)]
        expected = model.top(torch.cat([head, torch.stack(dots, dim=1)], dim=1)).squeeze(1)
        torch.testing.assert_close(model(dense, kjt), expected)


def test_deepfm_matches_naive_fm() -> None:
    k = 4
    model = DeepFM(make_collection(uniform(k + 1), False), 0, deep_mlp=[8], init_bias=0.25)
    last = model.deep_rest[-1][-1]  # the deep part's final Linear(-, 1)
    nn.init.zeros_(last.weight)  # silence the deep part
    nn.init.zeros_(last.bias)
    kjt = make_kjt(BAG_LENGTHS)
    emb = model.embeddings(kjt).to_dict()
    first = sum(emb[f][:, k] for f in "abc")
    pairs = sum((emb[f][:, :k] * emb[g][:, :k]).sum(1) for f, g in itertools.combinations("abc", 2))
    torch.testing.assert_close(model(make_dense(0), kjt), 0.25 + first + pairs)


def test_deepfm_split_first_layer_equals_concat() -> None:
    """The deep part's split first layer is one Linear on [rows, dense]."""
    model = DeepFM(make_collection(uniform(4), False), NUM_DENSE, deep_mlp=[8])
    dense, kjt = make_dense(NUM_DENSE), make_kjt(BAG_LENGTHS)
    values = model.embeddings(kjt).values()
    w = torch.cat([model.deep_emb.weight, model.deep_dense.weight], dim=1)
    joint = torch.cat([values, dense], dim=1) @ w.T + model.deep_emb.bias
    torch.testing.assert_close(model.deep_emb(values) + model.deep_dense(dense), joint)


def test_fused_fm_matches_autograd() -> None:
    """DeepFM's fused FM node: same values and gradients (embeddings, weight, bias) as the
    plain torch-ops path, checked in double precision and with ``gradcheck``."""
    torch.manual_seed(0)
    f, width, h = 5, 8, 7
    values = torch.randn(B, f * width, dtype=torch.double, requires_grad=True)
    lin = nn.Linear(f * width, h).double()
    g_h, g_z = torch.randn(B, h, dtype=torch.double), torch.randn(B, dtype=torch.double)

    def plain(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = v.view(B, f, width)
        s, sq = rows.sum(1), rows.square().sum(1)
        z = 0.5 * (s[:, :-1].square() - sq[:, :-1]).sum(1) + s[:, -1]
        return lin(v), z

    grads = []
    for fn in (plain, lambda v: fm_deep(v, lin.weight, lin.bias, f)):
        hidden, z = fn(values)
        torch.autograd.backward([hidden, z], [g_h, g_z])
        grads.append([hidden, z, values.grad, lin.weight.grad, lin.bias.grad])
        values.grad, lin.weight.grad, lin.bias.grad = None, None, None
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)
    assert torch.autograd.gradcheck(
        lambda v, w, b: fm_deep(v, w, b, f), (values, lin.weight, lin.bias)
    )


def test_deepfm_fused_and_plain_paths_agree() -> None:
    """The training path (fused node) and the TorchScript path (torch ops) of DeepFM."""
    model = DeepFM(make_collection(uniform(4), False), NUM_DENSE, deep_mlp=[8])
    kjt = make_kjt(BAG_LENGTHS)
    values = model.embeddings(kjt).values()
    hidden, z = model._embedding_terms(values)
    fused = model._embedding_terms_fused(values)
    torch.testing.assert_close(fused, (hidden, z))


@pytest.mark.parametrize("deep_mlp", [[8, 4], []])
def test_dcn_plain_mlp_skips_concat(deep_mlp: list[int]) -> None:
    """With no cross layers the first layer reads [dense, rows] without concatenating them:
    same output and gradients as the layer on the concatenation."""
    model = DCNv2(make_collection(uniform(4), False), NUM_DENSE, num_cross_layers=0,
                  deep_mlp=deep_mlp)  # fmt: skip
    dense, kjt = make_dense(NUM_DENSE), make_kjt(BAG_LENGTHS)
    values = model.embeddings(kjt).values().detach().requires_grad_()
    out = model.interact(dense, values)
    (g1,) = torch.autograd.grad(out.sum(), values)
    expected = model.head(model.deep(torch.cat([dense, values], 1))).squeeze(1)
    (g2,) = torch.autograd.grad(expected.sum(), values)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(g1, g2)


def test_dcn_matches_cross_formula() -> None:
    model = DCNv2(make_collection(uniform(2), False), NUM_DENSE, num_cross_layers=1, deep_mlp=[])
    dense, kjt = make_dense(NUM_DENSE), make_kjt(BAG_LENGTHS)
    x0 = torch.cat([dense, model.embeddings(kjt).values()], dim=1)
    w, b = model.cross[0].weight, model.cross[0].bias
    x1 = x0 * (x0 @ w.T + b) + x0
    torch.testing.assert_close(model(dense, kjt), model.head(x1).squeeze(1))


@pytest.mark.parametrize("fused", [False, True])
def test_mf_score_all_and_lookups(fused: bool) -> None:
    model = MatrixFactorization(make_collection({"user": 8, "item": 8}, fused), 0)
    nn.init.constant_(model.global_bias, 0.5)
    users = torch.tensor([0, 3, 3, 7, 19, 1])
    items = torch.tensor([2, 2, 5, 0, 11, 19])
    kjt = KeyedJaggedTensor.from_lengths_sync(
        ["user", "item"], torch.cat([users, items]), torch.ones(2 * B, dtype=torch.long)
    )
    with torch.no_grad():
        out = model.forward_with_vectors(torch.empty(B, 0), kjt)
        u, v = model.user_vectors(kjt), model.item_vectors(kjt)
        scores = model.score_all(u, v)  # (B, B)
        torch.testing.assert_close(scores.diagonal(), out.prediction)
        torch.testing.assert_close(out.prediction, model(torch.empty(B, 0), kjt))
        expected = (u[:, :7] * v[:, :7]).sum(1) + u[:, 7] + v[:, 7] + 0.5
        torch.testing.assert_close(out.prediction, expected)
        # Lookups with empty bags under the other key give the same rows.
        torch.testing.assert_close(model.lookup_items(items), v)
        torch.testing.assert_close(model.lookup_users(users), u)
        all_items = model.lookup_items(torch.arange(ROWS))  # (I, d+1)
        torch.testing.assert_close(model.score_all(u, all_items)[torch.arange(B), items], expected)
    penalty = model.l2_penalty(out.user, out.item)
    torch.testing.assert_close(penalty, (u.square().sum(1) + v.square().sum(1)).mean())


def test_layout_reorders_foreign_key_order() -> None:
    ebc = make_collection(uniform(2), False)
    layout = FeatureLayout(ebc)
    assert layout.keys == ["a", "b", "c"]
    kt = KeyedTensor(
        keys=["c", "a", "b"], length_per_key=[2, 2, 2], values=torch.arange(12.0).view(2, 6)
    )
    expected = torch.tensor([[2.0, 3, 4, 5, 0, 1], [8, 9, 10, 11, 6, 7]])
    torch.testing.assert_close(layout.values(kt), expected)


def test_dimension_errors() -> None:
    with pytest.raises(ValueError, match="same embedding_dim"):
        DLRM(make_collection({"a": 4, "b": 8, "c": 8}, False), NUM_DENSE)
    with pytest.raises(ValueError, match="k\\+1"):
        DeepFM(make_collection({"a": 4, "b": 8, "c": 8}, False), NUM_DENSE)
    with pytest.raises(ValueError, match="same width"):
        MatrixFactorization(make_collection({"user": 5, "item": 4}, False), 0)
    with pytest.raises(ValueError, match="not in the embedding collection"):
        MatrixFactorization(make_collection({"u": 5, "item": 5}, False), 0)
    with pytest.raises(ValueError, match="structure"):
        DCNv2(make_collection(uniform(2), False), NUM_DENSE, structure="diagonal")


def test_mlp() -> None:
    mlp = MLP(3, [5, 2], activation="gelu", dropout=0.1, last_activation=False)
    assert mlp.out_dim == 2
    assert isinstance(mlp[-1], nn.Linear)
    assert MLP(3, []).out_dim == 3
    with pytest.raises(ValueError, match="activation"):
        MLP(3, [2], activation="swishy")


@pytest.mark.parametrize(
    ("class_path", "init_args", "dims"),
    [
        ("reccomp.models.DLRM", {"bottom_mlp": [8], "top_mlp": [4]}, uniform(4)),
        ("reccomp.models.DeepFM", {"deep_mlp": [8]}, uniform(3)),
        ("reccomp.models.DCNv2", {"low_rank": None, "structure": "parallel"}, uniform(2)),
        ("reccomp.models.LogisticRegression", {"init_bias": -1.0}, uniform(4)),
        ("reccomp.models.MatrixFactorization", {"item_feature": "item"}, {"user": 3, "item": 3}),
    ],
)
def test_config_factory(class_path: str, init_args: dict, dims: dict[str, int]) -> None:
    """Configs name a model as a factory of (embeddings, num_dense), as the training task does."""
    parser = ArgumentParser()
    parser.add_argument("--model", type=Callable[[EmbeddingBagCollectionInterface, int], nn.Module])
    cfg = parser.parse_object({"model": {"class_path": class_path, "init_args": init_args}})
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    model = instantiate(cfg).model(make_collection(dims, False), NUM_DENSE)
    assert type(model).__name__ == class_path.rsplit(".", 1)[1]
