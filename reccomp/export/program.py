"""The whole model as one tensor-only program: rows in, predictions out.

:class:`ServingProgram` wraps a trained model (its compressed collection included) behind
``forward(dense (B, D), values (N,), lengths (F * B,)) -> (raw (B,), prediction (B,))``:
``values`` / ``lengths`` are a KeyedJaggedTensor's, field-major, of *rows* (what the
artifact's vocabularies give for raw values); ``raw`` is the model's output (a logit, a
rating, a score) and ``prediction`` what it means (a click probability, a rating clamped to
the training range, the score). :func:`export_program` turns it into a ``torch.export``
program with dynamic batch and value counts.

Quantization (:func:`quantize_storage`) swaps the storage collection for TorchRec's quantized
``EmbeddingBagCollection`` (FBGEMM's IntNBit kernels, a scale and bias per row); tables too
narrow to gain from it (FBGEMM pads rows to 16 bytes) stay fp32. Every method composes with
it: only the storage tables change, remaps and decodes are untouched.

Example::

    prog = serving_program(task, quantize="int8")
    ep, min_batch = export_program(prog, example_inputs(batch))
    torch.export.save(ep, "model.pt2")
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from reccomp.compress.collection import NoStorage, storage_name

QUANTIZE = ("none", "fp16", "int8", "int4")
_DTYPES = {"fp16": torch.float16, "int8": torch.qint8, "int4": torch.quint4x2}
ROW_ALIGNMENT = 16  # FBGEMM's IntNBit tables pad every row to this many bytes
_SCALE_BIAS = 4  # an fp16 scale and bias per row of int8 / int4 tables


class ServingProgram(nn.Module):
    """A model and its head behind a tensor-only forward.

    Args:
        model: the trained model, its ``embeddings`` a serving copy of the collection.
        keys: the sparse fields, in the order of ``lengths``.
        task: ``ctr`` (prediction = sigmoid), ``rating`` (clamped to ``[low, high]``) or
            ``retrieval`` (the score).
    """

    def __init__(
        self, model: nn.Module, keys: list[str], task: str, low: float = 0.0, high: float = 0.0
    ) -> None:
        super().__init__()
        self.model = model
        self.keys = list(keys)
        self.task = task
        self.low, self.high = float(low), float(high)

    def forward(
        self, dense: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        kjt = KeyedJaggedTensor(keys=self.keys, values=values, lengths=lengths)
        raw = self.model(dense, kjt)  # (B,)
        if self.task == "ctr":
            return raw, torch.sigmoid(raw)
        if self.task == "rating":
            return raw, raw.clamp(self.low, self.high)
        return raw, raw


def quantized_row_bytes(width: int, quantize: str) -> int:
    """Bytes FBGEMM stores per row of a ``width``-wide table quantized to ``quantize``."""
    if quantize == "none":
        return width * 4
    data = {"fp16": width * 2, "int8": width + _SCALE_BIAS, "int4": (width + 1) // 2 + _SCALE_BIAS}
    return -(-data[quantize] // ROW_ALIGNMENT) * ROW_ALIGNMENT


def quantize_storage(collection: nn.Module, quantize: str) -> dict[str, str]:
    """Quantize ``collection.storage`` (a plain ``EmbeddingBagCollection``) in place; returns
    each storage table's dtype (``fp32`` where quantizing would not make the row smaller).

    The methods' ``storage_bytes`` are set to what each table takes in FBGEMM's buffer, so
    ``memory_bytes()`` counts codes, scales, biases and row and table padding as stored.
    """
    from torch.ao import quantization as quant
    from torchrec.modules.embedding_configs import QuantConfig
    from torchrec.quant.embedding_modules import EmbeddingBagCollection as QuantEBC

    storage = collection.storage
    if isinstance(storage, NoStorage):  # no table (dhe): nothing to quantize
        return {}
    if not isinstance(storage, EmbeddingBagCollection):
        raise TypeError(f"quantize a serving copy (to_serving()), not {type(storage).__name__}")
    configs = storage.embedding_bag_configs()
    gains = {c.name: quantized_row_bytes(c.embedding_dim, quantize) < c.embedding_dim * 4
             for c in configs}  # fmt: skip
    dtypes = {name: (quantize if g else "fp32") for name, g in gains.items()}
    if quantize != "none" and any(gains.values()):
        per_table = {n: (_DTYPES[quantize] if g else torch.float) for n, g in gains.items()}
        storage.qconfig = QuantConfig(
            activation=quant.PlaceholderObserver.with_args(dtype=torch.float),
            weight=quant.PlaceholderObserver.with_args(dtype=_DTYPES[quantize]),
            per_table_weight_dtype=per_table,
        )
        quantized = QuantEBC.from_float(storage)
        del storage.qconfig
        # per-table views of the TBE's weights, kept for state_dict() only: an exported
        # program would store them beside the TBE's own buffer, twice the bytes
        for table in quantized.embedding_bags.values():
            table._buffers.clear()
        collection.storage = quantized
    else:
        dtypes = dict.fromkeys(gains, "fp32")
    spans = _table_spans(collection.storage)
    rows = {c.name: c.num_embeddings for c in collection.storage.embedding_bag_configs()}
    for m in collection.tables:
        # a field of a shared table (robe's array) holds its share of the table's rows
        m.storage_bytes = {
            t.suffix: spans[name] * t.rows // rows[name]
            for t in m.tables()
            if (name := storage_name(m.field, t)) in spans
        }
    return dtypes


def build_program(
    model: nn.Module,
    keys: list[str],
    task: str,
    low: float = 0.0,
    high: float = 0.0,
    quantize: str = "none",
) -> tuple[ServingProgram, dict[str, str]]:
    """A :class:`ServingProgram` of a copy of ``model`` whose collection is a serving copy
    (plain or quantized storage; ``model`` is not changed), and each storage table's dtype."""
    if quantize not in QUANTIZE:
        raise ValueError(f"quantize must be one of {QUANTIZE}, got {quantize!r}")
    collection = model.embeddings.to_serving()
    dtypes = quantize_storage(collection, quantize)
    held, model.embeddings = model.embeddings, None  # copy the dense part only
    try:
        dense_part = copy.deepcopy(model)
    finally:
        model.embeddings = held
    dense_part.embeddings = collection
    return ServingProgram(dense_part, keys, task, low, high).eval(), dtypes


def _table_spans(storage: nn.Module) -> dict[str, int]:
    """Bytes of every table in the buffers of a quantized collection's TBEs (rows padded to
    16 bytes, tables aligned within the buffer); empty for a plain collection."""
    spans: dict[str, int] = {}
    for tbe in getattr(storage, "_emb_modules", []):
        # weights_offsets: each *feature*'s table start (a shared table has several features)
        starts: dict[int, int] = {}
        for feature, table in enumerate(tbe.feature_table_map):
            starts.setdefault(table, int(tbe.weights_offsets[feature]))
        ends = sorted({*starts.values(), tbe.weights_host.numel()})
        for table, spec in enumerate(tbe.embedding_specs):
            start = starts[table]
            end = ends[ends.index(start) + 1]
            spans[spec[0]] = (end - start) * tbe.weights_host.element_size()
    return spans


def serving_program(task: Any, quantize: str = "none") -> tuple[ServingProgram, dict[str, str]]:
    """:func:`build_program` of a reccomp task: its model, fields, task and label range."""
    schema = task.schema
    low = float(schema.stats.get("label_min", 0.0))
    high = float(schema.stats.get("label_max", 0.0))
    return build_program(task.model, schema.feature_names, schema.task, low, high, quantize)


def example_inputs(batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dense, values, lengths)`` of a data batch (rows as int64)."""
    kjt = batch.sparse
    return batch.dense.float(), kjt.values().long(), kjt.lengths().long()


def export_program(
    prog: ServingProgram, example: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
) -> tuple[torch.export.ExportedProgram, int]:
    """``torch.export`` (non-strict) with dynamic batch size and value count; returns the
    program and the smallest batch it takes.

    Export specializes sizes 0 and 1 unless told not to: with ``backed_size_oblivious`` a
    model whose graph does not depend on a batch of one being special exports for batches
    of 1 and more; others fall back to batches of 2 and more (the predictor pads).
    """
    import torch.fx.experimental._config as fx_config

    dim = torch.export.Dim
    for min_batch in (1, 2):
        batch = dim("batch", min=min_batch, max=1 << 24)
        values = dim("values", min=1, max=1 << 30)
        shapes = {"dense": {0: batch}, "values": {0: values},
                  "lengths": {0: len(prog.keys) * batch}}  # fmt: skip
        try:
            with fx_config.patch(backed_size_oblivious=min_batch == 1), torch.no_grad():
                ep = torch.export.export(prog, example, dynamic_shapes=shapes, strict=False)
        except Exception:
            if min_batch == 2:
                raise
            continue
        ep.example_inputs = None  # else saved with the program: a batch of training data
        return ep, min_batch
    raise AssertionError("unreachable")


def turn_off_bounds_checks(prog: nn.Module) -> None:
    """FBGEMM's IntNBit bounds check is a host-side op AOTInductor cannot compile; every
    method keeps its rows in range itself (out-of-range ids are remapped before lookup)."""
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import BoundsCheckMode

    for m in prog.modules():
        # the quantized collection keeps its TBEs in a plain list, not as submodules
        for tbe in [m, *getattr(m, "_emb_modules", [])]:
            if hasattr(tbe, "bounds_check_mode_int"):
                tbe.bounds_check_mode_int = BoundsCheckMode.NONE.value
