from __future__ import annotations

import json
from dataclasses import replace

import pytest

from bayroute.config import Route, Settings
from bayroute.deadletter import DeadLetterEntry, lambda_error_cause
from bayroute.domain import ObjectRef, Prediction, WorkflowRequest
from bayroute.errors import InvalidEvent, ThresholdNotMet, UnknownClass
from bayroute.steps.threshold import Threshold, result_key
from tests.unit.test_steps_fakes import TEST_SETTINGS, FakeEventPublisher, FakeObjectStore, TransientAwsError

REF = ObjectRef(TEST_SETTINGS.names.inbox_bucket, "bays/bike.png", "etag1", 900)
CLASSIFIED = TEST_SETTINGS.events.classified_detail_type
CAPTURE = TEST_SETTINGS.names.capture_bucket


def state(probabilities: list[float], labels: tuple[str, ...] = ("bicycle", "motorcycle"), attempt: int = 1) -> dict:
    prediction = Prediction(list(labels), probabilities, model_version="m-7", inference_id="inf-1")
    request = WorkflowRequest(REF, attempt=attempt, received_at="2026-11-28T16:00:00.000Z")
    return {**request.to_dict(), "prediction": prediction.to_dict()}


class ThresholdRig:
    def __init__(self, settings: Settings = TEST_SETTINGS) -> None:
        self.store = FakeObjectStore()
        self.events = FakeEventPublisher()
        self.step = Threshold(
            settings, results=self.store, events=self.events, clock=lambda: "2026-11-28T16:00:02.000Z"
        )


@pytest.fixture
def rig() -> ThresholdRig:
    return ThresholdRig()


@pytest.mark.parametrize(
    ("probabilities", "vehicle_class", "bay"),
    [([0.97, 0.03], "bicycle", "near"), ([0.01, 0.99], "motorcycle", "far"), ([0.05, 0.95], "motorcycle", "far")],
)
def test_a_confident_prediction_is_routed_to_its_bay(
    rig: ThresholdRig, probabilities: list[float], vehicle_class: str, bay: str
) -> None:
    routing = rig.step.run(state(probabilities))
    assert (routing["status"], routing["class"], routing["bay"], routing["orders"]) == (
        "routed",
        vehicle_class,
        bay,
        bay,
    )
    assert (routing["object_key"], routing["model_version"], routing["threshold"]) == (REF.key, "m-7", 0.95)
    assert routing["confidence"] == max(probabilities)
    [event] = rig.events.of_type(CLASSIFIED)
    assert event.detail == {**routing, "request": state(probabilities)["request"]}
    assert event.resources == [f"arn:aws:s3:::{REF.bucket}/{REF.key}"]
    record = rig.store.get_json(CAPTURE, result_key(TEST_SETTINGS, REF))
    assert record is not None and record["published"] is True
    assert record["probabilities"] == {"bicycle": probabilities[0], "motorcycle": probabilities[1]}
    assert {k: record[k] for k in routing} == routing


def test_below_the_threshold_raises_with_the_facts_and_routes_nothing(rig: ThresholdRig) -> None:
    with pytest.raises(ThresholdNotMet) as raised:
        rig.step.run(state([0.3, 0.7]))
    facts = raised.value.facts
    assert (facts["class"], facts["confidence"], facts["threshold"], facts["model_version"]) == (
        "motorcycle",
        0.7,
        0.95,
        "m-7",
    )
    assert rig.events.events == [] and rig.store.keys(CAPTURE) == []
    # What the dead-letter reader makes of it, once the workflow has caught it.
    message = {**state([0.3, 0.7]), "step": "threshold", "error": "ThresholdNotMet"}
    entry = DeadLetterEntry.from_message({**message, "cause": lambda_error_cause(raised.value)})
    assert (entry.reason, entry.model_version) == ("threshold_not_met", "m-7")
    assert "0.7000" in entry.detail and "0.95" in entry.detail


def test_the_threshold_comes_from_the_settings() -> None:
    rig = ThresholdRig(replace(TEST_SETTINGS, threshold=0.6))
    assert rig.step.run(state([0.3, 0.7]))["bay"] == "far"


def test_a_class_missing_from_the_routing_table_is_unknown() -> None:
    only_bicycles = replace(TEST_SETTINGS, routing_table={"bicycle": Route(bay="near", orders="near")})
    rig = ThresholdRig(only_bicycles)
    with pytest.raises(UnknownClass, match="motorcycle"):
        rig.step.run(state([0.01, 0.99]))
    assert rig.events.events == []


def test_a_replayed_object_that_was_routed_is_not_routed_twice(rig: ThresholdRig) -> None:
    first = rig.step.run(state([0.97, 0.03]))
    again = rig.step.run(state([0.01, 0.99], attempt=2))  # a later attempt, even with another answer
    assert again == first
    assert len(rig.events.events) == 1


def test_a_failed_publish_is_repaired_by_the_next_attempt_with_the_same_decision(rig: ThresholdRig) -> None:
    rig.events.fail_next = TransientAwsError("InternalFailure")
    with pytest.raises(TransientAwsError):
        rig.step.run(state([0.97, 0.03]))
    record = rig.store.get_json(CAPTURE, result_key(TEST_SETTINGS, REF))
    assert record is not None and record["published"] is False
    routing = rig.step.run(state([0.97, 0.03], attempt=2))
    [event] = rig.events.events
    assert event.detail["routed_at"] == routing["routed_at"] == "2026-11-28T16:00:02.000Z"


@pytest.mark.parametrize(
    "broken",
    [
        {"request": state([1.0, 0.0])["request"]},
        {**state([1.0, 0.0]), "prediction": {"labels": ["bicycle"], "probabilities": [0.5, 0.5]}},
        {**state([1.0, 0.0]), "prediction": "bicycle"},
    ],
)
def test_a_state_without_a_valid_prediction_is_an_invalid_event(rig: ThresholdRig, broken: dict) -> None:
    with pytest.raises(InvalidEvent):
        rig.step.run(json.loads(json.dumps(broken)))
