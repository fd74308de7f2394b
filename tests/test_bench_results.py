"""The bench tables of ``docs/benchmarks.md`` equal those ``reccomp bench report`` rebuilds from
the shipped result files (``docs/bench/<name>-results.tar.gz``: each grid's ``bench.json`` and
cells)."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from reccomp.bench.report import build_report

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS_DOC = ROOT / "docs" / "benchmarks.md"
GRIDS = ["ml-1m-ctr", "ml-1m-retrieval", "synthetic-criteo", "synthetic-criteo-extreme"]


def _doc_section(name: str) -> str:
    """docs/benchmarks.md from ``**Bench grid, <name>**`` to the next grid or section."""
    text = BENCHMARKS_DOC.read_text()
    start = text.index(f"**Bench grid, {name}**")
    ends = [text.find(m, start + 1) for m in ("**Bench grid, ", "\n## ")]
    return text[start : min((e for e in ends if e > 0), default=len(text))]


@pytest.mark.parametrize("name", GRIDS)
def test_doc_tables_equal_the_rebuilt_report(name: str, tmp_path: Path) -> None:
    with tarfile.open(ROOT / "docs" / "bench" / f"{name}-results.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    out = tmp_path / name
    build_report(out)
    rebuilt = (out / "table.md").read_text() + (out / "timing.md").read_text()
    section = _doc_section(name)
    rows = [
        line
        for line in section.splitlines()
        if line.startswith("| ") and not line.startswith("| method")
    ]
    assert len(rows) > 40  # the quality, lost-quality and memory tables at least
    assert [r for r in rows if r not in rebuilt] == []
    shown = [line for line in rebuilt.splitlines() if line.startswith("`test/oracle_auc`")]
    assert all(line in section for line in shown)
