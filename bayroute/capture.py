"""Data capture in SageMaker's format: one JSON line per inference, under SageMaker's S3 layout.

A record, as SageMaker's endpoint data capture writes it (and Model Monitor reads it)::

    {"captureData": {
        "endpointInput":  {"observedContentType": "image/png", "mode": "INPUT",
                           "data": "<base64 of the request body>", "encoding": "BASE64"},
        "endpointOutput": {"observedContentType": "application/json", "mode": "OUTPUT",
                           "data": "[0.02, 0.98]", "encoding": "JSON"}},
     "eventMetadata": {"eventId": "...", "inferenceId": "...", "inferenceTime": "2024-05-01T12:34:56Z",
                       "customAttributes": ["model_version=v3,labels=bicycle|motorcycle"]},
     "eventVersion": "0"}

Encoding follows SageMaker's defaults: JSON and CSV bodies are kept as text (``JSON``/``CSV``), any other
body (our images) is ``BASE64``. ``inferenceTime`` is UTC with a ``Z``, to the second, as SageMaker writes
it. ``inferenceId`` (optional) is the caller's id for the inference, as SageMaker records the
``InferenceId`` of ``InvokeEndpoint``. ``customAttributes`` (optional) is a one-element list like
SageMaker's; bayroute puts the endpoint's answer attributes there (model version and labels), so every
record names the model that produced it.

Objects are keyed ``{prefix}/{endpoint}/{variant}/yyyy/mm/dd/hh/{mm-ss-fff}-{event_id}.jsonl``: SageMaker's
hourly folders, one object per record. The key contains the event id, so writing the same record at
the same time twice leaves one object.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bayroute.serving import (
    labels_from_custom_attributes,
    media_type,
    model_version_from_custom_attributes,
    parse_custom_attributes,
)

EVENT_VERSION = "0"
JSONL_CONTENT_TYPE = "application/jsonlines"
_TEXT_ENCODINGS = {"application/json": "JSON", "text/csv": "CSV"}
_EVENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class CaptureFormatError(ValueError):
    """A capture line that is not a SageMaker data-capture record."""


@dataclass(frozen=True)
class CapturedInference:
    event_id: str
    inference_time: datetime
    input_body: bytes
    input_content_type: str
    output_body: bytes
    output_content_type: str
    inference_id: str | None = None
    custom_attributes: str | None = None

    @property
    def probabilities(self) -> list[float] | None:
        """The answer's probabilities (a JSON list, or the verbose object), or None when it holds none."""
        try:
            document = json.loads(self.output_body)
        except (ValueError, UnicodeDecodeError):
            return None
        values = document.get("probabilities") if isinstance(document, dict) else document
        if isinstance(values, list) and values and all(isinstance(v, int | float) for v in values):
            return [float(v) for v in values]
        return None

    @property
    def labels(self) -> list[str] | None:
        return labels_from_custom_attributes(parse_custom_attributes(self.custom_attributes))

    @property
    def model_version(self) -> str | None:
        return model_version_from_custom_attributes(parse_custom_attributes(self.custom_attributes))


def _utc(when: datetime) -> datetime:
    if when.tzinfo is None:
        raise ValueError(f"capture times must be timezone-aware, got naive {when.isoformat()}")
    return when.astimezone(UTC)


def format_inference_time(when: datetime) -> str:
    return _utc(when).strftime("%Y-%m-%dT%H:%M:%SZ")


def _encode(body: bytes, content_type: str) -> tuple[str, str]:
    """(data, encoding): JSON and CSV stay text when they are UTF-8, everything else is base64."""
    encoding = _TEXT_ENCODINGS.get(media_type(content_type))
    if encoding is not None:
        try:
            return body.decode("utf-8"), encoding
        except UnicodeDecodeError:
            pass  # not text after all: base64 keeps it intact
    return base64.b64encode(body).decode("ascii"), "BASE64"


def _check_event_id(event_id: str) -> str:
    if not _EVENT_ID.match(event_id):
        raise ValueError(f"event id must be 1-128 characters of [A-Za-z0-9._-], got {event_id!r}")
    return event_id


def capture_record(
    *,
    input_body: bytes,
    input_content_type: str,
    output_body: bytes,
    output_content_type: str,
    event_id: str,
    inference_time: datetime,
    custom_attributes: str | None = None,
    inference_id: str | None = None,
) -> dict[str, Any]:
    """One data-capture record for an inference (see the module docstring)."""
    input_data, input_encoding = _encode(input_body, input_content_type)
    output_data, output_encoding = _encode(output_body, output_content_type)
    metadata: dict[str, Any] = {"eventId": _check_event_id(event_id)}
    if inference_id:
        metadata["inferenceId"] = inference_id
    metadata["inferenceTime"] = format_inference_time(inference_time)
    if custom_attributes:
        metadata["customAttributes"] = [custom_attributes]
    return {
        "captureData": {
            "endpointInput": {
                "observedContentType": input_content_type,
                "mode": "INPUT",
                "data": input_data,
                "encoding": input_encoding,
            },
            "endpointOutput": {
                "observedContentType": output_content_type,
                "mode": "OUTPUT",
                "data": output_data,
                "encoding": output_encoding,
            },
        },
        "eventMetadata": metadata,
        "eventVersion": EVENT_VERSION,
    }


def capture_line(record: dict[str, Any]) -> str:
    """The record as one JSON line (compact, newline-terminated), as in SageMaker's .jsonl files."""
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n"


def capture_key(prefix: str, endpoint: str, variant: str, when: datetime, event_id: str) -> str:
    """``{prefix}/{endpoint}/{variant}/yyyy/mm/dd/hh/{mm-ss-fff}-{event_id}.jsonl`` (no prefix: no leading slash)."""
    moment = _utc(when)
    folder = f"{endpoint}/{variant}/{moment:%Y/%m/%d/%H}"
    name = f"{moment:%M-%S}-{moment.microsecond // 1000:03d}-{_check_event_id(event_id)}.jsonl"
    prefix = prefix.strip("/")
    return f"{prefix}/{folder}/{name}" if prefix else f"{folder}/{name}"


def _decode(section: Any, name: str) -> tuple[bytes, str]:
    if not isinstance(section, dict):
        raise CaptureFormatError(f"{name} is missing")
    data, encoding, content_type = section.get("data"), section.get("encoding"), section.get("observedContentType")
    if not isinstance(data, str) or not isinstance(content_type, str):
        raise CaptureFormatError(f"{name} needs string 'data' and 'observedContentType'")
    if encoding == "BASE64":
        try:
            return base64.b64decode(data, validate=True), content_type
        except binascii.Error as exc:
            raise CaptureFormatError(f"{name} data is not valid base64: {exc}") from exc
    if encoding in ("JSON", "CSV"):
        return data.encode("utf-8"), content_type
    raise CaptureFormatError(f"{name} has unknown encoding {encoding!r}")


def _parse_time(text: Any) -> datetime:
    if not isinstance(text, str) or not text.endswith("Z"):
        raise CaptureFormatError(f"inferenceTime must be ISO 8601 UTC ending in Z, got {text!r}")
    try:
        return datetime.fromisoformat(text[:-1]).replace(tzinfo=UTC)
    except ValueError as exc:
        raise CaptureFormatError(f"inferenceTime {text!r} is not ISO 8601") from exc


def parse_capture_line(line: str | bytes) -> CapturedInference:
    """Read one data-capture line back (ours or SageMaker's)."""
    try:
        record = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CaptureFormatError(f"not JSON: {str(line)[:80]}") from exc
    if not isinstance(record, dict) or record.get("eventVersion") != EVENT_VERSION:
        raise CaptureFormatError(f"not a version-{EVENT_VERSION} capture record: {str(line)[:80]}")
    capture, metadata = record.get("captureData"), record.get("eventMetadata")
    if not isinstance(capture, dict) or not isinstance(metadata, dict):
        raise CaptureFormatError("captureData and eventMetadata must be objects")
    input_body, input_type = _decode(capture.get("endpointInput"), "endpointInput")
    output_body, output_type = _decode(capture.get("endpointOutput"), "endpointOutput")
    event_id = metadata.get("eventId")
    if not isinstance(event_id, str) or not event_id:
        raise CaptureFormatError("eventMetadata.eventId is missing")
    attributes = metadata.get("customAttributes")
    if isinstance(attributes, list):
        attributes = attributes[0] if attributes else None
    return CapturedInference(
        event_id=event_id,
        inference_time=_parse_time(metadata.get("inferenceTime")),
        input_body=input_body,
        input_content_type=input_type,
        output_body=output_body,
        output_content_type=output_type,
        inference_id=metadata.get("inferenceId"),
        custom_attributes=attributes if isinstance(attributes, str) else None,
    )


class CaptureWriter:
    """Puts each record as its own object under SageMaker's capture layout."""

    def __init__(self, s3_client: Any, bucket: str, prefix: str, endpoint: str, variant: str) -> None:
        self._s3 = s3_client
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint = endpoint
        self.variant = variant

    def write(self, record: dict[str, Any], when: datetime) -> str:
        """Store one record; ``when`` is the inference's own time, so a retried write lands on the same key."""
        key = capture_key(self.prefix, self.endpoint, self.variant, when, record["eventMetadata"]["eventId"])
        self._s3.put_object(
            Bucket=self.bucket, Key=key, Body=capture_line(record).encode("utf-8"), ContentType=JSONL_CONTENT_TYPE
        )
        return key
