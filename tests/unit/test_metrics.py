from __future__ import annotations

import json
import math

import numpy as np
import pytest

from bayroute.model.metrics import (
    classification_report,
    expected_calibration_error,
    negative_log_likelihood,
    threshold_for_precision,
    threshold_report,
)

CLASSES = ["bicycle", "motorcycle"]
# Hand-made case: (top-1 confidence, correct?) = (.9 y) (.82 y) (.62 n) (.7 n) (.99 y) (.93 n).
PROBS = np.array([[0.9, 0.1], [0.18, 0.82], [0.62, 0.38], [0.3, 0.7], [0.99, 0.01], [0.07, 0.93]])
LABELS = np.array([0, 1, 1, 0, 0, 0])


def test_report_on_hand_computed_case() -> None:
    report = classification_report(PROBS, LABELS, CLASSES)
    assert report["n"] == 6
    assert report["classes"] == CLASSES
    assert report["accuracy"] == pytest.approx(0.5)
    # Rows are the truth: of four bicycles two were called motorcycles; of two motorcycles one a bicycle.
    assert report["confusion_matrix"] == [[2, 2], [1, 1]]
    assert report["per_class_recall"] == {"bicycle": pytest.approx(0.5), "motorcycle": pytest.approx(0.5)}
    expected_nll = -(math.log(0.9) + math.log(0.82) + math.log(0.38) + math.log(0.3) + math.log(0.99) + math.log(0.07))
    assert report["nll"] == pytest.approx(expected_nll / 6)
    assert report["thresholds"] == {
        "0.8": {"automation_rate": pytest.approx(4 / 6), "precision": pytest.approx(3 / 4)},
        "0.9": {"automation_rate": pytest.approx(3 / 6), "precision": pytest.approx(2 / 3)},
        "0.95": {"automation_rate": pytest.approx(1 / 6), "precision": 1.0},
        "0.99": {"automation_rate": pytest.approx(1 / 6), "precision": 1.0},
    }
    json.dumps(report)  # JSON-ready: plain floats, ints, lists


def test_ece_hand_computed() -> None:
    # Bins of width 1/15: .9 and .93 share (13/15, 14/15] with accuracy .5 and mean confidence .915;
    # every other prediction is alone in its bin, contributing |correct - confidence|.
    expected = (2 * abs(0.5 - 0.915) + (1 - 0.82) + 0.62 + 0.7 + (1 - 0.99)) / 6
    assert expected_calibration_error(PROBS, LABELS) == pytest.approx(expected)
    assert classification_report(PROBS, LABELS, CLASSES)["ece"] == pytest.approx(expected)


def test_ece_is_zero_when_calibrated() -> None:
    # Ten predictions at 0.7 of which seven are right, four at 0.75 of which three are right.
    probs = np.array([[0.7, 0.3]] * 10 + [[0.25, 0.75]] * 4)
    labels = np.array([0] * 7 + [1] * 3 + [1] * 3 + [0])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)


def test_ece_of_overconfident_model() -> None:
    probs = np.array([[0.99, 0.01]] * 4)
    labels = np.array([0, 0, 1, 1])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.49)


def test_all_below_threshold_gives_null_precision() -> None:
    probs = np.array([[0.6, 0.4], [0.45, 0.55]])
    labels = np.array([0, 1])
    assert threshold_report(probs, labels, 0.8) == {"automation_rate": 0.0, "precision": None}
    report = classification_report(probs, labels, CLASSES)
    assert all(entry == {"automation_rate": 0.0, "precision": None} for entry in report["thresholds"].values())
    assert report["accuracy"] == 1.0


def test_threshold_equal_to_confidence_is_automated() -> None:
    assert threshold_report(np.array([[0.95, 0.05]]), np.array([0]), 0.95)["automation_rate"] == 1.0


def test_threshold_for_precision_picks_lowest_reaching_threshold() -> None:
    # Sorted by confidence: .99 y, .93 n, .9 y, .82 y, .7 n, .62 n -> running precision 1, .5, .67, .75, .6, .5
    assert threshold_for_precision(PROBS, LABELS, 1.0) == pytest.approx((0.99, 1 / 6))
    assert threshold_for_precision(PROBS, LABELS, 0.75) == pytest.approx((0.82, 4 / 6))  # not stopped by the .5 dip
    assert threshold_for_precision(PROBS, LABELS, 0.6) == pytest.approx((0.7, 5 / 6))
    assert threshold_for_precision(PROBS, LABELS, 0.5) == pytest.approx((0.62, 1.0))


def test_threshold_for_precision_none_when_unreachable() -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8]])
    assert threshold_for_precision(probs, np.array([1, 0]), 0.5) is None


def test_threshold_for_precision_keeps_ties_together() -> None:
    # A threshold of .9 automates both .9 predictions, one of them wrong, so 100% precision is out of reach.
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.8, 0.2]])
    labels = np.array([0, 1, 0])
    assert threshold_for_precision(probs, labels, 1.0) is None
    assert threshold_for_precision(probs, labels, 0.6) == pytest.approx((0.8, 1.0))


def test_nll_is_finite_for_zero_probability_on_the_truth() -> None:
    nll = negative_log_likelihood(np.array([[1.0, 0.0]]), np.array([1]))
    assert math.isfinite(nll) and nll == pytest.approx(-math.log(1e-12))


def test_recall_is_none_for_a_class_without_images() -> None:
    report = classification_report(np.array([[0.8, 0.2]]), np.array([0]), CLASSES)
    assert report["per_class_recall"] == {"bicycle": 1.0, "motorcycle": None}
    assert report["confusion_matrix"] == [[1, 0], [0, 0]]


@pytest.mark.parametrize(
    ("probs", "labels", "message"),
    [
        (np.zeros((0, 2)), np.zeros(0, dtype=int), "N>0"),
        (np.array([0.5, 0.5]), np.array([0]), "N>0"),
        (np.array([[0.5, 0.5]]), np.array([0, 1]), "labels must be"),
        (np.array([[0.5, 0.5]]), np.array([2]), r"in \[0, 1\]"),
        (np.array([[0.5, 0.5]]), np.array([0.0]), "integer"),
    ],
)
def test_bad_input_is_rejected(probs: np.ndarray, labels: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        classification_report(probs, labels, CLASSES)


def test_wrong_number_of_class_names() -> None:
    with pytest.raises(ValueError, match="3 class names for 2"):
        classification_report(PROBS, LABELS, ["a", "b", "c"])
    with pytest.raises(ValueError, match="precision must be"):
        threshold_for_precision(PROBS, LABELS, 0.0)
