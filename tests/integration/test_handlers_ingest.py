"""The ingest handler against moto: real S3 events through EventBridge and SQS, real idempotency table."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
from PIL import Image

from bayroute.deadletter import DeadLetterEntry
from bayroute.domain import ObjectRef
from services.ingest import handler as ingest_handler
from tests.hostile import HOSTILE_KEYS
from tests.integration.test_handlers_support import LambdaContextStub, MotoWorld, moto_world, raw_sqs_record

MAX_OBJECT_BYTES = 4096


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoWorld]:
    with moto_world(monkeypatch, BAYROUTE_MAX_OBJECT_BYTES=str(MAX_OBJECT_BYTES)) as world:
        ingest_handler.ingest.cache_clear()
        yield world
    ingest_handler.ingest.cache_clear()


def png_bytes(color: tuple[int, int, int] = (10, 200, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buffer, format="PNG")
    return buffer.getvalue()


def run_ingest(event: dict) -> dict:
    return dict(ingest_handler.handler(event, LambdaContextStub()))


def test_each_new_object_starts_one_execution_named_from_its_key(world: MotoWorld) -> None:
    machine = world.create_state_machine()
    put = world.put("drivers/my bike é+1.png", png_bytes(), content_type="image/png")
    response = run_ingest(world.ingest_batch())
    assert response == {"batchItemFailures": []}
    [execution] = world.executions(machine)
    request = json.loads(execution["input"])["request"]
    ref = ObjectRef.from_dict(request)
    assert ref.key == "drivers/my bike é+1.png"
    assert ref.etag == put["ETag"].strip('"') and ref.version_id is None
    assert execution["name"] == ref.execution_name(1)
    assert world.dead_letters() == [] and world.published() == []


def test_duplicate_deliveries_start_one_execution(world: MotoWorld) -> None:
    machine = world.create_state_machine()
    world.put("a.png", png_bytes())
    batch = world.ingest_batch()
    created = [r for r in batch["Records"] if json.loads(r["body"])["detail-type"] == "Object Created"]
    # The same message twice in one batch, then the whole batch again (SQS and EventBridge are at-least-once).
    assert run_ingest({"Records": created + batch["Records"]}) == {"batchItemFailures": []}
    assert run_ingest(batch) == {"batchItemFailures": []}
    assert len(world.executions(machine)) == 1
    items = world.dynamodb.scan(TableName=world.settings.names.idempotency_table)["Items"]
    assert [item["status"]["S"] for item in items] == ["COMPLETED"]
    assert int(items[0]["expiration"]["N"]) > 0


def test_a_replaced_object_is_admitted_again(world: MotoWorld) -> None:
    machine = world.create_state_machine()
    world.put("a.png", png_bytes((1, 2, 3)))
    run_ingest(world.ingest_batch())
    world.put("a.png", png_bytes((4, 5, 6)))
    run_ingest(world.ingest_batch())
    assert len({e["name"] for e in world.executions(machine)}) == 2


@pytest.mark.parametrize(
    ("key", "body", "reason"),
    [
        ("empty.png", b"", "empty_object"),
        ("notes.png", b"this is a shopping list, not a photo\n", "not_an_image"),
        ("big.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * MAX_OBJECT_BYTES, "too_large"),
        ("photo.heic", b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 40, "unsupported_format"),
    ],
)
def test_rejected_objects_are_dead_lettered_and_announced_once(
    world: MotoWorld, key: str, body: bytes, reason: str
) -> None:
    machine = world.create_state_machine()
    world.put(key, body, content_type="image/png")
    batch = world.ingest_batch()
    assert run_ingest(batch) == {"batchItemFailures": []}
    assert run_ingest(batch) == {"batchItemFailures": []}  # a duplicate delivery changes nothing
    assert world.executions(machine) == []
    [message] = world.dead_letters()
    entry = DeadLetterEntry.from_message(message)
    assert (entry.reason, entry.step, entry.request.object.key, entry.attempt) == (reason, "ingest", key, 1)
    [event] = world.published(world.settings.events.dead_lettered_detail_type)
    assert event["detail"] == message


@pytest.mark.parametrize("versioned", [False, True], ids=["unversioned", "versioned"])
def test_an_object_deleted_before_it_is_read_is_dead_lettered_as_missing(world: MotoWorld, versioned: bool) -> None:
    world.create_state_machine()
    if versioned:  # the deleted version stays readable behind its delete marker: it must not be processed
        world.s3.put_bucket_versioning(
            Bucket=world.settings.names.inbox_bucket, VersioningConfiguration={"Status": "Enabled"}
        )
    world.put("gone.png", png_bytes())
    world.s3.delete_object(Bucket=world.settings.names.inbox_bucket, Key="gone.png")
    batch = world.ingest_batch()
    assert run_ingest(batch) == {"batchItemFailures": []}
    [message] = world.dead_letters()
    assert DeadLetterEntry.from_message(message).reason == "object_missing"


def test_a_malformed_message_fails_alone_and_the_rest_of_the_batch_proceeds(world: MotoWorld) -> None:
    machine = world.create_state_machine()
    world.put("a.png", png_bytes())
    batch = world.ingest_batch()
    bad = raw_sqs_record("{not json", queue_arn=world.queue_arn(world.settings.names.ingest_queue))
    response = run_ingest({"Records": [bad, *batch["Records"]]})
    assert response == {"batchItemFailures": [{"itemIdentifier": bad["messageId"]}]}
    assert len(world.executions(machine)) == 1


def test_a_failed_start_is_retried_by_redelivery_and_then_admits_the_object(world: MotoWorld) -> None:
    world.put("a.png", png_bytes())
    batch = world.ingest_batch()
    created = next(r for r in batch["Records"] if json.loads(r["body"])["detail-type"] == "Object Created")
    # No state machine yet: starting fails, the record is reported failed, the idempotency record released.
    assert run_ingest(batch) == {"batchItemFailures": [{"itemIdentifier": created["messageId"]}]}
    machine = world.create_state_machine()
    assert run_ingest({"Records": [created]}) == {"batchItemFailures": []}
    assert len(world.executions(machine)) == 1


def test_a_bare_eventbridge_event_is_accepted(world: MotoWorld) -> None:
    machine = world.create_state_machine()
    world.put("a.png", png_bytes())
    created, tags_added = world.s3_events()
    assert run_ingest(tags_added)["status"] == "ignored"
    outcome = run_ingest(created)
    assert outcome["status"] == "started"
    assert [e["name"] for e in world.executions(machine)] == [outcome["execution"]]


def test_an_event_that_is_neither_sqs_nor_eventbridge_is_refused(world: MotoWorld) -> None:
    with pytest.raises(Exception, match="invalid_event"):
        run_ingest({"hello": "world"})


def test_keys_that_s3_notifications_would_url_encode_are_admitted_under_their_real_names(world: MotoWorld) -> None:
    machine = world.create_state_machine()
    for key in HOSTILE_KEYS:
        world.put(key, png_bytes())
    assert run_ingest(world.ingest_batch()) == {"batchItemFailures": []}
    started = [json.loads(e["input"])["request"]["key"] for e in world.executions(machine)]
    assert sorted(started) == sorted(HOSTILE_KEYS)
    assert world.dead_letters() == []
