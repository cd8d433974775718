"""The infer handler against the real model endpoint server (tiny contract model) and moto S3 for capture.

The last test chains the serialize, infer and threshold handlers on one object, passing each task exactly
the Payload that the workflow definition builds for it and keeping what its ResultSelector picks.
"""

from __future__ import annotations

import base64
import io
import json
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from PIL import Image

from bayroute.capture import parse_capture_line
from bayroute.config import REPO_ROOT, load_settings
from bayroute.domain import ObjectRef, WorkflowRequest
from bayroute.endpoint_server import ModelServer
from bayroute.errors import EndpointUnavailable
from bayroute.model.onnx_model import OnnxClassifier
from bayroute.steps.infer import capture_context
from services.infer import handler as infer_handler
from services.serialize import handler as serialize_handler
from services.threshold import handler as threshold_handler
from tests.fixtures_model import TINY_LABELS, TINY_VERSION, build_tiny_model
from tests.integration.test_handlers_support import LambdaContextStub, MotoWorld, moto_world

SETTINGS = load_settings(env={})
ASL = json.loads((REPO_ROOT / "infra" / "statemachine" / "workflow.asl.json").read_text())


@pytest.fixture(scope="module")
def model_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServer]:
    model = OnnxClassifier(build_tiny_model(tmp_path_factory.mktemp("model") / "model.onnx"))
    with ModelServer(model, "127.0.0.1", 0, max_request_bytes=SETTINGS.limits.max_request_bytes) as server:
        yield server


def _clear_handlers() -> None:
    for cached in (serialize_handler.serialize, infer_handler.infer, threshold_handler.threshold):
        cached.cache_clear()


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch, model_server: ModelServer) -> Iterator[MotoWorld]:
    endpoint_env = {"BAYROUTE_INFERENCE_BACKEND": "http", "BAYROUTE_ENDPOINT_URL": model_server.url}
    with moto_world(monkeypatch, **endpoint_env) as world:
        _clear_handlers()
        yield world
    _clear_handlers()


def png_of(color: tuple[int, int, int], size: int = 32) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="PNG")
    return buffer.getvalue()


def infer_payload(png: bytes, key: str = "bays/red bike.png") -> dict:
    ref = ObjectRef("bayroute-inbox", key, "0123456789abcdef", 999)
    return {
        "request": WorkflowRequest(ref).to_dict()["request"],
        "image": {"content_type": "image/png", "encoding": "base64", "data": base64.b64encode(png).decode()},
        "input_stats": {"original_width": 32, "original_height": 32, "format": "png", "bytes": len(png)},
    }


def test_a_red_image_is_a_bicycle_and_leaves_one_capture_record(world: MotoWorld) -> None:
    payload = infer_payload(png_of((230, 20, 20)))
    prediction = infer_handler.handler(payload, LambdaContextStub())
    assert prediction["labels"] == list(TINY_LABELS) and prediction["model_version"] == TINY_VERSION
    assert prediction["top_class"] == "bicycle" and prediction["confidence"] > 0.95
    [key] = world.capture_keys(world.settings.prefixes.capture + "/")
    names = world.settings.names
    assert key.startswith(f"capture/{names.endpoint_name}/{names.endpoint_variant}/")
    captured = parse_capture_line(world.capture_object(key))
    assert captured.input_body == base64.b64decode(payload["image"]["data"])
    assert captured.probabilities == pytest.approx(prediction["probabilities"])
    assert (captured.model_version, captured.labels) == (TINY_VERSION, list(TINY_LABELS))
    assert captured.event_id == prediction["inference_id"]
    assert capture_context(captured.custom_attributes) == ("bays/red bike.png", payload["input_stats"])
    # The same attempt again (the workflow retried the task): still one record.
    infer_handler.handler(payload, LambdaContextStub())
    assert len(world.capture_keys(world.settings.prefixes.capture + "/")) == 1


def test_an_unreachable_endpoint_is_endpoint_unavailable(world: MotoWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:  # a loopback port that nothing listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    monkeypatch.setenv("BAYROUTE_ENDPOINT_URL", f"http://127.0.0.1:{closed_port}")
    with pytest.raises(EndpointUnavailable) as raised:
        infer_handler.handler(infer_payload(png_of((0, 0, 255))), LambdaContextStub())
    assert type(raised.value).__name__ in ASL["States"]["Infer"]["Retry"][0]["ErrorEquals"]
    assert world.capture_keys() == []


def _at(document: Any, path: str) -> Any:
    """The value at a simple JSONPath (``$.a.b``)."""
    for part in path.removeprefix("$.").split("."):
        document = document[part]
    return document


def _task(name: str, state: dict[str, Any], handler: Callable[[dict[str, Any], Any], Any]) -> dict[str, Any]:
    """Run one Task state as Step Functions would: Parameters.Payload in, ResultSelector out, at ResultPath."""
    definition = ASL["States"][name]
    payload = {
        field.removesuffix(".$"): _at(state, path) for field, path in definition["Parameters"]["Payload"].items()
    }
    result = {"Payload": handler(json.loads(json.dumps(payload)), LambdaContextStub())}
    selected = {field.removesuffix(".$"): _at(result, path) for field, path in definition["ResultSelector"].items()}
    return {**state, definition["ResultPath"].removeprefix("$."): selected}


def test_serialize_infer_threshold_route_a_blue_photo_to_the_far_bay(world: MotoWorld) -> None:
    put = world.put("arrivals/blue moto.png", png_of((10, 10, 240), size=640))
    ref = ObjectRef(world.settings.names.inbox_bucket, "arrivals/blue moto.png", put["ETag"].strip('"'), 0)
    state = WorkflowRequest(ref).to_dict()
    state = _task("Serialize", state, serialize_handler.handler)
    state = _task("Infer", state, infer_handler.handler)
    state = _task("Threshold", state, threshold_handler.handler)
    routing = state["outcome"]["routing"]
    assert (routing["class"], routing["bay"], routing["model_version"]) == ("motorcycle", "far", TINY_VERSION)
    assert len(json.dumps(state)) < 8 * 1024  # far from the 256 KB state limit, and no photo in it
    [event] = world.published(world.settings.events.classified_detail_type)
    assert event["detail"]["object_key"] == "arrivals/blue moto.png"
