"""What methods learn from the data: per-row training frequencies and the interaction graph."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from reccomp.data.schema import Schema


@dataclass
class FitData:
    """Training-split statistics for :meth:`TableMethod.fit`.

    Args:
        counts_by_field: field -> (cardinality,) training frequency of each row.
        user_field, item_field: the fields of the interaction graph (None: no graph).
        users, items: (E,) rows of each training interaction, when not read from
            ``columns`` (the user and item fields' columns).
        columns: field -> (N,) training rows of every single-valued field.
        labels: (N,) training labels of a CTR data set (clicks), else None.

    Example::

        data = FitData.from_schema(Schema.load(prepared_dir))
        collection.fit(data)
    """

    counts_by_field: dict[str, np.ndarray] = field(default_factory=dict)
    user_field: str | None = None
    item_field: str | None = None
    users: np.ndarray | None = None
    items: np.ndarray | None = None
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    labels: np.ndarray | None = None

    def counts(self, name: str) -> np.ndarray:
        if name not in self.counts_by_field:
            raise KeyError(f"no training counts for field {name!r}")
        return self.counts_by_field[name]

    def interactions(
        self, fields: tuple[str, str] | None = None, positive_only: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """(E,) rows of the two fields in each training row: the user-item graph's edges.

        ``fields`` names another pair of single-valued fields (e.g. two Criteo columns);
        ``positive_only`` keeps the clicked rows of CTR data (all rows otherwise).
        """
        u, i = self._pair(fields)
        if positive_only and self.labels is not None:
            keep = np.asarray(self.labels) > 0.5
            return u[keep], i[keep]
        return u, i

    def _pair(self, fields: tuple[str, str] | None) -> tuple[np.ndarray, np.ndarray]:
        pair = tuple(fields) if fields is not None else (self.user_field, self.item_field)
        if pair == (self.user_field, self.item_field) and self.users is not None:
            return self.users, self.items  # type: ignore[return-value]
        if None in pair:
            raise ValueError(
                "this data has no user-item interaction graph (the schema names no user and "
                "item fields): graph methods need one"
            )
        missing = [f for f in pair if f not in self.columns]
        if missing:
            raise ValueError(f"no training column for field(s) {missing}")
        return np.asarray(self.columns[pair[0]]), np.asarray(self.columns[pair[1]])

    @classmethod
    def from_schema(cls, schema: Schema) -> FitData:
        """Counts and the training graph of a prepared data set (``schema.root`` set)."""
        if schema.root is None:
            raise ValueError("FitData.from_schema needs a schema loaded from its prepared dir")
        counts = {f.name: schema.counts(f.name) for f in schema.sparse}
        sparse = np.load(schema.root / "train" / "sparse.npy", mmap_mode="r")  # (N, F1)
        single = [f.name for f in schema.sparse if f.max_len == 1]
        columns = {name: sparse[:, i] for i, name in enumerate(single)}  # lazy mmap views
        labels = None
        if schema.task == "ctr":
            labels = np.load(schema.root / "train" / "label.npy", mmap_mode="r")
        return cls(counts, schema.user_field, schema.item_field, columns=columns, labels=labels)
