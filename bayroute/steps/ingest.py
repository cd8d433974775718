"""ingest: admit each new inbox object into the workflow exactly once, or dead-letter it with a reason.

Input is one S3 event as EventBridge delivers it. Events that are not "Object Created" in the inbox bucket
are ignored (S3 also sends "Object Tags Added", for example). An object is checked without downloading
it: its size from the event, its real format from its first bytes (one ranged GET), never from its name.
An accepted object starts one workflow execution named from its idempotency key; a rejected one gets a
dead-letter message and an ``ObjectDeadLettered`` event, like a failure inside the workflow.

Events arrive at least once, and moto gives every S3 event the same id, so the whole admission of an
object (check, then start or reject) runs under Powertools idempotency keyed by the object's identity
(bucket, key, version or eTag). A duplicate delivery returns the first admission's outcome and does
nothing. A transient AWS error raises, which releases the idempotency record so that the redelivered event
admits the object again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar
from urllib.parse import unquote_plus

from aws_lambda_powertools.utilities.data_classes import EventBridgeEvent
from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent_function
from aws_lambda_powertools.utilities.idempotency.persistence.base import BasePersistenceLayer
from aws_lambda_powertools.utilities.idempotency.persistence.datarecord import DataRecord

from bayroute.adapters.aws import ObjectInfo, StartedExecution
from bayroute.config import Settings
from bayroute.deadletter import dead_letter_message
from bayroute.domain import ObjectRef, WorkflowRequest, utc_now
from bayroute.errors import (
    EmptyObject,
    InvalidEvent,
    NotAnImage,
    ObjectMissing,
    TooLarge,
    UnsupportedImageFormat,
    WorkflowError,
)
from bayroute.imaging import SNIFF_BYTES, SUPPORTED_FORMATS, sniff_format

STEP = "ingest"
OBJECT_CREATED = "Object Created"
S3_SOURCE = "aws.s3"
# Duplicates come within minutes (SQS visibility, EventBridge retries); a day also covers a restarted
# local runtime resubmitting its inbox folder.
IDEMPOTENCY_TTL_SECONDS = 24 * 3600
IDEMPOTENCY_KEY_PREFIX = "bayroute-ingest"
# What ingest dead-letters itself; anything else (a transient AWS error) raises so the event is redelivered.
_REJECTIONS = (EmptyObject, TooLarge, NotAnImage, UnsupportedImageFormat, ObjectMissing)
_T = TypeVar("_T")


class InboxReader(Protocol):
    def head(self, bucket: str, key: str, *, version_id: str | None = None) -> ObjectInfo: ...

    def read_prefix(
        self, bucket: str, key: str, *, length: int, version_id: str | None = None, etag: str | None = None
    ) -> bytes: ...


class DeadLetterSink(Protocol):
    def send(self, message: Mapping[str, Any]) -> str: ...


class Publisher(Protocol):
    def publish(self, detail_type: str, detail: Mapping[str, Any], resources: Any = ()) -> str: ...


class Starter(Protocol):
    def start(self, request: WorkflowRequest) -> StartedExecution: ...


@dataclass(frozen=True)
class IngestOutcome:
    """What ingest did with one event.

    ``status``: ``started`` (a new execution), ``already_started`` (the execution existed: an expired
    idempotency record, or a concurrent start), ``rejected`` (dead-lettered with ``reason``), ``ignored``
    (not an inbox "Object Created" event; ``note`` says why). ``duplicate_delivery`` is True when this
    event repeated one already admitted and nothing was done again.
    """

    status: str
    object_key: str | None = None
    execution: str | None = None
    reason: str | None = None
    note: str | None = None
    duplicate_delivery: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "object_key": self.object_key,
            "execution": self.execution,
            "reason": self.reason,
            "note": self.note,
            "duplicate_delivery": self.duplicate_delivery,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IngestOutcome:
        return cls(
            status=str(data["status"]),
            object_key=data.get("object_key"),
            execution=data.get("execution"),
            reason=data.get("reason"),
            note=data.get("note"),
            duplicate_delivery=bool(data.get("duplicate_delivery", False)),
        )


def object_ref_from_detail(detail: Mapping[str, Any]) -> ObjectRef:
    """The object of an S3 event's detail; ``size`` is -1 when the event does not carry it."""
    bucket = detail.get("bucket") or {}
    obj = detail.get("object") or {}
    if not isinstance(bucket, Mapping) or not isinstance(obj, Mapping):
        raise InvalidEvent("S3 event detail needs 'bucket' and 'object' objects", got=str(detail)[:200])
    name, key = bucket.get("name"), obj.get("key")
    if not isinstance(name, str) or not name or not isinstance(key, str) or not key:
        raise InvalidEvent("S3 event detail has no bucket name or object key", got=str(detail)[:200])
    size = obj.get("size")
    try:
        size_value = -1 if size is None else int(size)
    except (TypeError, ValueError) as exc:
        raise InvalidEvent(f"object size {size!r} is not a number", key=key) from exc
    # AWS spells it "etag", moto "eTag". Version "null" is S3's name for "no version" (an unversioned bucket).
    etag = obj.get("etag") or obj.get("eTag") or ""
    version_id = obj.get("version-id")
    return ObjectRef(
        bucket=name,
        key=key,
        etag=str(etag).strip('"'),
        size=size_value,
        version_id=str(version_id) if version_id and version_id != "null" else None,
    )


class Ingest:
    def __init__(
        self,
        settings: Settings,
        *,
        inbox: InboxReader,
        dead_letters: DeadLetterSink,
        events: Publisher,
        workflows: Starter,
        persistence: BasePersistenceLayer,
        clock: Callable[[], str] = utc_now,
    ) -> None:
        self._settings = settings
        self._inbox = inbox
        self._dead_letters = dead_letters
        self._events = events
        self._workflows = workflows
        self._clock = clock
        self.idempotency_config = IdempotencyConfig(
            expires_after_seconds=IDEMPOTENCY_TTL_SECONDS, response_hook=_mark_duplicate_delivery
        )
        self._admit_once = idempotent_function(
            self._admit,
            data_keyword_argument="identity",
            persistence_store=persistence,
            config=self.idempotency_config,
            key_prefix=IDEMPOTENCY_KEY_PREFIX,
        )

    def handle(self, event: EventBridgeEvent | Mapping[str, Any]) -> IngestOutcome:
        """Admit the object of one EventBridge S3 event, or ignore the event."""
        if not isinstance(event, EventBridgeEvent):
            event = EventBridgeEvent(dict(event))
        detail_type = event.get("detail-type")
        if detail_type != OBJECT_CREATED or event.get("source") != S3_SOURCE:
            return IngestOutcome(status="ignored", note=f"{event.get('source')} {detail_type!r} event")
        detail = event.get("detail")
        if not isinstance(detail, Mapping):
            raise InvalidEvent("S3 event has no detail object", got=str(event.raw_event)[:200])
        ref = object_ref_from_detail(detail)
        if ref.bucket != self._settings.names.inbox_bucket:
            return IngestOutcome(status="ignored", object_key=ref.key, note=f"bucket {ref.bucket} is not the inbox")
        outcome: dict[str, Any] = self._admit_once(identity=ref.identity, ref=ref)
        return IngestOutcome.from_dict(outcome)

    def _admit(self, *, identity: str, ref: ObjectRef) -> dict[str, Any]:
        """Check one object and start its execution or dead-letter it; runs once per identity."""
        received_at = self._clock()
        try:
            if ref.size < 0 or not ref.etag:
                ref, info = self._resolve(ref, self._head)
                ref = replace(
                    ref, etag=ref.etag or info.etag, size=info.size, version_id=ref.version_id or info.version_id
                )
            self._check_size(ref)
            ref, head = self._resolve(ref, self._read_head)
            self._check_format(ref, head)
        except _REJECTIONS as rejection:
            self._reject(WorkflowRequest(ref, attempt=1, received_at=received_at), rejection)
            return IngestOutcome(status="rejected", object_key=ref.key, reason=rejection.reason).to_dict()
        started = self._workflows.start(WorkflowRequest(ref, attempt=1, received_at=received_at))
        status = "already_started" if started.duplicate else "started"
        return IngestOutcome(status=status, object_key=ref.key, execution=started.name).to_dict()

    def _check_size(self, ref: ObjectRef) -> None:
        limit = self._settings.limits.max_object_bytes
        if ref.size == 0:
            raise EmptyObject("the object is empty (0 bytes)", key=ref.key)
        if ref.size > limit:
            raise TooLarge(f"object is {ref.size} bytes, the limit is {limit}", key=ref.key, size=ref.size, limit=limit)

    @staticmethod
    def _check_format(ref: ObjectRef, head: bytes) -> None:
        """The real format, from the magic bytes: the object's name and declared content type never count."""
        fmt = sniff_format(head)
        if fmt is None:
            raise NotAnImage(f"content matches no known image signature (first bytes {head[:16]!r})", key=ref.key)
        if fmt not in SUPPORTED_FORMATS:
            raise UnsupportedImageFormat(f"{fmt} images are not supported", format=fmt, key=ref.key)

    @staticmethod
    def _resolve(ref: ObjectRef, read: Callable[[ObjectRef], _T]) -> tuple[ObjectRef, _T]:
        """``read(ref)``; when the object is missing under the event's key, try its URL-decoded spelling.

        EventBridge's S3 keys are not URL-encoded (S3 notifications' are): an encoded key from another
        producer is admitted under the object's real key rather than dead-lettered as missing.
        """
        try:
            return ref, read(ref)
        except ObjectMissing as missing:
            decoded = replace(ref, key=unquote_plus(ref.key))
            if decoded.key == ref.key:
                raise
            try:
                return decoded, read(decoded)
            except ObjectMissing:
                raise missing from None

    def _head(self, ref: ObjectRef) -> ObjectInfo:
        return self._inbox.head(ref.bucket, ref.key, version_id=ref.version_id)

    def _read_head(self, ref: ObjectRef) -> bytes:
        return self._inbox.read_prefix(
            ref.bucket, ref.key, length=SNIFF_BYTES, version_id=ref.version_id, etag=ref.etag or None
        )

    def _reject(self, request: WorkflowRequest, error: WorkflowError) -> None:
        message = dead_letter_message(request, step=STEP, error=error, started_at=request.received_at)
        self._dead_letters.send(message)
        self._events.publish(
            self._settings.events.dead_lettered_detail_type,
            message,
            resources=[f"arn:aws:s3:::{request.object.bucket}/{request.object.key}"],
        )


def _mark_duplicate_delivery(response: Any, idempotent_data: DataRecord) -> Any:
    """Powertools calls this when it returns a stored outcome instead of admitting the object again."""
    if isinstance(response, dict):
        return {**response, "duplicate_delivery": True}
    return response
