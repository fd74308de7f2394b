"""The bench config: which training config, which methods, budgets, seeds and metrics.

Example (``configs/bench/ml-1m-ctr.yaml``)::

    name: ml-1m-ctr
    train_config: configs/ml-1m-deepfm-ctr.yaml
    data_root: ../shared/datasets/ml-1m-head
    methods: [full, hash, qr, graph_hash]
    budgets: [1, 0.5, 0.25, 0.1, 0.01]
    seeds: [0, 1, 2]
    metrics: [test/auc, test/logloss]
    lower_is_better: [test/logloss]
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_BUDGETS = [1.0, 0.5, 0.25, 0.1, 0.01]
# a tiny version of any grid: one budget, one seed, a few batches per stage
# (3 epochs: dnis searches 2 before it prunes and retrains)
QUICK_OVERRIDES = [
    "--trainer.max_epochs", "3",
    "--trainer.limit_train_batches", "3",
    "--trainer.limit_val_batches", "2",
    "--trainer.limit_test_batches", "2",
]  # fmt: skip
QUICK_COMPRESS_OVERRIDES = ["--limit-batches", "3"]


def _all_methods() -> list[str]:
    from reccomp.compress import method_names

    return method_names()


@dataclass
class BenchConfig:
    """A benchmark grid.

    Args:
        name: results go to ``results/<name>/`` unless ``--output`` says otherwise.
        train_config: the training config every cell starts from (``reccomp fit --config``).
        data_root: ``--data.root`` of every cell (None: the training config's).
        methods: compression methods (``full`` is the reference row, run at budget 1 only);
            default: every registered method.
        budgets: memory budgets, fractions of the full collection (columns of the table).
        seeds: ``seed_everything`` of each repeat.
        metrics: quality metrics from each run's ``metrics.json``; the first ranks methods.
        lower_is_better: those of ``metrics`` where lower is better (losses, RMSE).
        overrides: extra ``reccomp fit`` arguments for every cell.
        method_overrides: extra ``reccomp fit`` arguments for the cells of one method, e.g.
            ``{graph_hash: [--model.embeddings.options, '{fields: [C1, C2]}']}``.
        show: further metrics to carry into the results (e.g. ``test/oracle_auc``).
        quick_budgets: budgets of ``--quick``.
        compress_overrides: extra ``reccomp compress`` arguments for the post-training cells.
        quick_overrides: extra ``reccomp fit`` arguments of ``--quick`` only (e.g. a smaller
            synthetic data set).
        finetune_epochs: post-training methods (``svd``, ``fwsvd``, ``afm``) compress the
            ``full`` cell's best checkpoint of the same seed, then fine-tune this many epochs.
    """

    name: str
    train_config: str
    data_root: str | None = None
    methods: list[str] = field(default_factory=_all_methods)
    budgets: list[float] = field(default_factory=lambda: list(DEFAULT_BUDGETS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    metrics: list[str] = field(default_factory=lambda: ["test/auc"])
    lower_is_better: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    method_overrides: dict[str, list[str]] = field(default_factory=dict)
    compress_overrides: list[str] = field(default_factory=list)
    quick_overrides: list[str] = field(default_factory=list)
    show: list[str] = field(default_factory=list)
    quick_budgets: list[float] = field(default_factory=lambda: [0.25])
    finetune_epochs: int = 3

    def __post_init__(self) -> None:
        known = set(_all_methods())
        unknown = [m for m in self.methods if m not in known]
        if unknown:
            raise ValueError(f"bench: unknown methods {unknown}; known: {sorted(known)}")
        if not self.metrics:
            raise ValueError("bench: metrics must name at least one metric")
        if any(b <= 0 for b in self.budgets) or not self.budgets or not self.seeds:
            raise ValueError("bench: budgets must be > 0, and budgets and seeds non-empty")
        stray = [m for m in self.method_overrides if m not in self.methods]
        if stray:
            raise ValueError(f"bench: method_overrides names methods not in methods: {stray}")
        bad = [m for m in self.lower_is_better if m not in self.metrics]
        if bad:
            raise ValueError(f"bench: lower_is_better names metrics not in metrics: {bad}")

    def quick(self) -> BenchConfig:
        """The tiny version: one budget, one seed, a few batches, its own results name."""
        return BenchConfig(
            name=f"{self.name}-quick",
            train_config=self.train_config,
            data_root=self.data_root,
            methods=self.methods,
            budgets=self.quick_budgets,
            seeds=self.seeds[:1],
            metrics=self.metrics,
            lower_is_better=self.lower_is_better,
            overrides=[*self.overrides, *QUICK_OVERRIDES, *self.quick_overrides],
            method_overrides=self.method_overrides,
            compress_overrides=[*self.compress_overrides, *QUICK_COMPRESS_OVERRIDES],
            finetune_epochs=min(self.finetune_epochs, 1),
            show=self.show,
            quick_budgets=self.quick_budgets,
        )

    def cells(self) -> list[tuple[str, float, int]]:
        """(method, budget, seed) of every cell; ``full`` only at budget 1, and first (the
        post-training methods start from its checkpoints)."""
        out = []
        methods = sorted(self.methods, key=lambda m: m != "full")
        if any(post_training(m) for m in methods) and "full" not in methods:
            raise ValueError("bench: post-training methods need the full method in the grid")
        for m in methods:
            budgets = [1.0] if m == "full" else self.budgets
            out += [(m, float(b), s) for b in budgets for s in self.seeds]
        return out


def post_training(method: str) -> bool:
    """Whether ``method`` is built from a trained model (``reccomp compress``)."""
    from reccomp.compress import METHODS

    return bool(getattr(METHODS[method].module, "post_training", False))


def cell_id(method: str, budget: float, seed: int) -> str:
    return f"{method}-b{budget:g}-s{seed}"
