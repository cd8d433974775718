from __future__ import annotations

import base64
import json
from dataclasses import replace

import pytest

from bayroute.config import Limits, Settings
from bayroute.domain import ObjectRef, WorkflowRequest
from bayroute.errors import ObjectMissing, TooLarge, WorkflowError
from bayroute.imaging import InputStats, decode_png_payload
from bayroute.steps.serialize import Serialize
from tests.hostile import HostileCase, hostile_case, hostile_cases
from tests.unit.test_steps_fakes import TEST_SETTINGS, FakeObjectStore

INBOX = TEST_SETTINGS.names.inbox_bucket
CAPTURE = TEST_SETTINGS.names.capture_bucket


def with_limits(**limits: int) -> Settings:
    return replace(TEST_SETTINGS, limits=Limits(**{**vars(TEST_SETTINGS.limits), **limits}))


def state_for(ref: ObjectRef, attempt: int = 1) -> dict:
    return WorkflowRequest(ref, attempt=attempt, received_at="2026-11-28T16:00:00.000Z").to_dict()


def run(data: bytes, settings: Settings = TEST_SETTINGS) -> tuple[dict, FakeObjectStore, ObjectRef]:
    store = FakeObjectStore()
    ref = store.add(INBOX, "drop/photo.jpg", data)
    return Serialize(settings, inbox=store, staging=store).run(state_for(ref)), store, ref


def test_a_4000x3000_photo_becomes_a_small_inline_png_of_the_model_size() -> None:
    original = hostile_case("photo_4000x3000").data
    output, store, _ = run(original)
    encoded = json.dumps(output)
    assert len(encoded) < 8 * 1024
    image = output["image"]
    assert (image["content_type"], image["encoding"], image["width"], image["height"]) == (
        "image/png",
        "base64",
        32,
        32,
    )
    png = base64.b64decode(image["data"])
    assert png.startswith(b"\x89PNG") and decode_png_payload(png, 32).shape == (32, 32, 3)
    # Nothing of the original travels: not its bytes, not its encoding.
    assert base64.b64encode(original[:48]).decode() not in encoded and len(png) < len(original) / 50
    stats = InputStats.from_dict(output["input_stats"])
    assert (stats.original_width, stats.original_height, stats.format, stats.bytes) == (
        4000,
        3000,
        "jpeg",
        len(original),
    )
    assert store.keys(CAPTURE) == []


@pytest.mark.parametrize("case", [c for c in hostile_cases() if c.expected != "ok"], ids=lambda c: c.name)
def test_unusable_images_raise_their_named_error(case: HostileCase) -> None:
    with pytest.raises(WorkflowError) as raised:
        run(case.data)
    assert raised.value.reason == case.expected


def test_the_object_is_read_pinned_to_the_admitted_etag() -> None:
    store = FakeObjectStore()
    ref = store.add(INBOX, "a.png", hostile_case("grayscale").data)
    store.add(INBOX, "a.png", hostile_case("rgba").data)  # replaced after ingest admitted the first one
    with pytest.raises(ObjectMissing, match="replaced"):
        Serialize(TEST_SETTINGS, inbox=store, staging=store).run(state_for(ref))


def test_the_object_size_limit_is_enforced_again() -> None:
    with pytest.raises(TooLarge):
        run(hostile_case("photo_4000x3000").data, with_limits(max_object_bytes=100_000))


def test_a_payload_over_the_limit_is_staged_and_referenced() -> None:
    settings = with_limits(max_payload_bytes=512)
    output, store, ref = run(hostile_case("cmyk_jpeg").data, settings)
    image = output["image"]
    assert "data" not in image and image["content_type"] == "image/png"
    assert image["s3"] == {"bucket": CAPTURE, "key": f"staging/{ref.execution_name(1)}.png"}
    assert store.blobs[(CAPTURE, image["s3"]["key"])].body.startswith(b"\x89PNG")
    assert len(json.dumps(output)) <= 512
    assert output["input_stats"]["format"] == "jpeg"


def test_a_png_over_the_endpoints_request_limit_is_refused() -> None:
    with pytest.raises(WorkflowError) as raised:
        run(hostile_case("rgba").data, with_limits(max_request_bytes=100))
    assert raised.value.reason == "payload_too_large"


def test_a_state_without_a_request_is_an_invalid_event() -> None:
    store = FakeObjectStore()
    with pytest.raises(WorkflowError) as raised:
        Serialize(TEST_SETTINGS, inbox=store, staging=store).run({"image": {}})
    assert raised.value.reason == "invalid_event"
