"""Classifier metrics from predicted probabilities: accuracy, calibration and what a threshold automates.

numpy only, so the runtime and CI compute them without torch. "Confidence" is the top-1 probability; a
prediction is automated at threshold ``t`` when its confidence is ``>= t`` (the workflow's rule).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

REPORT_THRESHOLDS = (0.8, 0.9, 0.95, 0.99)
ECE_BINS = 15
# Probabilities are clipped here before the log so that one confident mistake gives a large, finite NLL.
NLL_FLOOR = 1e-12
# Float slack when comparing a measured precision with a target such as 0.99 (99/100 must count).
_PRECISION_SLACK = 1e-12


def _checked(probabilities: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probabilities, dtype=np.float64)
    truth = np.asarray(labels)
    if probs.ndim != 2 or probs.shape[0] == 0 or probs.shape[1] < 2:
        raise ValueError(f"probabilities must be [N>0, C>=2], got shape {probs.shape}")
    if truth.shape != (probs.shape[0],):
        raise ValueError(f"labels must be [N] = [{probs.shape[0]}], got shape {truth.shape}")
    if not np.issubdtype(truth.dtype, np.integer):
        raise ValueError(f"labels must be integer class indices, got {truth.dtype}")
    if truth.min() < 0 or truth.max() >= probs.shape[1]:
        raise ValueError(f"labels must be in [0, {probs.shape[1] - 1}], got {truth.min()}..{truth.max()}")
    return probs, truth.astype(np.int64)


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE over ``bins`` equal-width confidence bins ``(k/bins, (k+1)/bins]`` (Guo et al., 2017):
    the sample-weighted mean of |accuracy - mean confidence| per bin."""
    probs, truth = _checked(probabilities, labels)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == truth
    bin_index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        members = bin_index == b
        if members.any():
            total += members.sum() * abs(correct[members].mean() - confidence[members].mean())
    return float(total / len(truth))


def negative_log_likelihood(probabilities: np.ndarray, labels: np.ndarray) -> float:
    probs, truth = _checked(probabilities, labels)
    picked = probs[np.arange(len(truth)), truth]
    return float(-np.log(np.clip(picked, NLL_FLOOR, 1.0)).mean())


def threshold_report(probabilities: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float | None]:
    """Share of predictions automated at ``threshold`` and their precision (None when none is automated)."""
    probs, truth = _checked(probabilities, labels)
    automated = probs.max(axis=1) >= threshold
    correct = probs.argmax(axis=1) == truth
    return {
        "automation_rate": float(automated.mean()),
        "precision": float(correct[automated].mean()) if automated.any() else None,
    }


def threshold_for_precision(
    probabilities: np.ndarray, labels: np.ndarray, precision: float
) -> tuple[float, float] | None:
    """The lowest observed top-1 confidence ``t`` whose automated set (confidence >= t) is at least
    ``precision`` correct, with the automation rate at ``t``; None when no threshold reaches it."""
    if not 0.0 < precision <= 1.0:
        raise ValueError(f"precision must be in (0, 1], got {precision}")
    probs, truth = _checked(probabilities, labels)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == truth
    order = np.argsort(-confidence, kind="stable")
    sorted_confidence = confidence[order]
    kept = np.arange(1, len(order) + 1)
    precision_at = np.cumsum(correct[order]) / kept
    # A threshold keeps every prediction tied with it, so only the last position of each tie group counts.
    group_end = np.append(sorted_confidence[1:] != sorted_confidence[:-1], True)
    reaching = np.flatnonzero(group_end & (precision_at >= precision - _PRECISION_SLACK))
    if reaching.size == 0:
        return None
    lowest = reaching[-1]
    return float(sorted_confidence[lowest]), float(kept[lowest] / len(order))


def classification_report(
    probabilities: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    thresholds: Sequence[float] = REPORT_THRESHOLDS,
) -> dict[str, Any]:
    """Everything ``bayroute evaluate`` prints, as JSON-ready values.

    ``confusion_matrix[i][j]`` counts images of class ``classes[i]`` predicted as ``classes[j]``;
    a class with no images has recall None.
    """
    probs, truth = _checked(probabilities, labels)
    if len(classes) != probs.shape[1]:
        raise ValueError(f"{len(classes)} class names for {probs.shape[1]} probability columns")
    predicted = probs.argmax(axis=1)
    confusion = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(confusion, (truth, predicted), 1)
    support = confusion.sum(axis=1)
    recall = {name: (float(confusion[i, i] / support[i]) if support[i] else None) for i, name in enumerate(classes)}
    return {
        "n": len(truth),
        "classes": list(classes),
        "accuracy": float((predicted == truth).mean()),
        "per_class_recall": recall,
        "confusion_matrix": confusion.tolist(),
        "nll": negative_log_likelihood(probs, truth),
        "ece": expected_calibration_error(probs, truth),
        "thresholds": {f"{t:g}": threshold_report(probs, truth, t) for t in thresholds},
    }
