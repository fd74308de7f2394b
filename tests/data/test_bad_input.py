"""Bad input files: counted skips or one clear error line, never a traceback or a silent run."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from reccomp.data.cli import data_main
from tests.conftest import CONFIGS
from tests.test_cli import write_tiny_criteo

CRITEO = str(CONFIGS / "criteo-kaggle-dlrm.yaml")


def _prepare(root: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    code = data_main(["prepare", "--config", CRITEO, "--data.root", str(root), "--data.min_count",
                      "1", *extra])  # fmt: skip
    out = capsys.readouterr()
    return code, out.out + out.err


def _good_lines(tmp: Path, n: int = 400) -> list[bytes]:
    return write_tiny_criteo(tmp / "src" / "train.txt", n=n).read_bytes().splitlines(True)


def _write(tmp: Path, data: bytes) -> Path:
    root = tmp / "data"
    root.mkdir(exist_ok=True)
    (root / "train.txt").write_bytes(data)
    return root


FATAL = {
    "empty file": lambda lines: b"",
    "header only": lambda lines: b"label\t" + b"\t".join(b"I%d" % i for i in range(1, 14)) + b"\n",
    "binary garbage": lambda lines: bytes(range(256)) * 50,
    "wrong delimiter": lambda lines: b"".join(ln.replace(b"\t", b";") for ln in lines),
    "labels outside 0/1": lambda lines: b"".join(b"7" + ln[1:] for ln in lines),
    "gzip cut short": lambda lines: gzip.compress(b"".join(lines))[:200],
}


@pytest.mark.parametrize("name", list(FATAL))
def test_unusable_file_fails_with_one_clear_line(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _write(tmp_path, FATAL[name](_good_lines(tmp_path)))
    code, out = _prepare(root, capsys)
    assert code != 0, out
    errors = [ln for ln in out.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in out, out
    assert "train.txt" in errors[0] or "split" in errors[0]


TOLERATED = {
    "truncated last line": lambda lines: b"".join(lines) + b"1\t2\t3",
    "UTF-8 BOM": lambda lines: b"\xef\xbb\xbf" + b"".join(lines),
    "CRLF line ends": lambda lines: b"".join(ln.replace(b"\n", b"\r\n") for ln in lines),
    "huge and negative integers": lambda lines: b"".join(
        [b"1\t-5\t99999999999999999999\t" + b"\t".join(lines[0].split(b"\t")[3:]), *lines[1:]]
    ),
}


@pytest.mark.parametrize("name", list(TOLERATED))
def test_tolerable_damage_is_counted_and_trains(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = _good_lines(tmp_path, 400)
    root = _write(tmp_path, TOLERATED[name](lines))
    code, out = _prepare(root, capsys, "--data.max_skipped", "0.05")
    assert code == 0, out
    assert "Traceback" not in out
    assert "train=" in out  # data info printed: rows per split


def test_max_skipped_is_the_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = _good_lines(tmp_path, 200)
    bad = [b"9" + ln[1:] for ln in lines[:10]]  # 10 of 200 lines: 5% bad labels
    root = _write(tmp_path, b"".join(bad + lines[10:]))
    code, out = _prepare(root, capsys)  # default 0.01
    assert code != 0 and "10 of 200 lines (5.0%) are bad, over data.max_skipped 0.01" in out
    code, out = _prepare(root, capsys, "--data.max_skipped", "0.1")
    assert code == 0, out


def test_fit_on_an_all_bad_file_exits_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from reccomp.cli import run_cli

    monkeypatch.chdir(tmp_path)
    root = _write(tmp_path, b"1 2 3\n0 4 5\n1 2 2\n")
    with pytest.raises(SystemExit) as exit_:
        run_cli(["fit", "--config", CRITEO, "--data.root", str(root)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "every line (3) was skipped" in err and "expected 40 columns" in err
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("*.ckpt"))


def test_gzip_file_is_detected_by_content(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = _good_lines(tmp_path, 300)
    plain = _write(tmp_path, b"".join(lines))
    code, out_plain = _prepare(plain, capsys)
    assert code == 0, out_plain
    packed = tmp_path / "packed"
    packed.mkdir()
    (packed / "train.txt").write_bytes(gzip.compress(b"".join(lines)))  # no .gz in the name
    code, out = _prepare(packed, capsys)
    assert code == 0, out
    assert "gzip-compressed Criteo TSV" in out
    rows = [ln for ln in out.splitlines() if ln.startswith("splits")]
    assert rows == [ln for ln in out_plain.splitlines() if ln.startswith("splits")]
