"""Ground truth: labels CSV, the join to captured inferences, live precision and threshold advice."""

from __future__ import annotations

import numpy as np
import pytest

from bayroute.model.metrics import threshold_for_precision
from bayroute.monitoring.feedback import (
    Label,
    LabelledPrediction,
    LabelsFormatError,
    advise_threshold,
    join_labels,
    live_quality,
    parse_labels_csv,
    wilson_lower_bound,
)
from tests.unit.test_monitoring_windows import observation


def test_labels_csv_by_event_id_or_object_key_in_any_column_order() -> None:
    text = "\ufeffObject_Key,label,event_id\nyard/a.png,bicycle,\n,motorcycle,e-2\n\n  ,  ,  \nyard/c.png,bicycle,e-3\n"
    assert parse_labels_csv(text) == [
        Label("bicycle", None, "yard/a.png"),
        Label("motorcycle", "e-2", None),
        Label("bicycle", "e-3", "yard/c.png"),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("event_id,class\ne,bicycle\n", "header must name 'label'"),
        ("label\nbicycle\n", "header must name"),
        ("", "found none"),
        ("event_id,label\ne-1,\n", "labels.csv:2: no label"),
        ("event_id,object_key,label\n,,bicycle\n", "labels.csv:2: neither"),
    ],
)
def test_bad_labels_files_are_refused_with_the_line(text: str, message: str) -> None:
    with pytest.raises(LabelsFormatError, match=message):
        parse_labels_csv(text, source="labels.csv")


def test_labels_join_by_event_id_first_then_to_the_latest_inference_of_an_object() -> None:
    first = observation(1, 0.99, "bicycle", object_key="yard/a.png")
    again = observation(50, 0.97, "motorcycle", object_key="yard/a.png")
    other = observation(2, 0.6, "bicycle")
    unscored = observation(3, None, None, object_key="yard/z.png")
    joined = join_labels(
        [again, first, other, unscored],
        [
            Label("motorcycle", object_key="yard/a.png"),
            Label("bicycle", event_id=other.event_id, object_key="yard/a.png"),
            Label("bicycle", event_id="nobody"),
            Label("bicycle", object_key="yard/z.png"),
        ],
    )
    assert {(m.observation.event_id, m.label, m.correct) for m in joined.matched} == {
        (again.event_id, "motorcycle", True),
        (other.event_id, "bicycle", True),
    }
    assert joined.to_dict() == {"labels": 4, "matched": 2, "unmatched": 2}


def labelled(confidences: list[float], correct: list[bool]) -> list[LabelledPrediction]:
    return [
        LabelledPrediction(observation(i, c, "bicycle"), "bicycle" if ok else "motorcycle")
        for i, (c, ok) in enumerate(zip(confidences, correct, strict=True))
    ]


def test_live_quality_counts_precision_among_routed_only() -> None:
    matched = labelled([0.99, 0.97, 0.96, 0.5, 0.4], [True, True, False, False, True])
    quality = live_quality(matched, 0.95)
    assert quality["labelled"] == 5
    assert quality["accuracy"] == pytest.approx(3 / 5)
    assert (quality["routed_labelled"], quality["precision"]) == (3, pytest.approx(2 / 3))
    assert quality["automation_rate_labelled"] == pytest.approx(3 / 5)
    assert quality["precision_wilson_lower_95"] == pytest.approx(wilson_lower_bound(2, 3))
    assert live_quality([], 0.95)["precision"] is None


def test_wilson_lower_bound_known_values() -> None:
    assert wilson_lower_bound(0, 0) is None
    assert wilson_lower_bound(10, 10) == pytest.approx(0.7225, abs=1e-4)
    assert wilson_lower_bound(99, 100) == pytest.approx(0.9455, abs=1e-4)
    assert wilson_lower_bound(0, 5) == 0.0


def test_advice_is_the_most_automation_at_the_target_precision_with_its_evidence() -> None:
    rng = np.random.default_rng(7)
    confidence = rng.uniform(0.5, 1.0, 400)
    # Right more often the surer the model is: about 99.7% above 0.95, 75% at 0.5.
    correct = rng.uniform(size=400) < (0.5 + 0.5 * confidence)
    matched = labelled(confidence.tolist(), correct.tolist())
    advice = advise_threshold(matched, 0.95, current_threshold=0.95, all_confidences=confidence.tolist() + [0.1] * 100)
    probabilities = np.stack([confidence, 1 - confidence], axis=1)
    expected = threshold_for_precision(probabilities, np.where(correct, 0, 1), 0.95)
    assert expected is not None
    assert advice["recommended_threshold"] == pytest.approx(expected[0])
    recommended = advice["recommended"]
    assert recommended["precision"] >= 0.95
    assert recommended["automation_rate_labelled"] == pytest.approx(expected[1])
    assert recommended["automation_rate_all"] == pytest.approx(float((confidence >= expected[0]).sum() / 500))
    # Lowering the threshold any further would break the target.
    below = [m for m in matched if m.confidence < advice["recommended_threshold"]]
    next_lower = max(m.confidence for m in below)
    assert live_quality(matched, next_lower)["precision"] < 0.95
    conservative = advice["conservative_threshold"]
    assert conservative >= advice["recommended_threshold"]
    assert advice["conservative"]["precision_wilson_lower_95"] >= 0.95
    assert advice["current"]["threshold"] == 0.95


def test_advice_says_so_when_the_labels_cannot_support_the_target() -> None:
    matched = labelled([0.99, 0.98, 0.97], [True, True, True])
    advice = advise_threshold(matched, 0.99, current_threshold=0.95)
    assert advice["recommended_threshold"] == 0.97  # 3 of 3 right...
    assert advice["conservative_threshold"] is None  # ...but 3 labels cannot show 99% with confidence
    assert "label more routed inferences" in advice["note"]
    never = advise_threshold(labelled([0.9], [False]), 0.99, current_threshold=0.95)
    assert never["recommended_threshold"] is None and "no threshold" in never["note"]
    empty = advise_threshold([], 0.99, current_threshold=0.95)
    assert empty["recommended_threshold"] is None and empty["labelled"] == 0
    with pytest.raises(ValueError, match="precision"):
        advise_threshold(matched, 1.5, current_threshold=0.95)
