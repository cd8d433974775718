"""bayroute.capture: SageMaker data-capture records, keys and the reader (pure; S3 is a recording fake)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from bayroute.capture import (
    CaptureFormatError,
    CaptureWriter,
    capture_key,
    capture_line,
    capture_record,
    parse_capture_line,
)

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR fake pixels \xff\x00"
ANSWER = b"[0.015, 0.985]"
ATTRIBUTES = "model_version=v3,labels=bicycle|motorcycle"
WHEN = datetime(2024, 5, 1, 12, 34, 56, 789_000, tzinfo=UTC)


def _record(**overrides: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "input_body": PNG,
        "input_content_type": "image/png",
        "output_body": ANSWER,
        "output_content_type": "application/json",
        "event_id": "evt-0001",
        "inference_time": WHEN,
        "custom_attributes": ATTRIBUTES,
    }
    return capture_record(**{**arguments, **overrides})


def test_a_record_has_sagemakers_shape() -> None:
    assert _record(inference_id="obj-42") == {
        "captureData": {
            "endpointInput": {
                "observedContentType": "image/png",
                "mode": "INPUT",
                "data": base64.b64encode(PNG).decode("ascii"),
                "encoding": "BASE64",
            },
            "endpointOutput": {
                "observedContentType": "application/json",
                "mode": "OUTPUT",
                "data": "[0.015, 0.985]",
                "encoding": "JSON",
            },
        },
        "eventMetadata": {
            "eventId": "evt-0001",
            "inferenceId": "obj-42",
            "inferenceTime": "2024-05-01T12:34:56Z",
            "customAttributes": [ATTRIBUTES],
        },
        "eventVersion": "0",
    }


def test_optional_metadata_is_left_out() -> None:
    assert _record(custom_attributes=None)["eventMetadata"] == {
        "eventId": "evt-0001",
        "inferenceTime": "2024-05-01T12:34:56Z",
    }


@pytest.mark.parametrize(
    ("content_type", "body", "encoding", "data"),
    [
        ("application/json; charset=utf-8", b'{"a": 1}', "JSON", '{"a": 1}'),
        ("text/csv", b"0.1,0.9\n", "CSV", "0.1,0.9\n"),
        ("application/json", b"\xff\xfe not utf-8", "BASE64", base64.b64encode(b"\xff\xfe not utf-8").decode()),
        ("application/octet-stream", b"\x00\x01", "BASE64", "AAE="),
    ],
)
def test_output_encoding_follows_the_content_type(content_type: str, body: bytes, encoding: str, data: str) -> None:
    output = _record(output_body=body, output_content_type=content_type)["captureData"]["endpointOutput"]
    assert (output["encoding"], output["data"], output["observedContentType"]) == (encoding, data, content_type)


def test_inference_time_is_utc_to_the_second() -> None:
    paris = timezone(timedelta(hours=2))
    record = _record(inference_time=datetime(2024, 5, 1, 14, 34, 56, 999_999, tzinfo=paris))
    assert record["eventMetadata"]["inferenceTime"] == "2024-05-01T12:34:56Z"
    with pytest.raises(ValueError, match="timezone-aware"):
        _record(inference_time=datetime(2024, 5, 1, 12, 0))


def test_event_ids_must_be_key_safe() -> None:
    for bad in ("", "a/b", "../up", "with space", "x" * 129):
        with pytest.raises(ValueError, match="event id"):
            _record(event_id=bad)


def test_capture_key_uses_sagemakers_hourly_layout() -> None:
    assert (
        capture_key("capture", "bayroute-endpoint", "AllTraffic", WHEN, "evt-0001")
        == "capture/bayroute-endpoint/AllTraffic/2024/05/01/12/34-56-789-evt-0001.jsonl"
    )
    assert capture_key("", "ep", "v", WHEN, "e") == "ep/v/2024/05/01/12/34-56-789-e.jsonl"
    assert capture_key("/a/b/", "ep", "v", WHEN, "e") == "a/b/ep/v/2024/05/01/12/34-56-789-e.jsonl"
    late = datetime(2024, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1)))  # 23:30 UTC the day before
    assert capture_key("c", "ep", "v", late, "e") == "c/ep/v/2023/12/31/23/30-00-000-e.jsonl"
    with pytest.raises(ValueError, match="event id"):
        capture_key("c", "ep", "v", WHEN, "a/b")


def test_a_line_reads_back_to_the_inference() -> None:
    line = capture_line(_record(inference_id="obj-42"))
    assert line.endswith("\n") and line.count("\n") == 1
    captured = parse_capture_line(line)
    assert captured.event_id == "evt-0001"
    assert captured.inference_id == "obj-42"
    assert captured.inference_time == datetime(2024, 5, 1, 12, 34, 56, tzinfo=UTC)
    assert (captured.input_body, captured.input_content_type) == (PNG, "image/png")
    assert (captured.output_body, captured.output_content_type) == (ANSWER, "application/json")
    assert captured.probabilities == [0.015, 0.985]
    assert captured.labels == ["bicycle", "motorcycle"]
    assert captured.model_version == "v3"


def test_the_verbose_answer_and_bytes_lines_are_read_too() -> None:
    verbose = json.dumps({"labels": ["a", "b"], "probabilities": [0.4, 0.6], "model_version": "v1"}).encode()
    captured = parse_capture_line(capture_line(_record(output_body=verbose, custom_attributes=None)).encode())
    assert captured.probabilities == [0.4, 0.6]
    assert captured.labels is None and captured.model_version is None


def test_a_line_written_by_sagemaker_is_read() -> None:
    # The shape of AWS's documented sample: CSV in and out, time to the second, no custom attributes.
    line = (
        '{"captureData":{"endpointInput":{"observedContentType":"text/csv","mode":"INPUT",'
        '"data":"69,0,153.7\\n","encoding":"CSV"},"endpointOutput":{"observedContentType":'
        '"text/csv; charset=utf-8","mode":"OUTPUT","data":"0.0254181120544672","encoding":"CSV"}},'
        '"eventMetadata":{"eventId":"aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee","inferenceTime":"2022-02-14T17:25:49Z"},'
        '"eventVersion":"0"}'
    )
    captured = parse_capture_line(line)
    assert captured.input_body == b"69,0,153.7\n"
    assert captured.output_body == b"0.0254181120544672"
    assert captured.probabilities is None
    assert captured.inference_time == datetime(2022, 2, 14, 17, 25, 49, tzinfo=UTC)


def _mutated(change: Any) -> str:
    record = _record()
    change(record)
    return json.dumps(record)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "not JSON"),
        (_mutated(lambda r: r.update(eventVersion="1")), "version-0"),
        (_mutated(lambda r: r["captureData"]["endpointInput"].update(data="@@@")), "base64"),
        (_mutated(lambda r: r["captureData"]["endpointOutput"].update(encoding="XML")), "unknown encoding"),
        (_mutated(lambda r: r["captureData"].pop("endpointOutput")), "endpointOutput is missing"),
        (_mutated(lambda r: r["eventMetadata"].pop("eventId")), "eventId"),
        (_mutated(lambda r: r["eventMetadata"].update(inferenceTime="2024-05-01 12:00")), "inferenceTime"),
        (_mutated(lambda r: r["eventMetadata"].update(inferenceTime="yesterdayZ")), "not ISO 8601"),
    ],
)
def test_malformed_lines_are_named(line: str, message: str) -> None:
    with pytest.raises(CaptureFormatError, match=message):
        parse_capture_line(line)


class _RecordingS3:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}
        self.calls: list[dict[str, Any]] = []

    def put_object(self, **request: Any) -> dict[str, Any]:
        self.calls.append(request)
        self.objects[(request["Bucket"], request["Key"])] = request["Body"]
        return {}


def test_the_writer_puts_one_object_per_record_and_repeats_are_idempotent() -> None:
    s3 = _RecordingS3()
    writer = CaptureWriter(s3, "bayroute-capture", "capture", "bayroute-endpoint", "AllTraffic")
    record = _record()
    key = writer.write(record, WHEN)
    assert key == "capture/bayroute-endpoint/AllTraffic/2024/05/01/12/34-56-789-evt-0001.jsonl"
    assert s3.calls[0]["ContentType"] == "application/jsonlines"
    assert parse_capture_line(s3.objects[("bayroute-capture", key)]).event_id == "evt-0001"
    assert writer.write(record, WHEN) == key
    writer.write(_record(event_id="evt-0002"), WHEN)
    assert len(s3.calls) == 3
    assert len(s3.objects) == 2
