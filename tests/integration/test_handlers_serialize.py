"""The serialize handler against moto S3, with the workflow's Payload and the hostile corpus."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import pytest

from bayroute.domain import ObjectRef, WorkflowRequest
from bayroute.errors import ERRORS, WorkflowError
from services.serialize import handler as serialize_handler
from tests.hostile import HOSTILE_KEYS, HostileCase, hostile_case, hostile_cases
from tests.integration.test_handlers_support import LambdaContextStub, MotoWorld, moto_world


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoWorld]:
    with moto_world(monkeypatch) as world:
        serialize_handler.serialize.cache_clear()
        yield world
    serialize_handler.serialize.cache_clear()


def payload_for(world: MotoWorld, key: str, data: bytes) -> dict:
    """What the workflow's Serialize state sends: ``{"request": $.request}``, for an object just put."""
    put = world.put(key, data)
    ref = ObjectRef(world.settings.names.inbox_bucket, key, put["ETag"].strip('"'), len(data))
    return {"request": WorkflowRequest(ref).to_dict()["request"]}


@pytest.mark.parametrize("key", HOSTILE_KEYS)
def test_any_key_is_read_and_serialized_compactly(world: MotoWorld, key: str) -> None:
    output = serialize_handler.handler(payload_for(world, key, hostile_case("exif_rotated").data), LambdaContextStub())
    assert set(output) == {"image", "input_stats"}
    assert base64.b64decode(output["image"]["data"]).startswith(b"\x89PNG")
    assert len(json.dumps(output)) < 8 * 1024
    assert world.capture_keys() == []


@pytest.mark.parametrize("case", hostile_cases(), ids=lambda c: c.name)
def test_the_hostile_corpus_serializes_or_fails_with_its_reason(world: MotoWorld, case: HostileCase) -> None:
    payload = payload_for(world, case.filename, case.data)
    if case.expected == "ok":
        output = serialize_handler.handler(payload, LambdaContextStub())
        assert len(json.dumps(output)) < 8 * 1024
        if case.displayed_size is not None:
            stats = output["input_stats"]
            assert (stats["original_width"], stats["original_height"]) == case.displayed_size
    else:
        with pytest.raises(WorkflowError) as raised:
            serialize_handler.handler(payload, LambdaContextStub())
        assert raised.value.reason == case.expected
        # The class name is the ASL error name: it must be one the workflow knows.
        assert ERRORS[type(raised.value).__name__] is type(raised.value)


def test_an_object_deleted_before_serialize_reads_it_is_missing(world: MotoWorld) -> None:
    payload = payload_for(world, "gone.png", hostile_case("grayscale").data)
    world.s3.delete_object(Bucket=world.settings.names.inbox_bucket, Key="gone.png")
    with pytest.raises(WorkflowError) as raised:
        serialize_handler.handler(payload, LambdaContextStub())
    assert (type(raised.value).__name__, raised.value.reason) == ("ObjectMissing", "object_missing")


def test_a_payload_over_the_limit_is_staged_in_the_capture_bucket(
    world: MotoWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BAYROUTE_MAX_PAYLOAD_BYTES", "256")  # the handler rebuilds for the new settings
    payload = payload_for(world, "a.jpg", hostile_case("cmyk_jpeg").data)
    output = serialize_handler.handler(payload, LambdaContextStub())
    location = output["image"]["s3"]
    assert location["bucket"] == world.settings.names.capture_bucket
    assert world.capture_keys("staging/") == [location["key"]]
    assert world.capture_object(location["key"]).startswith(b"\x89PNG")
