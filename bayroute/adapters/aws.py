"""Small adapters over the AWS services that the workflow steps use, each with a narrow interface.

Steps depend on these classes, not on boto3: unit tests pass in-memory fakes with the same methods, and
the handlers build the real ones from :func:`aws_client`. Errors that mean something to the workflow are
translated into :mod:`bayroute.errors` (a missing object is ``ObjectMissing``, an oversize one
``TooLarge``); every other ``ClientError`` propagates, so the caller's retry policy (SQS redelivery, the
workflow's Retry) sees a transient failure as a failure.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from botocore.exceptions import ClientError

from bayroute.adapters.signed_s3 import signed_s3_from_environment
from bayroute.domain import WorkflowRequest
from bayroute.errors import EmptyObject, ObjectMissing, TooLarge

if TYPE_CHECKING:  # imported where used: infer, which has no idempotency and no botocore client on its way to
    # an answer (see bayroute.adapters.signed_s3), starts faster without them
    import botocore.session
    from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer

DEFAULT_REGION = "us-east-1"

_clients: dict[tuple[str, str, str | None], Any] = {}
_sessions: dict[tuple[str, str | None, str | None], botocore.session.Session] = {}
_clients_lock = threading.Lock()

# S3 answers these when the object (or the version, or the bucket) is gone.
_MISSING_CODES = {"NoSuchKey", "NoSuchVersion", "NoSuchBucket", "404", "NotFound"}
# ...and these when IfMatch no longer matches: the object was replaced after the event was sent.
_REPLACED_CODES = {"PreconditionFailed", "412"}
# ...and these when a conditional create (If-None-Match: *) finds an object, or another one of the same key still
# in flight (409 ConditionalRequestConflict).
_EXISTING_CODES = _REPLACED_CODES | {"ConditionalRequestConflict"}
_JSON_CONTENT_TYPE = "application/json"


def aws_client(service: str) -> Any:
    """A botocore client for ``service`` (what ``boto3.client`` returns), shared per (service, region,
    ``AWS_ENDPOINT_URL``). botocore alone: boto3 adds nothing these calls use, and importing it (with
    s3transfer) would lengthen every function's cold start.

    Locally ``AWS_ENDPOINT_URL`` points at moto's server, which reports its own exceptions as HTTP 500;
    botocore would retry those and repeat calls that are not idempotent, so a client for an endpoint
    override makes exactly one attempt. Against AWS, botocore's standard retry mode applies.
    """
    import botocore.session
    from botocore.config import Config

    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION
    endpoint_url = os.environ.get("AWS_ENDPOINT_URL") or None
    cache_key = (service, region, endpoint_url)
    with _clients_lock:
        client = _clients.get(cache_key)
        if client is None:
            if endpoint_url:
                config = Config(retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=30)
            else:
                config = Config(retries={"mode": "standard"}, connect_timeout=5, read_timeout=30)
            # One session per region, endpoint and identity: sessions cache the service models (loading one
            # takes a fifth of a second) and the credentials. Creating clients is serialized by the lock,
            # because a session is not safe to share across threads while it does that.
            session_key = (region, endpoint_url, os.environ.get("AWS_ACCESS_KEY_ID"))
            session = _sessions.get(session_key)
            if session is None:
                session = _sessions[session_key] = botocore.session.Session()
            client = session.create_client(service, region_name=region, endpoint_url=endpoint_url, config=config)
            _clients[cache_key] = client
    return client


def s3_client() -> Any:
    """The functions' S3 client: :mod:`bayroute.adapters.signed_s3`'s, wherever botocore would take its credentials
    and endpoint from the environment (every Lambda function, the local stack), else botocore's: its object calls
    cost less than half of botocore's CPU (measured in that module), and no botocore client is built for them."""
    return signed_s3_from_environment() or aws_client("s3")


def reset_clients() -> None:
    """Forget every cached client (a test that starts a fresh moto mock); sessions, and their models, stay."""
    with _clients_lock:
        _clients.clear()


def idempotency_store(table_name: str) -> DynamoDBPersistenceLayer:
    """Powertools' DynamoDB persistence layer on the shared client (partition key ``id``, TTL ``expiration``)."""
    from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer

    return DynamoDBPersistenceLayer(table_name=table_name, boto3_client=aws_client("dynamodb"))


def _json_body(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True).encode("utf-8")


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    etag: str
    version_id: str | None
    content_type: str | None


class ObjectStore:
    """Read and write S3 objects, with size limits enforced before a body is read."""

    def __init__(self, s3_client: Any) -> None:
        self._s3 = s3_client

    def head(self, bucket: str, key: str, *, version_id: str | None = None) -> ObjectInfo:
        params = _object_params(bucket, key, version_id=version_id, etag=None)
        try:
            response = self._s3.head_object(**params)
        except ClientError as exc:
            raise _translate(exc, bucket, key) from exc
        return ObjectInfo(
            size=int(response["ContentLength"]),
            etag=str(response.get("ETag", "")).strip('"'),
            version_id=response.get("VersionId"),
            content_type=response.get("ContentType"),
        )

    def read(
        self, bucket: str, key: str, *, max_bytes: int, version_id: str | None = None, etag: str | None = None
    ) -> bytes:
        """The whole object, pinned to ``etag`` (else ``version_id``, see ``_object_params``); at most ``max_bytes``."""
        params = _object_params(bucket, key, version_id=version_id, etag=etag)
        try:
            response = self._s3.get_object(**params)
        except ClientError as exc:
            raise _translate(exc, bucket, key) from exc
        body = response["Body"]
        try:
            size = int(response.get("ContentLength", 0))
            if size > max_bytes:
                raise TooLarge(f"object is {size} bytes, the limit is {max_bytes}", size=size, limit=max_bytes)
            # Never trust the header alone: read one byte past the limit to notice a longer body.
            data: bytes = body.read(max_bytes + 1)
        finally:
            body.close()
        if len(data) > max_bytes:
            raise TooLarge(f"object is over the limit of {max_bytes} bytes", limit=max_bytes)
        return data

    def read_prefix(
        self, bucket: str, key: str, *, length: int, version_id: str | None = None, etag: str | None = None
    ) -> bytes:
        """The first ``length`` bytes (fewer when the object is shorter), with one ranged GET."""
        params = _object_params(bucket, key, version_id=version_id, etag=etag)
        try:
            response = self._s3.get_object(Range=f"bytes=0-{length - 1}", **params)
        except ClientError as exc:
            if _error_code(exc) in {"InvalidRange", "416"}:
                raise EmptyObject("the object has no bytes", key=key) from exc
            raise _translate(exc, bucket, key) from exc
        body = response["Body"]
        try:
            data: bytes = body.read(length)
        finally:
            body.close()
        return data

    def put_bytes(self, bucket: str, key: str, body: bytes, content_type: str) -> None:
        self._s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type)

    def put_json(self, bucket: str, key: str, document: Mapping[str, Any]) -> None:
        self.put_bytes(bucket, key, _json_body(document), _JSON_CONTENT_TYPE)

    def create_json(self, bucket: str, key: str, document: Mapping[str, Any]) -> bool:
        """Store ``document`` at ``key`` only if nothing is there yet (S3 conditional write, ``If-None-Match: *``).

        True when this call created it, False when an object already existed (left untouched).
        """
        try:
            self._s3.put_object(
                Bucket=bucket, Key=key, Body=_json_body(document), ContentType=_JSON_CONTENT_TYPE, IfNoneMatch="*"
            )
        except ClientError as exc:
            if _error_code(exc) in _EXISTING_CODES:
                return False
            raise
        return True

    def get_json(self, bucket: str, key: str) -> dict[str, Any] | None:
        """A JSON object stored at ``key``, or None when there is none."""
        try:
            response = self._s3.get_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if _error_code(exc) in _MISSING_CODES:
                return None
            raise
        with response["Body"] as body:
            document = json.loads(body.read())
        if not isinstance(document, dict):
            raise ValueError(f"s3://{bucket}/{key} does not hold a JSON object")
        return document


def _object_params(bucket: str, key: str, *, version_id: str | None, etag: str | None) -> dict[str, str]:
    """Pin a read to the admitted content: the current object must still carry ``etag`` (IfMatch).

    IfMatch rather than VersionId, so that a deleted object reads as missing in a versioned bucket too (a
    version stays readable behind its delete marker), and a replaced one as replaced; the replacement has an
    event, and a run, of its own. The version pins the read only when no eTag is known.
    """
    params = {"Bucket": bucket, "Key": key}
    if etag:
        params["IfMatch"] = f'"{etag.strip(chr(34))}"'
    elif version_id:
        params["VersionId"] = version_id
    return params


def _translate(exc: ClientError, bucket: str, key: str) -> Exception:
    code = _error_code(exc)
    if code in _MISSING_CODES:
        return ObjectMissing(f"s3://{bucket}/{key} no longer exists", code=code)
    if code in _REPLACED_CODES:
        return ObjectMissing(f"s3://{bucket}/{key} was replaced by another version", code=code)
    return exc


class DeadLetterQueue:
    """Send dead-letter messages to the SQS queue that the workflow's Catch also feeds."""

    def __init__(self, sqs_client: Any, queue: str) -> None:
        """``queue`` is the queue URL, or its name (looked up once, on first use)."""
        self._sqs = sqs_client
        self._queue = queue
        self._url: str | None = queue if queue.startswith(("https://", "http://")) else None

    @property
    def url(self) -> str:
        if self._url is None:
            self._url = str(self._sqs.get_queue_url(QueueName=self._queue)["QueueUrl"])
        return self._url

    def send(self, message: Mapping[str, Any]) -> str:
        response = self._sqs.send_message(QueueUrl=self.url, MessageBody=json.dumps(message, sort_keys=True))
        return str(response["MessageId"])


class EventPublishFailed(RuntimeError):
    """EventBridge accepted the call but not the event (``FailedEntryCount`` > 0)."""


class EventPublisher:
    """Put events with this application's source on one bus."""

    def __init__(self, events_client: Any, *, bus: str, source: str) -> None:
        self._events = events_client
        self._bus = bus
        self._source = source

    def publish(self, detail_type: str, detail: Mapping[str, Any], resources: Sequence[str] = ()) -> str:
        entry = {
            "EventBusName": self._bus,
            "Source": self._source,
            "DetailType": detail_type,
            "Detail": json.dumps(detail, sort_keys=True),
            "Resources": list(resources),
        }
        response = self._events.put_events(Entries=[entry])
        result = response.get("Entries", [{}])[0]
        if response.get("FailedEntryCount", 0) or "EventId" not in result:
            raise EventPublishFailed(
                f"EventBridge rejected the {detail_type} event: "
                f"{result.get('ErrorCode', 'unknown')}: {result.get('ErrorMessage', '')}"
            )
        return str(result["EventId"])


@dataclass(frozen=True)
class StartedExecution:
    name: str
    arn: str | None
    duplicate: bool


class WorkflowStarter:
    """Start one workflow execution per object and attempt, named so that a duplicate start is refused."""

    def __init__(self, sfn_client: Any, state_machine: str) -> None:
        """``state_machine`` is the state machine ARN, or its name (looked up once, on first use)."""
        self._sfn = sfn_client
        self._state_machine = state_machine
        self._arn: str | None = state_machine if state_machine.startswith("arn:") else None

    @property
    def state_machine_arn(self) -> str:
        if self._arn is None:
            for page in self._sfn.get_paginator("list_state_machines").paginate():
                for machine in page["stateMachines"]:
                    if machine["name"] == self._state_machine:
                        self._arn = str(machine["stateMachineArn"])
                        return self._arn
            raise LookupError(f"no state machine named {self._state_machine!r}")
        return self._arn

    def start(self, request: WorkflowRequest) -> StartedExecution:
        name = request.object.execution_name(request.attempt)
        try:
            response = self._sfn.start_execution(
                stateMachineArn=self.state_machine_arn, name=name, input=json.dumps(request.to_dict())
            )
        except ClientError as exc:
            if _error_code(exc) == "ExecutionAlreadyExists":
                return StartedExecution(name=name, arn=None, duplicate=True)
            raise
        return StartedExecution(name=name, arn=str(response["executionArn"]), duplicate=False)


_T = TypeVar("_T")
# The environment that decides what a handler's collaborators are: the settings' overrides and the AWS endpoint.
_WIRING_PREFIXES = ("BAYROUTE_", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION")


class per_environment(Generic[_T]):  # lower case: it is used as a decorator, like functools.cache
    """Build ``factory()`` once, and again only when the settings or AWS endpoint in the environment change.

    A Lambda process builds its step once per container. The local runtime runs every handler in one process
    and may start several stacks in turn (tests do: a new moto port, another threshold), so the handlers'
    collaborators follow the environment instead of being frozen at the first call.
    """

    def __init__(self, factory: Callable[[], _T]) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._built: dict[tuple[tuple[str, str], ...], _T] = {}

    def __call__(self) -> _T:
        fingerprint = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(_WIRING_PREFIXES)))
        with self._lock:
            if fingerprint not in self._built:
                self._built.clear()
                self._built[fingerprint] = self._factory()
            return self._built[fingerprint]

    def cache_clear(self) -> None:
        """Build afresh on the next call (a test that starts a new moto mock with the same environment)."""
        with self._lock:
            self._built.clear()
