"""Temperature scaling and the validation report (numpy only; metric definitions in ``bayroute.model.metrics``)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from bayroute.model.metrics import classification_report, negative_log_likelihood, threshold_for_precision


def validation_metrics(probabilities: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """The project's evaluation report plus the operating point at 99% precision."""
    report = classification_report(probabilities, labels, classes)
    operating_point = threshold_for_precision(probabilities, labels, 0.99)
    report["precision_0.99"] = {
        "threshold": None if operating_point is None else operating_point[0],
        "automation_rate": 0.0 if operating_point is None else operating_point[1],
    }
    return report


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def fit_temperature(logits: np.ndarray, labels: np.ndarray, *, low: float = 0.05, high: float = 20.0) -> float:
    """The temperature T minimising the NLL of softmax(logits / T), by golden-section search on log T.

    NLL is convex in 1/T, hence unimodal in log T, so the bracketed search converges to the optimum.
    """
    if logits.ndim != 2 or logits.shape[0] != labels.size or labels.size == 0:
        raise ValueError(f"logits [N, C] and labels [N] must match, got {logits.shape} and {labels.shape}")

    def loss(log_t: float) -> float:
        return negative_log_likelihood(softmax(logits / math.exp(log_t)), labels)

    golden = (math.sqrt(5) - 1) / 2
    a, b = math.log(low), math.log(high)
    c, d = b - golden * (b - a), a + golden * (b - a)
    loss_c, loss_d = loss(c), loss(d)
    while b - a > 1e-5:
        if loss_c < loss_d:
            b, d, loss_d = d, c, loss_c
            c = b - golden * (b - a)
            loss_c = loss(c)
        else:
            a, c, loss_c = c, d, loss_d
            d = a + golden * (b - a)
            loss_d = loss(d)
    return math.exp((a + b) / 2)
