"""Prepared data that cannot train a model fails before training, loudly.

A file whose every line was skipped, a file with more bad lines than ``data.max_skipped``
allows, or a split with no rows is a :class:`DataError` naming the file (or split) and the
first reasons; the commands print it on one line and exit non-zero. The counts stay in the
prepared data's ``schema.json`` (``stats.parse_report(s)``) either way.

Example::

    >>> from reccomp.data.schema import Schema, SparseField
    >>> s = Schema("toy", "ctr", [SparseField("a", 3)], splits={"train": 5, "val": 0, "test": 1})
    >>> try:
    ...     check_prepared(s, max_skipped=0.01)
    ... except DataError as e:
    ...     print(e)
    toy: the val split is empty (train 5, val 0, test 1): the source held no rows
"""

from __future__ import annotations

from typing import Any

from reccomp.data.schema import Schema


class DataError(ValueError):
    """Input data a model cannot be trained on (reported on one line, exit status 2)."""


def parse_reports(schema: Schema) -> list[dict[str, Any]]:
    """Per source file: lines read, lines skipped and a few reasons."""
    stats = schema.stats
    if "parse_reports" in stats:
        return list(stats["parse_reports"])
    return [stats["parse_report"]] if "parse_report" in stats else []


def _reasons(report: dict[str, Any]) -> str:
    examples = report.get("examples") or []
    return "; ".join(examples[:3]) if examples else "no reasons recorded"


def check_prepared(schema: Schema, max_skipped: float) -> None:
    """Raise :class:`DataError` if ``schema``'s data cannot train a model (see module)."""
    for r in parse_reports(schema):
        lines, skipped = int(r.get("lines", 0)), int(r.get("skipped", 0))
        source = r.get("source", schema.name)
        if lines and skipped >= lines:
            raise DataError(
                f"{source}: every line ({lines:,}) was skipped: {_reasons(r)}. Is it the "
                f"right file and format for data.dataset {schema.name!r}?"
            )
        if lines and skipped / lines > max_skipped:
            raise DataError(
                f"{source}: {skipped:,} of {lines:,} lines ({skipped / lines:.1%}) are bad, "
                f"over data.max_skipped {max_skipped:g}: {_reasons(r)}. Fix the file, or "
                "raise data.max_skipped to train on the rest"
            )
    empty = [s for s, n in schema.splits.items() if n == 0]
    if empty or not schema.splits:
        sizes = ", ".join(f"{k} {v:,}" for k, v in schema.splits.items()) or "no rows"
        sources = "; ".join(
            f"{r.get('source')}: {r.get('lines', 0):,} lines, {r.get('skipped', 0):,} skipped"
            for r in parse_reports(schema)
        )
        if not empty or len(empty) == len(schema.splits):
            which = "every split is empty"
        elif len(empty) == 1:
            which = f"the {empty[0]} split is empty"
        else:
            which = f"the {' and '.join(empty)} splits are empty"
        raise DataError(f"{schema.name}: {which} ({sizes}): {sources or 'the source held no rows'}")
