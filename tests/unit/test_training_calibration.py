"""Temperature scaling: the fitted temperature lowers the NLL and recovers a known over-confidence."""

from __future__ import annotations

import numpy as np
import pytest

from bayroute.model.metrics import negative_log_likelihood
from training.calibration import fit_temperature, softmax, validation_metrics


def _calibrated_logits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two-class logits whose softmax is the true label distribution (perfectly calibrated)."""
    rng = np.random.default_rng(seed)
    margin = rng.normal(0.0, 2.0, n)
    logits = np.stack([margin / 2, -margin / 2], axis=1)
    labels = (rng.random(n) > softmax(logits)[:, 0]).astype(np.int64)
    return logits, labels


def test_fitted_temperature_undoes_overconfidence_and_lowers_nll() -> None:
    logits, labels = _calibrated_logits(20_000, seed=1)
    overconfident = 3.0 * logits
    temperature = fit_temperature(overconfident, labels)
    assert temperature == pytest.approx(3.0, rel=0.05)
    before = negative_log_likelihood(softmax(overconfident), labels)
    after = negative_log_likelihood(softmax(overconfident / temperature), labels)
    assert after < before - 0.05


def test_fitted_temperature_sharpens_underconfident_logits() -> None:
    logits, labels = _calibrated_logits(20_000, seed=2)
    assert fit_temperature(logits / 2.0, labels) == pytest.approx(0.5, rel=0.05)


def test_fit_temperature_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="must match"):
        fit_temperature(np.zeros((3, 2)), np.zeros(4, dtype=np.int64))


def test_softmax_rows_sum_to_one_even_for_huge_logits() -> None:
    probabilities = softmax(np.array([[1000.0, 0.0], [-5.0, 5.0]]))
    assert np.allclose(probabilities.sum(axis=1), 1.0)
    assert probabilities[0, 0] == pytest.approx(1.0)


def test_validation_metrics_add_the_99_percent_precision_operating_point() -> None:
    # 99 confident right answers and one less confident wrong one: 99% precision is reached at 0.9.
    probabilities = np.array([[0.99, 0.01]] * 99 + [[0.6, 0.4]])
    labels = np.array([0] * 99 + [1])
    report = validation_metrics(probabilities, labels, ["bicycle", "motorcycle"])
    assert report["accuracy"] == pytest.approx(0.99)
    assert report["precision_0.99"] == {"threshold": pytest.approx(0.6), "automation_rate": 1.0}
