"""The drift baseline stored in the model: brightness, contrast, confidence and class mix."""

from __future__ import annotations

import numpy as np
import pytest

from training.baseline import brightness, contrast, drift_baseline


def test_brightness_and_contrast_of_known_images() -> None:
    black = np.zeros((32, 32, 3), dtype=np.uint8)
    white = np.full((32, 32, 3), 255, dtype=np.uint8)
    half = np.concatenate([black[:16], white[:16]])  # top black, bottom white
    images = np.stack([black, white, half])
    assert brightness(images) == pytest.approx([0.0, 1.0, 0.5])
    assert contrast(images) == pytest.approx([0.0, 0.0, 0.5])


def test_baseline_summarises_validation_images_and_predictions() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    probabilities = np.array([[0.9, 0.1]] * 30 + [[0.2, 0.8]] * 10)
    labels = np.array([0] * 20 + [1] * 20)
    baseline = drift_baseline(images, probabilities, labels, ["bicycle", "motorcycle"])
    assert baseline["n"] == 40
    assert baseline["class_mix"] == {
        "true": {"bicycle": 0.5, "motorcycle": 0.5},
        "predicted": {"bicycle": 0.75, "motorcycle": 0.25},
    }
    confidence = baseline["confidence"]
    assert sum(confidence["histogram"]["counts"]) == 40
    assert confidence["quantiles"]["0.5"] == pytest.approx(0.9)
    assert baseline["brightness"]["mean"] == pytest.approx(brightness(images).mean())


def test_baseline_rejects_float_images() -> None:
    with pytest.raises(ValueError, match="uint8"):
        drift_baseline(np.zeros((2, 32, 32, 3)), np.full((2, 2), 0.5), np.zeros(2, dtype=np.int64), ["a", "b"])
