"""Training throughput: reccomp (TorchRec + FBGEMM, Lightning) against plain PyTorch.

Times training steps at batch 4096 on synthetic-criteo (13 dense + 26 categorical fields),
in one run, for two models:

* ``fm`` and ``mlp``: embedding-bound: 26 fields of dim 64 and a thin head, an FM (DeepFM
  without hidden layers) or a small MLP (DCNv2 without cross layers, one hidden layer of
  16), so the embedding lookups and their optimizer dominate;
* ``dlrm``: DLRM with bottom MLP 512-256-64 and top MLP 512-256-1, bound by the dense layers;
  the script also prints the share of the machine's matrix-multiply rate it reaches.

reccomp runs through ``lightning.Trainer.fit`` with the real task, data module iterator and
fused FBGEMM embedding collection; the reference is a plain loop with one
``nn.EmbeddingBag(sparse=True)`` per field, the same dense layers, ``torch.optim.Adagrad``
for the tables and ``torch.optim.Adam`` for the rest, fed from the same tensors.
The two sides alternate in rounds so machine noise hits both; each round gives the median
step time of each side, and each side's best round is reported.

    python benchmarks/throughput.py [--rows 500000] [--steps 30] [--rounds 2] [--models fm mlp]

With ``--methods full hash qr graph_hash [--budget 0.25]`` it instead times each compression
method's training step against ``full`` (same models and batch): the remap and decode around
the lookup must not dominate. It prints each side's best round and the median over rounds of
the same-round ratio. Sizes can be given instead of a budget, e.g. ``low_rank`` at rank 16 on
every table::

    python benchmarks/throughput.py --methods full low_rank --budget none --options "rank: 16" --min-rows 0
"""

from __future__ import annotations

import argparse
import functools
import itertools
import statistics
import tempfile
import time
from collections.abc import Callable

import lightning.pytorch as pl
import torch
import yaml
from torch import nn

from reccomp.compress import FitData
from reccomp.data.datamodule import RecDataModule
from reccomp.data.loader import BatchIterator, SplitTensors
from reccomp.models import DLRM, DCNv2, DeepFM
from reccomp.models.fused import fm_deep
from reccomp.modules.embedding import EmbeddingSpec
from reccomp.runtime import tune_malloc
from reccomp.tasks import CTRTask

BATCH = 4096
DIM = 64


class StepTimer(pl.Callback):
    """Wall time between consecutive ends of training steps (loader + step + glue)."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.last, self.times = warmup, 0.0, []

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        now = time.perf_counter()
        if trainer.global_step > self.warmup:
            self.times.append(now - self.last)
        self.last = now


def time_reccomp(
    dm: RecDataModule,
    factory: Callable,
    steps: int,
    warmup: int = 20,
    optimizer: str = "adagrad",
    method: str = "full",
    budget: float | None = None,
    compile: bool = False,
    options: dict | None = None,
    min_rows: int | None = None,
) -> list[float]:
    options = dict(options or {})
    if method in ("graph_hash", "double_graph_hash"):
        # synthetic-criteo has no user/item fields: cluster the two largest fields' graph
        big = sorted(dm.schema.sparse, key=lambda f: -f.cardinality)[:2]
        options.setdefault("fields", [f.name for f in big])
    full = method == "full"
    spec = EmbeddingSpec(
        dim=DIM, optimizer=optimizer, lr=0.05, init_std=0.05, method=method,
        budget=None if full else budget, options={} if full else options,
        **({} if min_rows is None else {"min_rows": min_rows}),
    )  # fmt: skip
    task = CTRTask(factory, embeddings=spec, schema=dm.schema_dict, compile=compile)
    if task.embeddings.needs_fit:
        task.embeddings.fit(FitData.from_schema(dm.schema))
    timer = StepTimer(warmup)
    trainer = pl.Trainer(
        max_steps=warmup + steps + 1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        inference_mode=False,
        callbacks=[timer],
    )
    trainer.fit(task, train_dataloaders=dm.train_dataloader())
    return timer.times


class RefEmbeddings(nn.Module):
    """One ``nn.EmbeddingBag(sparse=True)`` per field: the plain-PyTorch baseline."""

    def __init__(self, cards: list[int], dim: int) -> None:
        super().__init__()
        self.bags = nn.ModuleList(nn.EmbeddingBag(c, dim, mode="sum", sparse=True) for c in cards)
        for b in self.bags:
            nn.init.normal_(b.weight, std=0.05)

    def forward(self, sparse: torch.Tensor) -> torch.Tensor:  # (B, F) -> (B, F, D)
        return torch.stack([bag(sparse[:, i : i + 1]) for i, bag in enumerate(self.bags)], 1)


def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers)


class RefFM(nn.Module):
    """The same math as :class:`reccomp.models.DeepFM` with ``deep_mlp=()``.

    ``fused_head`` (``--fused-reference-head``): reccomp's fused FM node instead of autograd's.
    """

    def __init__(self, cards: list[int], num_dense: int, fused_head: bool = False) -> None:
        super().__init__()
        self.fused_head = fused_head
        self.emb = RefEmbeddings(cards, DIM)
        self.dense_linear = nn.Linear(num_dense, 1, bias=False)
        self.deep_emb = nn.Linear(len(cards) * DIM, 1)
        self.deep_dense = nn.Linear(num_dense, 1, bias=False)
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        return self.interact(dense, self.emb(sparse))

    def interact(self, dense: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:  # rows (B, F, D)
        if self.fused_head:
            w = self.deep_emb
            deep, z = fm_deep(rows.flatten(1), w.weight, w.bias, rows.shape[1])  # (B, 1), (B,)
            dense_terms = self.dense_linear(dense) + self.deep_dense(dense)  # (B, 1)
            return self.bias + z + (deep + dense_terms).squeeze(1)
        summed, squares = rows.sum(1), rows.square().sum(1)  # (B, D) each
        k = DIM - 1
        fm = 0.5 * (summed[:, :k].square() - squares[:, :k]).sum(1)  # (B,)
        first = summed[:, k] + self.dense_linear(dense).squeeze(1)
        deep = (self.deep_emb(rows.flatten(1)) + self.deep_dense(dense)).squeeze(1)
        return self.bias + first + fm + deep


class RefMLP(nn.Module):
    """The same math as :class:`reccomp.models.DCNv2` with no cross layers and one hidden layer."""

    def __init__(self, cards: list[int], num_dense: int) -> None:
        super().__init__()
        self.emb = RefEmbeddings(cards, DIM)
        self.deep = nn.Sequential(mlp([num_dense + len(cards) * DIM, 16]), nn.Linear(16, 1))

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        return self.interact(dense, self.emb(sparse))

    def interact(self, dense: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        x0 = torch.cat([dense, rows.flatten(1)], 1)  # (B, 13 + F*D)
        return self.deep(x0).squeeze(1)


class RefDLRM(nn.Module):
    def __init__(self, cards: list[int], num_dense: int) -> None:
        super().__init__()
        self.emb = RefEmbeddings(cards, DIM)
        self.bottom = mlp([num_dense, 512, 256, DIM])
        n = len(cards) + 1
        self.register_buffer("pairs", torch.triu_indices(n, n, 1))
        self.top = nn.Sequential(mlp([DIM + n * (n - 1) // 2, 512, 256]), nn.Linear(256, 1))

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        return self.interact(dense, self.emb(sparse))

    def interact(self, dense: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        head = self.bottom(dense)  # (B, D)
        stack = torch.cat([head.unsqueeze(1), rows], 1)  # (B, F+1, D)
        gram = torch.bmm(stack, stack.transpose(1, 2))  # (B, n, n)
        dots = gram[:, self.pairs[0], self.pairs[1]]  # (B, n(n-1)/2)
        return self.top(torch.cat([head, dots], 1)).squeeze(1)


def time_reference(
    data: SplitTensors, model: nn.Module, steps: int, warmup: int = 20
) -> list[float]:
    sparse_params = list(model.emb.parameters())
    ids = {id(p) for p in sparse_params}
    dense_params = [p for p in model.parameters() if id(p) not in ids]
    opt_s = torch.optim.Adagrad(sparse_params, lr=0.05)
    opt_d = torch.optim.Adam(dense_params, lr=1e-3)
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    shuffled = data.take(perm)
    times, last = [], time.perf_counter()
    for step in range(warmup + steps + 1):
        s = slice(step * BATCH, (step + 1) * BATCH)
        dense, sparse, label = shuffled.dense[s], shuffled.sparse[s], shuffled.label[s]
        loss = nn.functional.binary_cross_entropy_with_logits(model(dense, sparse), label)
        opt_s.zero_grad()
        opt_d.zero_grad()
        loss.backward()
        opt_s.step()
        opt_d.step()
        now = time.perf_counter()
        if step > warmup:
            times.append(now - last)
        last = now
    return times


def matmul_rate(n: int = 4096, k: int = 512, reps: int = 20) -> float:
    """FLOP/s of fp32 (n, k) @ (k, k) matrix multiplies, the dense layers' ceiling."""
    a, b = torch.randn(n, k), torch.randn(k, k)
    for _ in range(3):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n * k * k * reps / (time.perf_counter() - t)


def dlrm_dense_flops(num_dense: int, num_fields: int) -> float:
    """Matrix-multiply FLOPs of one DLRM training step (forward + 2x for backward)."""
    n = num_fields + 1
    dims = [
        (num_dense, 512),
        (512, 256),
        (256, DIM),
        (DIM + n * (n - 1) // 2, 512),
        (512, 256),
        (256, 1),
    ]
    fwd = sum(2 * BATCH * a * b for a, b in dims) + 2 * BATCH * n * n * DIM  # + interaction bmm
    return 3.0 * fwd


def compare_methods(dm: RecDataModule, args: argparse.Namespace) -> None:
    """Step time of each method against ``full``, same batch, alternating in rounds."""
    methods = ["full", *[m for m in args.methods if m != "full"]]
    models = {
        "fm": lambda e, d: DeepFM(e, d, deep_mlp=()),
        "mlp": lambda e, d: DCNv2(e, d, num_cross_layers=0, deep_mlp=(16,)),
        "dlrm": lambda e, d: DLRM(e, d, bottom_mlp=(512, 256), top_mlp=(512, 256)),
    }
    models = {k: v for k, v in models.items() if k in args.models}
    res: dict[tuple[str, str], list[float]] = {}
    for r in range(args.rounds):
        for name, factory in models.items():
            for m in methods if r % 2 == 0 else methods[::-1]:  # neither side always first
                t = statistics.median(
                    time_reccomp(dm, factory, args.steps, optimizer=args.sparse_optimizer,
                                 method=m, budget=args.budget, options=args.options,
                                 min_rows=args.min_rows)
                )  # fmt: skip
                res.setdefault((name, m), []).append(t)
                print(f"round {r + 1} {name} {m}: {t * 1e3:.1f} ms")
    print(
        f"\nbudget {args.budget}, options {args.options}, min_rows {args.min_rows}: "
        "step time (best round), its ratio to full's best, and the median over rounds of the "
        "ratio to full in the same round (robust to the machine's drifts)"
    )
    print(f"{'model':<6}{'method':<18}{'ms/step':>10}{'x full':>9}{'paired x full':>15}")
    for name in models:
        base = res[(name, "full")]
        for m in methods:
            t = res[(name, m)]
            paired = statistics.median(a / b for a, b in zip(t, base, strict=True))
            print(
                f"{name:<6}{m:<18}{min(t) * 1e3:>10.1f}{min(t) / min(base):>8.2f}x{paired:>14.2f}x"
            )


def _yaml_mapping(text: str) -> dict:
    value = yaml.safe_load(text)
    if not isinstance(value, dict) or None in value.values():
        raise argparse.ArgumentTypeError(
            f"expected a YAML mapping such as 'rank: 16', got {text!r}"
        )
    return value


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rows", type=int, default=500_000)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--default-malloc", action="store_true", help="skip reccomp.runtime.tune_malloc")
    p.add_argument(
        "--sparse-optimizer",
        default="adagrad",
        help="reccomp's fused optimizer (the reference always uses torch.optim.Adagrad)",
    )
    p.add_argument(
        "--methods",
        nargs="+",
        default=None,
        help="instead of the reference comparison: time these compression methods against "
        "full (reccomp only, the models of --models), e.g. --methods full hash qr graph_hash",
    )
    p.add_argument(
        "--models",
        nargs="+",
        default=["fm", "mlp", "dlrm"],
        choices=["fm", "mlp", "dlrm"],
        help="which models to time (default: all three)",
    )
    p.add_argument(
        "--budget",
        type=lambda s: None if s.lower() in ("none", "null") else float(s),
        default=0.25,
        help="budget of --methods ('none': the sizes given by --options)",
    )
    p.add_argument(
        "--options",
        type=_yaml_mapping,
        default=None,
        help="options of --methods as YAML, e.g. '{rank: 16}' (with --budget none)",
    )
    p.add_argument(
        "--min-rows",
        type=int,
        default=None,
        help="tables with fewer rows stay full (default: EmbeddingSpec's 1000)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="reccomp side with compile: true (torch.compile of the dense part)",
    )
    p.add_argument(
        "--compile-reference",
        action="store_true",
        help="also torch.compile the reference's dense part (same code after the lookups)",
    )
    p.add_argument(
        "--fused-reference-head",
        action="store_true",
        help="give the reference's FM head reccomp's fused FM node (DeepFM's training path), "
        "so the fm ratio measures the embedding part and glue alone",
    )
    args = p.parse_args()
    # both sides run in this process, so both get the allocator setting the CLI uses
    print(f"tune_malloc: {tune_malloc() if not args.default_malloc else 'off'}")
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH}, dim {DIM}, "
        f"reccomp sparse optimizer {args.sparse_optimizer} (reference: torch.optim.Adagrad), "
        f"reccomp compile {args.compile}, reference compile {args.compile_reference}, "
        f"reference fused FM head {args.fused_reference_head}"
    )
    with tempfile.TemporaryDirectory() as cache:
        dm = RecDataModule(
            dataset="synthetic-criteo",
            task="ctr",
            batch_size=BATCH,
            cache_dir=cache,
            synthetic={"n_rows": args.rows, "seed": 0},
        )
        dm.setup()
        schema = dm.schema
        train = dm.tensors_["train"]
        cards = [f.cardinality for f in schema.sparse]
        print(f"synthetic-criteo: {len(train):,} training rows, {sum(cards):,} embedding rows")

        it = BatchIterator(train, schema.feature_names, BATCH, shuffle=True)
        t = time.perf_counter()
        n = sum(len(b) for b in it)
        loader_rate = n / (time.perf_counter() - t)
        print(
            f"\ndata loader: {loader_rate / 1e6:.2f} M samples/s (one shuffled epoch, KJT batches)"
        )

        if args.methods:
            compare_methods(dm, args)
            return
        models = {
            "fm": (
                lambda e, d: DeepFM(e, d, deep_mlp=()),
                functools.partial(RefFM, fused_head=args.fused_reference_head),
            ),
            "mlp": (lambda e, d: DCNv2(e, d, num_cross_layers=0, deep_mlp=(16,)), RefMLP),
            "dlrm": (lambda e, d: DLRM(e, d, bottom_mlp=(512, 256), top_mlp=(512, 256)), RefDLRM),
        }
        models = {k: v for k, v in models.items() if k in args.models}
        # per round and side: the median step time; reported: each side's best round
        results: dict[str, dict[str, list[float]]] = {
            m: {"reccomp": [], "reference": []} for m in models
        }
        for r in range(args.rounds):
            for name, (factory, ref_cls) in models.items():
                ref_model = ref_cls(cards, schema.num_dense)
                if args.compile_reference:
                    ref_model.interact = torch.compile(ref_model.interact)
                ref = statistics.median(time_reference(train, ref_model, args.steps))
                rec = statistics.median(
                    time_reccomp(
                        dm, factory, args.steps, optimizer=args.sparse_optimizer,
                        compile=args.compile,
                    )
                )  # fmt: skip
                results[name]["reference"].append(ref)
                results[name]["reccomp"].append(rec)
                print(
                    f"round {r + 1} {name}: reccomp {rec * 1e3:.1f} ms, reference {ref * 1e3:.1f} ms"
                )
        rate = matmul_rate()
        print(f"\nmatrix multiply ((4096x512) @ (512x512), fp32): {rate / 1e9:.1f} GFLOP/s")
        print(
            f"\n{'model':<6}{'reccomp ms/step':>17}{'reference ms/step':>19}{'speed-up':>10}{'samples/s':>12}"
        )
        for name, res in results.items():
            a, b = min(res["reccomp"]), min(res["reference"])
            print(f"{name:<6}{a * 1e3:>17.1f}{b * 1e3:>19.1f}{b / a:>9.2f}x{BATCH / a:>12,.0f}")
        a = min(results["dlrm"]["reccomp"])
        flops = dlrm_dense_flops(schema.num_dense, len(cards))
        print(
            f"\nDLRM dense layers: {flops / 1e9:.2f} GFLOP per step -> {flops / a / 1e9:.1f} GFLOP/s, "
            f"{flops / a / rate:.0%} of the matrix-multiply rate"
        )


if __name__ == "__main__":
    main()
