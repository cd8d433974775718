"""Capture records → observations: what each inference predicted, how sure it was, what its input looked like.

Reads SageMaker data-capture JSON lines written by bayroute (``bayroute.capture``) or by any SageMaker
endpoint, from a folder as ``aws s3 sync`` downloads it (nested folders of ``.jsonl``, also ``.jsonl.gz``) or
from an S3 prefix. Real capture files hold surprises, so nothing here raises on a bad line: a line that is not
a capture record is counted under a reason and skipped; a record whose output is not a classification
(CSV of one number, free text) still counts as a record, without a confidence.

Outputs understood (JSON or CSV text):
- a list of class probabilities, ``[0.1, 0.9]`` (bayroute's and the built-in image classifier's answer),
  or a list of such lists (a batch: one observation per row);
- a verbose object: ``{"probabilities": [...], "labels": [...]}``, ``{"labels": [...], "scores": [...]}``,
  ``{"predictions": [...]}`` of any of these, or one prediction ``{"predicted_label": "x", "probability": 0.9}``;
- CSV rows of numbers, one row per prediction.
Values outside ``[0, 1]`` are taken for logits and go through a softmax.

Input statistics follow the baseline's definitions (``training/baseline.py``): brightness is the mean
pixel value / 255, contrast the standard deviation of the BT.601 grayscale / 255, both of the image at the
model's input size, decoded from the captured request exactly as the service decodes an upload. The
original photo's size comes from the record's ``input_stats`` custom attribute (bayroute's infer step writes
it), else from the captured image itself.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from bayroute.capture import CapturedInference, CaptureFormatError, parse_capture_line
from bayroute.errors import WorkflowError
from bayroute.imaging import prepare_image
from bayroute.serving import labels_from_custom_attributes, media_type, parse_custom_attributes
from bayroute.steps.infer import capture_context

UNKNOWN_VERSION = "unknown"
GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float64)
# SageMaker's capture layout: .../{endpoint}/{variant}/yyyy/mm/dd/hh/{file}.jsonl
_HOUR_FOLDERS = re.compile(r"^\d{4}/\d{2}/\d{2}/\d{2}$")
_LABEL_KEYS = ("labels", "classes", "class_names")
_SCORE_KEYS = ("probabilities", "probability_list", "scores", "probs")
_SINGLE_LABEL_KEYS = ("predicted_label", "label", "class", "predicted_class")
_SINGLE_SCORE_KEYS = ("probability", "confidence", "score")


def brightness(image: np.ndarray) -> float:
    """Mean pixel value / 255 of a uint8 RGB image (the baseline's definition)."""
    return float(image.mean()) / 255.0


def contrast(image: np.ndarray) -> float:
    """Standard deviation of the BT.601 grayscale / 255 of a uint8 RGB image (the baseline's definition)."""
    gray = image.astype(np.float64) @ GRAY_WEIGHTS
    return float(gray.std()) / 255.0


@dataclass(frozen=True)
class Observation:
    """One prediction of one captured inference (a batch request gives several)."""

    event_id: str
    time: datetime
    source: str  # the object key or file the record came from
    endpoint: str | None
    variant: str | None
    model_version: str
    confidence: float | None  # top-1 probability; None when the output is not a classification
    predicted: str | None  # the top-1 class name (``class_<i>`` when the record names no labels)
    probabilities: tuple[float, ...] | None
    classes: tuple[str, ...] | None
    object_key: str | None
    inference_id: str | None
    original_width: int | None
    original_height: int | None
    brightness: float | None
    contrast: float | None

    @property
    def original_megapixels(self) -> float | None:
        if self.original_width is None or self.original_height is None:
            return None
        return self.original_width * self.original_height / 1e6


@dataclass
class ReadTally:
    """What reading captured: lines seen, records parsed, and why the rest was skipped."""

    files: int = 0
    lines: int = 0
    records: int = 0
    observations: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    # Records whose output held no classification, and whose input gave no image statistics.
    outputs_unrecognized: int = 0
    inputs_without_stats: int = 0

    def merge(self, other: ReadTally) -> None:
        self.files += other.files
        self.lines += other.lines
        self.records += other.records
        self.observations += other.observations
        self.skipped.update(other.skipped)
        self.outputs_unrecognized += other.outputs_unrecognized
        self.inputs_without_stats += other.inputs_without_stats

    def to_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "lines": self.lines,
            "records": self.records,
            "observations": self.observations,
            "skipped_lines": sum(self.skipped.values()),
            "skipped_by_reason": dict(sorted(self.skipped.items())),
            "outputs_unrecognized": self.outputs_unrecognized,
            "inputs_without_stats": self.inputs_without_stats,
        }


def endpoint_and_variant(source: str) -> tuple[str | None, str | None]:
    """The endpoint and variant folders of a capture path (``.../{endpoint}/{variant}/yyyy/mm/dd/hh/f``)."""
    parts = source.replace("\\", "/").split("/")
    for i in range(len(parts) - 5, 1, -1):
        if _HOUR_FOLDERS.match("/".join(parts[i : i + 4])):
            return parts[i - 2], parts[i - 1]
    return None, None


@dataclass(frozen=True)
class _Prediction:
    scores: tuple[float, ...] | None
    confidence: float
    predicted_index: int | None
    predicted_label: str | None
    labels: tuple[str, ...] | None


def _numbers(values: Any) -> list[float] | None:
    if not isinstance(values, list) or not values:
        return None
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        floats = [float(v) for v in values]
        return floats if all(math.isfinite(v) for v in floats) else None
    return None


def _as_probabilities(values: list[float]) -> list[float]:
    """Probabilities as given; values outside [0, 1] are logits, turned into probabilities by a softmax."""
    if all(0.0 <= v <= 1.0 for v in values):
        return values
    shifted = np.exp(np.asarray(values) - max(values))
    return [float(v) for v in shifted / shifted.sum()]


def _from_scores(values: list[float], labels: Sequence[str] | None) -> _Prediction:
    probabilities = _as_probabilities(values)
    index = int(np.argmax(probabilities))
    names = tuple(str(label) for label in labels) if labels and len(labels) == len(values) else None
    return _Prediction(
        scores=tuple(probabilities),
        confidence=probabilities[index],
        predicted_index=index,
        predicted_label=names[index] if names else None,
        labels=names,
    )


def _from_json(document: Any, labels: Sequence[str] | None) -> list[_Prediction]:
    values = _numbers(document)
    if values is not None:
        return [_from_scores(values, labels)] if len(values) >= 2 else []
    if isinstance(document, list):
        return [p for item in document for p in _from_json(item, labels)]
    if not isinstance(document, dict):
        return []
    named = next((document[k] for k in _LABEL_KEYS if isinstance(document.get(k), list)), None)
    own_labels = [str(label) for label in named] if named else labels
    for key in _SCORE_KEYS:
        if key in document:
            return _from_json(document[key], own_labels)
    if "predictions" in document:
        return _from_json(document["predictions"], own_labels)
    score = next((document[k] for k in _SINGLE_SCORE_KEYS if isinstance(document.get(k), int | float)), None)
    label = next((document[k] for k in _SINGLE_LABEL_KEYS if k in document), None)
    if score is not None and 0.0 <= float(score) <= 1.0:
        return [
            _Prediction(
                scores=None,
                confidence=float(score),
                predicted_index=None,
                predicted_label=None if label is None else str(label),
                labels=None,
            )
        ]
    return []


def _from_csv(text: str, labels: Sequence[str] | None) -> list[_Prediction]:
    predictions = []
    for row in csv.reader(io.StringIO(text)):
        try:
            values = [float(cell) for cell in row if cell.strip()]
        except ValueError:
            return []
        if len(values) >= 2 and all(math.isfinite(v) for v in values):
            predictions.append(_from_scores(values, labels))
    return predictions


def parse_output(body: bytes, content_type: str, labels: Sequence[str] | None = None) -> list[_Prediction]:
    """The predictions in an endpoint answer (see the module docstring); empty when it holds none."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return []
    media = media_type(content_type)
    if media != "text/csv":
        try:
            return _from_json(json.loads(text), labels)
        except ValueError:
            if media == "application/json":
                return []
    return _from_csv(text, labels)


def _input_features(
    captured: CapturedInference, stats: Mapping[str, Any] | None, input_size: int, max_pixels: int
) -> tuple[int | None, int | None, float | None, float | None]:
    """(original width, original height, brightness, contrast) of the captured input, None where unknown;
    ``stats`` are the ``input_stats`` the record carries, if any."""
    width = height = None
    if stats is not None:
        try:
            width, height = int(stats["original_width"]), int(stats["original_height"])
        except (KeyError, TypeError, ValueError):
            width = height = None
    try:
        prepared = prepare_image(captured.input_body, size=input_size, max_pixels=max_pixels)
    except WorkflowError:
        return width, height, None, None
    if width is None or height is None:
        width, height = prepared.stats.original_width, prepared.stats.original_height
    return width, height, brightness(prepared.array), contrast(prepared.array)


def observations_from_line(
    line: str | bytes, *, source: str, input_size: int, max_pixels: int, tally: ReadTally
) -> list[Observation]:
    """The observations of one capture line; a line that is not a capture record is tallied and skipped."""
    tally.lines += 1
    if not line.strip():
        tally.skipped["blank_line"] += 1
        return []
    try:
        captured = parse_capture_line(line)
    except CaptureFormatError as exc:
        tally.skipped[_skip_reason(str(exc))] += 1
        return []
    tally.records += 1
    pairs = parse_custom_attributes(captured.custom_attributes)
    record_labels = labels_from_custom_attributes(pairs)
    predictions = parse_output(captured.output_body, captured.output_content_type, record_labels)
    if not predictions:
        tally.outputs_unrecognized += 1
    object_key, stats = capture_context(captured.custom_attributes)
    width, height, bright, contr = _input_features(captured, stats, input_size, max_pixels)
    if bright is None:
        tally.inputs_without_stats += 1
    endpoint, variant = endpoint_and_variant(source)
    unscored = Observation(
        event_id=captured.event_id,
        time=captured.inference_time,
        source=source,
        endpoint=endpoint,
        variant=variant,
        model_version=captured.model_version or UNKNOWN_VERSION,
        confidence=None,
        predicted=None,
        probabilities=None,
        classes=None,
        object_key=object_key,
        inference_id=captured.inference_id,
        original_width=width,
        original_height=height,
        brightness=bright,
        contrast=contr,
    )
    observations = [
        replace(
            unscored,
            confidence=p.confidence,
            predicted=p.predicted_label or (None if p.predicted_index is None else f"class_{p.predicted_index}"),
            probabilities=p.scores,
            classes=p.labels,
        )
        for p in predictions
    ] or [unscored]
    tally.observations += len(observations)
    return observations


def _skip_reason(message: str) -> str:
    if message.startswith("not JSON"):
        return "not_json"
    if message.startswith("not a version"):
        return "not_a_capture_record"
    if "inferenceTime" in message:
        return "bad_inference_time"
    if "eventId" in message:
        return "no_event_id"
    return "malformed_record"


def _lines_of(data: bytes, name: str) -> list[bytes]:
    if name.endswith(".gz"):
        data = gzip.decompress(data)
    return data.splitlines()


def is_capture_file(name: str) -> bool:
    return name.endswith((".jsonl", ".jsonl.gz", ".json"))


def read_lines(
    named_lines: Iterable[tuple[str, Sequence[bytes]]], *, input_size: int, max_pixels: int, tally: ReadTally
) -> Iterator[Observation]:
    for source, lines in named_lines:
        tally.files += 1
        for line in lines:
            yield from observations_from_line(
                line, source=source, input_size=input_size, max_pixels=max_pixels, tally=tally
            )


def local_capture_files(root: Path) -> list[Path]:
    """The capture files under ``root`` (a file, or a folder searched recursively), in path order."""
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"no capture file or folder at {root}")
    return sorted(p for p in root.rglob("*") if p.is_file() and is_capture_file(p.name))


def read_local_capture(root: Path, *, input_size: int, max_pixels: int) -> tuple[list[Observation], ReadTally]:
    """Every observation in the capture files under ``root``."""
    tally = ReadTally()

    def files() -> Iterator[tuple[str, Sequence[bytes]]]:
        for path in local_capture_files(root):
            try:
                lines = _lines_of(path.read_bytes(), path.name)
            except (OSError, gzip.BadGzipFile, EOFError):
                tally.skipped["unreadable_file"] += 1
                continue
            yield path.relative_to(root).as_posix() if root.is_dir() else path.name, lines

    observations = list(read_lines(files(), input_size=input_size, max_pixels=max_pixels, tally=tally))
    return observations, tally


def s3_capture_keys(s3: Any, bucket: str, prefix: str) -> list[str]:
    paginator = s3.get_paginator("list_objects_v2")
    keys: list[str] = []
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(item["Key"] for item in page.get("Contents", []) if is_capture_file(item["Key"]))
    return keys


def read_s3_objects(s3: Any, bucket: str, keys: Iterable[str]) -> Iterator[tuple[str, Sequence[bytes]]]:
    for key in keys:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        yield key, _lines_of(body, key)


def read_s3_capture(
    s3: Any, bucket: str, prefix: str, *, input_size: int, max_pixels: int
) -> tuple[list[Observation], ReadTally]:
    """Every observation in the capture files under ``s3://bucket/prefix``."""
    tally = ReadTally()
    keys = s3_capture_keys(s3, bucket, prefix)
    named = read_s3_objects(s3, bucket, keys)
    observations = list(read_lines(named, input_size=input_size, max_pixels=max_pixels, tally=tally))
    return observations, tally


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` → (bucket, prefix)."""
    if not url.startswith("s3://"):
        raise ValueError(f"not an s3:// URL: {url!r}")
    bucket, _, prefix = url[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {url!r}")
    return bucket, prefix
