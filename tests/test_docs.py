"""The documentation holds together: links resolve, the docs/ pages open with a title and a
summary, the README stays a short front door, and no tracked file speaks of work sessions or
issue numbers (history belongs in commit messages)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["methods", "benchmarks", "performance", "data", "architecture", "serving"]
README_MAX_LINES = 250

# [text](target) and ![alt](target); the target ends at whitespace or ")" (an optional
# "title" after it is ignored)
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_FENCE = re.compile(r"^(```|~~~)")
_HISTORY = re.compile(r"\b(session|issue) ?#?\d+", re.IGNORECASE)


def _markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _prose_lines(text: str) -> list[str]:
    """Lines outside fenced code blocks (links in code are not links)."""
    out, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        if not fenced:
            out.append(line)
    return out


def _relative_links(path: Path) -> list[str]:
    links = []
    for line in _prose_lines(path.read_text(encoding="utf-8")):
        for target in _LINK.findall(line):
            if re.match(r"(https?:|mailto:)", target, re.IGNORECASE) or target.startswith("#"):
                continue
            links.append(target)
    return links


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path) -> None:
    missing = [
        target
        for target in _relative_links(path)
        if not (path.parent / target.split("#", 1)[0]).exists()
    ]
    assert missing == [], f"{path.relative_to(ROOT)}: links to missing files: {missing}"


def test_link_pattern_finds_links_and_images() -> None:
    text = "See [a](docs/a.md#x), ![plot](bench/p.png) and [web](https://x.org) [top](#top)."
    assert _LINK.findall(text) == ["docs/a.md#x", "bench/p.png", "https://x.org", "#top"]


@pytest.mark.parametrize("name", DOCS)
def test_doc_starts_with_title_and_summary(name: str) -> None:
    path = ROOT / "docs" / f"{name}.md"
    assert path.is_file(), f"docs/{name}.md is missing"
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) >= 3, f"docs/{name}.md is too short"
    assert re.match(r"# \S", lines[0]), f"docs/{name}.md must start with a '# Title' line"
    assert lines[1].strip() == "", f"docs/{name}.md: a blank line must follow the title"
    first = lines[2]
    not_prose = re.compile(r"\s*(#|\||[-*+] |\d+[.)] |```|~~~|>|<|!\[)")
    assert first.strip() and not not_prose.match(first), (
        f"docs/{name}.md: the title must be followed by a paragraph of prose, got {first!r}"
    )


def test_readme_is_short() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines; keep it a front door of at most "
        f"{README_MAX_LINES} and move depth into docs/"
    )


def _tracked_text_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    names = out.stdout.split(b"\0")
    this = Path(__file__).resolve()
    files = []
    for name in names:
        if not name:
            continue
        path = ROOT / name.decode()
        if path.resolve() == this or not path.is_file():
            continue
        files.append(path)
    return files


def test_no_tracked_file_mentions_sessions_or_issues() -> None:
    hits = []
    for path in _tracked_text_files():
        data = path.read_bytes()
        if b"\0" in data[:8192]:  # binary
            continue
        text = data.decode("utf-8", errors="replace")
        for n, line in enumerate(text.splitlines(), 1):
            if _HISTORY.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()[:100]}")
    assert hits == [], "history belongs in commit messages:\n" + "\n".join(hits)
