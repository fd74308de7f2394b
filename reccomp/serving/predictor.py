"""Load an exported artifact and predict from raw values.

Only torch, numpy and (for quantized tables) FBGEMM's operators are needed: neither Lightning
nor reccomp's training or data code is imported. :func:`load` checks the manifest's format
version and every file's sha256 before anything is read.

Example::

    >>> from reccomp.serving import load
    >>> model = load("runs/ml-100k-mf/version_0/export/none")           # doctest: +SKIP
    >>> model.predict([{"user": 196, "item": 242}, {"user": 22}])        # doctest: +SKIP
    array([3.71, 3.02], dtype=float32)
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reccomp.serving.encode import FieldEncoder, RequestError, dense_column, is_missing

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class ArtifactError(ValueError):
    """An artifact that cannot be loaded as it is (names the file or field)."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The manifest of ``directory``, its format version and every file's sha256 checked."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{path}: missing (not an exported reccomp model)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path}: not valid JSON ({e})") from None
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: format version {version!r}, this reccomp reads version {FORMAT_VERSION}"
        )
    for name, digest in manifest.get("files", {}).items():
        f = directory / name
        if not f.is_file():
            raise ArtifactError(f"{f}: missing (listed in {MANIFEST})")
        if sha256(f) != digest:
            raise ArtifactError(f"{f}: sha256 differs from {MANIFEST} (file changed or corrupt)")
    return manifest


@dataclass
class Encoded:
    """Rows ready for the program: ``dense`` (B, D) float32, and per sparse field its rows
    ``values[f]`` (N_f,) and per-row counts ``lengths[f]`` (B,). Several requests'
    encodings concatenate into one batch (:meth:`concat`): the server's micro-batching."""

    dense: np.ndarray
    values: list[np.ndarray]
    lengths: list[np.ndarray]

    def __len__(self) -> int:
        return self.dense.shape[0]

    @staticmethod
    def concat(parts: list[Encoded]) -> Encoded:
        return Encoded(
            np.concatenate([p.dense for p in parts]),
            [np.concatenate([p.values[f] for p in parts]) for f in range(len(parts[0].values))],
            [np.concatenate([p.lengths[f] for p in parts]) for f in range(len(parts[0].values))],
        )

    def slice(self, start: int, stop: int) -> Encoded:
        values = []
        for v, n in zip(self.values, self.lengths, strict=True):
            offsets = np.concatenate([[0], np.cumsum(n)])
            values.append(v[offsets[start] : offsets[min(stop, len(n))]])
        return Encoded(self.dense[start:stop], values, [n[start:stop] for n in self.lengths])


class Predictor:
    """An exported model: raw feature values in, predictions out.

    Args:
        directory: the artifact (``manifest.json``, ``model.pt2``, ``vocab/``).
        backend: ``export`` (the ``torch.export`` program, run by torch's graph
            interpreter), ``aoti`` (the AOTInductor package of ``export --aoti``: compiled, 3-5x
            faster) or ``auto`` (``aoti`` when the artifact has it).
        max_batch: rows per program call (longer inputs are split).
    """

    def __init__(
        self, directory: str | Path, backend: str = "auto", max_batch: int = 65536
    ) -> None:
        self.directory = Path(directory)
        self.manifest = read_manifest(self.directory)
        schema = self.manifest["schema"]
        self.task: str = schema["task"]
        self.fields = [
            FieldEncoder(f, np.load(self.directory / f["vocab"], allow_pickle=False))
            for f in schema["fields"]
        ]
        self.field_names = [f.name for f in self.fields]
        self.dense_names: list[str] = list(schema["dense"]["names"])
        self.known = set(self.field_names) | set(self.dense_names)
        self.max_batch = max_batch
        self.min_batch = int(self.manifest["program"].get("min_batch", 2))
        if any(t["dtype"] not in ("fp32",) for t in self.manifest["storage_tables"]):
            import fbgemm_gpu  # noqa: F401  (registers the quantized lookup operators)
        package = self.manifest["program"].get("aoti")
        if backend == "auto":
            backend = "aoti" if package else "export"
        self.backend = backend
        if backend == "aoti":
            if not package:
                raise ArtifactError(f"{self.directory}: no AOTInductor package (export --aoti)")
            self._run = torch._inductor.aoti_load_package(str(self.directory / package))
        elif backend == "export":
            serde = logging.getLogger("torch._export")  # warns of symbols it dropped
            level = serde.level
            serde.setLevel(logging.ERROR)
            try:
                program = torch.export.load(str(self.directory / self.manifest["program"]["file"]))
            finally:
                serde.setLevel(level)
            # forward() itself: the module's call first checks the inputs against the
            # exported shape constraints with sympy, half the cost of a small batch; the
            # encoder always builds inputs that satisfy them
            self._run = program.module().forward
        else:
            raise ValueError(f"backend must be 'auto', 'export' or 'aoti', got {backend!r}")

    # -- raw values -> tensors ---------------------------------------------------------------
    def encode(self, rows: Sequence[dict[str, Any]]) -> Encoded:
        """Raw rows -> their dense features and per-field rows (:class:`Encoded`); a
        :class:`RequestError` names an unknown field or a value of the wrong type."""
        # checked for the whole batch in C-level set operations, row by row only on failure
        if set(map(type, rows)) - {dict}:
            i = next(i for i, r in enumerate(rows) if not isinstance(r, dict))
            raise RequestError(f"row {i}: expected an object of field values, got {rows[i]!r}")
        if rows and set().union(*rows) - self.known:
            i, r = next((i, r) for i, r in enumerate(rows) if set(r) - self.known)
            raise RequestError(
                f"row {i}: unknown field(s) {sorted(set(r) - self.known)}; the model's fields "
                f"are {self.field_names + self.dense_names}"
            )
        values, lengths = [], []
        for f in self.fields:
            v, n = f.encode(list(map(dict.get, rows, repeat(f.name))))
            values.append(v)
            lengths.append(n)
        dense = [dense_column(list(map(dict.get, rows, repeat(d))), d) for d in self.dense_names]
        dense_a = np.stack(dense, 1) if dense else np.zeros((len(rows), 0), np.float32)
        return Encoded(dense_a, values, lengths)

    def run(self, enc: Encoded) -> np.ndarray:
        """Predictions (B,) of encoded rows: one program call per ``max_batch`` rows."""
        b = len(enc)
        if b == 0:
            return np.zeros(0, np.float32)
        if b > self.max_batch:
            parts = [
                self.run(enc.slice(s, s + self.max_batch)) for s in range(0, b, self.max_batch)
            ]
            return np.concatenate(parts)
        if b < self.min_batch:  # a program exported for batches of 2 or more: repeat rows
            return self.run(Encoded.concat([enc] * self.min_batch))[:b]
        values = np.concatenate(enc.values)
        lengths = np.concatenate(enc.lengths)
        dense = torch.from_numpy(enc.dense)
        if values.size == 0:  # every field empty: add a row holding one missing value each
            pad = Encoded(np.zeros((1, enc.dense.shape[1]), np.float32),
                          [np.ones(1, np.int64)] * len(enc.values),
                          [np.ones(1, np.int64)] * len(enc.values))  # fmt: skip
            return self.run(Encoded.concat([enc, pad]))[:b]
        with torch.no_grad():
            _, pred = self._run(dense, torch.from_numpy(values), torch.from_numpy(lengths))
        return pred.float().numpy()

    # -- the API -----------------------------------------------------------------------------
    def predict(self, rows: Any) -> np.ndarray:
        """Predictions (B,) float32 of rows of raw values: a list of dicts or a pandas
        ``DataFrame`` (one column per field). CTR: click probabilities; rating: ratings;
        retrieval: scores."""
        if hasattr(rows, "to_dict") and hasattr(rows, "columns"):  # a DataFrame
            rows = [
                {k: (None if is_missing(v) else v) for k, v in r.items()}
                for r in rows.to_dict(orient="records")
            ]
        rows = list(rows)
        if not rows:
            return np.zeros(0, np.float32)
        return self.run(self.encode(rows))

    def recommend(
        self, user: Any, k: int = 20, exclude: Sequence[Any] = ()
    ) -> list[tuple[Any, float]]:
        """Top-``k`` items for ``user`` (retrieval models): ``[(item, score), ...]``, best
        first; the items of ``exclude`` are left out."""
        schema = self.manifest["schema"]
        item_field, user_field = schema.get("item_field"), schema.get("user_field")
        if self.task != "retrieval" or not item_field or not user_field:
            raise RequestError("recommend needs a retrieval model (task 'retrieval')")
        items = next(f for f in self.fields if f.name == item_field).vocab
        excluded = {str(x) for x in exclude}
        keep = [i for i, it in enumerate(items.tolist()) if str(it) not in excluded]
        rows = [{user_field: user, item_field: items[i].item()} for i in keep]
        scores = self.predict(rows)
        top = np.argsort(-scores, kind="stable")[: max(int(k), 0)]
        return [(items[keep[i]].item(), float(scores[i])) for i in top]


def load(directory: str | Path, backend: str = "auto") -> Predictor:
    """The exported model in ``directory`` (see :class:`Predictor`)."""
    return Predictor(directory, backend=backend)
