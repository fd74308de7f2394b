"""Raw request values -> the program's tensors, with training's vocabularies (numpy only).

The artifact's ``manifest.json`` names each field's kind (see :mod:`reccomp.export.fields`)
and its sorted vocabulary. A value absent from a row, ``None`` or ``""`` takes the missing row
(1), as in training; a value the vocabulary lacks takes the out-of-vocabulary row (0). A value
of the wrong type (a list for a single-valued field, a string for an integer field) is a
:class:`RequestError` that names the field and the row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

OOV_ROW, MISSING_ROW = 0, 1


class RequestError(ValueError):
    """A request the model cannot answer (unknown field, wrong type, too many rows)."""


def is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, str) and v == "") or (isinstance(v, float) and math.isnan(v))


_INT64 = np.iinfo(np.int64)


def _as_int(v: Any, field: str, row: int) -> int:
    out = _as_any_int(v, field, row)
    # no vocabulary holds an id beyond int64: such a value is unseen (out of vocabulary)
    return out if _INT64.min < out <= _INT64.max else int(_INT64.min)


def _as_any_int(v: Any, field: str, row: int) -> int:
    if isinstance(v, bool):
        raise RequestError(f"row {row}: field {field!r} takes an integer, got {v!r}")
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return int(v)
    if isinstance(v, str):  # as CSV files give them: "196", "260.0"
        try:
            return int(v)
        except ValueError:
            try:
                x = float(v)
            except ValueError:
                x = math.nan
            if x.is_integer():
                return int(x)
    raise RequestError(f"row {row}: field {field!r} takes an integer, got {v!r}")


def _as_str(v: Any, field: str, row: int) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return str(v)
    raise RequestError(f"row {row}: field {field!r} takes a string, got {v!r}")


def _hex(v: Any, field: str, row: int) -> int:
    s = _as_str(v, field, row)
    try:
        x = int(s, 16) if len(s) <= 16 else -1
    except ValueError:
        return -1  # not a hash training could have seen: out of vocabulary
    return x if x <= _INT64.max else -1


class FieldEncoder:
    """One sparse field: raw values -> rows.

    Args:
        spec: the field's entry of the manifest's ``schema.fields``.
        vocab: its sorted vocabulary (``vocab[i]`` is row ``i + 2``).
    """

    def __init__(self, spec: dict[str, Any], vocab: np.ndarray) -> None:
        self.name = spec["name"]
        self.kind = spec["kind"]
        self.multi = bool(spec.get("multi_valued", False))
        self.prefix = int(spec.get("prefix", 0))
        self.names = {n: i for i, n in enumerate(spec.get("names", []))}
        self.vocab = vocab

    def _lookup(self, keys: np.ndarray) -> np.ndarray:
        """(K,) keys -> (K,) int64 rows."""
        if len(self.vocab) == 0 or len(keys) == 0:
            return np.full(len(keys), OOV_ROW, np.int64)
        pos = np.minimum(np.searchsorted(self.vocab, keys), len(self.vocab) - 1)
        return np.where(self.vocab[pos] == keys, pos + 2, OOV_ROW).astype(np.int64)

    def _key(self, v: Any, row: int) -> Any:
        if self.kind == "int":
            return _as_int(v, self.name, row)
        if self.kind == "hex":
            return _hex(v, self.name, row)
        if self.kind == "prefix":
            return _as_str(v, self.name, row)[: self.prefix]
        if self.kind == "names":
            return self.names.get(_as_str(v, self.name, row), -1)
        return _as_str(v, self.name, row)

    def _fast(self, values: Sequence[Any]) -> np.ndarray | None:
        """Keys of a column of plain ints (int fields) or plain strings (str fields) in one
        numpy call; None when any value needs the per-value path (missing, other types)."""
        types = set(map(type, values))
        if self.kind == "int" and types == {int}:
            try:
                return np.array(values, dtype=np.int64)
            except OverflowError:  # beyond int64: unseen, per-value path maps it to OOV
                return None
        if self.kind == "str" and types == {str} and "" not in values:
            return np.array(values)  # its own width: a longer string must not be cut
        return None

    def encode(self, values: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        """``(rows (N,), lengths (B,))`` of one value (or list, multi-valued) per row."""
        if not self.multi:
            fast = self._fast(values)
            if fast is not None:
                return self._lookup(fast), np.ones(len(values), np.int64)
            rows = np.full(len(values), MISSING_ROW, np.int64)
            present = [i for i, v in enumerate(values) if not is_missing(v)]
            if present:
                for i in present:
                    if isinstance(values[i], (list, tuple, dict)):
                        raise RequestError(
                            f"row {i}: field {self.name!r} takes one value, got {values[i]!r}"
                        )
                keys = [self._key(values[i], i) for i in present]
                arr = np.array(keys, dtype=self.vocab.dtype if self.kind in ("str", "prefix")
                               else np.int64)  # fmt: skip
                rows[present] = self._lookup(arr)
            return rows, np.ones(len(values), np.int64)
        keys_all: list[Any] = []
        lengths = np.zeros(len(values), np.int64)
        for i, v in enumerate(values):
            if is_missing(v):
                continue
            items = v.split("|") if isinstance(v, str) else v
            if not isinstance(items, (list, tuple)):
                raise RequestError(f"row {i}: field {self.name!r} takes a list, got {v!r}")
            keys = [self._key(x, i) for x in items if not is_missing(x)]
            keys_all += keys
            lengths[i] = len(keys)
        return self._lookup(np.array(keys_all, dtype=np.int64)), lengths


def dense_column(values: Sequence[Any], name: str) -> np.ndarray:
    """(B,) float32 ``log(1 + max(x, 0))`` of raw numbers; missing -> 0."""
    out = np.zeros(len(values), np.float64)
    for i, v in enumerate(values):
        if is_missing(v):
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float, str, np.number)):
            raise RequestError(f"row {i}: dense feature {name!r} takes a number, got {v!r}")
        try:
            x = float(v)
        except ValueError:
            raise RequestError(
                f"row {i}: dense feature {name!r} takes a number, got {v!r}"
            ) from None
        out[i] = x if math.isfinite(x) else 0.0
    return np.log1p(np.maximum(out, 0.0)).astype(np.float32)
