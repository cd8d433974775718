"""The official CIFAR-100 python archive: resumable, checksummed download and the bicycle/motorcycle subset.

Archive layout (Krizhevsky, https://www.cs.toronto.edu/~kriz/cifar.html): ``cifar-100-python/{train,test,meta}``,
each a pickled dict with bytes keys. ``train``/``test`` hold ``b'data'`` (uint8 [N, 3072]: the red, green and
blue 32x32 planes of each image in turn), ``b'fine_labels'``, ``b'coarse_labels'`` and ``b'filenames'``;
``meta`` holds ``b'fine_label_names'``.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import os
import pickle
import re
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
ARCHIVE_NAME = "cifar-100-python.tar.gz"
ARCHIVE_DIR = "cifar-100-python"
SPLITS = ("train", "test")
# CIFAR-100 fine label -> our class; our label index is the position in CLASSES.
VEHICLE_FINE_LABELS = {8: "bicycle", 48: "motorcycle"}
CLASSES = ["bicycle", "motorcycle"]
IMAGE_SIZE = 32
_CHUNK_BYTES = 1 << 20


class DownloadError(RuntimeError):
    """The transfer failed; any bytes received are kept so that the next attempt resumes."""


class ArchiveChecksumError(ValueError):
    """The downloaded file's md5 differs from the published one (the file has been deleted)."""


class CifarFormatError(ValueError):
    """The archive does not have the layout of the official cifar-100-python archive."""


@dataclass(frozen=True)
class CifarVehicles:
    """The bicycle/motorcycle images of one CIFAR-100 split, in the archive's order."""

    images: np.ndarray  # uint8 [N, 32, 32, 3], RGB
    labels: np.ndarray  # int64 [N], index into CLASSES
    filenames: list[str]
    source_indices: np.ndarray  # int64 [N], row of each image in the split's full array

    def __len__(self) -> int:
        return len(self.filenames)


def default_cache_dir() -> Path:
    """``$BAYROUTE_CACHE_DIR``, else ``$XDG_CACHE_HOME/bayroute``, else ``~/.cache/bayroute``."""
    explicit = os.environ.get("BAYROUTE_CACHE_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bayroute"


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_cifar100(
    cache_dir: Path | None = None,
    *,
    url: str = CIFAR100_URL,
    md5: str = CIFAR100_MD5,
    attempts: int = 3,
    show_progress: bool = True,
) -> Path:
    """The verified archive in ``cache_dir`` (downloaded, or resumed, only when needed)."""
    return download_file(
        url, (cache_dir or default_cache_dir()) / ARCHIVE_NAME, md5, attempts=attempts, show_progress=show_progress
    )


def download_file(
    url: str,
    dest: Path,
    md5: str,
    *,
    attempts: int = 3,
    show_progress: bool = True,
    timeout_seconds: float = 60.0,
) -> Path:
    """Download ``url`` to ``dest`` and check its md5.

    Bytes go to ``<dest>.part`` first and continue from where it ends (HTTP Range) after a dropped connection,
    within this call (``attempts`` transfers) or a later one. Only a file that matches ``md5`` is ever named
    ``dest``; a mismatching download is deleted, so the next call starts afresh.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts}")
    dest = Path(dest)
    if dest.is_file():
        if file_md5(dest) == md5:
            return dest
        dest.unlink()  # a cache entry that no longer matches: fetch it again
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".part")
    for attempt in range(1, attempts + 1):
        try:
            _transfer(url, partial, timeout_seconds, show_progress)
            break
        except DownloadError as exc:
            if attempt == attempts:
                kept = partial.stat().st_size if partial.exists() else 0
                raise DownloadError(
                    f"{exc} (after {attempts} attempt(s); {kept} bytes kept in {partial}, run again to resume)"
                ) from exc
    actual = file_md5(partial)
    if actual != md5:
        partial.unlink()
        raise ArchiveChecksumError(f"{url}: md5 {actual} does not match the published {md5}; the download was deleted")
    partial.replace(dest)
    return dest


def _transfer(url: str, partial: Path, timeout_seconds: float, show_progress: bool) -> None:
    """One HTTP GET appended to ``partial`` (restarting it when the server ignores the Range)."""
    offset = partial.stat().st_size if partial.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        response = urlopen(Request(url, headers=headers), timeout=timeout_seconds)
    except HTTPError as exc:
        if exc.code == 416 and offset:
            return  # nothing left past our offset: the file is complete, and the checksum will tell
        raise DownloadError(f"GET {url}: HTTP {exc.code} {exc.reason}") from exc
    except (URLError, OSError) as exc:
        raise DownloadError(f"GET {url}: {getattr(exc, 'reason', exc)}") from exc
    with response:
        resumed = response.status == 206 and _range_start(response.headers.get("Content-Range")) == offset
        if not resumed:
            offset = 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        received = offset
        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            disable=not show_progress,
        )
        with progress, partial.open("ab" if resumed else "wb") as out:
            task = progress.add_task(
                f"{'resuming' if resumed else 'downloading'} {url.rsplit('/', 1)[-1]}", total=total, completed=offset
            )
            try:
                while chunk := response.read(_CHUNK_BYTES):
                    out.write(chunk)
                    received += len(chunk)
                    progress.update(task, completed=received)
            except (OSError, http.client.HTTPException) as exc:
                raise DownloadError(f"GET {url}: connection lost after {received} bytes: {exc}") from exc
    if total is not None and received < total:
        raise DownloadError(f"GET {url}: connection closed after {received} of {total} bytes")


def _range_start(content_range: str | None) -> int | None:
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", (content_range or "").strip())
    return int(match.group(1)) if match else None


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickling can run arbitrary code; the CIFAR pickles only need numpy arrays, so nothing else loads."""

    _ALLOWED = frozenset(
        {
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy._core.numeric", "_frombuffer"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 spell bytes
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        # Pickles written by numpy 1.x (the official archive) name numpy.core, which numpy 2 calls numpy._core.
        module = re.sub(r"^numpy\.core\b", "numpy._core", module)
        if (module, name) not in self._ALLOWED:
            raise CifarFormatError(f"unexpected object {module}.{name} in a CIFAR pickle")
        return super().find_class(module, name)


def _read_pickle(archive: tarfile.TarFile, member: str, source: Path) -> dict[bytes, Any]:
    try:
        handle = archive.extractfile(f"{ARCHIVE_DIR}/{member}")
    except KeyError:
        handle = None
    if handle is None:
        raise CifarFormatError(f"{source}: no {ARCHIVE_DIR}/{member} in the archive")
    try:
        with handle:
            payload = handle.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise CifarFormatError(f"{source}: cannot read {member} (truncated or corrupt archive): {exc}") from exc
    try:
        data = _ArrayUnpickler(io.BytesIO(payload), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise CifarFormatError(f"{source}: {member} is not a readable pickle: {exc}") from exc
    if not isinstance(data, dict):
        raise CifarFormatError(f"{source}: {member} holds {type(data).__name__}, not a dict")
    return data


def _vehicle_rows(split: dict[bytes, Any], member: str) -> CifarVehicles:
    missing = [key for key in (b"data", b"fine_labels", b"filenames") if key not in split]
    if missing:
        raise CifarFormatError(f"{member}: missing keys {missing!r}")
    data = np.asarray(split[b"data"])
    fine = np.asarray(split[b"fine_labels"], dtype=np.int64)
    filenames = split[b"filenames"]
    side = IMAGE_SIZE
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * side * side:
        raise CifarFormatError(f"{member}: data must be uint8 [N, {3 * side * side}], got {data.dtype} {data.shape}")
    if not len(fine) == len(filenames) == len(data):
        raise CifarFormatError(f"{member}: {len(data)} images, {len(fine)} labels, {len(filenames)} file names")
    rows = np.flatnonzero(np.isin(fine, list(VEHICLE_FINE_LABELS)))
    images = data[rows].reshape(-1, 3, side, side).transpose(0, 2, 3, 1)  # planes (CHW) -> HWC
    labels = np.array([CLASSES.index(VEHICLE_FINE_LABELS[int(f)]) for f in fine[rows]], dtype=np.int64)
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in (filenames[i] for i in rows)]
    return CifarVehicles(np.ascontiguousarray(images), labels, names, rows.astype(np.int64))


def load_vehicles(archive_path: Path) -> dict[str, CifarVehicles]:
    """The bicycle and motorcycle images of ``train`` and ``test`` from a (trusted, verified) archive."""
    try:
        with tarfile.open(archive_path, "r:gz") as archive:
            names = _read_pickle(archive, "meta", archive_path).get(b"fine_label_names")
            for fine_label, name in VEHICLE_FINE_LABELS.items():
                found = names[fine_label] if isinstance(names, list) and len(names) > fine_label else None
                if found not in (name, name.encode()):
                    raise CifarFormatError(f"{archive_path}: fine label {fine_label} is {found!r}, expected {name!r}")
            return {member: _vehicle_rows(_read_pickle(archive, member, archive_path), member) for member in SPLITS}
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise CifarFormatError(f"{archive_path}: not a gzipped tar archive, or a truncated one: {exc}") from exc
