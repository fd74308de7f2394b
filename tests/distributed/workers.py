"""Spawned ranks for the sharded-training tests (importable by torch.multiprocessing)."""

from __future__ import annotations

import os
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

STEPS = 5
B = 16  # global batch


class Head(nn.Module):
    """A tiny CTR model: pooled rows (B, F * D) -> one logit."""

    def __init__(self, embeddings: nn.Module, width: int) -> None:
        super().__init__()
        self.embeddings = embeddings
        torch.manual_seed(0)
        self.out = nn.Linear(width, 1)

    def forward(self, kjt: KeyedJaggedTensor) -> torch.Tensor:
        return self.out(self.embeddings(kjt).values()).squeeze(1)  # (B,)


def rows(step: int, schema: Any) -> list[list[list[int]]]:
    """The global batch (the same at every step, so a training model's loss falls): per
    row, per field, its ids (bags hold 0-3)."""
    g = torch.Generator().manual_seed(100)
    out = []
    for _ in range(B):
        r = []
        for f in schema.sparse:
            n = int(torch.randint(0 if f.max_len > 1 else 1, f.max_len + 1, (1,), generator=g))
            r.append(torch.randint(0, f.cardinality, (n,), generator=g).tolist())
        out.append(r)
    return out


def kjt_of(batch: list[list[list[int]]], keys: list[str]) -> KeyedJaggedTensor:
    vals, lens = [], []
    for j in range(len(keys)):
        for r in batch:
            vals += r[j]
            lens.append(len(r[j]))
    return KeyedJaggedTensor(
        keys=keys, values=torch.tensor(vals, dtype=torch.int64), lengths=torch.tensor(lens).int()
    )


def labels(step: int) -> torch.Tensor:
    return (torch.arange(B) % 3 == 0).float()  # (B,)


def train(model: nn.Module, schema: Any, rank: int, world: int, steps: range) -> list[float]:
    """Losses of global batches ``steps``; each rank trains on its share of every batch."""
    from reccomp.data.loader import rank_share
    from reccomp.distributed.strategy import average_gradients

    dense = [p for n, p in model.named_parameters() if ".storage." not in f".{n}"]
    opt = torch.optim.SGD(dense, lr=0.1)
    out = []
    for step in steps:
        lo, hi, _ = rank_share(0, B, rank, world)
        batch = rows(step, schema)[lo:hi]
        y = labels(step)[lo:hi]
        logits = model(kjt_of(batch, schema.feature_names))
        loss = nn.functional.binary_cross_entropy_with_logits(logits, y)
        penalty = model.embeddings.penalty()
        total = loss + (penalty if penalty is not None else 0.0)
        opt.zero_grad()
        total.backward()
        if world > 1:
            average_gradients(dense)
        s = torch.tensor([loss.item() * (hi - lo)], dtype=torch.float64)
        if world > 1:
            dist.all_reduce(s)
        out.append(float(s) / B)
        opt.step()
    return out


def contract(rank: int, world: int, port: int, cases: list[Any], out_dir: str) -> None:
    """Per case (method, options): losses of one process and of each plan; per case the
    refusal message if it refuses; and a DCP round trip table-wise -> row-wise."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    results: dict[str, Any] = {}
    try:
        from reccomp.distributed.plan import ShardingError
        from reccomp.distributed.state import load_sharded, save_sharded
        from reccomp.distributed.strategy import shard_module
        from reccomp.modules.embedding import EmbeddingSpec
        from tests.compress.test_contract import DIM, SCHEMA, build

        width = DIM * len(SCHEMA.sparse)
        for method, options in cases:
            name = f"{method}{options or ''}"

            def model(sharding: str, method: str = method, options: dict = options) -> nn.Module:
                coll = build(method, options, sharding=sharding)
                return Head(coll, width)

            ref = train(model("auto"), SCHEMA, 0, 1, range(STEPS))
            results[name] = {"one": ref}
            for kind in ("table_wise", "column_wise", "row_wise"):
                m = model(kind)
                try:
                    shard_module(m, EmbeddingSpec(sharding=kind), torch.device("cpu"), world, world)
                except ShardingError as e:
                    results[name]["refused"] = str(e)
                    break
                results[name][kind] = train(m, SCHEMA, rank, world, range(STEPS))
                if kind == "table_wise" and method == "qr":
                    d = Path(out_dir) / "qr.dcp"
                    save_sharded(m, d)
                    results[name]["after_tw"] = train(
                        m, SCHEMA, rank, world, range(STEPS, STEPS + 1)
                    )
                    rw = model("row_wise")
                    shard_module(
                        rw, EmbeddingSpec(sharding="row_wise"), torch.device("cpu"), world, world
                    )
                    load_sharded(rw, d)
                    results[name]["after_rw"] = train(
                        rw, SCHEMA, rank, world, range(STEPS, STEPS + 1)
                    )
    except Exception:
        results["error"] = traceback.format_exc()
    if rank == 0:
        torch.save(results, Path(out_dir) / "results.pt")
    dist.barrier()  # no rank tears gloo down while another still sends
    dist.destroy_process_group()
