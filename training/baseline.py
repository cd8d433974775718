"""Input and confidence statistics of the validation split, stored in the model for drift monitoring (numpy only).

Definitions (repeated in the JSON so a monitor can compute the same numbers on live traffic):
- brightness: mean of all pixel values of an image / 255;
- contrast: standard deviation of the image's grayscale (0.299 R + 0.587 G + 0.114 B) / 255;
- confidence: the top calibrated probability the served model gives the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)
HISTOGRAM_BINS = 20
GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float64)


def brightness(images: np.ndarray) -> np.ndarray:
    """Per-image mean pixel value / 255 for uint8 [N, H, W, 3]."""
    return images.reshape(images.shape[0], -1).mean(axis=1) / 255.0


def contrast(images: np.ndarray) -> np.ndarray:
    """Per-image standard deviation of the grayscale image / 255 for uint8 [N, H, W, 3]."""
    gray = images.astype(np.float64) @ GRAY_WEIGHTS
    return gray.reshape(images.shape[0], -1).std(axis=1) / 255.0


def _distribution(values: np.ndarray, low: float, high: float) -> dict[str, object]:
    counts, edges = np.histogram(np.clip(values, low, high), bins=HISTOGRAM_BINS, range=(low, high))
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "quantiles": {f"{q:g}": float(np.quantile(values, q)) for q in QUANTILES},
        "histogram": {"edges": [round(float(e), 6) for e in edges], "counts": [int(c) for c in counts]},
    }


def drift_baseline(
    images: np.ndarray, probabilities: np.ndarray, labels: np.ndarray, classes: Sequence[str]
) -> dict[str, Any]:
    """Reference distributions on the validation images, with the served model's calibrated probabilities."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 images [N, H, W, 3], got {images.dtype} {images.shape}")
    if not len(images) == len(probabilities) == len(labels):
        raise ValueError("images, probabilities and labels must have the same length")
    n = len(labels)
    predicted = probabilities.argmax(axis=1)
    return {
        "source": "validation split",
        "n": n,
        "definitions": {
            "brightness": "mean pixel value / 255",
            "contrast": "std of grayscale (0.299 R + 0.587 G + 0.114 B) / 255",
            "confidence": "top calibrated probability",
        },
        "confidence": _distribution(probabilities.max(axis=1), 0.0, 1.0),
        "brightness": _distribution(brightness(images), 0.0, 1.0),
        "contrast": _distribution(contrast(images), 0.0, 0.5),
        "class_mix": {
            "true": {c: float((labels == i).mean()) for i, c in enumerate(classes)},
            "predicted": {c: float((predicted == i).mean()) for i, c in enumerate(classes)},
        },
    }
