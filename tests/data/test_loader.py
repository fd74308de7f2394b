"""``user_item_csr``: the per-user item sets that retrieval ranks against."""

from __future__ import annotations

import numpy as np

from reccomp.data.loader import user_item_csr


def test_user_item_csr_matches_a_set_per_user() -> None:
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 50, 2000), rng.integers(0, 300, 2000)  # with duplicates
    indptr, got = user_item_csr(users, items, n_users=60)
    assert indptr.shape == (61,) and indptr[-1] == len(got)
    for u in range(60):
        want = sorted(set(items[users == u].tolist()))
        assert got[indptr[u] : indptr[u + 1]].tolist() == want


def test_user_item_csr_of_no_pairs() -> None:
    indptr, items = user_item_csr(np.zeros(0, np.int64), np.zeros(0, np.int64), n_users=3)
    assert indptr.tolist() == [0, 0, 0, 0] and items.size == 0
