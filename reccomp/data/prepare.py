"""From parsed data (:class:`RawData`) to a prepared cache directory.

Steps: frame the task (labels, which rows), split, build vocabularies on the training split,
encode every split to rows, count row frequencies, write arrays and the schema.

Example::

    raw = read_movielens("../shared/datasets/ml-100k")
    schema = prepare_raw(raw, CacheWriter(out_dir), task="rating", split=SplitConfig())
"""

from __future__ import annotations

from typing import Any

import numpy as np

from reccomp.data.cache import SPLITS, CacheWriter
from reccomp.data.raw import RawData
from reccomp.data.schema import MISSING_ROW, NUM_SPECIAL_ROWS, Schema, SparseField, encode_with
from reccomp.data.splits import SplitConfig, split_indices


def transform_dense(x: np.ndarray) -> np.ndarray:
    """log(1 + x) with negatives clamped to 0 and NaN (missing) -> 0, as float32."""
    x = np.nan_to_num(np.asarray(x, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    return np.log1p(np.maximum(x, 0.0)).astype(np.float32)


def frame_task(
    raw: RawData,
    task: str,
    ctr_threshold: float = 4.0,
    implicit_threshold: float | None = None,
    fields: list[str] | None = None,
) -> RawData:
    """Labels and rows for ``task``.

    ``rating`` keeps ratings; ``ctr`` turns ratings into clicks (rating >= ``ctr_threshold``)
    unless the labels already are clicks (Criteo); ``retrieval`` keeps the implicit
    positives (rating >= ``implicit_threshold``, all rows when None) with label 1.
    ``fields`` selects and orders the sparse fields (None: user + item for rating and
    retrieval, every field for ctr).
    """
    is_click = bool(raw.stats.get("labels_are_clicks", False))
    if task == "rating" and is_click:
        raise ValueError(f"{raw.name} has click labels: use task 'ctr', not 'rating'")
    if task == "retrieval":
        if raw.user_field is None or raw.item_field is None:
            raise ValueError(f"{raw.name} has no user and item fields: task 'retrieval' needs them")
        keep = (
            np.ones(len(raw), bool)
            if implicit_threshold is None
            else raw.label >= implicit_threshold
        )
        raw = raw.select(np.flatnonzero(keep))
        raw.label = np.ones(len(raw), np.float32)
    elif task == "ctr" and not is_click:
        raw = raw.select(np.arange(len(raw)))
        raw.label = (raw.label >= ctr_threshold).astype(np.float32)
    if fields is None:
        if task in ("rating", "retrieval") and raw.user_field and raw.item_field:
            fields = [raw.user_field, raw.item_field]
        else:
            fields = list(raw.sparse)
    unknown = [f for f in fields if f not in raw.sparse]
    if unknown:
        raise ValueError(f"unknown fields {unknown}; {raw.name} has {list(raw.sparse)}")
    raw.sparse = {f: raw.sparse[f] for f in fields}
    if task == "retrieval":
        raw.dense, raw.dense_names = None, []
    return raw


def _vocab(values: np.ndarray, min_count: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct values seen at least ``min_count`` times, with their counts."""
    uniq, counts = np.unique(values, return_counts=True)
    keep = counts >= min_count
    return uniq[keep], counts[keep]


def _encode_field(
    values: np.ndarray, missing: np.ndarray | None, vocab: np.ndarray, bag: bool
) -> np.ndarray:
    rows = encode_with(vocab, values)  # (N,) or (N, L)
    if bag:
        rows[values < 0] = -1  # padding stays padding
    elif missing is not None:
        rows[missing] = MISSING_ROW
    return rows


def prepare_raw(
    raw: RawData,
    writer: CacheWriter,
    *,
    task: str,
    split: SplitConfig,
    min_count: int = 1,
    settings: dict[str, Any] | None = None,
) -> Schema:
    """Split, encode and write ``raw`` (already framed by :func:`frame_task`); returns the
    schema (the caller calls ``writer.finish``)."""
    user = raw.sparse.get(raw.user_field) if raw.user_field else None
    parts = dict(zip(SPLITS, split_indices(split, len(raw), raw.time, user), strict=True))
    train = parts["train"]
    fields: list[SparseField] = []
    encoded: dict[str, dict[str, np.ndarray]] = {s: {} for s in SPLITS}
    for name, values in raw.sparse.items():
        bag = values.ndim == 2
        missing = raw.missing.get(name)
        tr = values[train]
        if bag:
            tr = tr[tr >= 0]
        elif missing is not None:
            tr = tr[~missing[train]]
        vocab, _ = _vocab(tr, min_count)
        writer.write_map(name, vocab)
        card = len(vocab) + NUM_SPECIAL_ROWS
        for s, idx in parts.items():
            encoded[s][name] = _encode_field(
                values[idx], None if missing is None else missing[idx], vocab, bag
            )
        rows_tr = encoded["train"][name]
        counts = np.bincount(rows_tr[rows_tr >= 0].ravel(), minlength=card)
        writer.write_counts(name, counts)
        fields.append(SparseField(name, card, max_len=values.shape[1] if bag else 1))

    dense = raw.dense if raw.dense is not None else np.zeros((len(raw), 0), np.float32)
    dense = transform_dense(dense)
    single = [f.name for f in fields if f.max_len == 1]
    for s, idx in parts.items():
        n = len(idx)
        cols = [encoded[s][f] for f in single]
        writer.write_array(s, "sparse", np.stack(cols, 1) if cols else np.zeros((n, 0), np.int32))
        for f in fields:
            if f.max_len > 1:
                writer.write_array(s, f"bag_{f.name}", encoded[s][f.name])
        writer.write_array(s, "dense", dense[idx])
        writer.write_array(s, "label", raw.label[idx].astype(np.float32))
        for k, v in raw.extra.items():
            writer.write_array(s, k, v[idx])

    label_tr = raw.label[train]
    stats: dict[str, Any] = dict(raw.stats)
    stats.update(
        rows=len(raw),
        label_mean=float(label_tr.mean()) if len(train) else 0.0,
        label_min=float(raw.label.min()) if len(raw) else 0.0,
        label_max=float(raw.label.max()) if len(raw) else 0.0,
        parse_reports=[r.to_dict() for r in raw.reports],
        settings=settings or {},
    )
    return Schema(
        name=raw.name,
        task=task,
        sparse=fields,
        dense=list(raw.dense_names) if raw.dense is not None else [],
        splits={s: len(i) for s, i in parts.items()},
        user_field=raw.user_field if raw.user_field in raw.sparse else None,
        item_field=raw.item_field if raw.item_field in raw.sparse else None,
        stats=stats,
    )
