"""Write an artifact: program, vocabularies, manifest (see :mod:`reccomp.export.cli`)."""

from __future__ import annotations

import datetime as dt
import json
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reccomp.compress.collection import storage_name
from reccomp.export.fields import field_specs
from reccomp.export.program import (
    example_inputs,
    export_program,
    serving_program,
    turn_off_bounds_checks,
)
from reccomp.serving.predictor import FORMAT_VERSION, MANIFEST, sha256

OUTPUTS = {
    "ctr": "click probability, sigmoid of the model's logit",
    "rating": "rating, clamped to the training labels' range",
    "retrieval": "score of the (user, item) pair; higher ranks first",
}


def _version(pkg: str) -> str | None:
    try:
        return version(pkg)
    except PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    fbgemm = _version("fbgemm-gpu-cpu") or _version("fbgemm-gpu")
    return {
        "reccomp": _version("reccomp"),
        "torch": torch.__version__,
        "torchrec": _version("torchrec"),
        "fbgemm_gpu": fbgemm,
        "python": platform.python_version(),
    }


class ProgramAsModel(nn.Module):
    """An exported program behind the model interface the task evaluates with, so the
    exported model's test metrics come from the task's own metric code.

    Retrieval evaluation scores every (user, item) pair through the program.
    """

    def __init__(self, program: Any, keys: list[str], user: str | None, item: str | None) -> None:
        super().__init__()
        # a plain attribute, not a submodule: exported programs refuse train() / eval()
        self.__dict__["program"] = program
        self.keys, self.user, self.item = keys, user, item

    def forward(self, dense: torch.Tensor, sparse: Any) -> torch.Tensor:
        return self.program(dense.float(), sparse.values().long(), sparse.lengths().long())[0]

    # -- retrieval: rows stand in for vectors --------------------------------------------------
    def user_vectors(self, sparse: Any) -> torch.Tensor:
        return sparse[self.user].values().long()  # (B,) user rows

    def lookup_items(self, items: torch.Tensor) -> torch.Tensor:
        return items.long()  # (I,) item rows

    def score_all(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        if self.keys != [self.user, self.item]:
            raise ValueError("retrieval metrics of an export need exactly user and item fields")
        out = []
        n = items.numel()
        for u in users.split(max(1, (1 << 21) // max(n, 1))):  # about 2M pairs a call
            b = u.numel()
            values = torch.cat([u.repeat_interleave(n), items.repeat(b)])
            lengths = torch.ones(2 * b * n, dtype=torch.int64)
            dense = torch.zeros((b * n, 0))
            out.append(self.program(dense, values, lengths)[0].reshape(b, n))
        return torch.cat(out)


def test_metrics(task: Any, dm: Any, program: Any, limit_batches: int | None) -> dict[str, float]:
    """The exported program's metrics on the run's test split (the task's metric code)."""
    from lightning.pytorch import Trainer

    schema = task.schema
    held = task.model
    task.model = ProgramAsModel(program, schema.feature_names, schema.user_field,
                                schema.item_field)  # fmt: skip
    # the task reads its collection (memory, phases) from model.embeddings: the program's
    # collection is the trained one, kept beside it for that
    task.model.embeddings = held.embeddings
    trainer = Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        inference_mode=False,
        limit_test_batches=limit_batches if limit_batches is not None else 1.0,
    )
    try:
        res = trainer.test(task, datamodule=dm, verbose=False)[0]
    finally:
        task.model = held
    return {k: float(v) for k, v in res.items() if k.startswith("test/")}


def _storage_tables(collection: nn.Module, dtypes: dict[str, str]) -> list[dict[str, Any]]:
    rows = []
    for m in collection.tables:
        for t in m.tables():
            name = storage_name(m.field, t)  # rows, bytes: this field's share of a shared table
            rows.append(
                {
                    "name": name,
                    "field": m.field,
                    "rows": t.rows,
                    "width": t.width,
                    "dtype": dtypes[name],
                    "bytes": m.table_bytes_stored(t),
                }
            )
    return rows


def write_artifact(
    task: Any,
    dm: Any,
    out: Path,
    quantize: str = "none",
    aoti: bool = False,
    limit_batches: int | None = None,
    source: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Export ``task`` into ``out``; returns the manifest (also written as ``manifest.json``)."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in (MANIFEST, "model.pt2", "model.aoti.pt2"):
        (out / stale).unlink(missing_ok=True)
    schema = dm.schema
    spec = field_specs(dm.dataset, schema, out)
    spec["output"] = OUTPUTS[schema.task]

    prog, dtypes = serving_program(task, quantize)
    turn_off_bounds_checks(prog)  # rows come from the vocabularies and remaps: in range
    dm.setup("fit")
    batch = next(iter(dm.search_dataloader()))  # validation rows in the training format
    example = example_inputs(batch)
    parity = None
    with torch.no_grad():
        raw = prog(*example)[0]
        if quantize == "none":
            parity = float((raw - task.model(batch.dense, batch.sparse)).abs().max())
    program, min_batch = export_program(prog, example)
    torch.export.save(program, str(out / "model.pt2"))
    loaded = torch.export.load(str(out / "model.pt2")).module()
    with torch.no_grad():
        drift = float((loaded(*example)[0] - raw).abs().max())
    aoti_file = None
    if aoti:  # compiled C++ of the same graph: no per-operator Python dispatch
        program.example_inputs = (example, {})  # AOTInductor wants them; model.pt2 does not
        torch._inductor.aoti_compile_and_package(program, package_path=str(out / "model.aoti.pt2"))
        aoti_file = "model.aoti.pt2"

    collection = prog.model.embeddings
    tables = []
    for row, m in zip(collection.describe(), collection.tables, strict=True):
        names = [storage_name(m.field, t) for t in m.tables()]
        row["dtype"] = sorted({dtypes[n] for n in names})
        tables.append(row)
    storage = _storage_tables(collection, dtypes)
    serving = collection.memory_bytes()
    full = collection.full_bytes()
    metrics = test_metrics(task, dm, loaded, limit_batches)
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "versions": versions(),
        "source": source or {},
        "schema": spec,
        "program": {
            "file": "model.pt2",
            "aoti": aoti_file,
            "min_batch": min_batch,
            "inputs": {
                "dense": f"(B, D) float32, transformed dense features (B >= {min_batch})",
                "values": "(N,) int64 rows, field-major as a KeyedJaggedTensor's",
                "lengths": "(F * B,) int64 values per field and row",
            },
            "outputs": ["raw (B,): the model's output", f"prediction (B,): {spec['output']}"],
            "parity_max_abs": parity,
            "reload_max_abs": drift,
        },
        "quantize": quantize,
        "tables": tables,
        "storage_tables": storage,
        "serving_bytes": serving,
        "full_fp32_bytes": full,
        "ratio_to_full_fp32": serving / max(full, 1),
        "test_metrics": metrics,
    }
    files = [
        "model.pt2",
        *(f["vocab"] for f in spec["fields"]),
        *([aoti_file] if aoti_file else []),
    ]
    manifest["files"] = {f: sha256(out / f) for f in files}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str) + "\n")
    return manifest
