"""Metrics shared by data preparation (oracle AUC) and tasks."""

from __future__ import annotations

import numpy as np


def binary_auc(label: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC from ranks, ties given their mean rank (Mann-Whitney U)."""
    pos = np.asarray(label) > 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _uniq, inv, counts = np.unique(np.asarray(score), return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts  # 0-based rank of each distinct score's first copy
    rank = (first + (counts + 1) / 2.0)[inv]  # mean 1-based rank of ties
    return float((rank[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
