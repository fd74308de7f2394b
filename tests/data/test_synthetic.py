"""Synthetic data sets: seeded, sized by their arguments, and shaped like the real ones."""

from __future__ import annotations

import numpy as np
import pytest

from reccomp.data.prepare import transform_dense
from reccomp.data.synthetic import (
    criteo_cardinalities,
    sample_from,
    synthetic_criteo,
    synthetic_movielens,
    zipf_probs,
)

ML_KW = dict(n_users=300, n_items=1000, n_ratings=15_000, rank=4, n_communities=5)
CRITEO_KW = dict(n_rows=20_000, n_sparse=8, n_dense=5, max_card=5000)


@pytest.fixture(scope="module")
def ml():
    return synthetic_movielens(**ML_KW, seed=0)


@pytest.fixture(scope="module")
def criteo():
    return synthetic_criteo(**CRITEO_KW, seed=0)


def _same(a, b) -> bool:
    return (
        a.sparse.keys() == b.sparse.keys()
        and all(np.array_equal(a.sparse[k], b.sparse[k]) for k in a.sparse)
        and np.array_equal(a.label, b.label)
        and np.array_equal(a.time, b.time)
        and (a.dense is None or np.array_equal(a.dense, b.dense, equal_nan=True))
    )


def _auc(label: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC by ranks (scores are continuous, so ties do not matter here)."""
    y = label > 0.5
    ranks = np.empty(len(score))
    ranks[np.argsort(score)] = np.arange(1, len(score) + 1)
    n1, n0 = y.sum(), (~y).sum()
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


# -- helpers -----------------------------------------------------------------------------------


def test_zipf_sampling_follows_the_law():
    p = zipf_probs(50, 1.2)
    assert p.shape == (50,) and np.isclose(p.sum(), 1.0) and np.all(np.diff(p) < 0)
    draws = sample_from(np.random.default_rng(0), p, 200_000)
    freq = np.bincount(draws, minlength=50) / len(draws)
    assert draws.min() >= 0 and draws.max() < 50
    np.testing.assert_allclose(freq[:5], p[:5], rtol=0.03)


def test_dense_transform_maps_missing_and_negatives_to_zero():
    x = np.array([[np.nan, -2.0, 0.0, np.e - 1]], dtype=np.float32)
    np.testing.assert_allclose(transform_dense(x), [[0.0, 0.0, 0.0, 1.0]], rtol=1e-6)


# -- MovieLens-like ----------------------------------------------------------------------------


def test_movielens_shapes_dtypes_and_ranges(ml):
    assert ml.name == "synthetic-movielens" and len(ml) == ML_KW["n_ratings"]
    assert ml.user_field == "user" and ml.item_field == "item"
    assert set(ml.sparse) == {"user", "item", "genre"}
    for v in ml.sparse.values():
        assert v.shape == (len(ml),) and v.dtype == np.int64
    assert ml.sparse["user"].min() >= 1 and ml.sparse["user"].max() <= ML_KW["n_users"]
    assert ml.sparse["item"].min() >= 1 and ml.sparse["item"].max() <= ML_KW["n_items"]
    assert set(np.unique(ml.sparse["genre"])) <= set(range(1, ML_KW["n_communities"] + 1))
    assert ml.label.dtype == np.float32 and ml.time.dtype == np.int64
    assert set(np.unique(ml.label)) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert np.all(np.diff(ml.time) >= 0)
    assert ml.stats["generator"]["n_ratings"] == ML_KW["n_ratings"]


def test_movielens_ratings_look_like_movielens(ml):
    assert 3.3 < ml.label.mean() < 3.8
    assert 0.8 < ml.label.std() < 1.4
    assert len(np.unique(ml.label)) == 5


def test_movielens_has_no_duplicate_pairs_and_every_user_rates(ml):
    pairs = ml.sparse["user"] * (ML_KW["n_items"] + 1) + ml.sparse["item"]
    assert len(np.unique(pairs)) == len(ml)
    per_user = np.bincount(ml.sparse["user"], minlength=ML_KW["n_users"] + 1)[1:]
    assert per_user.min() >= 20 and per_user.max() <= ML_KW["n_items"] // 2
    # power-law activity: the most active user rates far more than the median one
    assert per_user.max() > 3 * np.median(per_user)


def test_movielens_item_popularity_is_skewed(ml):
    counts = np.sort(np.bincount(ml.sparse["item"], minlength=ML_KW["n_items"] + 1)[1:])[::-1]
    n = len(counts)
    assert counts[: n // 10].mean() > 5 * counts[n // 2 :].mean()


def test_movielens_users_favour_their_community(ml):
    user, genre = ml.sparse["user"], ml.sparse["genre"]
    # share of each user's ratings in their most-rated community, vs. 1/5 by chance
    table = np.zeros((ML_KW["n_users"] + 1, ML_KW["n_communities"] + 1))
    np.add.at(table, (user, genre), 1)
    share = table[1:].max(1) / table[1:].sum(1)
    assert share.mean() > 0.5


def test_movielens_is_seeded(ml):
    assert _same(ml, synthetic_movielens(**ML_KW, seed=0))
    other = synthetic_movielens(**ML_KW, seed=1)
    assert not np.array_equal(ml.sparse["item"], other.sparse["item"])


def test_movielens_sizes_follow_arguments():
    raw = synthetic_movielens(n_users=40, n_items=100, n_ratings=1500, seed=2)
    assert len(raw) == 1500
    assert len(np.unique(raw.sparse["user"])) == 40
    with pytest.raises(ValueError, match="n_ratings"):
        synthetic_movielens(n_users=10, n_items=20, n_ratings=500)


# -- Criteo-like -------------------------------------------------------------------------------


def test_criteo_shapes_dtypes_and_names(criteo):
    n = CRITEO_KW["n_rows"]
    assert criteo.name == "synthetic-criteo" and len(criteo) == n
    assert list(criteo.sparse) == [f"C{i}" for i in range(1, 9)]
    assert criteo.dense_names == [f"I{i}" for i in range(1, 6)]
    assert criteo.dense.shape == (n, 5) and criteo.dense.dtype == np.float32
    assert criteo.label.dtype == np.float32 and set(np.unique(criteo.label)) == {0.0, 1.0}
    assert criteo.extra["prob"].shape == (n,) and criteo.extra["prob"].dtype == np.float32
    np.testing.assert_array_equal(criteo.time, np.arange(n))
    for name, v in criteo.sparse.items():
        assert v.shape == (n,) and v.dtype == np.int64
        assert criteo.missing[name].shape == (n,) and criteo.missing[name].dtype == bool


def test_criteo_cardinalities_are_log_spaced_and_respected(criteo):
    cards = criteo_cardinalities(8, 10, 5000)
    assert cards[0] == 10 and cards[-1] == 5000 and np.all(np.diff(np.log(cards)) > 0)
    assert criteo.stats["cardinalities"] == cards.tolist()
    for (name, v), card in zip(criteo.sparse.items(), cards, strict=True):
        present = v[~criteo.missing[name]]
        assert present.min() >= 1 and present.max() <= card
        assert np.all(v[criteo.missing[name]] == 0)
        # the small fields are fully used; the large ones have a heavy head
        counts = np.sort(np.bincount(present))[::-1]
        if card <= 100:
            assert len(np.unique(present)) == card
        if card >= 1000:
            assert counts[0] > 50 * np.median(counts[counts > 0])


def test_criteo_missing_and_dense_look_like_criteo(criteo):
    miss = np.array([m.mean() for m in criteo.missing.values()])
    assert 0 < miss.mean() < 0.1
    dense = criteo.dense
    nan = np.isnan(dense).mean(0)
    assert nan.max() > 0.2 and nan.min() < 0.01  # some columns mostly present, some gappy
    present = dense[~np.isnan(dense)]
    assert np.all(present == np.round(present))  # counts
    assert 0 < (present < 0).mean() < 0.01  # a few negatives, like I2
    col = dense[:, 0][~np.isnan(dense[:, 0])]
    assert col.max() > 20 * max(np.median(col), 1)  # heavy tail


def test_criteo_probabilities_match_labels(criteo):
    prob = criteo.extra["prob"]
    assert np.all((prob > 0) & (prob < 1))
    assert abs(prob.mean() - 0.25) < 0.01
    assert abs(criteo.label.mean() - prob.mean()) < 0.015
    # the true probability ranks clicks well above chance
    assert 0.7 < _auc(criteo.label, prob) < 0.9


def test_criteo_interactions_carry_signal(criteo):
    full = criteo.extra["prob"]
    first = synthetic_criteo(**CRITEO_KW, seed=0, interaction_std=0.0, dense_interaction_std=0.0)
    # switching interactions off changes no draw but the logit
    np.testing.assert_array_equal(criteo.sparse["C8"], first.sparse["C8"])
    logit = np.log(full / (1 - full))
    logit_first = np.log(first.extra["prob"] / (1 - first.extra["prob"]))
    # pairwise terms are centred: nearly uncorrelated with the first-order logit ...
    assert abs(np.corrcoef(logit - logit_first, logit_first)[0, 1]) < 0.2
    # ... and they carry a real share of the signal
    assert _auc(criteo.label, full) > _auc(criteo.label, first.extra["prob"]) + 0.03


def test_criteo_is_seeded(criteo):
    again = synthetic_criteo(**CRITEO_KW, seed=0)
    assert _same(criteo, again)
    np.testing.assert_array_equal(criteo.extra["prob"], again.extra["prob"])
    other = synthetic_criteo(**CRITEO_KW, seed=1)
    assert not np.array_equal(criteo.sparse["C8"], other.sparse["C8"])
    assert not np.array_equal(criteo.extra["prob"], other.extra["prob"])


def test_criteo_sizes_follow_arguments():
    raw = synthetic_criteo(n_rows=300, n_sparse=3, n_dense=0, min_card=4, max_card=64, seed=5)
    assert len(raw) == 300 and list(raw.sparse) == ["C1", "C2", "C3"]
    assert raw.dense.shape == (300, 0) and raw.dense_names == []
    assert raw.stats["cardinalities"] == [4, 16, 64]
    with pytest.raises(ValueError):
        synthetic_criteo(n_rows=10, min_card=100, max_card=10)
