from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bayroute.adapters.endpoint import EndpointAnswer
from bayroute.capture import CaptureWriter, parse_capture_line
from bayroute.domain import ObjectRef, Prediction, WorkflowRequest
from bayroute.errors import EndpointThrottled, EndpointUnavailable, InvalidEvent, ModelError, WorkflowError
from bayroute.steps.infer import Infer, capture_context, inference_id_for
from tests.hostile import hostile_case
from tests.unit.test_steps_fakes import TEST_SETTINGS, FakeObjectStore

CAPTURE = TEST_SETTINGS.names.capture_bucket
REF = ObjectRef(TEST_SETTINGS.names.inbox_bucket, "yard/bike, front=1.png", "etag9", 4321)
STATS = {
    "original_width": 640,
    "original_height": 480,
    "format": "jpeg",
    "bytes": 4321,
    "brightness": 0.5,
    "contrast": 0.2,
}
ANSWER_BODY = b"[0.03, 0.97]"


@dataclass
class FakeEndpoint:
    labels: list[str] | None = field(default_factory=lambda: ["bicycle", "motorcycle"])
    error: WorkflowError | None = None
    calls: list[tuple[bytes, str, str | None]] = field(default_factory=list)

    def invoke(self, body: bytes, content_type: str, *, inference_id: str | None = None) -> EndpointAnswer:
        self.calls.append((body, content_type, inference_id))
        if self.error is not None:
            raise self.error
        return EndpointAnswer([0.03, 0.97], self.labels, "model-v3", ANSWER_BODY, "application/json", 4.2)


@dataclass
class FakeS3PutClient:
    """The one S3 call CaptureWriter makes."""

    objects: dict[str, bytes] = field(default_factory=dict)

    def put_object(self, *, Bucket: str, Key: str, Body: bytes, ContentType: str) -> dict[str, Any]:
        self.objects[f"{Bucket}/{Key}"] = Body
        return {}


class InferRig:
    def __init__(self) -> None:
        self.endpoint = FakeEndpoint()
        self.staging = FakeObjectStore()
        self.s3 = FakeS3PutClient()
        self.now = datetime(2026, 11, 28, 16, 0, 1, tzinfo=UTC)
        names, prefixes = TEST_SETTINGS.names, TEST_SETTINGS.prefixes
        writer = CaptureWriter(self.s3, CAPTURE, prefixes.capture, names.endpoint_name, names.endpoint_variant)
        self.step = Infer(
            TEST_SETTINGS, endpoint=self.endpoint, staging=self.staging, capture=writer, clock=lambda: self.now
        )


@pytest.fixture
def rig() -> InferRig:
    return InferRig()


def png() -> bytes:
    return hostile_case("grayscale").data


def state(image: dict[str, Any] | None = None, attempt: int = 1) -> dict[str, Any]:
    request = WorkflowRequest(REF, attempt=attempt, received_at="2026-11-28T16:00:00.250Z")
    inline = {"content_type": "image/png", "encoding": "base64", "data": base64.b64encode(png()).decode()}
    return {**request.to_dict(), "image": image or inline, "input_stats": STATS}


def test_the_png_goes_to_the_endpoint_and_the_answer_becomes_a_prediction(rig: InferRig) -> None:
    output = rig.step.run(state())
    [(body, content_type, inference_id)] = rig.endpoint.calls
    assert (body, content_type) == (png(), "image/png")
    assert inference_id == inference_id_for(WorkflowRequest(REF, attempt=1))
    prediction = Prediction.from_dict(output)
    assert (prediction.top_class, prediction.confidence, prediction.model_version) == ("motorcycle", 0.97, "model-v3")
    assert output["inference_id"] == inference_id
    assert set(output) == {"labels", "probabilities", "model_version", "inference_id", "top_class", "confidence"}


def test_one_capture_record_in_sagemakers_format_and_layout(rig: InferRig) -> None:
    rig.step.run(state())
    [(path, line)] = rig.s3.objects.items()
    endpoint, variant = TEST_SETTINGS.names.endpoint_name, TEST_SETTINGS.names.endpoint_variant
    assert path.startswith(f"{CAPTURE}/capture/{endpoint}/{variant}/2026/11/28/16/")
    record = json.loads(line)
    assert record["captureData"]["endpointInput"]["encoding"] == "BASE64"
    assert record["captureData"]["endpointOutput"] == {
        "observedContentType": "application/json",
        "mode": "OUTPUT",
        "data": ANSWER_BODY.decode(),
        "encoding": "JSON",
    }
    captured = parse_capture_line(line)
    assert captured.input_body == png() and captured.output_body == ANSWER_BODY
    assert captured.event_id == captured.inference_id == inference_id_for(WorkflowRequest(REF))
    assert captured.inference_time == rig.now
    assert (captured.model_version, captured.labels) == ("model-v3", ["bicycle", "motorcycle"])
    assert capture_context(captured.custom_attributes) == (REF.key, STATS)


def test_a_rerun_of_the_same_attempt_overwrites_its_record_and_a_new_attempt_adds_one(rig: InferRig) -> None:
    rig.step.run(state())
    rig.now += timedelta(minutes=70)  # even across an hour boundary
    rig.step.run(state())
    assert len(rig.s3.objects) == 1
    rig.step.run(state(attempt=2))
    assert len(rig.s3.objects) == 2


def test_a_staged_image_is_read_from_the_capture_bucket(rig: InferRig) -> None:
    rig.staging.put_bytes(CAPTURE, "staging/x-1.png", png(), "image/png")
    rig.step.run(state({"content_type": "image/png", "s3": {"bucket": CAPTURE, "key": "staging/x-1.png"}}))
    assert rig.endpoint.calls[0][0] == png()


def test_an_answer_without_labels_is_a_model_error_and_captures_nothing(rig: InferRig) -> None:
    rig.endpoint.labels = None
    with pytest.raises(ModelError, match="labels"):
        rig.step.run(state())
    assert rig.s3.objects == {}


@pytest.mark.parametrize(
    "error", [EndpointUnavailable("connection refused"), EndpointThrottled("429"), ModelError("HTTP 400")]
)
def test_endpoint_errors_propagate_by_name_and_capture_nothing(rig: InferRig, error: WorkflowError) -> None:
    rig.endpoint.error = error
    with pytest.raises(type(error)):
        rig.step.run(state())
    assert rig.s3.objects == {}


@pytest.mark.parametrize(
    "image",
    [
        {"content_type": "image/png"},
        {"content_type": "image/png", "encoding": "hex", "data": "00ff"},
        {"content_type": "image/png", "encoding": "base64", "data": "not base64!"},
        {"content_type": "image/png", "encoding": "base64", "data": ""},
        {"encoding": "base64", "data": "AAAA"},
    ],
)
def test_a_malformed_image_payload_is_an_invalid_event(rig: InferRig, image: dict[str, Any]) -> None:
    with pytest.raises(InvalidEvent):
        rig.step.run(state(image))
    assert rig.endpoint.calls == []


def test_without_a_capture_sink_nothing_is_written_and_the_prediction_is_the_same(rig: InferRig) -> None:
    """The sagemaker backend: the endpoint's own data capture records the inference, not the step."""
    uncaptured = Infer(TEST_SETTINGS, endpoint=rig.endpoint, staging=rig.staging, capture=None, clock=lambda: rig.now)
    assert uncaptured.run(state()) == rig.step.run(state())
    assert len(rig.s3.objects) == 1  # only the captured step wrote
