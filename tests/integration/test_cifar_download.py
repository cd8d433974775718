"""The CIFAR-100 loader against a local HTTP server serving a small archive in the official format."""

from __future__ import annotations

import hashlib
import io
import pickle
import re
import struct
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from training.cifar import (
    CLASSES,
    ArchiveChecksumError,
    CifarFormatError,
    DownloadError,
    download_file,
    fetch_cifar100,
    load_vehicles,
)

FINE_LABEL_NAMES = [f"class_{i}".encode() for i in range(100)]
FINE_LABEL_NAMES[8], FINE_LABEL_NAMES[48] = b"bicycle", b"motorcycle"


def _images(fine_labels: list[int], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(len(fine_labels), 32, 32, 3), dtype=np.uint8)


def _split_pickle(images_hwc: np.ndarray, fine_labels: list[int], prefix: str) -> bytes:
    data = images_hwc.transpose(0, 3, 1, 2).reshape(len(images_hwc), 3072)  # the archive stores R, G, B planes
    return pickle.dumps(
        {
            b"data": data,
            b"fine_labels": fine_labels,
            b"coarse_labels": [18 if f in (8, 48) else 0 for f in fine_labels],
            b"filenames": [f"{prefix}_{i:06d}.png".encode() for i in range(len(fine_labels))],
            b"batch_label": b"training batch 1 of 1",
        },
        protocol=2,
    )


def _tarball(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, payload in members.items():
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


TRAIN_FINE = [8, 3, 48, 48, 19, 8, 99, 48]
TEST_FINE = [48, 0, 8]
TRAIN_IMAGES = _images(TRAIN_FINE, seed=1)
TEST_IMAGES = _images(TEST_FINE, seed=2)
ARCHIVE = _tarball(
    {
        "meta": pickle.dumps({b"fine_label_names": FINE_LABEL_NAMES, b"coarse_label_names": []}, protocol=2),
        "train": _split_pickle(TRAIN_IMAGES, TRAIN_FINE, "train"),
        "test": _split_pickle(TEST_IMAGES, TEST_FINE, "test"),
    }
)
ARCHIVE_MD5 = hashlib.md5(ARCHIVE, usedforsecurity=False).hexdigest()


@dataclass
class FakeServer:
    """Serves ``payload`` at /cifar-100-python.tar.gz; ``cut_after`` makes the next response stop short."""

    payload: bytes
    honour_range: bool = True
    cut_after: int | None = None
    range_headers: list[str | None] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def server() -> Iterator[FakeServer]:
    state = FakeServer(ARCHIVE)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if not self.path.endswith("/cifar-100-python.tar.gz"):
                self.send_error(404)
                return
            state.range_headers.append(self.headers.get("Range"))
            body, status, start = state.payload, 200, 0
            match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
            if match and state.honour_range:
                start = int(match.group(1))
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.end_headers()
                    return
                status = 206
            self.send_response(status)
            self.send_header("Content-Length", str(len(body) - start))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            self.end_headers()
            end = len(body)
            if state.cut_after is not None:
                end, state.cut_after = start + state.cut_after, None
            self.wfile.write(body[start:end])
            self.close_connection = True

        def log_message(self, format: str, *args: object) -> None:  # keep test output clean
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/cifar-100-python.tar.gz"
    yield state
    httpd.shutdown()
    httpd.server_close()


def test_download_verifies_and_extracts_vehicles(server: FakeServer, tmp_path: Path) -> None:
    archive = fetch_cifar100(tmp_path, url=server.url, md5=ARCHIVE_MD5, show_progress=True)
    assert archive == tmp_path / "cifar-100-python.tar.gz"
    assert archive.read_bytes() == ARCHIVE
    assert not (tmp_path / "cifar-100-python.tar.gz.part").exists()

    splits = load_vehicles(archive)
    train, test = splits["train"], splits["test"]
    assert train.source_indices.tolist() == [0, 2, 3, 5, 7]
    assert [CLASSES[i] for i in train.labels] == ["bicycle", "motorcycle", "motorcycle", "bicycle", "motorcycle"]
    assert train.filenames == [
        "train_000000.png",
        "train_000002.png",
        "train_000003.png",
        "train_000005.png",
        "train_000007.png",
    ]
    assert train.images.shape == (5, 32, 32, 3) and train.images.dtype == np.uint8
    assert np.array_equal(train.images, TRAIN_IMAGES[[0, 2, 3, 5, 7]])  # planes turned back into HWC pixels
    assert test.labels.tolist() == [1, 0] and test.source_indices.tolist() == [0, 2]
    assert np.array_equal(test.images, TEST_IMAGES[[0, 2]])

    # A verified archive in the cache is reused without a request.
    server.range_headers.clear()
    assert fetch_cifar100(tmp_path, url=server.url, md5=ARCHIVE_MD5, show_progress=False) == archive
    assert server.range_headers == []


def test_wrong_checksum_leaves_no_file_that_looks_valid(server: FakeServer, tmp_path: Path) -> None:
    with pytest.raises(ArchiveChecksumError, match=f"does not match the published {'0' * 32}"):
        fetch_cifar100(tmp_path, url=server.url, md5="0" * 32, show_progress=False)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_cached_archive_is_fetched_again(server: FakeServer, tmp_path: Path) -> None:
    (tmp_path / "cifar-100-python.tar.gz").write_bytes(ARCHIVE[:-10] + b"0123456789")
    archive = fetch_cifar100(tmp_path, url=server.url, md5=ARCHIVE_MD5, show_progress=False)
    assert archive.read_bytes() == ARCHIVE
    assert server.range_headers == [None]


def test_resume_after_partial_download(server: FakeServer, tmp_path: Path) -> None:
    dest = tmp_path / "archive.tar.gz"
    partial = tmp_path / "archive.tar.gz.part"
    server.cut_after = 1000
    with pytest.raises(DownloadError, match="1000 bytes kept"):
        download_file(server.url, dest, ARCHIVE_MD5, attempts=1, show_progress=False)
    assert partial.read_bytes() == ARCHIVE[:1000] and not dest.exists()

    assert download_file(server.url, dest, ARCHIVE_MD5, attempts=1, show_progress=False) == dest
    assert server.range_headers == [None, "bytes=1000-"]
    assert dest.read_bytes() == ARCHIVE and not partial.exists()


def test_dropped_connection_is_resumed_within_one_call(server: FakeServer, tmp_path: Path) -> None:
    server.cut_after = 777
    dest = download_file(server.url, tmp_path / "a.tar.gz", ARCHIVE_MD5, attempts=2, show_progress=False)
    assert dest.read_bytes() == ARCHIVE
    assert server.range_headers == [None, "bytes=777-"]


def test_server_ignoring_range_restarts_the_file(server: FakeServer, tmp_path: Path) -> None:
    server.honour_range = False
    (tmp_path / "a.tar.gz.part").write_bytes(b"stale bytes from another file")
    dest = download_file(server.url, tmp_path / "a.tar.gz", ARCHIVE_MD5, attempts=1, show_progress=False)
    assert dest.read_bytes() == ARCHIVE  # the 200 answer replaced the partial instead of being appended


def test_complete_partial_is_finished_by_a_416(server: FakeServer, tmp_path: Path) -> None:
    (tmp_path / "a.tar.gz.part").write_bytes(ARCHIVE)
    dest = download_file(server.url, tmp_path / "a.tar.gz", ARCHIVE_MD5, attempts=1, show_progress=False)
    assert dest.read_bytes() == ARCHIVE
    assert server.range_headers == [f"bytes={len(ARCHIVE)}-"]


def _py2(obj: object) -> bytes:
    """Pickle opcodes as Python 2 with numpy 1.x wrote them (the official archive): str as STRING opcodes, arrays
    through ``numpy.core.multiarray._reconstruct``. Only the types the CIFAR pickles contain."""
    if isinstance(obj, bytes):
        return b"U" + bytes([len(obj)]) + obj if len(obj) < 256 else b"T" + struct.pack("<i", len(obj)) + obj
    if isinstance(obj, bool):
        return b"\x88" if obj else b"\x89"
    if isinstance(obj, int):
        return b"K" + bytes([obj]) if 0 <= obj < 256 else b"J" + struct.pack("<i", obj)
    if obj is None:
        return b"N"
    if isinstance(obj, list):
        return b"](" + b"".join(map(_py2, obj)) + b"e"
    if isinstance(obj, tuple):
        return b"(" + b"".join(map(_py2, obj)) + b"t"
    if isinstance(obj, dict):
        return b"}(" + b"".join(_py2(k) + _py2(v) for k, v in obj.items()) + b"u"
    assert isinstance(obj, np.ndarray) and obj.dtype == np.uint8
    dtype = b"cnumpy\ndtype\n" + _py2(b"u1") + b"\x89\x88\x87R" + _py2((3, b"|", None, None, None, -1, -1, 0)) + b"b"
    state = b"(" + _py2(1) + _py2(obj.shape) + dtype + b"\x89" + _py2(obj.tobytes()) + b"t"
    return (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + _py2((0,)) + _py2(b"b") + b"\x87R" + state + b"b"
    )


def test_pickles_written_by_python2_and_numpy1_load(tmp_path: Path) -> None:
    def split(images: np.ndarray, fine: list[int], prefix: str) -> bytes:
        data = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)
        names = [f"{prefix}_{i:06d}.png".encode() for i in range(len(fine))]
        return b"\x80\x02" + _py2({b"data": data, b"fine_labels": fine, b"filenames": names}) + b"."

    path = tmp_path / "py2.tar.gz"
    meta = b"\x80\x02" + _py2({b"fine_label_names": FINE_LABEL_NAMES}) + b"."
    train, test = split(TRAIN_IMAGES, TRAIN_FINE, "train"), split(TEST_IMAGES, TEST_FINE, "test")
    assert pickle.loads(train, encoding="bytes")[b"fine_labels"] == TRAIN_FINE  # the opcodes are a valid pickle
    path.write_bytes(_tarball({"meta": meta, "train": train, "test": test}))
    splits = load_vehicles(path)
    assert np.array_equal(splits["train"].images, TRAIN_IMAGES[[0, 2, 3, 5, 7]])
    assert splits["test"].filenames == ["test_000000.png", "test_000002.png"]


def test_http_error_is_reported(server: FakeServer, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(server.url + ".missing", tmp_path / "a", ARCHIVE_MD5, attempts=1, show_progress=False)
    assert list(tmp_path.iterdir()) == []


def test_unreachable_server_is_a_download_error(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="after 2 attempt"):
        download_file("http://127.0.0.1:9/none", tmp_path / "a", ARCHIVE_MD5, attempts=2, show_progress=False)


class _RunsCode:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("unpickling ran code",))


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ({"meta": pickle.dumps({b"fine_label_names": FINE_LABEL_NAMES[::-1]})}, "fine label 8 is b'class_91'"),
        ({"meta": pickle.dumps({b"fine_label_names": FINE_LABEL_NAMES})}, "no cifar-100-python/train"),
        ({"meta": pickle.dumps(_RunsCode())}, "unexpected object builtins.print"),
        (
            {
                "meta": pickle.dumps({b"fine_label_names": FINE_LABEL_NAMES}),
                "train": pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"fine_labels": [8, 8], b"filenames": []}),
                "test": b"",
            },
            r"data must be uint8 \[N, 3072\]",
        ),
    ],
)
def test_archives_in_another_format_are_rejected(members: dict[str, bytes], message: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.tar.gz"
    path.write_bytes(_tarball(members))
    with pytest.raises(CifarFormatError, match=message):
        load_vehicles(path)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"<html>not found</html>", "not a gzipped tar archive"),
        (ARCHIVE[: len(ARCHIVE) // 2], "truncated"),
    ],
)
def test_a_file_that_is_not_a_whole_tarball_is_rejected(payload: bytes, message: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.tar.gz"
    path.write_bytes(payload)
    with pytest.raises(CifarFormatError, match=message):
        load_vehicles(path)


def test_data_fetch_and_export_commands(server: FakeServer, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from bayroute.commands.data import app
    from training.folder import load_folder_dataset
    from training.lst import parse_lst

    runner = CliRunner()
    source = ["--cache", str(tmp_path / "cache"), "--url", server.url, "--md5", ARCHIVE_MD5, "--no-progress"]
    result = runner.invoke(app, ["fetch", *source])
    assert result.exit_code == 0, result.output
    assert "train: 2 bicycle, 3 motorcycle" in result.output
    fetched = tmp_path / "cache" / "cifar100-vehicles"
    train = load_folder_dataset(fetched / "train")
    assert [p.name for p in train.paths] == [
        "train_000000.png",
        "train_000005.png",
        "train_000002.png",
        "train_000003.png",
        "train_000007.png",
    ]
    assert np.array_equal(train.images, TRAIN_IMAGES[[0, 5, 2, 3, 7]])
    assert load_folder_dataset(fetched / "test").class_counts() == {"bicycle": 1, "motorcycle": 1}
    index = (fetched / "CIFAR_INDEX.tsv").read_text().splitlines()
    assert index[0] == "split\tclass\tfilename\tcifar100_index_in_split\tfine_label"
    assert index[1:3] == ["train\tbicycle\ttrain_000000.png\t0\t8", "train\tmotorcycle\ttrain_000002.png\t2\t48"]
    assert index[-1] == "test\tbicycle\ttest_000002.png\t2\t8"

    assert runner.invoke(app, ["fetch", *source]).exit_code == 1  # refuses to overwrite
    assert runner.invoke(app, ["fetch", *source, "--force"]).exit_code == 0

    out = tmp_path / "lst"
    result = runner.invoke(app, ["export", "--format", "lst", "--out", str(out), "--source", "cifar", *source])
    assert result.exit_code == 0, result.output
    assert "3 train, 2 validation" in result.output  # one of each class held out
    validation = parse_lst((out / "validation_lst" / "validation.lst").read_text())
    assert sorted(e.label for e in validation) == [0, 1]
    assert all((out / "validation" / e.path).is_file() for e in validation)
    assert not any("test_" in p.name for p in out.rglob("*.png"))  # the held-out test split is never exported
