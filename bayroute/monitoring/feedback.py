"""Ground truth: human labels joined to captured inferences → live accuracy, precision, threshold advice.

Labels come as CSV with a header naming ``label`` and ``event_id`` or ``object_key`` (or both): ``event_id`` is
the capture record's ``eventId`` (bayroute's inference id), ``object_key`` the inbox key the record names in its
custom attributes. A row with an event id joins by it; otherwise by object key, to the latest inference of
that object. "Routed" means confidence at or above the threshold, the workflow's rule; precision is the share
of routed, labelled inferences whose predicted class is the label.

Labels are rarely a random sample (people mostly label what the dead-letter queue sent them), so advice
reports precision from the labels and automation both among the labelled and among every captured inference.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bayroute.model.metrics import threshold_for_precision
from bayroute.monitoring.records import Observation

LABELS_PREFIX = "labels/"
WILSON_Z = 1.959963984540054  # two-sided 95%


class LabelsFormatError(ValueError):
    """A labels file without the needed columns, or with a row that names nothing."""


@dataclass(frozen=True)
class Label:
    label: str
    event_id: str | None = None
    object_key: str | None = None


def parse_labels_csv(text: str, source: str = "labels") -> list[Label]:
    """The labels of a CSV file (``label`` plus ``event_id`` and/or ``object_key`` columns, any order)."""
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    columns = {(name or "").strip().lower(): name for name in reader.fieldnames or []}
    if "label" not in columns or not ({"event_id", "object_key"} & columns.keys()):
        raise LabelsFormatError(
            f"{source}: the header must name 'label' and 'event_id' or 'object_key'; found {list(columns) or 'none'}"
        )
    labels = []
    for line, row in enumerate(reader, start=2):

        def cell(name: str, row: dict[str, Any] = row) -> str | None:
            value = row.get(columns[name]) if name in columns else None
            return value.strip() if isinstance(value, str) and value.strip() else None

        label, event_id, object_key = cell("label"), cell("event_id"), cell("object_key")
        if label is None and event_id is None and object_key is None:
            continue  # a blank line
        if label is None:
            raise LabelsFormatError(f"{source}:{line}: no label")
        if event_id is None and object_key is None:
            raise LabelsFormatError(f"{source}:{line}: neither event_id nor object_key")
        labels.append(Label(label=label, event_id=event_id, object_key=object_key))
    return labels


def read_s3_labels(s3: Any, bucket: str, prefix: str = LABELS_PREFIX) -> list[Label]:
    """Every label in the ``.csv`` objects under ``prefix``."""
    paginator = s3.get_paginator("list_objects_v2")
    labels: list[Label] = []
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            if item["Key"].endswith(".csv"):
                text = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read().decode("utf-8")
                labels.extend(parse_labels_csv(text, source=f"s3://{bucket}/{item['Key']}"))
    return labels


@dataclass(frozen=True)
class LabelledPrediction:
    observation: Observation
    label: str

    @property
    def correct(self) -> bool:
        return self.observation.predicted == self.label

    @property
    def confidence(self) -> float:
        assert self.observation.confidence is not None  # join keeps only scored observations
        return self.observation.confidence


@dataclass(frozen=True)
class JoinResult:
    matched: tuple[LabelledPrediction, ...]
    labels: int
    unmatched: int  # labels that named no captured inference

    def to_dict(self) -> dict[str, Any]:
        return {"labels": self.labels, "matched": len(self.matched), "unmatched": self.unmatched}


def join_labels(observations: Iterable[Observation], labels: Sequence[Label]) -> JoinResult:
    """Each label with the inference it names; a later label for the same inference wins."""
    by_event: dict[str, Observation] = {}
    by_object: dict[str, Observation] = {}
    for observation in sorted((o for o in observations if o.confidence is not None), key=lambda o: o.time):
        by_event[observation.event_id] = observation
        if observation.object_key:
            by_object[observation.object_key] = observation
    joined: dict[str, LabelledPrediction] = {}
    unmatched = 0
    for label in labels:
        found = by_event.get(label.event_id) if label.event_id else None
        if found is None and label.object_key:
            found = by_object.get(label.object_key)
        if found is None:
            unmatched += 1
            continue
        joined[found.event_id] = LabelledPrediction(found, label.label)
    return JoinResult(matched=tuple(joined.values()), labels=len(labels), unmatched=unmatched)


def wilson_lower_bound(successes: int, trials: int, z: float = WILSON_Z) -> float | None:
    """Lower end of the Wilson score interval for a proportion (None without trials)."""
    if trials == 0:
        return None
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = p + z * z / (2 * trials)
    margin = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    return max(0.0, (centre - margin) / denominator)


def live_quality(matched: Sequence[LabelledPrediction], threshold: float) -> dict[str, Any]:
    """Accuracy over every labelled inference; precision (with its Wilson bound) over the routed ones."""
    routed = [m for m in matched if m.confidence >= threshold]
    correct_routed = sum(m.correct for m in routed)
    return {
        "threshold": threshold,
        "labelled": len(matched),
        "accuracy": sum(m.correct for m in matched) / len(matched) if matched else None,
        "routed_labelled": len(routed),
        "precision": correct_routed / len(routed) if routed else None,
        "precision_wilson_lower_95": wilson_lower_bound(correct_routed, len(routed)),
        "automation_rate_labelled": len(routed) / len(matched) if matched else None,
    }


def _outcome_arrays(matched: Sequence[LabelledPrediction]) -> tuple[np.ndarray, np.ndarray]:
    """``threshold_for_precision`` needs only each prediction's confidence and whether it was right: a two-column
    array ``[confidence, 0]`` (top-1 is column 0) with label 0 when right and 1 when wrong carries exactly that."""
    confidence = np.array([m.confidence for m in matched], dtype=np.float64)
    probabilities = np.stack([confidence, np.zeros_like(confidence)], axis=1)
    labels = np.array([0 if m.correct else 1 for m in matched], dtype=np.int64)
    return probabilities, labels


def _most_automation_with_lower_bound(matched: Sequence[LabelledPrediction], target: float) -> float | None:
    """The lowest threshold whose routed labelled set has a Wilson 95% lower bound on precision >= target."""
    ordered = sorted(matched, key=lambda m: -m.confidence)
    best = None
    correct = 0
    for i, item in enumerate(ordered, start=1):
        correct += item.correct
        tied_with_next = i < len(ordered) and ordered[i].confidence == item.confidence
        bound = wilson_lower_bound(correct, i)
        if not tied_with_next and bound is not None and bound >= target:
            best = item.confidence
    return best


def advise_threshold(
    matched: Sequence[LabelledPrediction],
    target_precision: float,
    *,
    current_threshold: float,
    all_confidences: Sequence[float] = (),
) -> dict[str, Any]:
    """The threshold with the most automation that keeps ``target_precision`` on the labels, with its evidence."""
    if not 0.0 < target_precision <= 1.0:
        raise ValueError(f"precision must be in (0, 1], got {target_precision}")
    everything = np.asarray(all_confidences, dtype=np.float64)

    def automation_all(threshold: float) -> float | None:
        return float((everything >= threshold).mean()) if everything.size else None

    advice: dict[str, Any] = {
        "target_precision": target_precision,
        "labelled": len(matched),
        "current": {
            **live_quality(matched, current_threshold),
            "automation_rate_all": automation_all(current_threshold),
        },
    }
    if not matched:
        advice.update(recommended_threshold=None, note="no labelled inferences: nothing to base advice on")
        return advice
    probabilities, labels = _outcome_arrays(matched)
    found = threshold_for_precision(probabilities, labels, target_precision)
    if found is None:
        advice.update(
            recommended_threshold=None, note=f"no threshold reaches precision {target_precision} on these labels"
        )
        return advice
    threshold, _ = found
    evidence = live_quality(matched, threshold)
    advice.update(
        recommended_threshold=threshold,
        recommended={**evidence, "automation_rate_all": automation_all(threshold)},
    )
    conservative = _most_automation_with_lower_bound(matched, target_precision)
    advice["conservative_threshold"] = conservative
    if conservative is not None:
        advice["conservative"] = {
            **live_quality(matched, conservative),
            "automation_rate_all": automation_all(conservative),
        }
    bound = evidence["precision_wilson_lower_95"]
    if bound is not None and bound < target_precision:
        advice["note"] = (
            f"on {evidence['routed_labelled']} routed labels the 95% lower bound on precision is {bound:.3f}, "
            f"below {target_precision}: the point estimate may not hold; "
            + (
                f"{conservative:.4f} keeps the bound above the target"
                if conservative is not None
                else "no threshold keeps the bound above the target yet: label more routed inferences"
            )
        )
    return advice
