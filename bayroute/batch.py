"""Batch scoring: every image of a folder or an S3 prefix through the model, decoded and inferred in parallel.

``score_images`` cuts the images into chunks of ``batch_size``. A chunk is one unit of work, done by one of
``workers`` processes (``workers`` 0: by this process): read each image, decode it exactly as the workflow
decodes an upload (``bayroute.imaging``: format by content, size and pixel limits, EXIF, any mode to RGB,
resized to the model input), run the chunk's images through the model (``MODEL_RUN_IMAGES`` at a time),
format their result lines and write their capture file. This process only writes the lines, in input order::

    {"image", "labels", "probabilities", "class", "confidence", "model_version", "inference_id"}
    {"image", "error": <reason code>, "detail"}

Each scored chunk gets one data-capture file in SageMaker's format (``bayroute.capture``): one record per
image, its input the model-size PNG the workflow would have sent to the endpoint, its custom attributes
those of the infer step (model version, labels, object key, input statistics), so the monitor reads batch
scores like live traffic. Captures go to a folder (laid out as ``aws s3 sync`` would download the capture
bucket) or to ``s3://bucket/prefix``.

An input that already is a PNG at the model's size is not re-encoded: its own bytes are the captured input,
since decoding them gives exactly the scored pixels (a PNG at the model size is never resampled).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import stat
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
# The most images one model run takes. Per image, a run of 16 costs what a run of 64 does (the model is
# compute-bound), but the memory ONNX Runtime touches grows with the run: a fresh worker's first run of 64
# faulted in about 27 MB (6,900 page faults, 11-16 ms on these machines) against 7 MB (1,800) for 16, and its
# second run 4,600 more for ONNX Runtime's memory pattern against 1,100.
MODEL_RUN_IMAGES = 16


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
    # Plain strings, not Path objects, and no path joined per file but the one kept: listing was a twentieth of
    # scoring a folder of small images, and it runs before any worker starts.
    skipped: dict[str, set[str]] = {}  # resolved folder -> names skipped in it
    for path in exclude:
        resolved_path = os.fspath(path.resolve())
        skipped.setdefault(os.path.dirname(resolved_path), set()).add(os.path.basename(resolved_path))
    top = str(target.folder)
    found: list[tuple[tuple[str, ...], str]] = []  # (path parts relative to the folder, path)
    for root, folders, files in os.walk(top):
        skipped_here = skipped.get(os.path.realpath(root), set()) if skipped else set()
        relative = Path(root).relative_to(top).parts
        prefix = os.path.join(root, "")
        folders[:] = [name for name in folders if not name.startswith(".") and name not in skipped_here]
        found.extend(
            ((*relative, name), prefix + name)
            for name in files
            if not name.startswith(".") and name not in skipped_here
        )
    found.sort()
    return [ImageItem(index, path, path) for index, (_, path) in enumerate(found)]


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
    return array, data, InputStats.measure(array, width=config.size, height=config.size, fmt="png", size=len(data))


_READ_CHUNK_BYTES = 64 * 1024


def _read_file(path: str, max_bytes: int) -> bytes:
    # os.open and os.read, not open(): the file object's buffering layer was a third of reading a small image.
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise ObjectMissing(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        status = os.fstat(descriptor)
        if stat.S_ISDIR(status.st_mode):  # os.open opens a folder, where open() refuses it
            raise ObjectMissing(f"cannot read {path}: it is a folder")
        stated = size = status.st_size
        parts: list[bytes] = []
        read = 0
        while size <= max_bytes:
            # Asks for one byte past the stated size, so a whole file takes one read and a second that finds its
            # end. Past that size (a file that grew, a pipe, a device) it reads on in chunks, held to the limit.
            wanted = stated - read + 1 if read <= stated else min(_READ_CHUNK_BYTES, max_bytes - read + 1)
            part = os.read(descriptor, wanted)
            if not part:
                return b"".join(parts)
            parts.append(part)
            read += len(part)
            size = max(size, read)
        raise TooLarge(f"{path} has {size} bytes, over the limit of {max_bytes}", bytes=size, limit=max_bytes)
    except OSError as exc:
        raise ObjectMissing(f"cannot read {path}: {exc.strerror or exc}") from exc
    finally:
        os.close(descriptor)


# This process's S3 object store, made on first use: each decoding process needs its own client.
_object_store: Any = None


def _read(location: str, config: DecodeConfig) -> bytes:
    global _object_store
    if config.bucket is None:
        return _read_file(location, config.max_object_bytes)
    if _object_store is None:
        from bayroute.adapters.aws import ObjectStore, aws_client

        _object_store = ObjectStore(aws_client("s3"))
    data: bytes = _object_store.read(config.bucket, location, max_bytes=config.max_object_bytes)
    return data


def decode_chunk(chunk: Sequence[tuple[int, str]], config: DecodeConfig) -> list[Decoded]:
    """Read and decode ``(index, location)`` pairs; a failure becomes the image's ``Decoded.error``."""
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
        self._s3 = s3_client
        if target.bucket is not None and s3_client is None:
            raise ValueError("an S3 capture target needs an S3 client")

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_s3": None}  # clients do not pickle; see in_new_process

    def in_new_process(self) -> CaptureFiles:
        """These capture files as written by another (forked or spawned) process, with its own S3 client: a
        client's pooled connections must not be shared across processes."""
        if self.target.bucket is None:
            return self
        from bayroute.adapters.aws import aws_client

        return CaptureFiles(self.target, self.endpoint, self.variant, s3_client=aws_client("s3"))

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


@dataclass(frozen=True)
class ChunkScores:
    """One chunk scored: its result lines with their input indexes, its failures' reasons, its capture file."""

    lines: list[tuple[int, str]]
    failures: list[str]
    capture_file: str | None


def utc_now() -> datetime:
    """The default clock of capture records (a module function: spawned workers get it by pickling)."""
    return datetime.now(UTC)


def _inference_id(name: str, digest: str) -> str:
    return str(uuid.uuid5(BATCH_NAMESPACE, f"{name}@{digest}"))


class ChunkScorer:
    """All the work on a chunk of images: read, decode, one model batch, result lines, one capture file.

    Each worker process runs one, so that the per-image Python work (decoding, formatting, capture records)
    runs on every core instead of queueing behind one process's GIL, and no pixels cross processes.
    """

    def __init__(
        self,
        model: Model,
        config: DecodeConfig,
        capture: CaptureFiles | None,
        clock: Callable[[], datetime],
    ) -> None:
        self._model = model
        self._config = config
        self._capture = capture
        self._clock = clock

    def score(self, chunk: Sequence[tuple[int, str, str]]) -> ChunkScores:
        """Score ``(index, location, name)`` triples."""
        names = {index: name for index, _, name in chunk}
        lines: list[tuple[int, str]] = []
        failures: list[str] = []
        scored: list[Decoded] = []
        for image in decode_chunk([(index, location) for index, location, _ in chunk], self._config):
            if image.error is None:
                scored.append(image)
                continue
            failures.append(image.error)
            failure = {"image": names[image.index], "error": image.error, "detail": image.detail}
            lines.append((image.index, json.dumps(failure) + "\n"))
        capture_file = None
        if scored:
            size = self._config.size
            pixels = np.frombuffer(b"".join(image.pixels or b"" for image in scored), dtype=np.uint8)
            probabilities = self._predict(pixels.reshape(len(scored), size, size, 3)).tolist()
            when = self._clock()
            records = []
            for image, row in zip(scored, probabilities, strict=True):
                name = names[image.index]
                line, record = self._result(image, name, row, when)
                lines.append((image.index, line))
                if record is not None:
                    records.append(record)
            if records and self._capture is not None:
                capture_file = self._capture.write(records, when)
        return ChunkScores(lines, failures, capture_file)

    def _predict(self, images: np.ndarray) -> np.ndarray:
        """The model's probabilities for ``images``, in runs of at most ``MODEL_RUN_IMAGES``."""
        if len(images) <= MODEL_RUN_IMAGES:
            return self._model.predict(images)
        runs = range(0, len(images), MODEL_RUN_IMAGES)
        return np.concatenate([self._model.predict(images[start : start + MODEL_RUN_IMAGES]) for start in runs])

    def _result(self, image: Decoded, name: str, row: list[float], when: datetime) -> tuple[str, dict[str, Any] | None]:
        """The image's result line, and its capture record when captures are on."""
        model = self._model
        top = row.index(max(row))
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
        line = json.dumps(result) + "\n"
        if self._capture is None:
            return line, None
        record = capture_record(
            input_body=image.png or b"",
            input_content_type=PNG,
            output_body=json.dumps(row).encode("utf-8"),
            output_content_type=JSON,
            event_id=inference_id,
            inference_time=when,
            custom_attributes=capture_attributes(model.model_version, model.labels, name, image.stats or {}),
            inference_id=inference_id,
        )
        return line, record


# The worker process's scorer, or why it could not be made (raised with the first chunk it is given, since
# a Pool whose initializer raises restarts the worker forever).
_worker_scorer: ChunkScorer | BaseException | None = None


def _init_worker(
    load_model: Callable[[], Model],
    config: DecodeConfig,
    capture: CaptureFiles | None,
    clock: Callable[[], datetime],
) -> None:
    global _worker_scorer, _object_store
    _object_store = None  # a forked worker must not share the parent's connections
    try:
        _worker_scorer = ChunkScorer(
            load_model(), config, capture.in_new_process() if capture is not None else None, clock
        )
    except BaseException as exc:  # handed to the parent with the first chunk
        _worker_scorer = exc


def _score_in_worker(chunk: Sequence[tuple[int, str, str]]) -> ChunkScores:
    if isinstance(_worker_scorer, BaseException):
        raise _worker_scorer
    assert _worker_scorer is not None, "_score_in_worker runs in a pool started with _init_worker"
    return _worker_scorer.score(chunk)


def _scored_chunks(
    chunks: list[list[tuple[int, str, str]]],
    load_model: Callable[[], Model],
    config: DecodeConfig,
    capture: CaptureFiles | None,
    clock: Callable[[], datetime],
    workers: int,
) -> Iterator[ChunkScores]:
    """Each chunk scored, in this process (``workers`` 0) or in worker processes, as they finish."""
    if workers <= 0 or len(chunks) <= 1:
        scorer = ChunkScorer(load_model(), config, capture, clock)
        for chunk in chunks:
            yield scorer.score(chunk)
        return
    # fork starts a worker in milliseconds, but is only safe while this process runs no other thread;
    # otherwise spawn (a fresh interpreter per worker).
    method = "fork" if threading.active_count() == 1 and "fork" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    initargs = (load_model, config, capture, clock)
    with context.Pool(min(workers, len(chunks)), initializer=_init_worker, initargs=initargs) as pool:
        yield from pool.imap_unordered(_score_in_worker, chunks)


class _OrderedLines:
    """Writes result lines in input order as chunks finish in any order; the progress counts written lines."""

    def __init__(self, order: Sequence[int], out: IO[str], progress: Callable[[int], None] | None) -> None:
        self._order = order
        self._out = out
        self._progress = progress
        self._waiting: dict[int, str] = {}
        self._written = 0

    def add(self, lines: Iterable[tuple[int, str]]) -> None:
        self._waiting.update(lines)
        before = self._written
        while self._written < len(self._order) and self._order[self._written] in self._waiting:
            self._out.write(self._waiting.pop(self._order[self._written]))
            self._written += 1
        if self._progress is not None and self._written > before:
            self._progress(self._written - before)


def score_images(
    items: Sequence[ImageItem],
    load_model: Callable[[], Model],
    settings: Settings,
    out: IO[str],
    *,
    workers: int,
    batch_size: int,
    bucket: str | None = None,
    capture: CaptureFiles | None = None,
    progress: Callable[[int], None] | None = None,
    clock: Callable[[], datetime] = utc_now,
) -> BatchSummary:
    """Score ``items`` (listed by ``list_images``; objects of ``bucket`` when given, else files) into ``out``.

    The items are cut into chunks of ``batch_size``; each chunk is decoded and run through the model (less its
    images that fail, ``MODEL_RUN_IMAGES`` at a time), by ``workers`` processes that each call ``load_model``
    once, or in this process when ``workers`` is 0. ``load_model``, ``capture`` and ``clock`` must pickle where
    fork is not available.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    config = DecodeConfig(
        size=settings.model_input_size,
        max_pixels=settings.limits.max_image_pixels,
        max_object_bytes=settings.limits.max_object_bytes,
        bucket=bucket,
    )
    summary = BatchSummary(total=len(items))
    lines = _OrderedLines([item.index for item in items], out, progress)
    triples = [(item.index, item.location, item.name) for item in items]
    chunks = [triples[start : start + batch_size] for start in range(0, len(triples), batch_size)]
    started = time.perf_counter()
    for scores in _scored_chunks(chunks, load_model, config, capture, clock, workers):
        summary.scored += len(scores.lines) - len(scores.failures)
        summary.failed += len(scores.failures)
        for reason in scores.failures:
            summary.failures_by_reason[reason] = summary.failures_by_reason.get(reason, 0) + 1
        if scores.capture_file is not None:
            summary.capture_files.append(scores.capture_file)
        lines.add(scores.lines)
    out.flush()
    summary.seconds = time.perf_counter() - started
    return summary


def load_results(path: Path) -> list[dict[str, Any]]:
    """The result lines of a batch score, read back from its ``--out`` file."""
    with path.open(encoding="utf-8") as file:
        return [json.loads(line) for line in file if line.strip()]
