"""Downloads of the full public data sets (MovieLens, Criteo Kaggle, Avazu) into a data root.

``download(name, root)`` fetches the official archive, verifies its checksum, extracts it
and returns the directory holding the data files. The archive is written to a temporary file
beside its destination and renamed only once its checksum matched, and it is extracted into a
temporary directory that is moved into place only once complete, so an interrupted run never
leaves a file that looks finished. The verified archive is kept in ``root``: a later run
re-extracts it without downloading (delete it to save space). Avazu has no anonymous
address (Kaggle needs an account): without a mirror the command says where to get it.

Mirrors and tests: the ``url`` argument (a full archive address or a base directory) or the
environment variable ``RECCOMP_DOWNLOAD_BASE_URL`` (a base directory) replaces the official
address; the archive must still match the registered checksum.

Example::

    >>> from reccomp.data.download import download, list_datasets
    >>> list_datasets()[:3]
    ['avazu', 'criteo-kaggle', 'ml-100k']
    >>> download("ml-100k", "data")  # doctest: +SKIP
    PosixPath('data/ml-100k')
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import re
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

BASE_URL_ENV = "RECCOMP_DOWNLOAD_BASE_URL"
_CHUNK = 1 << 20
_USER_AGENT = "reccomp-download/0.1 (python-urllib)"
_ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz")
# Errors raised by urllib / http.client / sockets while talking to a host.
_NET_ERRORS = (urllib.error.URLError, OSError, http.client.HTTPException)


class DownloadError(Exception):
    """A data set could not be downloaded, verified or extracted."""


class UnknownDatasetError(DownloadError, ValueError):
    """The name is not in the registry."""


class ChecksumError(DownloadError):
    """The archive's checksum differs from the expected one."""


class UnsafeArchiveError(DownloadError):
    """An archive member would be written outside the destination (or is a link/device)."""


@dataclass(frozen=True)
class DatasetSpec:
    """One downloadable archive.

    Args:
        name: registry key and CLI name.
        url: official address of the archive.
        filename: local name of the archive in ``root``, also its name under a mirror base.
        folder: directory under ``root`` that holds the data files after extraction.
        files: files in ``folder`` whose presence means the data is already there.
        archive_has_folder: members already start with ``folder/`` (MovieLens zips); when
            False they are extracted into ``root/folder``.
        md5, sha256: expected lowercase hex digests of the archive, None when unknown.
        size: archive size in bytes, None when unknown (only shown and used for a disk check).
        md5_sidecar: the host publishes ``<url>.md5``, used when md5 and sha256 are None.
        homepage: where a person can get the file by hand.
        extract: the archive is an archive to extract; when False it is the data file itself
            (e.g. a gzip-compressed CSV the reader takes as it is) and lands in ``folder``.
        manual: no anonymous download exists (a licence or an account is needed): without a
            mirror ``url`` the command says where to get the file and where to put it.
    """

    name: str
    url: str
    filename: str
    folder: str
    files: tuple[str, ...]
    archive_has_folder: bool
    md5: str | None = None
    sha256: str | None = None
    size: int | None = None
    md5_sidecar: bool = False
    homepage: str = ""
    extract: bool = True
    manual: str = ""

    def archive_path(self, root: Path) -> Path:
        return root / self.filename if self.extract else root / self.folder / self.filename


_GROUPLENS = "https://files.grouplens.org/datasets/movielens"
_ML_PAGE = "https://grouplens.org/datasets/movielens/"


def _movielens(
    name: str, files: tuple[str, ...], *, md5: str | None, sha256: str, size: int
) -> DatasetSpec:
    return DatasetSpec(
        name=name,
        url=f"{_GROUPLENS}/{name}.zip",
        filename=f"{name}.zip",
        folder=name,
        files=files,
        archive_has_folder=True,
        md5_sidecar=True,
        homepage=_ML_PAGE,
        md5=md5,
        sha256=sha256,
        size=size,
    )


# Where the checksums come from:
# - MovieLens md5: GroupLens's own sidecars <url>.md5 ("MD5 (ml-1m.zip) = <hex>"), as quoted
#   in NVIDIA's NCF verify_dataset.sh and hard-coded in PaddlePaddle dataset.common,
#   eli-osherovich/papers_with_code datasets/movielens/dl_config.py and others.
# - MovieLens sha256 and sizes: TensorFlow Datasets,
#   tensorflow_datasets/url_checksums/movielens.txt (matched independently by other projects).
#   ml-latest-small is a rolling release: the pin is the 2018-09-26 build; GroupLens publishes
#   no fixed md5 for it beyond the sidecar, so a republished file fails with ChecksumError.
# - Criteo Kaggle md5 and size: Figshare article 5732310's file metadata (4,576,820,670 bytes),
#   the md5 the 2014 winners (guestwalk/kaggle-2014-criteo) published for dac.tar.gz and that
#   e.g. dlrm-jax checks against the go.criteo.net download. No sha256 was found.
DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        _movielens(
            "ml-100k",
            ("u.data", "u.item", "u.user"),
            md5="0e33842e24a9c977be4e0107933c0723",
            sha256="50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
            size=4_924_029,
        ),
        _movielens(
            "ml-1m",
            ("ratings.dat", "movies.dat", "users.dat"),
            md5="c4d9eecfca2ab87c1945afe126590906",
            sha256="a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
            size=5_917_549,
        ),
        _movielens(
            "ml-20m",
            ("ratings.csv", "movies.csv"),
            md5="cd245b17a1ae2cc31bb14903e1204af3",
            sha256="96f243c338a8665f6bcc89c53edf6ee39162a846940de6b7c8c48aeada765ff3",
            size=198_702_078,
        ),
        _movielens(
            "ml-25m",
            ("ratings.csv", "movies.csv"),
            md5="6b51fb2759a8657d3bfcbfc42b592ada",
            sha256="8b21cfb7eb1706b4ec0aac894368d90acf26ebdfb6aced3ebd4ad5bd1eb9c6aa",
            size=261_978_986,
        ),
        _movielens(
            "ml-latest-small",
            ("ratings.csv", "movies.csv"),
            md5=None,
            sha256="696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436",
            size=978_202,
        ),
        DatasetSpec(
            name="criteo-kaggle",
            # Criteo AI Lab's link (https://ailab.criteo.com/ressources/); it redirects to
            # criteostorage.blob.core.windows.net. Mirrors call the same file dac.tar.gz.
            url="https://go.criteo.net/criteo-research-kaggle-display-advertising-challenge-dataset.tar.gz",
            filename="dac.tar.gz",
            folder="criteo-kaggle",
            files=("train.txt",),
            archive_has_folder=False,  # members are train.txt, test.txt, readme.txt
            md5="df9b1b3766d9ff91d5ca3eb3d23bed27",
            size=4_576_820_670,
            homepage="https://ailab.criteo.com/ressources/",
        ),
        DatasetSpec(
            name="avazu",
            # Kaggle serves it only to a signed-in account that accepted the competition's
            # rules: no anonymous address exists, so `url` is where a person gets it.
            url="https://www.kaggle.com/c/avazu-ctr-prediction/data",
            filename="train.gz",
            folder="avazu",
            files=("train.gz",),
            archive_has_folder=False,
            homepage="https://www.kaggle.com/c/avazu-ctr-prediction/data",
            extract=False,  # the reader takes the gzip-compressed CSV as it is
            manual=(
                "Avazu's data is distributed by Kaggle under the competition's rules, which "
                "need a Kaggle account that accepted them, so it cannot be fetched "
                "anonymously. Sign in and accept the rules at "
                "https://www.kaggle.com/c/avazu-ctr-prediction/rules, then download train.gz "
                "(about 1.1 GiB) from https://www.kaggle.com/c/avazu-ctr-prediction/data, or "
                "with Kaggle's CLI: kaggle competitions download -c avazu-ctr-prediction -f "
                "train.gz"
            ),
        ),
    )
}


def list_datasets() -> list[str]:
    """Names accepted by :func:`download`, sorted."""
    return sorted(DATASETS)


def get_spec(name: str) -> DatasetSpec:
    """The registry entry for ``name``; unknown names raise with the list of known ones."""
    try:
        return DATASETS[name]
    except KeyError:
        known = ", ".join(list_datasets())
        raise UnknownDatasetError(f"unknown data set {name!r}; known: {known}") from None


def resolve_url(spec: DatasetSpec, url: str | None = None) -> str:
    """Address to fetch: ``url`` (a full archive address or a base), else the env base, else official.

    Example::

        >>> resolve_url(DATASETS["ml-1m"], "http://127.0.0.1:8000/mirror/")
        'http://127.0.0.1:8000/mirror/ml-1m.zip'
    """
    if url:
        if urllib.parse.urlsplit(url).path.endswith(_ARCHIVE_SUFFIXES):
            return url
        return url.rstrip("/") + "/" + spec.filename
    base = os.environ.get(BASE_URL_ENV)
    if base:
        return base.rstrip("/") + "/" + spec.filename
    return spec.url


def download(
    name: str,
    root: str | Path,
    *,
    url: str | None = None,
    force: bool = False,
    timeout: float = 30,
) -> Path:
    """Download, verify and extract data set ``name`` into ``root``; return its data directory.

    Skips everything when ``root/<folder>`` already holds the data files (unless ``force``);
    reuses a verified archive already in ``root`` (e.g. one placed there by hand).

    Args:
        name: one of :func:`list_datasets`.
        root: data root; the archive and the extracted folder go there.
        url: full address of the archive or a mirror base replacing the official one.
        force: download and extract again even when the data or archive is present.
        timeout: seconds to wait for the host on connect and on each read.

    Returns:
        The directory holding the data files, e.g. ``root/ml-1m``.

    Raises:
        DownloadError: host unreachable (with instructions to get the file by hand), HTTP
            error, truncated transfer; ChecksumError, UnsafeArchiveError, UnknownDatasetError.
    """
    spec = get_spec(name)
    root = Path(root).expanduser()
    data_dir = root / spec.folder
    if not force and all((data_dir / f).is_file() for f in spec.files):
        _say(f"{name}: already in {data_dir}, skipping download (use force to redo it)")
        return data_dir
    archive = spec.archive_path(root)
    if spec.manual and not (url or os.environ.get(BASE_URL_ENV)):
        raise DownloadError(
            f"{_prefix(spec)}{spec.manual}. Put it at {archive} and pass --data.root "
            f"{data_dir}; with a mirror of your own: reccomp data download {name} --url URL"
        )
    archive.parent.mkdir(parents=True, exist_ok=True)
    src = resolve_url(spec, url)
    if archive.is_file() and not force:
        _say(f"{name}: using the archive already in {archive}")
        _verify(spec, src, archive, _hash_file(archive), timeout, downloaded=False)
    else:
        _download_verified(spec, src, archive, root, timeout)
    if spec.extract:
        _extract(spec, archive, root)
    _say(f"{name}: ready in {data_dir}")
    return data_dir


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _bar(total: int | None, desc: str) -> tqdm:
    """A byte progress bar on stderr; ``total=None`` (no Content-Length) shows a counter."""
    return tqdm(
        total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, file=sys.stderr
    )


def _manual_hint(spec: DatasetSpec, src: str, root: Path) -> str:
    page = f" (see {spec.homepage})" if spec.homepage else ""
    return (
        f"To get the data by hand: download {src}{page} on a machine with internet access "
        f"and copy it to {spec.archive_path(root)} (the next `reccomp data download {spec.name}` "
        f"verifies and extracts it), or extract it yourself so that "
        f"{root / spec.folder / spec.files[0]} exists; then point --data.root at {root}."
    )


def _network_error(spec: DatasetSpec, src: str, root: Path, exc: BaseException) -> DownloadError:
    if isinstance(exc, urllib.error.HTTPError):
        what = f"the server answered HTTP {exc.code} {exc.reason} for {src}"
    elif isinstance(exc, urllib.error.URLError):
        what = (
            f"could not reach {src} ({exc.reason}). There seems to be no internet access from "
            f"this machine, or the host is down or blocked"
        )
    else:  # the connection broke or stalled mid-transfer
        what = f"the connection to {src} failed during the transfer ({exc!r})"
    return DownloadError(f"{_prefix(spec)}{what}.\n{_manual_hint(spec, src, root)}")


def _prefix(spec: DatasetSpec) -> str:
    return f"{spec.name}: "


def _open(src: str, timeout: float) -> http.client.HTTPResponse:
    req = urllib.request.Request(src, headers={"User-Agent": _USER_AGENT})
    return urllib.request.urlopen(req, timeout=timeout)


def _download_verified(
    spec: DatasetSpec, src: str, archive: Path, root: Path, timeout: float
) -> None:
    """Stream ``src`` into a temp file beside ``archive``; rename it only once verified."""
    size = f" ({spec.size / 2**20:,.1f} MiB)" if spec.size else ""
    _say(f"{spec.name}: downloading {src}{size} to {archive}")
    if spec.size and shutil.disk_usage(root).free < spec.size:
        _say(f"WARNING: {root} has less free space than the archive needs ({spec.size:,} bytes)")
    try:
        resp = _open(src, timeout)
    except ValueError as e:  # malformed address: no scheme, unknown scheme
        raise DownloadError(f"{_prefix(spec)}invalid URL {src!r}: {e}") from e
    except _NET_ERRORS as e:
        raise _network_error(spec, src, root, e) from e
    hashes = {"md5": hashlib.md5(), "sha256": hashlib.sha256()}
    fd, tmp_name = tempfile.mkstemp(prefix=f".{spec.filename}.", suffix=".part", dir=root)
    tmp = Path(tmp_name)
    try:
        with resp, os.fdopen(fd, "wb") as out:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            got = 0
            with _bar(total, spec.filename) as bar:
                while True:
                    try:  # only the network read: a full disk must not read as "no internet"
                        chunk = resp.read(_CHUNK)
                    except _NET_ERRORS as e:
                        raise _network_error(spec, src, root, e) from e
                    if not chunk:
                        break
                    out.write(chunk)
                    for h in hashes.values():
                        h.update(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
        if total is not None and got != total:
            raise DownloadError(
                f"{_prefix(spec)}the transfer of {src} stopped after {got:,} of {total:,} "
                f"bytes.\n{_manual_hint(spec, src, root)}"
            )
        _verify(spec, src, tmp, {k: h.hexdigest() for k, h in hashes.items()}, timeout)
        os.replace(tmp, archive)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _hash_file(path: Path) -> dict[str, str]:
    hashes = {"md5": hashlib.md5(), "sha256": hashlib.sha256()}
    with path.open("rb") as f, _bar(path.stat().st_size, f"checking {path.name}") as bar:
        while chunk := f.read(_CHUNK):
            for h in hashes.values():
                h.update(chunk)
            bar.update(len(chunk))
    return {k: h.hexdigest() for k, h in hashes.items()}


def _sidecar_md5(src: str, timeout: float) -> str | None:
    """The md5 in ``<src>.md5`` (``MD5 (f.zip) = <hex>`` or ``<hex>  f.zip``), None if absent."""
    try:
        with _open(src + ".md5", timeout) as resp:
            text = resp.read(4096).decode("ascii", "replace")
    except (*_NET_ERRORS, ValueError):
        return None
    m = re.search(r"\b[0-9a-fA-F]{32}\b", text)
    return m.group(0).lower() if m else None


def _verify(
    spec: DatasetSpec,
    src: str,
    path: Path,
    digests: dict[str, str],
    timeout: float,
    downloaded: bool = True,
) -> None:
    """Compare ``digests`` of ``path`` with the registry (else the ``.md5`` sidecar)."""
    expected = {k: v for k, v in (("sha256", spec.sha256), ("md5", spec.md5)) if v}
    origin = "the registry"
    if not expected and spec.md5_sidecar:
        md5 = _sidecar_md5(src, timeout)
        if md5:
            expected, origin = {"md5": md5}, f"{src}.md5"
    if not expected:
        sidecar = f"{src}.md5 could not be fetched" if spec.md5_sidecar else "its host has none"
        _say(
            f"WARNING: {spec.name}: the archive could not be verified: no checksum is "
            f"registered for it and {sidecar}. Its sha256 is "
            f"{digests['sha256']}; compare it with a trusted source before relying on it."
        )
        return
    for algo, want in expected.items():
        if digests[algo] != want.lower():
            what = "downloaded archive" if downloaded else f"archive {path}"
            fix = "retry" if downloaded else "delete it or pass force to download it again"
            raise ChecksumError(
                f"{_prefix(spec)}checksum mismatch for the {what} from {src}: expected "
                f"{algo} {want.lower()} (from {origin}), got {digests[algo]}. The file is "
                f"corrupt, not the official one, or the host republished it; {fix}."
            )
    _say(f"{spec.name}: verified {', '.join(expected)} against {origin}")


def _safe_target(name: str, dest: Path) -> Path:
    """Where member ``name`` lands under ``dest``; raise if it would escape ``dest``."""
    posix = name.replace("\\", "/")
    parts = PurePosixPath(posix).parts
    escapes = posix.startswith("/") or re.match(r"^[A-Za-z]:", posix) or ".." in parts
    target = (dest / posix).resolve()
    if escapes or not target.is_relative_to(dest.resolve()):
        raise UnsafeArchiveError(
            f"refusing to extract archive member {name!r}: it points outside {dest}"
        )
    return target


def _extract_zip(archive: Path, dest: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        for m in members:  # check all before writing any
            _safe_target(m.filename, dest)
        with _bar(sum(m.file_size for m in members), f"extracting {archive.name}") as bar:
            for m in members:
                zf.extract(m, dest)
                bar.update(m.file_size)


def _extract_tar(archive: Path, dest: Path) -> None:
    # Stream mode: one pass over a multi-GB .tar.gz; members are checked before each is written,
    # and a rejected member aborts into a temp dir that the caller removes.
    kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    with (
        archive.open("rb") as raw,
        tarfile.open(fileobj=raw, mode="r|*") as tf,
        _bar(archive.stat().st_size, f"extracting {archive.name}") as bar,  # compressed bytes
    ):
        for m in tf:
            _safe_target(m.name, dest)
            if not (m.isfile() or m.isdir()):
                raise UnsafeArchiveError(
                    f"refusing to extract archive member {m.name!r}: links and special files "
                    f"are not expected in a data archive"
                )
            tf.extract(m, dest, **kwargs)
            bar.update(raw.tell() - bar.n)


def _extract(spec: DatasetSpec, archive: Path, root: Path) -> None:
    """Extract into a temp dir in ``root``, check the expected files, then move them into place."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}.extract-", dir=root))
    try:
        into = tmp if spec.archive_has_folder else tmp / spec.folder
        try:
            if archive.name.endswith(".zip") or zipfile.is_zipfile(archive):
                _extract_zip(archive, into)
            elif archive.name.endswith((".tar.gz", ".tgz")) or tarfile.is_tarfile(archive):
                _extract_tar(archive, into)
            else:
                raise DownloadError(f"{_prefix(spec)}{archive} is neither a zip nor a tar archive")
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
            raise DownloadError(
                f"{_prefix(spec)}{archive} is damaged ({e}); delete it or pass force to download "
                f"it again"
            ) from e
        got = tmp / spec.folder
        missing = [f for f in spec.files if not (got / f).is_file()]
        if missing:
            raise DownloadError(
                f"{_prefix(spec)}{archive} does not contain {spec.folder}/{missing[0]}; "
                f"is it the right archive?"
            )
        _merge_into(got, root / spec.folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _merge_into(src: Path, dst: Path) -> None:
    """Move the tree ``src`` to ``dst``, replacing same-named files and keeping other ones."""
    if not dst.exists():
        os.replace(src, dst)
        return
    for path in sorted(src.rglob("*")):
        out = dst / path.relative_to(src)
        if path.is_dir():
            out.mkdir(exist_ok=True)
        else:
            os.replace(path, out)
