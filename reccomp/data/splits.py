"""Train / validation / test splits: random (seeded), temporal, leave-one-out.

Example::

    >>> cfg = SplitConfig(kind="random", fractions=(0.8, 0.1, 0.1), seed=0)
    >>> parts = split_indices(cfg, n=10)
    >>> [len(p) for p in parts]
    [8, 1, 1]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SPLIT_KINDS = ("random", "temporal", "leave_one_out")


@dataclass
class SplitConfig:
    """How rows are split.

    Args:
        kind: ``random`` (seeded shuffle by ``fractions``); ``temporal``: a global time cut
            by ``fractions`` (rows ordered by time, or by file order when there is none),
            or, with ``last_n`` set, each user's last ``last_n`` interactions are the test set
            and the ``last_n`` before them the validation set; ``leave_one_out``: the same
            with ``last_n = 1``.
        fractions: train / val / test fractions (random and global temporal).
        seed: seed of the random split.
        last_n: per-user hold-out size for ``temporal`` (None = global time cut).
    """

    kind: str = "random"
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    last_n: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in SPLIT_KINDS:
            raise ValueError(f"split.kind must be one of {SPLIT_KINDS}, got {self.kind!r}")
        self.fractions = tuple(float(f) for f in self.fractions)  # type: ignore[assignment]
        if len(self.fractions) != 3 or min(self.fractions) < 0:
            raise ValueError(f"split.fractions must be 3 non-negative numbers: {self.fractions}")
        if abs(sum(self.fractions) - 1.0) > 1e-6:
            raise ValueError(f"split.fractions must sum to 1, got {sum(self.fractions)}")
        if self.last_n is not None and self.last_n < 1:
            raise ValueError("split.last_n must be >= 1")

    @property
    def per_user_n(self) -> int | None:
        return (
            1 if self.kind == "leave_one_out" else self.last_n if self.kind == "temporal" else None
        )


def _cut(n: int, fractions: tuple[float, float, float]) -> tuple[int, int]:
    a = round(n * fractions[0])
    b = round(n * (fractions[0] + fractions[1]))
    return a, b


def split_indices(
    cfg: SplitConfig, n: int, time: np.ndarray | None = None, user: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices of (train, val, test); each part keeps the input order (time order)."""
    if cfg.kind == "random":
        perm = np.random.default_rng(cfg.seed).permutation(n)
        a, b = _cut(n, cfg.fractions)
        return np.sort(perm[:a]), np.sort(perm[a:b]), np.sort(perm[b:])
    order = np.argsort(time, kind="stable") if time is not None else np.arange(n)
    k = cfg.per_user_n
    if k is None:
        a, b = _cut(n, cfg.fractions)
        return order[:a], order[a:b], order[b:]
    if user is None:
        raise ValueError(f"split {cfg.kind!r} with per-user hold-out needs a user field")
    # rank of each row within its user, counted from the user's latest interaction
    by_user = order[np.argsort(user[order], kind="stable")]  # grouped by user, time-ordered
    u = user[by_user]
    starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
    sizes = np.diff(np.r_[starts, len(u)])
    pos = np.arange(len(u)) - np.repeat(starts, sizes)
    from_end = np.repeat(sizes, sizes) - 1 - pos  # 0 = latest
    # users with too few interactions keep everything in training
    enough = np.repeat(sizes, sizes) > 2 * k
    test = enough & (from_end < k)
    val = enough & (from_end >= k) & (from_end < 2 * k)
    train = ~(test | val)
    return tuple(np.sort(by_user[m]) for m in (train, val, test))  # type: ignore[return-value]
