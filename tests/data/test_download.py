"""Downloads through the real code path against a local HTTP server on 127.0.0.1 only."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import re
import socket
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from reccomp.data import download as dl
from reccomp.data.download import (
    BASE_URL_ENV,
    DATASETS,
    ChecksumError,
    DownloadError,
    UnknownDatasetError,
    UnsafeArchiveError,
    download,
    list_datasets,
    resolve_url,
)

U_DATA = "1\t10\t5\t881250949\n2\t20\t3\t891717742\n"
TRAIN = "0\t1\t2\t\t" + "\t".join(f"{i:08x}" for i in range(26)) + "\n"


def _zip_bytes(members: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, text in members.items():
            zf.writestr(name, text)
    return buf.getvalue()


def _tgz_bytes(members: dict[str, str], symlink: str | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        if symlink:
            info = tarfile.TarInfo(symlink)
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tf.addfile(info)
    return buf.getvalue()


ML100K_ZIP = _zip_bytes(
    {"ml-100k/u.data": U_DATA, "ml-100k/u.item": "10|A (1995)|\n", "ml-100k/u.user": "1|24|M\n"}
)
CRITEO_TGZ = _tgz_bytes({"train.txt": TRAIN, "test.txt": TRAIN[2:], "readme.txt": "hi\n"})


def _md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


def _sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: list[str]  # set per server

    def do_GET(self) -> None:
        self.requests.append(self.path)
        if self.path.endswith("/short.zip"):  # announces more bytes than it sends
            self.send_response(200)
            self.send_header("Content-Length", str(len(ML100K_ZIP) + 1000))
            self.end_headers()
            self.wfile.write(ML100K_ZIP)
            return
        super().do_GET()

    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass


@pytest.fixture
def served(tmp_path: Path) -> Path:
    d = tmp_path / "served"
    d.mkdir()
    (d / "ml-100k.zip").write_bytes(ML100K_ZIP)
    (d / "dac.tar.gz").write_bytes(CRITEO_TGZ)
    return d


@pytest.fixture
def server(served: Path) -> Iterator[tuple[str, list[str]]]:
    """Base URL of a local server for ``served`` and the list of paths it was asked for."""
    requests: list[str] = []
    handler = type("H", (_Handler,), {"requests": requests})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=served))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", requests
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture(autouse=True)
def _no_env_base(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(BASE_URL_ENV, raising=False)


def _register(monkeypatch: pytest.MonkeyPatch, name: str, **changes: object) -> None:
    monkeypatch.setitem(DATASETS, name, dataclasses.replace(DATASETS[name], **changes))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_zip_download_extracts_then_second_call_skips(server, tmp_path, monkeypatch, capsys):
    base, requests = server
    _register(monkeypatch, "ml-100k", md5=_md5(ML100K_ZIP), sha256=_sha256(ML100K_ZIP))
    root = tmp_path / "data"
    out = download("ml-100k", root, url=base)
    assert out == root / "ml-100k"
    assert (out / "u.data").read_text() == U_DATA
    assert (root / "ml-100k.zip").read_bytes() == ML100K_ZIP
    assert sorted(p.name for p in root.iterdir()) == ["ml-100k", "ml-100k.zip"]  # no temp left
    assert requests == ["/ml-100k.zip"]
    assert "verified sha256, md5" in capsys.readouterr().err

    assert download("ml-100k", root, url=base) == out
    assert requests == ["/ml-100k.zip"]  # nothing fetched the second time
    assert "already in" in capsys.readouterr().err

    download("ml-100k", root, url=base, force=True)
    assert requests == ["/ml-100k.zip", "/ml-100k.zip"]


def test_tar_gz_via_env_base_url(server, tmp_path, monkeypatch):
    base, requests = server
    monkeypatch.setenv(BASE_URL_ENV, base + "/")
    _register(monkeypatch, "criteo-kaggle", md5=_md5(CRITEO_TGZ))
    out = download("criteo-kaggle", tmp_path)
    assert out == tmp_path / "criteo-kaggle"  # flat archive goes into its own folder
    assert (out / "train.txt").read_text() == TRAIN
    assert sorted(p.name for p in out.iterdir()) == ["readme.txt", "test.txt", "train.txt"]
    assert requests == ["/dac.tar.gz"]


def test_wrong_checksum_raises_and_leaves_nothing(server, tmp_path, monkeypatch):
    base, _ = server
    _register(monkeypatch, "ml-100k", md5="0" * 32, sha256=None)
    root = tmp_path / "data"
    with pytest.raises(ChecksumError) as e:
        download("ml-100k", root, url=f"{base}/ml-100k.zip")
    assert "0" * 32 in str(e.value) and _md5(ML100K_ZIP) in str(e.value)
    assert list(root.iterdir()) == []


@pytest.mark.parametrize("good", [True, False])
def test_md5_sidecar(server, served, tmp_path, monkeypatch, capsys, good):
    base, requests = server
    _register(monkeypatch, "ml-100k", md5=None, sha256=None, md5_sidecar=True)
    digest = _md5(ML100K_ZIP) if good else _md5(b"something else")
    (served / "ml-100k.zip.md5").write_text(f"MD5 (ml-100k.zip) = {digest}\n")
    if good:
        out = download("ml-100k", tmp_path, url=base)
        assert (out / "u.data").read_text() == U_DATA
        assert f"verified md5 against {base}/ml-100k.zip.md5" in capsys.readouterr().err
    else:
        with pytest.raises(ChecksumError, match=digest):
            download("ml-100k", tmp_path, url=base)
        assert list(tmp_path.glob("*ml-100k*")) == []
    assert requests == ["/ml-100k.zip", "/ml-100k.zip.md5"]


def test_no_checksum_anywhere_warns_but_extracts(server, tmp_path, monkeypatch, capsys):
    base, _ = server  # the server has no .md5 file: 404
    _register(monkeypatch, "ml-100k", md5=None, sha256=None, md5_sidecar=True)
    out = download("ml-100k", tmp_path, url=base)
    assert (out / "u.data").is_file()
    err = capsys.readouterr().err
    assert "WARNING" in err and "could not be verified" in err and _sha256(ML100K_ZIP) in err


def test_unreachable_host_explains_what_to_do(tmp_path):
    src = f"http://127.0.0.1:{_closed_port()}/m"
    with pytest.raises(DownloadError) as e:
        download("ml-1m", tmp_path / "data", url=src, timeout=5)
    msg = str(e.value)
    assert f"{src}/ml-1m.zip" in msg
    assert "no internet access" in msg
    assert str(tmp_path / "data" / "ml-1m.zip") in msg and "--data.root" in msg
    assert list((tmp_path / "data").iterdir()) == []


def test_http_404_and_truncated_transfer(server, tmp_path):
    base, _ = server
    root = tmp_path / "data"
    with pytest.raises(DownloadError, match="HTTP 404"):
        download("ml-25m", root, url=base)
    n = len(ML100K_ZIP)
    with pytest.raises(
        DownloadError, match=re.escape(f"stopped after {n:,} of {n + 1000:,} bytes")
    ):
        download("ml-100k", root, url=f"{base}/short.zip")
    assert list(root.iterdir()) == []  # no partial archive


def test_archive_placed_by_hand_needs_no_network(tmp_path, monkeypatch):
    _register(monkeypatch, "ml-100k", md5=_md5(ML100K_ZIP), sha256=None)
    (tmp_path / "ml-100k.zip").write_bytes(ML100K_ZIP)
    out = download("ml-100k", tmp_path, url=f"http://127.0.0.1:{_closed_port()}")
    assert (out / "u.data").read_text() == U_DATA


def test_damaged_unverified_archive_is_reported(tmp_path, monkeypatch, capsys):
    _register(monkeypatch, "criteo-kaggle", md5=None)
    (tmp_path / "dac.tar.gz").write_bytes(CRITEO_TGZ[: len(CRITEO_TGZ) // 2])
    with pytest.raises(DownloadError, match="is damaged"):
        download("criteo-kaggle", tmp_path, url=f"http://127.0.0.1:{_closed_port()}")
    assert "its host has none" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dac.tar.gz"]


@pytest.mark.parametrize(
    "bad", ["../evil.txt", "criteo-kaggle/../../evil.txt", "/tmp/reccomp-evil.txt"]
)
def test_tar_members_escaping_root_are_rejected(server, served, tmp_path, monkeypatch, bad):
    base, _ = server
    evil = _tgz_bytes({"train.txt": TRAIN, bad: "pwned\n"})
    (served / "dac.tar.gz").write_bytes(evil)
    _register(monkeypatch, "criteo-kaggle", md5=_md5(evil))
    root = tmp_path / "data"
    with pytest.raises(UnsafeArchiveError, match="outside"):
        download("criteo-kaggle", root, url=base)
    assert not list(tmp_path.rglob("*evil*")) and not (root / "criteo-kaggle").exists()
    assert not Path("/tmp/reccomp-evil.txt").exists()
    assert [p.name for p in root.iterdir()] == ["dac.tar.gz"]  # no half-extracted temp dir


def test_tar_links_and_zip_traversal_are_rejected(server, served, tmp_path, monkeypatch):
    base, _ = server
    linked = _tgz_bytes({"train.txt": TRAIN}, symlink="passwd")
    (served / "dac.tar.gz").write_bytes(linked)
    _register(monkeypatch, "criteo-kaggle", md5=_md5(linked))
    with pytest.raises(UnsafeArchiveError, match="links"):
        download("criteo-kaggle", tmp_path / "a", url=base)

    evil = _zip_bytes({"ml-100k/u.data": U_DATA, "../evil.txt": "pwned\n"})
    (served / "ml-100k.zip").write_bytes(evil)
    _register(monkeypatch, "ml-100k", md5=_md5(evil), sha256=None)
    with pytest.raises(UnsafeArchiveError, match="outside"):
        download("ml-100k", tmp_path / "b", url=base)
    assert not list(tmp_path.rglob("*evil*")) and not (tmp_path / "b" / "ml-100k").exists()


def test_archive_without_expected_files_is_refused(server, served, tmp_path, monkeypatch):
    base, _ = server
    wrong = _zip_bytes({"other/u.data": U_DATA})
    (served / "ml-100k.zip").write_bytes(wrong)
    _register(monkeypatch, "ml-100k", md5=_md5(wrong), sha256=None)
    with pytest.raises(DownloadError, match=re.escape("does not contain ml-100k/u.data")):
        download("ml-100k", tmp_path, url=base)
    assert not (tmp_path / "ml-100k").exists()


def test_unknown_name_lists_known_ones(tmp_path):
    with pytest.raises(UnknownDatasetError) as e:
        download("ml-3m", tmp_path)
    for name in list_datasets():
        assert name in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_registry_names_urls_and_checksums(monkeypatch):
    assert list_datasets() == [
        "avazu", "criteo-kaggle", "ml-100k", "ml-1m", "ml-20m", "ml-25m", "ml-latest-small",
    ]  # fmt: skip
    for name, spec in DATASETS.items():
        assert spec.name == name and spec.url.startswith("https://")
        assert spec.md5 or spec.sha256 or spec.md5_sidecar or spec.manual
        for digest, n in ((spec.md5, 32), (spec.sha256, 64)):
            assert digest is None or (len(digest) == n and int(digest, 16) >= 0)
            assert digest is None or digest == digest.lower()
        if name.startswith("ml-"):
            assert spec.url == f"https://files.grouplens.org/datasets/movielens/{name}.zip"
    assert resolve_url(DATASETS["ml-1m"]) == DATASETS["ml-1m"].url
    monkeypatch.setenv(BASE_URL_ENV, "http://127.0.0.1:1/mirror/")
    assert resolve_url(DATASETS["criteo-kaggle"]) == "http://127.0.0.1:1/mirror/dac.tar.gz"
    assert resolve_url(DATASETS["ml-1m"], "http://127.0.0.1:2/x.zip") == "http://127.0.0.1:2/x.zip"
    assert dl.get_spec("ml-1m") is DATASETS["ml-1m"]


def test_avazu_says_where_to_get_it_without_a_mirror(tmp_path, capsys):
    from reccomp.data.cli import data_main

    assert data_main(["download", "avazu", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert (
        "kaggle.com/c/avazu-ctr-prediction" in err and str(tmp_path / "avazu" / "train.gz") in err
    )
    assert "Traceback" not in err and list(tmp_path.iterdir()) == []


def test_avazu_from_a_mirror_is_kept_as_it_is_and_prepares(server, served, tmp_path, capsys):
    from reccomp.data.avazu import write_avazu_csv
    from reccomp.data.cache import CacheWriter
    from reccomp.data.sources import source_files
    from reccomp.data.splits import SplitConfig

    base, requests = server
    write_avazu_csv(served / "train.gz", 500, compress=True)
    out = download("avazu", tmp_path, url=base)
    assert out == tmp_path / "avazu" and requests == ["/train.gz"]
    assert (out / "train.gz").read_bytes() == (served / "train.gz").read_bytes()
    assert "could not be verified" in capsys.readouterr().err  # Kaggle publishes no checksum
    assert download("avazu", tmp_path) == out  # there now: no mirror needed
    from reccomp.data.avazu import prepare_avazu

    schema = prepare_avazu(source_files("avazu", out), CacheWriter(tmp_path / "p"),
                           split=SplitConfig())  # fmt: skip
    assert sum(schema.splits.values()) == 500
