"""Modularity clustering of the bipartite user-item graph, sized to a target cluster count.

Why Leiden (Traag, Waltman & van Eck, "From Louvain to Leiden: guaranteeing well-connected
communities", Sci. Rep. 2019) from python-igraph: it optimizes the same modularity as the
Louvain method GraphHash uses, but its refinement step guarantees connected communities
(Louvain can return internally disconnected ones, i.e. rows shared by unrelated ids), it is
faster, and igraph's C implementation is a maintained wheel with no other dependencies.

How a target is hit: the number of clusters grows with the modularity resolution gamma. We
search log(gamma) (secant steps on log count against log gamma, inside a bisection bracket)
for a count of (user clusters + item clusters) at or under the target, and stop once within
``tolerance`` under it (about 3-6 Leiden runs). Leiden is seeded, so a run is repeatable.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Clustering:
    """Cluster of every user and item row (-1: absent from the graph), compact per side.

    ``user_cluster`` values lie in ``[0, num_user_clusters)``, ``item_cluster`` in
    ``[0, num_item_clusters)``: each side's table holds only its own clusters.
    """

    user_cluster: np.ndarray
    item_cluster: np.ndarray
    num_user_clusters: int
    num_item_clusters: int
    resolution: float
    seconds: float
    trials: list[tuple[float, int]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.num_user_clusters + self.num_item_clusters


def _compact(membership: np.ndarray) -> tuple[np.ndarray, int]:
    uniq, inv = np.unique(membership, return_inverse=True)
    return inv, len(uniq)


def cluster_bipartite(
    users: np.ndarray,
    items: np.ndarray,
    num_users: int,
    num_items: int,
    target: int,
    seed: int = 0,
    tolerance: float = 0.05,
    max_trials: int = 12,
) -> Clustering:
    """Cluster the graph of interactions ``(users[e], items[e])`` into at most ``target``
    user + item clusters.

    Args:
        users, items: (E,) rows of each training interaction (repeats add edge weight).
        num_users, num_items: rows of the user and item tables.
        target: the most user clusters + item clusters allowed (table rows to fill).
        seed: Leiden's random seed.
        tolerance: stop once the count is within this share under ``target``.
        max_trials: most Leiden runs in the resolution search.
    """
    import igraph as ig

    t0 = time.perf_counter()
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    key, weight = np.unique(users * num_items + items, return_counts=True)
    eu, ei = key // num_items, key % num_items
    # nodes: users present, then items present (absent ids stay out of the graph)
    u_ids, u_node = np.unique(eu, return_inverse=True)
    i_ids, i_node = np.unique(ei, return_inverse=True)
    nu = len(u_ids)
    graph = ig.Graph(n=nu + len(i_ids), edges=np.stack([u_node, i_node + nu], 1))
    w = weight.astype(float).tolist()

    def run(gamma: float) -> tuple[np.ndarray, np.ndarray, int, int]:
        state = random.getstate()
        random.seed(seed)  # igraph draws from Python's random module
        try:
            part = graph.community_leiden(
                objective_function="modularity", weights=w, resolution=gamma, n_iterations=2
            )
        finally:
            random.setstate(state)
        mem = np.asarray(part.membership)
        cu, ku = _compact(mem[:nu])
        ci, ki = _compact(mem[nu:])
        return cu, ci, ku, ki

    trials: list[tuple[float, int]] = []
    best = None  # (count, gamma, result)
    lo, hi = None, None  # log-gammas known to give counts <= target / > target
    aim = math.log(target * (1 - tolerance / 2))
    pts: list[tuple[float, float]] = []  # (log gamma, log count)
    lg = 0.0  # gamma = 1: plain modularity
    for _ in range(max_trials):
        res = run(math.exp(lg))
        count = res[2] + res[3]
        trials.append((math.exp(lg), count))
        pts.append((lg, math.log(count)))
        if count <= target:
            if best is None or count > best[0]:
                best = (count, math.exp(lg), res)
            if count >= target - max(tolerance * target, 2):  # close enough under target
                break
            lo = lg if lo is None else max(lo, lg)
        else:
            hi = lg if hi is None else min(hi, lg)
        # the count grows about as a power of gamma: secant step in log-log, kept inside
        # the bracket (bisection when the step leaves it)
        slope = 1.0
        if len(pts) >= 2 and pts[-1][0] != pts[-2][0]:
            slope = (pts[-1][1] - pts[-2][1]) / (pts[-1][0] - pts[-2][0])
            slope = min(max(slope, 0.2), 5.0)
        nxt = pts[-1][0] + (aim - pts[-1][1]) / slope
        if lo is not None and hi is not None and not lo < nxt < hi:
            nxt = (lo + hi) / 2
        elif nxt < math.log(1e-4) or nxt > math.log(1e5):
            break
        lg = nxt
    if best is None:  # even the coarsest clustering has too many clusters: fold them
        gamma = min(g for g, _ in trials)
        cu, ci, ku, ki = run(gamma)
        tu = max(1, target * ku // (ku + ki))
        cu, ci, ku, ki = cu % tu, ci % max(1, target - tu), min(ku, tu), min(ki, target - tu)
        best = (ku + ki, gamma, (cu, ci, ku, ki))
    _, gamma, (cu, ci, ku, ki) = best
    user_cluster = np.full(num_users, -1, dtype=np.int64)
    item_cluster = np.full(num_items, -1, dtype=np.int64)
    user_cluster[u_ids] = cu
    item_cluster[i_ids] = ci
    return Clustering(
        user_cluster, item_cluster, int(ku), int(ki), gamma, time.perf_counter() - t0, trials
    )
