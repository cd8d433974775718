"""Batch scoring: every image of a folder or an S3 prefix through the model, decoded in parallel, inferred in batches.

``score_images`` reads and decodes the images in worker processes (``workers``; 0 decodes in this process),
each exactly as the workflow decodes an upload (``bayroute.imaging``: format by content, size and pixel
limits, EXIF, any mode to RGB, resized to the model input), while this process runs the model on batches of
``batch_size`` as decoded images arrive. It writes one JSON line per image, in input order::

    {"image", "labels", "probabilities", "class", "confidence", "model_version", "inference_id"}
    {"image", "error": <reason code>, "detail"}

and, per inference batch, one data-capture file in SageMaker's format (``bayroute.capture``): one record per
image, its input the model-size PNG the workflow would have sent to the endpoint, its custom attributes
those of the infer step (model version, labels, object key, input statistics), so the monitor reads batch
scores like live traffic. Captures go to a folder (laid out as ``aws s3 sync`` would download the capture
bucket) or to ``s3://bucket/prefix``.

An input that already is a PNG at the model's size is not re-encoded: its own bytes are the captured input,
since decoding them gives exactly the scored pixels (a PNG at the model size is never resampled).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import multiprocessing
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np

from bayroute.capture import JSONL_CONTENT_TYPE, capture_key, capture_line, capture_record
from bayroute.config import Settings
from bayroute.errors import ObjectMissing, TooLarge, WorkflowError
from bayroute.imaging import InputStats, decode_png_payload, prepare_image, sniff_format
from bayroute.steps.infer import capture_attributes

S3_SCHEME = "s3://"
PNG = "image/png"
JSON = "application/json"
# Inference ids of batch scores: UUIDs in this namespace, named by "<image name>@<sha256 of its bytes>".
BATCH_NAMESPACE = uuid.UUID("0b5f9a52-7c1e-4d3a-9f6b-3e2d8c4a1b70")
# Images per task handed to a worker: small enough for a smooth progress bar, big enough to amortise the IPC.
CHUNK_SIZE = 16
_GRAY = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class BatchInputError(ValueError):
    """The folder or bucket prefix to score does not exist or cannot be listed."""


@dataclass(frozen=True)
class Target:
    """Where images (or capture files) live: a folder, or ``s3://bucket/prefix``."""

    folder: Path | None = None
    bucket: str | None = None
    prefix: str = ""

    @classmethod
    def parse(cls, text: str) -> Target:
        if text.startswith(S3_SCHEME):
            bucket, _, prefix = text[len(S3_SCHEME) :].partition("/")
            if not bucket:
                raise BatchInputError(f"no bucket in {text!r}; expected s3://bucket[/prefix]")
            return cls(bucket=bucket, prefix=prefix)
        return cls(folder=Path(text))

    def __str__(self) -> str:
        return f"{S3_SCHEME}{self.bucket}/{self.prefix}" if self.bucket else str(self.folder)


@dataclass(frozen=True)
class ImageItem:
    index: int
    name: str  # what the result line calls it: the path, or s3://bucket/key
    location: str  # the file path, or the object key


def list_images(target: Target, *, s3_client: Any = None, exclude: Iterable[Path] = ()) -> list[ImageItem]:
    """Every file under the folder (recursively, sorted by relative path, hidden files and ``exclude`` skipped), or
    every object under the prefix (folder markers skipped). Content decides what is an image, not the name."""
    if target.bucket is not None:
        return _list_bucket(target, s3_client)
    assert target.folder is not None
    if not target.folder.is_dir():
        raise BatchInputError(f"{target.folder} is not a folder")
    skipped = {path.resolve() for path in exclude}
    paths: list[Path] = []
    for root, folders, files in os.walk(target.folder):
        here, resolved = Path(root), Path(root).resolve()
        folders[:] = sorted(name for name in folders if not name.startswith(".") and resolved / name not in skipped)
        paths.extend(
            here / name for name in sorted(files) if not name.startswith(".") and resolved / name not in skipped
        )
    paths.sort(key=lambda path: path.relative_to(target.folder).parts)  # type: ignore[arg-type]
    return [ImageItem(index, str(path), str(path)) for index, path in enumerate(paths)]


def _list_bucket(target: Target, s3_client: Any) -> list[ImageItem]:
    from botocore.exceptions import ClientError

    keys: list[str] = []
    try:
        for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=target.bucket, Prefix=target.prefix):
            keys.extend(str(entry["Key"]) for entry in page.get("Contents", []) if not entry["Key"].endswith("/"))
    except ClientError as exc:
        raise BatchInputError(f"cannot list {target}: {exc}") from exc
    return [ImageItem(index, f"{S3_SCHEME}{target.bucket}/{key}", key) for index, key in enumerate(keys)]


# -- decoding (in worker processes) ----------------------------------------------------------------------


@dataclass(frozen=True)
class DecodeConfig:
    size: int
    max_pixels: int
    max_object_bytes: int
    bucket: str | None = None  # objects are read from this bucket; files otherwise


@dataclass(frozen=True)
class Decoded:
    index: int
    pixels: bytes | None = None  # uint8 [size, size, 3], C order
    png: bytes | None = None  # the captured input: the model-size PNG
    stats: dict[str, Any] | None = None
    digest: str = ""
    error: str | None = None
    detail: str = ""


def is_model_size_png(data: bytes, size: int) -> bool:
    """A PNG whose header declares exactly ``size`` x ``size`` pixels (decoded without resampling)."""
    return (
        sniff_format(data[:16]) == "png"
        and data[12:16] == b"IHDR"
        and int.from_bytes(data[16:20], "big") == size
        and int.from_bytes(data[20:24], "big") == size
    )


def decode_image(data: bytes, config: DecodeConfig) -> tuple[np.ndarray, bytes, InputStats]:
    """(model input, model-size PNG, input statistics), as ``prepare_image`` gives them, re-encoding only when
    the input is not already a PNG of the model's size. Raises the image's named error."""
    if not is_model_size_png(data, config.size):
        prepared = prepare_image(data, size=config.size, max_pixels=config.max_pixels)
        return prepared.array, prepared.png, prepared.stats
    array = decode_png_payload(data, config.size, max_pixels=config.max_pixels)
    gray = array.astype(np.float32) @ _GRAY  # the same statistics as prepare_image
    stats = InputStats(
        original_width=config.size,
        original_height=config.size,
        format="png",
        bytes=len(data),
        brightness=round(float(gray.mean()) / 255.0, 6),
        contrast=round(float(gray.std()) / 255.0, 6),
    )
    return array, data, stats


def _read_file(path: str, max_bytes: int) -> bytes:
    try:
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            if size > max_bytes:
                raise TooLarge(f"{path} has {size} bytes, over the limit of {max_bytes}", bytes=size, limit=max_bytes)
            return file.read()
    except OSError as exc:
        raise ObjectMissing(f"cannot read {path}: {exc.strerror or exc}") from exc


_worker_config: DecodeConfig | None = None
_worker_store: Any = None


def _init_worker(config: DecodeConfig) -> None:
    global _worker_config, _worker_store
    _worker_config = config
    _worker_store = None


def _read(location: str, config: DecodeConfig) -> bytes:
    global _worker_store
    if config.bucket is None:
        return _read_file(location, config.max_object_bytes)
    if _worker_store is None:
        from bayroute.adapters.aws import ObjectStore, aws_client

        _worker_store = ObjectStore(aws_client("s3"))
    data: bytes = _worker_store.read(config.bucket, location, max_bytes=config.max_object_bytes)
    return data


def decode_chunk(chunk: Sequence[tuple[int, str]], config: DecodeConfig | None = None) -> list[Decoded]:
    """Read and decode ``(index, location)`` pairs; a failure becomes the image's ``Decoded.error``."""
    config = config or _worker_config
    assert config is not None, "decode_chunk runs in a worker started with _init_worker, or with a config"
    decoded = []
    for index, location in chunk:
        try:
            data = _read(location, config)
            array, png, stats = decode_image(data, config)
        except WorkflowError as exc:
            decoded.append(Decoded(index, error=exc.reason, detail=exc.detail))
            continue
        digest = hashlib.sha256(data).hexdigest()
        decoded.append(Decoded(index, array.tobytes(), png, stats.to_dict(), digest))
    return decoded


# -- capture files ---------------------------------------------------------------------------------------


class CaptureFiles:
    """Writes one SageMaker data-capture file (JSON lines) per inference batch, to a folder or an S3 prefix."""

    def __init__(self, target: Target, endpoint: str, variant: str, *, s3_client: Any = None) -> None:
        self.target = target
        self.endpoint = endpoint
        self.variant = variant
        self.written: list[str] = []
        self._s3 = s3_client
        if target.bucket is not None and s3_client is None:
            raise ValueError("an S3 capture target needs an S3 client")

    def write(self, records: Sequence[dict[str, Any]], when: datetime) -> str:
        """Store ``records`` as one file named after the batch's time and first event id; returns its key/path."""
        first_id = records[0]["eventMetadata"]["eventId"]
        body = "".join(capture_line(record) for record in records).encode("utf-8")
        if self.target.bucket is not None:
            key = capture_key(self.target.prefix, self.endpoint, self.variant, when, first_id)
            self._s3.put_object(Bucket=self.target.bucket, Key=key, Body=body, ContentType=JSONL_CONTENT_TYPE)
            location = f"{S3_SCHEME}{self.target.bucket}/{key}"
        else:
            assert self.target.folder is not None
            path = self.target.folder / capture_key("", self.endpoint, self.variant, when, first_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f".{path.name}.part")
            partial.write_bytes(body)
            partial.replace(path)  # readers never see half a file
            location = str(path)
        self.written.append(location)
        return location


# -- scoring ---------------------------------------------------------------------------------------------


class Model(Protocol):
    @property
    def labels(self) -> list[str]: ...

    @property
    def model_version(self) -> str: ...

    def predict(self, images: np.ndarray) -> np.ndarray: ...


@dataclass
class BatchSummary:
    total: int = 0
    scored: int = 0
    failed: int = 0
    seconds: float = 0.0
    capture_files: list[str] = field(default_factory=list)
    failures_by_reason: dict[str, int] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return self.total / self.seconds if self.seconds > 0 else 0.0


def _chunks(items: Sequence[ImageItem]) -> list[list[tuple[int, str]]]:
    pairs = [(item.index, item.location) for item in items]
    return [pairs[start : start + CHUNK_SIZE] for start in range(0, len(pairs), CHUNK_SIZE)]


def _decoded_stream(items: Sequence[ImageItem], config: DecodeConfig, workers: int) -> Iterator[Decoded]:
    chunks = _chunks(items)
    if workers <= 0 or len(chunks) <= 1:
        for chunk in chunks:
            yield from decode_chunk(chunk, config)
        return
    # fork starts a worker in milliseconds, but is only safe while this process runs no other thread;
    # otherwise spawn (a fresh interpreter per worker).
    method = "fork" if threading.active_count() == 1 and "fork" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    with context.Pool(min(workers, len(chunks)), initializer=_init_worker, initargs=(config,)) as pool:
        for decoded_chunk in pool.imap(decode_chunk, chunks):
            yield from decoded_chunk


def _inference_id(name: str, digest: str) -> str:
    return str(uuid.uuid5(BATCH_NAMESPACE, f"{name}@{digest}"))


class _Writer:
    """Formats and writes the result lines and capture files on its own thread, in input order.

    ONNX Runtime releases the GIL while it runs a batch, so formatting one batch overlaps inferring the next.
    """

    _DONE = None

    def __init__(
        self,
        items: Sequence[ImageItem],
        model: Model,
        out: IO[str],
        capture: CaptureFiles | None,
        progress: Callable[[int], None] | None,
    ) -> None:
        self._names = {item.index: item.name for item in items}
        self._order = [item.index for item in items]
        self._model = model
        self._out = out
        self._capture = capture
        self._progress = progress
        self._lines: dict[int, str] = {}
        self._written = 0
        self._queue: queue.Queue[tuple[list[Decoded], list[list[float]] | None, datetime] | None] = queue.Queue(8)
        self._thread = threading.Thread(target=self._run, name="bayroute-batch-writer", daemon=True)
        self._failure: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def put(self, decoded: list[Decoded], probabilities: list[list[float]] | None, when: datetime) -> None:
        """Scored images with their probabilities, or failed ones (``probabilities`` None)."""
        if self._failure is not None:
            raise self._failure
        self._queue.put((decoded, probabilities, when))

    def close(self) -> None:
        self._queue.put(self._DONE)
        self._thread.join()
        if self._failure is not None:
            raise self._failure
        self._out.flush()

    def _run(self) -> None:
        while (work := self._queue.get()) is not self._DONE:
            if self._failure is not None:
                continue  # drain, so that the producer never blocks; close() raises
            try:
                decoded, probabilities, when = work
                if probabilities is None:
                    for failed in decoded:
                        line = {"image": self._names[failed.index], "error": failed.error, "detail": failed.detail}
                        self._lines[failed.index] = json.dumps(line) + "\n"
                else:
                    self._scored(decoded, probabilities, when)
                self._flush()
            except BaseException as exc:  # handed to the producer by put() and close()
                self._failure = exc

    def _scored(self, decoded: list[Decoded], probabilities: list[list[float]], when: datetime) -> None:
        model = self._model
        records = []
        for image, row in zip(decoded, probabilities, strict=True):
            top = row.index(max(row))
            name = self._names[image.index]
            inference_id = _inference_id(name, image.digest)
            result = {
                "image": name,
                "labels": model.labels,
                "probabilities": row,
                "class": model.labels[top],
                "confidence": row[top],
                "model_version": model.model_version,
                "inference_id": inference_id,
            }
            self._lines[image.index] = json.dumps(result) + "\n"
            if self._capture is not None:
                records.append(
                    capture_record(
                        input_body=image.png or b"",
                        input_content_type=PNG,
                        output_body=json.dumps(row).encode("utf-8"),
                        output_content_type=JSON,
                        event_id=inference_id,
                        inference_time=when,
                        custom_attributes=capture_attributes(
                            model.model_version, model.labels, name, image.stats or {}
                        ),
                        inference_id=inference_id,
                    )
                )
        if records and self._capture is not None:
            self._capture.write(records, when)

    def _flush(self) -> None:
        """Write the finished lines that are next in input order; the progress counts written lines."""
        before = self._written
        while self._written < len(self._order) and self._order[self._written] in self._lines:
            self._out.write(self._lines.pop(self._order[self._written]))
            self._written += 1
        if self._progress is not None and self._written > before:
            self._progress(self._written - before)


def score_images(
    items: Sequence[ImageItem],
    model: Model,
    settings: Settings,
    out: IO[str],
    *,
    workers: int,
    batch_size: int,
    bucket: str | None = None,
    capture: CaptureFiles | None = None,
    progress: Callable[[int], None] | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> BatchSummary:
    """Score ``items`` (listed by ``list_images``; objects of ``bucket`` when given, else files) into ``out``."""
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    size = settings.model_input_size
    config = DecodeConfig(
        size=size,
        max_pixels=settings.limits.max_image_pixels,
        max_object_bytes=settings.limits.max_object_bytes,
        bucket=bucket,
    )
    summary = BatchSummary(total=len(items))
    writer = _Writer(items, model, out, capture, progress)
    pending: list[Decoded] = []
    started = time.perf_counter()

    def run_batch() -> None:
        pixels = np.frombuffer(b"".join(d.pixels or b"" for d in pending), dtype=np.uint8)
        probabilities = model.predict(pixels.reshape(len(pending), size, size, 3))
        writer.put(list(pending), probabilities.tolist(), clock())
        summary.scored += len(pending)
        pending.clear()

    stream = _decoded_stream(items, config, workers)
    # The first image starts the decoding workers; only then the writer thread (fork needs a lone thread).
    first = next(stream, None)
    writer.start()
    try:
        for decoded in itertools.chain([first] if first else [], stream):
            if decoded.error is not None:
                writer.put([decoded], None, clock())
                summary.failed += 1
                summary.failures_by_reason[decoded.error] = summary.failures_by_reason.get(decoded.error, 0) + 1
                continue
            pending.append(decoded)
            if len(pending) >= batch_size:
                run_batch()
        if pending:
            run_batch()
    finally:
        writer.close()
    summary.seconds = time.perf_counter() - started
    summary.capture_files = list(capture.written) if capture is not None else []
    return summary


def load_results(path: Path) -> list[dict[str, Any]]:
    """The result lines of a batch score, read back from its ``--out`` file."""
    with path.open(encoding="utf-8") as file:
        return [json.loads(line) for line in file if line.strip()]
