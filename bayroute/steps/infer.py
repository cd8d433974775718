"""infer: the serialized PNG → the model endpoint (SageMaker runtime contract) → a prediction and one capture record.

The endpoint gets the PNG with ``Content-Type: image/png`` and an inference id derived from the object's
idempotency key and the attempt, so an inference of the same attempt always has the same id. Its answer
must name the labels (the endpoint's custom attributes); without them the probabilities mean nothing and
the answer is a ``ModelError``. ``EndpointUnavailable`` and ``EndpointThrottled`` propagate for the
workflow to retry.

Each inference writes exactly one data-capture record in SageMaker's format. Its event id is the inference
id and its object is keyed by the time the request was received (seconds before the inference), so a
re-run of the same attempt overwrites its record instead of adding one. The record's ``customAttributes``
carry the endpoint's own (``model_version``, ``labels``) plus ``object_key`` and ``input_stats`` (compact
JSON), each value percent-encoded: :func:`capture_context` reads them back.
"""

from __future__ import annotations

import base64
import binascii
import json
import urllib.parse
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from bayroute.adapters.endpoint import EndpointAnswer, InferenceEndpoint
from bayroute.capture import capture_record
from bayroute.config import Settings
from bayroute.domain import Prediction, WorkflowRequest
from bayroute.errors import InvalidEvent, ModelError
from bayroute.serving import format_custom_attributes, parse_custom_attributes, percent_encode

# Inference ids are UUIDs in this namespace, named by "<idempotency key>-<attempt>".
INFERENCE_NAMESPACE = uuid.UUID("6f1d3c2e-5b7a-4e0f-9c1d-2a8b4e6f0c3d")


class ObjectReader(Protocol):
    def read(
        self, bucket: str, key: str, *, max_bytes: int, version_id: str | None = None, etag: str | None = None
    ) -> bytes: ...


class CaptureSink(Protocol):
    def write(self, record: dict[str, Any], when: datetime) -> str: ...


def inference_id_for(request: WorkflowRequest) -> str:
    return str(uuid.uuid5(INFERENCE_NAMESPACE, request.object.execution_name(request.attempt)))


def capture_attributes(model_version: str, labels: list[str], object_key: str, input_stats: Mapping[str, Any]) -> str:
    """The capture record's custom attributes: the endpoint's pairs, then ``object_key`` and ``input_stats``."""
    stats = json.dumps(dict(input_stats), separators=(",", ":"), sort_keys=True)
    return (
        f"{format_custom_attributes(model_version, labels)},object_key={percent_encode(object_key)},"
        f"input_stats={percent_encode(stats)}"
    )


def capture_context(custom_attributes: str | None) -> tuple[str | None, dict[str, Any] | None]:
    """(object key, input stats) of a capture record's custom attributes; None for what it does not carry."""
    pairs = parse_custom_attributes(custom_attributes)
    key = pairs.get("object_key")
    stats_text = pairs.get("input_stats")
    stats = None
    if stats_text is not None:
        try:
            parsed = json.loads(urllib.parse.unquote(stats_text))
        except ValueError:
            parsed = None
        stats = parsed if isinstance(parsed, dict) else None
    return (None if key is None else urllib.parse.unquote(key)), stats


def _received_time(request: WorkflowRequest, fallback: datetime) -> datetime:
    try:
        received = datetime.fromisoformat(request.received_at)
    except ValueError:
        return fallback
    return received if received.tzinfo is not None else received.replace(tzinfo=UTC)


class Infer:
    def __init__(
        self,
        settings: Settings,
        *,
        endpoint: InferenceEndpoint,
        staging: ObjectReader,
        capture: CaptureSink | None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._settings = settings
        self._endpoint = endpoint
        self._staging = staging
        self._capture = capture
        self._clock = clock

    def run(self, state: dict[str, Any]) -> dict[str, Any]:
        """``{"request", "image", "input_stats"}`` → ``Prediction.to_dict()``."""
        request = WorkflowRequest.from_state(state)
        body, content_type = self._image(state.get("image"))
        input_stats = state.get("input_stats")
        inference_id = inference_id_for(request)
        answer = self._endpoint.invoke(body, content_type, inference_id=inference_id)
        if not answer.labels:
            raise ModelError(
                "the endpoint answered without labels: the probabilities cannot be named",
                model_version=answer.model_version,
            )
        if self._capture is not None:
            self._write_capture(self._capture, request, body, content_type, answer, inference_id, input_stats)
        return Prediction(
            labels=list(answer.labels),
            probabilities=list(answer.probabilities),
            model_version=answer.model_version,
            inference_id=inference_id,
        ).to_dict()

    def _write_capture(
        self,
        capture: CaptureSink,
        request: WorkflowRequest,
        body: bytes,
        content_type: str,
        answer: EndpointAnswer,
        inference_id: str,
        input_stats: Any,
    ) -> None:
        inferred_at = self._clock()
        record = capture_record(
            input_body=body,
            input_content_type=content_type,
            output_body=answer.raw_body,
            output_content_type=answer.content_type,
            event_id=inference_id,
            inference_time=inferred_at,
            custom_attributes=capture_attributes(
                answer.model_version,
                list(answer.labels or ()),
                request.object.key,
                input_stats if isinstance(input_stats, dict) else {},
            ),
            inference_id=inference_id,
        )
        capture.write(record, _received_time(request, inferred_at))

    def _image(self, image: Any) -> tuple[bytes, str]:
        """The PNG bytes and content type of serialize's payload: inline (base64) or staged in S3."""
        if not isinstance(image, dict) or not isinstance(image.get("content_type"), str):
            raise InvalidEvent("workflow state has no 'image' with a 'content_type'", got=str(image)[:200])
        content_type = image["content_type"]
        if "data" in image:
            if image.get("encoding") != "base64" or not isinstance(image["data"], str):
                raise InvalidEvent("inline image data must be a base64 string", encoding=image.get("encoding"))
            try:
                body = base64.b64decode(image["data"], validate=True)
            except binascii.Error as exc:
                raise InvalidEvent(f"inline image data is not valid base64: {exc}") from exc
        elif isinstance(image.get("s3"), dict):
            location = image["s3"]
            body = self._staging.read(
                str(location.get("bucket")), str(location.get("key")), max_bytes=self._settings.limits.max_request_bytes
            )
        else:
            raise InvalidEvent("image has neither inline 'data' nor an 's3' location", got=str(image)[:200])
        if not body:
            raise InvalidEvent("the serialized image is empty")
        return body, content_type
