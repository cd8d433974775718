"""In-memory stand-ins for the AWS adapters (same methods, same errors), shared by the step unit tests.

The tests at the bottom hold the fakes to the adapters' documented behaviour, so a step test that passes
against a fake means what it says.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent_function
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyItemAlreadyExistsError,
    IdempotencyItemNotFoundError,
)
from aws_lambda_powertools.utilities.idempotency.persistence.base import BasePersistenceLayer
from aws_lambda_powertools.utilities.idempotency.persistence.datarecord import STATUS_CONSTANTS, DataRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from bayroute.adapters.aws import ObjectInfo, StartedExecution
from bayroute.config import Settings, load_settings
from bayroute.domain import ObjectRef, WorkflowRequest
from bayroute.errors import ObjectMissing, TooLarge

TEST_SETTINGS: Settings = load_settings(env={})


@dataclass
class FakeLambdaContext:
    """The context attributes that Powertools reads (Logger, idempotency's in-progress expiry)."""

    function_name: str = "bayroute-test"
    function_version: str = "$LATEST"
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:bayroute-test"
    memory_limit_in_mb: int = 512
    aws_request_id: str = "00000000-0000-0000-0000-000000000001"
    log_group_name: str = "/aws/lambda/bayroute-test"
    log_stream_name: str = "test"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


def fake_lambda_context() -> LambdaContext:
    """A FakeLambdaContext, typed as what Powertools expects."""
    return cast(LambdaContext, FakeLambdaContext())


class TransientAwsError(Exception):
    """Stands for a throttling or 5xx ``ClientError`` that a fake is told to raise."""


@dataclass
class StoredBlob:
    body: bytes
    etag: str
    content_type: str
    version_id: str | None = None


class FakeObjectStore:
    """``bayroute.adapters.aws.ObjectStore`` over a dict; counts reads to prove what was (not) downloaded."""

    def __init__(self) -> None:
        self.blobs: dict[tuple[str, str], StoredBlob] = {}
        self.full_reads: list[tuple[str, str]] = []
        self.prefix_reads: list[tuple[str, str, int]] = []
        self.fail_next: Exception | None = None

    def add(self, bucket: str, key: str, body: bytes, content_type: str = "application/octet-stream") -> ObjectRef:
        etag = hashlib.md5(body).hexdigest()
        self.blobs[(bucket, key)] = StoredBlob(body, etag, content_type)
        return ObjectRef(bucket=bucket, key=key, etag=etag, size=len(body))

    def _blob(self, bucket: str, key: str, etag: str | None = None) -> StoredBlob:
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        blob = self.blobs.get((bucket, key))
        if blob is None:
            raise ObjectMissing(f"s3://{bucket}/{key} no longer exists", code="NoSuchKey")
        if etag and etag != blob.etag:
            raise ObjectMissing(f"s3://{bucket}/{key} was replaced by another version", code="PreconditionFailed")
        return blob

    def head(self, bucket: str, key: str, *, version_id: str | None = None) -> ObjectInfo:
        blob = self._blob(bucket, key)
        return ObjectInfo(len(blob.body), blob.etag, blob.version_id, blob.content_type)

    def read(
        self, bucket: str, key: str, *, max_bytes: int, version_id: str | None = None, etag: str | None = None
    ) -> bytes:
        blob = self._blob(bucket, key, etag)
        if len(blob.body) > max_bytes:
            raise TooLarge(f"object is {len(blob.body)} bytes, the limit is {max_bytes}")
        self.full_reads.append((bucket, key))
        return blob.body

    def read_prefix(
        self, bucket: str, key: str, *, length: int, version_id: str | None = None, etag: str | None = None
    ) -> bytes:
        blob = self._blob(bucket, key, etag)
        self.prefix_reads.append((bucket, key, length))
        return blob.body[:length]

    def put_bytes(self, bucket: str, key: str, body: bytes, content_type: str) -> None:
        self.blobs[(bucket, key)] = StoredBlob(body, hashlib.md5(body).hexdigest(), content_type)

    def put_json(self, bucket: str, key: str, document: Mapping[str, Any]) -> None:
        self.put_bytes(bucket, key, json.dumps(document, sort_keys=True).encode(), "application/json")

    def create_json(self, bucket: str, key: str, document: Mapping[str, Any]) -> bool:
        if (bucket, key) in self.blobs:
            return False
        self.put_json(bucket, key, document)
        return True

    def get_json(self, bucket: str, key: str) -> dict[str, Any] | None:
        blob = self.blobs.get((bucket, key))
        return None if blob is None else json.loads(blob.body)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        return sorted(key for (b, key) in self.blobs if b == bucket and key.startswith(prefix))


@dataclass
class FakeDeadLetterQueue:
    messages: list[dict[str, Any]] = field(default_factory=list)

    def send(self, message: Mapping[str, Any]) -> str:
        # Round-trip through JSON as SQS does, so a non-serializable message fails here too.
        self.messages.append(json.loads(json.dumps(message)))
        return f"message-{len(self.messages)}"


@dataclass
class PublishedEvent:
    detail_type: str
    detail: dict[str, Any]
    resources: list[str]


@dataclass
class FakeEventPublisher:
    events: list[PublishedEvent] = field(default_factory=list)
    fail_next: Exception | None = None

    def publish(self, detail_type: str, detail: Mapping[str, Any], resources: Any = ()) -> str:
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        self.events.append(PublishedEvent(detail_type, json.loads(json.dumps(detail)), list(resources)))
        return f"event-{len(self.events)}"

    def of_type(self, detail_type: str) -> list[PublishedEvent]:
        return [event for event in self.events if event.detail_type == detail_type]


@dataclass
class FakeWorkflowStarter:
    """Refuses a second execution of the same name, as Step Functions does for a different input."""

    started: list[WorkflowRequest] = field(default_factory=list)
    fail_next: Exception | None = None

    def start(self, request: WorkflowRequest) -> StartedExecution:
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        name = request.object.execution_name(request.attempt)
        if any(r.object.execution_name(r.attempt) == name for r in self.started):
            return StartedExecution(name=name, arn=None, duplicate=True)
        self.started.append(request)
        return StartedExecution(
            name=name, arn=f"arn:aws:states:us-east-1:123456789012:execution:wf:{name}", duplicate=False
        )


class InMemoryPersistenceLayer(BasePersistenceLayer):
    """Powertools' persistence contract on a dict, with the DynamoDB layer's conditional-put rules."""

    def __init__(self) -> None:
        super().__init__()
        self.records: dict[str, DataRecord] = {}

    def _get_record(self, idempotency_key: str) -> DataRecord:
        try:
            return self.records[idempotency_key]
        except KeyError as exc:
            raise IdempotencyItemNotFoundError from exc

    def _put_record(self, data_record: DataRecord) -> None:
        existing = self.records.get(data_record.idempotency_key)
        now_ms = int(dt.datetime.now().timestamp() * 1000)
        if existing is not None and not existing.is_expired:
            stale_in_progress = (
                existing.status == STATUS_CONSTANTS["INPROGRESS"]
                and existing.in_progress_expiry_timestamp is not None
                and existing.in_progress_expiry_timestamp < now_ms
            )
            if not stale_in_progress:
                raise IdempotencyItemAlreadyExistsError(old_data_record=existing)
        self.records[data_record.idempotency_key] = data_record

    def _update_record(self, data_record: DataRecord) -> None:
        self.records[data_record.idempotency_key] = data_record

    def _delete_record(self, data_record: DataRecord) -> None:
        self.records.pop(data_record.idempotency_key, None)


# --- the fakes keep the adapters' promises -----------------------------------------------------------------


def test_in_memory_persistence_runs_a_function_once_and_releases_it_on_failure() -> None:
    layer = InMemoryPersistenceLayer()
    calls: list[str] = []

    def work(*, item: str) -> dict[str, Any]:
        calls.append(item)
        if item == "boom":
            raise TransientAwsError(item)
        return {"done": item}

    config = IdempotencyConfig()
    config.register_lambda_context(fake_lambda_context())
    once = idempotent_function(work, data_keyword_argument="item", persistence_store=layer, config=config)
    assert once(item="a") == {"done": "a"}
    assert once(item="a") == {"done": "a"}
    assert calls == ["a"]
    for _ in range(2):
        with pytest.raises(TransientAwsError):
            once(item="boom")
    assert calls == ["a", "boom", "boom"]  # a failure leaves no record behind: the retry runs again


def test_in_memory_persistence_refuses_a_concurrent_duplicate() -> None:
    layer = InMemoryPersistenceLayer()

    def work(*, item: str) -> dict[str, Any]:
        with pytest.raises(IdempotencyAlreadyInProgressError):
            once(item=item)
        return {"done": item}

    config = IdempotencyConfig()
    config.register_lambda_context(fake_lambda_context())
    once = idempotent_function(work, data_keyword_argument="item", persistence_store=layer, config=config)
    assert once(item="x") == {"done": "x"}


def test_fake_store_enforces_the_size_limit_and_the_etag_pin() -> None:
    store = FakeObjectStore()
    ref = store.add("inbox", "a.png", b"0123456789")
    with pytest.raises(TooLarge):
        store.read("inbox", "a.png", max_bytes=9)
    with pytest.raises(ObjectMissing):
        store.read("inbox", "a.png", max_bytes=100, etag="0" * 32)
    assert store.read("inbox", "a.png", max_bytes=10, etag=ref.etag) == b"0123456789"
    assert store.read_prefix("inbox", "a.png", length=4) == b"0123"
