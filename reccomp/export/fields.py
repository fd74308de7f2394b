"""How an artifact reads raw values: each field's vocabulary and value kind, the dense transform.

Training encodes raw values once, into rows (:mod:`reccomp.data.prepare`); a served model must
do the same to the values of a request. :func:`field_specs` writes what that takes, from the
prepared data, into the artifact: per sparse field its sorted vocabulary
(``vocab/<field>.npy``: raw value ``vocab[i]`` is row ``i + 2``; row 0 is out-of-vocabulary,
row 1 missing) and the kind of its raw values:

=========  ==========================================================================
``int``    integers (MovieLens ids, ages, years; synthetic ids)
``str``    strings (gender, occupation names of ML-100K)
``hex``    Criteo's hashed categories: hex strings, read as integers
``prefix`` strings cut to their first ``prefix`` characters (MovieLens zip codes)
``names``  a list of names (MovieLens genres: ``["Comedy", "Drama"]`` or ``"Comedy|Drama"``)
=========  ==========================================================================

Dense features are ``log(1 + max(x, 0))`` of the raw numbers, missing -> 0, as in training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from reccomp.data.schema import Schema
from reccomp.data.sources import canonical

DENSE_TRANSFORM = "log1p_clamp"  # reccomp.data.prepare.transform_dense


def _kind(dataset: str, schema: Schema, name: str, vocab: np.ndarray) -> dict[str, Any]:
    family = canonical(dataset)
    kinds = schema.stats.get("value_kinds") or {}
    if name in kinds:  # click logs record the kind of every field
        return {"kind": kinds[name]}
    if family == "criteo" and name.startswith("C"):
        return {"kind": "hex"}
    if family == "movielens" and name == "zip":
        return {"kind": "prefix", "prefix": 3}
    if family == "movielens" and name == "genres":
        return {"kind": "names", "names": list(schema.stats.get("genres", []))}
    return {"kind": "str" if vocab.dtype.kind in "US" else "int"}


def field_specs(dataset: str, schema: Schema, out: Path) -> dict[str, Any]:
    """Write ``out/vocab/<field>.npy`` for every sparse field; returns the manifest's
    ``schema`` block: fields in order (name, kind, rows, multi-valued), dense features and
    their transform, the task, user and item fields."""
    (out / "vocab").mkdir(parents=True, exist_ok=True)
    fields = []
    for f in schema.sparse:
        vocab = schema.raw_values(f.name)
        if vocab.dtype.kind == "U":
            vocab = vocab.astype(str)
        np.save(out / "vocab" / f"{f.name}.npy", vocab, allow_pickle=False)
        fields.append(
            {
                "name": f.name,
                **_kind(dataset, schema, f.name, vocab),
                "rows": f.cardinality,
                "multi_valued": f.max_len > 1,
                "vocab": f"vocab/{f.name}.npy",
            }
        )
    return {
        "dataset": dataset,
        "task": schema.task,
        "fields": fields,
        "dense": {"names": list(schema.dense), "transform": DENSE_TRANSFORM},
        "user_field": schema.user_field,
        "item_field": schema.item_field,
    }


def raw_columns(schema: Schema, dataset: str, sparse: np.ndarray, bags: dict[str, np.ndarray],
                dense: np.ndarray) -> dict[str, list[str]]:  # fmt: skip
    """Rows back to raw values, one text column per field (``reccomp predict``): what a
    client sends the served model for the same prediction. Out-of-vocabulary rows get a value
    the vocabulary does not hold, missing rows an empty cell; dense columns are the inverse of
    the transform (``exp(v) - 1``; negatives were clamped to 0 in training).

    Args:
        sparse: (B, F1) rows of the single-valued fields, in schema order.
        bags: per multi-valued field its (B, L) rows, -1 = padding.
        dense: (B, D) transformed dense features.
    """
    out: dict[str, list[str]] = {}
    single = [f for f in schema.sparse if f.max_len == 1]
    for f in schema.sparse:
        vocab = schema.raw_values(f.name)
        kind = _kind(dataset, schema, f.name, vocab)
        text = np.array([_text(v, kind) for v in vocab] + [""], dtype=object)  # (V + 1,)
        unseen = _unseen(vocab, kind)
        if f.max_len == 1:
            rows = sparse[:, single.index(f)].astype(np.int64)  # (B,)
            col = np.where(rows >= 2, text[np.maximum(rows - 2, 0)], "")
            col[rows == 0] = unseen
            out[f.name] = col.tolist()
        else:
            bag = bags[f.name]
            out[f.name] = [
                "|".join(text[r - 2] if r >= 2 else unseen for r in row if r >= 0) for row in bag
            ]
    for j, name in enumerate(schema.dense):
        out[name] = [f"{x:.9g}" for x in np.expm1(dense[:, j].astype(np.float64))]
    return out


def _text(v: Any, kind: dict[str, Any]) -> str:
    if kind["kind"] == "hex":
        return f"{int(v):08x}"
    if kind["kind"] == "names":
        names = kind["names"]
        return names[int(v)] if 0 <= int(v) < len(names) else str(v)
    return str(v)


def _unseen(vocab: np.ndarray, kind: dict[str, Any]) -> str:
    """A raw value outside the vocabulary (the row of a value unseen in training is lost)."""
    k = kind["kind"]
    if k in ("int", "hex"):
        seen = set(vocab.tolist())
        v = -1 if k == "int" else 0xFFFFFFFF
        while v in seen:
            v -= 1
        return str(v) if k == "int" else f"{v:08x}"
    seen_s = {str(x) for x in vocab.tolist()}
    v = "<unseen>" if k != "prefix" else "~~~"
    while v in seen_s:
        v += "~"
    return v
