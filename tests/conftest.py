"""Shared fixtures: an isolated cache, the real data sets beside the repo, tiny configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = (REPO / ".." / "shared" / "datasets").resolve()
CONFIGS = REPO / "configs"


def shared_dataset(name: str) -> Path:
    """Path of a real data set in ../shared/datasets; skips the test when it is absent."""
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every test session prepares data into its own cache directory."""
    os.environ["RECCOMP_CACHE"] = str(tmp_path_factory.mktemp("reccomp-cache"))
