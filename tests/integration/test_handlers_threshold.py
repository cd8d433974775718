"""The threshold handler against moto: the result record in S3 and the VehicleClassified event on EventBridge."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from bayroute.domain import ObjectRef, Prediction, WorkflowRequest
from bayroute.errors import ThresholdNotMet
from bayroute.steps.threshold import result_key
from services.threshold import handler as threshold_handler
from tests.integration.test_handlers_support import LambdaContextStub, MotoWorld, moto_world


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoWorld]:
    with moto_world(monkeypatch) as world:
        threshold_handler.threshold.cache_clear()
        yield world
    threshold_handler.threshold.cache_clear()


def payload(world: MotoWorld, probabilities: list[float], attempt: int = 1) -> tuple[dict, ObjectRef]:
    """What the workflow's Threshold state sends: ``{"request": $.request, "prediction": $.prediction}``."""
    ref = ObjectRef(world.settings.names.inbox_bucket, "drivers/ünï bike.png", "9b2cf535f27731c974343645a3985328", 812)
    prediction = Prediction(["bicycle", "motorcycle"], probabilities, "model-2026-11-28", "inference-1")
    request = WorkflowRequest(ref, attempt=attempt).to_dict()["request"]
    return {"request": request, "prediction": prediction.to_dict()}, ref


def test_a_confident_motorcycle_goes_to_the_far_bay_with_one_event_and_one_record(world: MotoWorld) -> None:
    event, ref = payload(world, [0.02, 0.98])
    routing = threshold_handler.handler(event, LambdaContextStub())
    assert (routing["class"], routing["bay"], routing["object_key"]) == ("motorcycle", "far", ref.key)
    [published] = world.published(world.settings.events.classified_detail_type)
    assert published["source"] == world.settings.events.source
    assert published["detail"] == {**routing, "request": event["request"]}
    record = json.loads(world.capture_object(result_key(world.settings, ref)))
    assert (record["status"], record["bay"], record["published"]) == ("routed", "far", True)
    # The same object again (a duplicate run, a replay): the first decision, no second event.
    again, _ = payload(world, [0.02, 0.98], attempt=2)
    assert threshold_handler.handler(again, LambdaContextStub()) == routing
    assert world.published() == []


def test_below_the_threshold_fails_with_the_asl_error_name_and_nothing_is_published(world: MotoWorld) -> None:
    event, _ = payload(world, [0.6, 0.4])
    with pytest.raises(ThresholdNotMet) as raised:
        threshold_handler.handler(event, LambdaContextStub())
    assert type(raised.value).__name__ == "ThresholdNotMet"
    assert json.loads(str(raised.value))["reason"] == "threshold_not_met"
    assert world.published() == [] and world.capture_keys() == []


def test_the_threshold_is_configurable_through_the_environment(
    world: MotoWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BAYROUTE_THRESHOLD", "0.55")
    event, _ = payload(world, [0.6, 0.4])
    assert threshold_handler.handler(event, LambdaContextStub())["bay"] == "near"


def test_on_aws_the_outcome_is_counted_as_a_cloudwatch_metric(
    world: MotoWorld, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    event, _ = payload(world, [0.99, 0.01])
    threshold_handler.handler(event, LambdaContextStub())
    emf = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    [metrics] = [document["_aws"]["CloudWatchMetrics"][0] for document in emf]
    assert metrics["Namespace"] == "bayroute"
    assert [metric["Name"] for metric in metrics["Metrics"]] == ["Routed"]
    assert emf[0]["service"] == "bayroute-threshold" and emf[0]["bay"] == "near"
