from __future__ import annotations

import io
import json
from dataclasses import replace
from typing import Any

import pytest
from PIL import Image

from bayroute.config import REPO_ROOT, Limits, Settings
from bayroute.deadletter import DeadLetterEntry
from bayroute.domain import ObjectRef
from bayroute.errors import InvalidEvent
from bayroute.steps.ingest import Ingest
from tests.unit.test_steps_fakes import (
    TEST_SETTINGS,
    FakeDeadLetterQueue,
    FakeEventPublisher,
    FakeObjectStore,
    FakeWorkflowStarter,
    InMemoryPersistenceLayer,
    TransientAwsError,
    fake_lambda_context,
)

INBOX = TEST_SETTINGS.names.inbox_bucket
DEAD_LETTERED = TEST_SETTINGS.events.dead_lettered_detail_type


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def s3_event(ref: ObjectRef, detail_type: str = "Object Created", **object_overrides: Any) -> dict[str, Any]:
    """An S3 event as EventBridge delivers it (moto and AWS alike give every field below)."""
    obj: dict[str, Any] = {"key": ref.key, "size": ref.size, "etag": ref.etag, "sequencer": "0062E99A88DC407460"}
    if ref.version_id:
        obj["version-id"] = ref.version_id
    obj.update(object_overrides)
    return {
        "version": "0",
        "id": "17793124-05d4-b198-2fde-7ededc63b103",  # moto sends every S3 event with this same id
        "detail-type": detail_type,
        "source": "aws.s3",
        "account": "123456789012",
        "time": "2026-11-28T16:00:00Z",
        "region": "us-east-1",
        "resources": [f"arn:aws:s3:::{ref.bucket}"],
        "detail": {
            "version": "0",
            "bucket": {"name": ref.bucket},
            "object": obj,
            "request-id": "N4N7GDK58NMKJ12R",
            "requester": "123456789012",
            "source-ip-address": "127.0.0.1",
            "reason": "PutObject",
        },
    }


class IngestRig:
    def __init__(self, settings: Settings = TEST_SETTINGS) -> None:
        self.store = FakeObjectStore()
        self.dlq = FakeDeadLetterQueue()
        self.events = FakeEventPublisher()
        self.starter = FakeWorkflowStarter()
        self.persistence = InMemoryPersistenceLayer()
        self.ingest = Ingest(
            settings,
            inbox=self.store,
            dead_letters=self.dlq,
            events=self.events,
            workflows=self.starter,
            persistence=self.persistence,
            clock=lambda: "2026-11-28T16:00:01.000Z",
        )
        self.ingest.idempotency_config.register_lambda_context(fake_lambda_context())


@pytest.fixture
def rig() -> IngestRig:
    return IngestRig()


def test_an_image_starts_one_execution_named_from_its_idempotency_key(rig: IngestRig) -> None:
    ref = rig.store.add(INBOX, "photos/bike 1.png", png_bytes())
    outcome = rig.ingest.handle(s3_event(ref))
    assert outcome.status == "started"
    assert outcome.execution == ref.execution_name(1)
    [request] = rig.starter.started
    assert request.object == ref and request.attempt == 1
    assert rig.store.full_reads == []  # only the magic bytes were read
    assert rig.store.prefix_reads == [(INBOX, "photos/bike 1.png", 64)]
    assert rig.dlq.messages == [] and rig.events.events == []


def test_duplicate_deliveries_start_exactly_one_execution(rig: IngestRig) -> None:
    ref = rig.store.add(INBOX, "a.png", png_bytes())
    outcomes = [rig.ingest.handle(s3_event(ref)) for _ in range(3)]
    assert len(rig.starter.started) == 1
    assert [o.duplicate_delivery for o in outcomes] == [False, True, True]
    assert {o.execution for o in outcomes} == {ref.execution_name(1)}
    assert len(rig.store.prefix_reads) == 1  # a duplicate does not even read the object again


def test_a_replaced_object_is_a_new_identity_and_gets_its_own_execution(rig: IngestRig) -> None:
    first = rig.store.add(INBOX, "a.png", png_bytes())
    rig.ingest.handle(s3_event(first))
    second = rig.store.add(INBOX, "a.png", png_bytes() + b"trailing")
    rig.ingest.handle(s3_event(second))
    assert [r.object.etag for r in rig.starter.started] == [first.etag, second.etag]


def test_an_execution_that_already_exists_counts_as_started_once(rig: IngestRig) -> None:
    ref = rig.store.add(INBOX, "a.png", png_bytes())
    rig.ingest.handle(s3_event(ref))
    rig.persistence.records.clear()  # the idempotency record expired; Step Functions still knows the name
    outcome = rig.ingest.handle(s3_event(ref))
    assert outcome.status == "already_started"
    assert len(rig.starter.started) == 1


@pytest.mark.parametrize("detail_type", ["Object Tags Added", "Object Deleted", "Object Restore Completed"])
def test_other_s3_detail_types_are_ignored(rig: IngestRig, detail_type: str) -> None:
    ref = rig.store.add(INBOX, "a.png", png_bytes())
    outcome = rig.ingest.handle(s3_event(ref, detail_type=detail_type))
    assert outcome.status == "ignored" and detail_type in (outcome.note or "")
    assert rig.starter.started == [] and rig.dlq.messages == [] and rig.store.prefix_reads == []


def test_other_buckets_are_ignored(rig: IngestRig) -> None:
    ref = rig.store.add("someone-elses-bucket", "a.png", png_bytes())
    outcome = rig.ingest.handle(s3_event(ref))
    assert outcome.status == "ignored" and "someone-elses-bucket" in (outcome.note or "")
    assert rig.starter.started == [] and rig.dlq.messages == []


def _only_rejection(rig: IngestRig) -> DeadLetterEntry:
    assert rig.starter.started == []
    [message] = rig.dlq.messages
    [event] = rig.events.of_type(DEAD_LETTERED)
    assert event.detail == message  # the event announces exactly what the queue holds
    return DeadLetterEntry.from_message(message)


def test_an_empty_object_is_dead_lettered_without_reading_it(rig: IngestRig) -> None:
    ref = rig.store.add(INBOX, "empty.png", b"")
    outcome = rig.ingest.handle(s3_event(ref))
    assert (outcome.status, outcome.reason) == ("rejected", "empty_object")
    entry = _only_rejection(rig)
    assert (entry.reason, entry.step, entry.error) == ("empty_object", "ingest", "EmptyObject")
    assert entry.request.object == ref
    assert rig.store.prefix_reads == []


def test_an_object_over_the_size_limit_is_dead_lettered_from_the_event_alone(rig: IngestRig) -> None:
    ref = rig.store.add(INBOX, "huge.jpg", png_bytes())
    huge = replace(ref, size=TEST_SETTINGS.limits.max_object_bytes + 1)
    outcome = rig.ingest.handle(s3_event(huge))
    assert outcome.reason == "too_large"
    entry = _only_rejection(rig)
    assert entry.reason == "too_large" and str(huge.size) in entry.detail
    assert rig.store.prefix_reads == [] and rig.store.full_reads == []


def test_the_size_limit_comes_from_the_settings() -> None:
    small_limit = replace(TEST_SETTINGS, limits=Limits(**{**vars(TEST_SETTINGS.limits), "max_object_bytes": 10}))
    rig = IngestRig(small_limit)
    ref = rig.store.add(INBOX, "a.png", png_bytes())
    assert rig.ingest.handle(s3_event(ref)).reason == "too_large"


def test_text_named_png_is_not_an_image(rig: IngestRig) -> None:
    ref = rig.store.add(INBOX, "notes.png", b"hello, this is not a picture\n" * 4, content_type="image/png")
    assert rig.ingest.handle(s3_event(ref)).reason == "not_an_image"
    entry = _only_rejection(rig)
    assert (entry.reason, entry.error) == ("not_an_image", "NotAnImage")
    assert "hello" in entry.detail


def test_a_known_but_unsupported_format_is_named(rig: IngestRig) -> None:
    heic_head = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64
    ref = rig.store.add(INBOX, "photo.jpg", heic_head)
    assert rig.ingest.handle(s3_event(ref)).reason == "unsupported_format"
    assert "heic" in _only_rejection(rig).detail


def test_an_object_deleted_before_it_is_read_is_dead_lettered_as_missing(rig: IngestRig) -> None:
    ref = ObjectRef(INBOX, "gone.png", etag="0" * 32, size=120)
    assert rig.ingest.handle(s3_event(ref)).reason == "object_missing"
    assert _only_rejection(rig).request.object.key == "gone.png"


def test_duplicate_deliveries_of_a_rejected_object_dead_letter_it_once(rig: IngestRig) -> None:
    ref = rig.store.add(INBOX, "empty.png", b"")
    for _ in range(3):
        rig.ingest.handle(s3_event(ref))
    assert len(rig.dlq.messages) == 1 and len(rig.events.events) == 1


def test_a_url_encoded_key_is_resolved_to_the_real_object(rig: IngestRig) -> None:
    ref = rig.store.add(INBOX, "vans/my bike+é.png", png_bytes())
    encoded = replace(ref, key="vans/my+bike%2B%C3%A9.png")
    outcome = rig.ingest.handle(s3_event(encoded))
    assert outcome.status == "started"
    assert rig.starter.started[0].object.key == "vans/my bike+é.png"


def test_a_literal_key_with_percent_signs_is_read_as_is(rig: IngestRig) -> None:
    ref = rig.store.add(INBOX, "100%25 bike.png", png_bytes())
    rig.ingest.handle(s3_event(ref))
    assert rig.starter.started[0].object.key == "100%25 bike.png"


def test_a_transient_failure_raises_and_the_redelivery_admits_the_object(rig: IngestRig) -> None:
    ref = rig.store.add(INBOX, "a.png", png_bytes())
    rig.starter.fail_next = TransientAwsError("ThrottlingException")
    with pytest.raises(TransientAwsError):
        rig.ingest.handle(s3_event(ref))
    assert rig.ingest.handle(s3_event(ref)).status == "started"
    assert len(rig.starter.started) == 1


def test_a_failure_to_dead_letter_raises_so_the_rejection_is_retried(rig: IngestRig) -> None:
    ref = rig.store.add(INBOX, "empty.png", b"")
    rig.events.fail_next = TransientAwsError("InternalFailure")
    with pytest.raises(TransientAwsError):
        rig.ingest.handle(s3_event(ref))
    rig.ingest.handle(s3_event(ref))
    assert len(rig.events.of_type(DEAD_LETTERED)) == 1


def test_the_version_id_is_part_of_the_identity(rig: IngestRig) -> None:
    ref = rig.store.add(INBOX, "a.png", png_bytes())
    rig.ingest.handle(s3_event(replace(ref, version_id="v1")))
    rig.ingest.handle(s3_event(replace(ref, version_id="v2")))
    assert [r.object.version_id for r in rig.starter.started] == ["v1", "v2"]


def test_motos_spelling_of_etag_and_the_null_version_are_understood(rig: IngestRig) -> None:
    ref = rig.store.add(INBOX, "a.png", png_bytes())
    event = s3_event(ref)
    obj = event["detail"]["object"]
    obj["eTag"] = obj.pop("etag")
    obj["version-id"] = "null"
    rig.ingest.handle(event)
    assert rig.starter.started[0].object == ref


def test_an_event_without_size_or_etag_is_completed_from_the_object(rig: IngestRig) -> None:
    ref = rig.store.add(INBOX, "a.png", png_bytes())
    event = s3_event(ref)
    del event["detail"]["object"]["size"]
    event["detail"]["object"]["etag"] = ""
    rig.ingest.handle(event)
    assert rig.starter.started[0].object == ref


@pytest.mark.parametrize(
    "mutate",
    [
        lambda e: e.pop("detail"),
        lambda e: e["detail"].pop("object"),
        lambda e: e["detail"]["object"].pop("key"),
        lambda e: e["detail"]["object"].update(size="big"),
    ],
)
def test_a_malformed_s3_event_is_an_invalid_event(rig: IngestRig, mutate: Any) -> None:
    event = s3_event(ObjectRef(INBOX, "a.png", "e", 10))
    mutate(event)
    with pytest.raises(InvalidEvent):
        rig.ingest.handle(event)
    assert rig.dlq.messages == []


def test_the_dead_letter_message_has_the_workflows_fields(rig: IngestRig) -> None:
    ref = rig.store.add(INBOX, "empty.png", b"")
    rig.ingest.handle(s3_event(ref))
    [message] = rig.dlq.messages
    asl = json.loads((REPO_ROOT / "infra" / "statemachine" / "workflow.asl.json").read_text())
    asl_fields = {
        name.removesuffix(".$") for name in asl["States"]["SendToDeadLetterQueue"]["Parameters"]["MessageBody"]
    }
    assert asl_fields <= set(message)
    assert set(message) - asl_fields == {"reason"}
    assert message["request"] == {**ref.to_dict(), "attempt": 1, "received_at": "2026-11-28T16:00:01.000Z"}
    assert json.loads(message["cause"])["errorType"] == "EmptyObject"
