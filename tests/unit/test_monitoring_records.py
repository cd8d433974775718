"""Capture records → observations: bayroute's own records, other endpoints' records, and lines that are neither.

``bayroute_line`` and ``foreign_line`` build capture lines for the other monitoring tests too.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bayroute.capture import capture_line, capture_record
from bayroute.monitoring.records import (
    UNKNOWN_VERSION,
    ReadTally,
    brightness,
    contrast,
    endpoint_and_variant,
    observations_from_line,
    parse_output,
    parse_s3_url,
    read_local_capture,
)
from bayroute.steps.infer import capture_attributes

LABELS = ["bicycle", "motorcycle"]
WHEN = datetime(2026, 11, 28, 16, 21, 30, tzinfo=UTC)
SIZE = 32
PIXELS = 40_000_000


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def gray_image(level: int, size: int = SIZE, noise: int = 20, seed: int = 0) -> np.ndarray:
    """An RGB image around gray ``level`` with some texture (so it has contrast)."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(level, noise, size=(size, size, 3)), 0, 255).astype(np.uint8)


def bayroute_line(
    probabilities: list[float],
    *,
    event_id: str = "inference-1",
    when: datetime = WHEN,
    image: np.ndarray | None = None,
    model_version: str = "v1",
    object_key: str = "yard/bike 1.png",
    original: tuple[int, int] = (640, 480),
) -> str:
    """A capture line exactly as bayroute's infer step writes it (same attributes and encodings)."""
    pixels = gray_image(128) if image is None else image
    stats = {
        "original_width": original[0],
        "original_height": original[1],
        "format": "jpeg",
        "bytes": 12345,
        "brightness": 0.5,
        "contrast": 0.2,
    }
    record = capture_record(
        input_body=png(pixels),
        input_content_type="image/png",
        output_body=json.dumps(probabilities).encode(),
        output_content_type="application/json",
        event_id=event_id,
        inference_time=when,
        custom_attributes=capture_attributes(model_version, LABELS, object_key, stats),
        inference_id=event_id,
    )
    return capture_line(record)


def foreign_line(
    output: str,
    *,
    output_type: str = "application/json",
    encoding: str = "JSON",
    input_body: bytes | None = None,
    event_id: str = "3f1c9a2e-0b6d-4e57-9a58-0c1e2d3f4a5b",
    when: str = "2022-02-14T21:19:08Z",
) -> str:
    """A line as SageMaker's own data capture writes it for another team's endpoint (no custom attributes)."""
    body = jpeg(gray_image(90, size=64)) if input_body is None else input_body
    return (
        json.dumps(
            {
                "captureData": {
                    "endpointInput": {
                        "observedContentType": "image/jpeg",
                        "mode": "INPUT",
                        "data": base64.b64encode(body).decode(),
                        "encoding": "BASE64",
                    },
                    "endpointOutput": {
                        "observedContentType": output_type,
                        "mode": "OUTPUT",
                        "data": output,
                        "encoding": encoding,
                    },
                },
                "eventMetadata": {"eventId": event_id, "inferenceTime": when, "someFutureField": {"x": 1}},
                "eventVersion": "0",
            }
        )
        + "\n"
    )


def read_one(line: str, source: str = "capture/ep/AllTraffic/2026/11/28/16/21-30-000-x.jsonl") -> list:
    return observations_from_line(line, source=source, input_size=SIZE, max_pixels=PIXELS, tally=ReadTally())


@pytest.mark.parametrize(
    ("body", "content_type", "confidences", "labels"),
    [
        (b"[0.03, 0.97]", "application/json", [0.97], [None]),
        (b"[[0.9, 0.1], [0.2, 0.8]]", "application/json", [0.9, 0.8], [None, None]),
        (
            b'{"labels": ["bicycle", "motorcycle"], "probabilities": [0.3, 0.7], "model_version": "v"}',
            "application/json",
            [0.7],
            ["motorcycle"],
        ),
        (b'{"labels": ["cat", "dog", "emu"], "scores": [0.1, 0.2, 0.7]}', "application/json", [0.7], ["emu"]),
        (b'{"predictions": [{"probabilities": [0.6, 0.4]}, [0.1, 0.9]]}', "application/json", [0.6, 0.9], [None, None]),
        (b'{"predicted_label": "truck", "probability": 0.88}', "application/json", [0.88], ["truck"]),
        (b"0.25,0.75\n0.6,0.4\n", "text/csv", [0.75, 0.6], [None, None]),
        (b"[2.0, 0.0]", "application/json", [float(np.exp(2) / (np.exp(2) + 1))], [None]),  # logits
    ],
)
def test_classification_outputs_of_many_endpoints_are_understood(
    body: bytes, content_type: str, confidences: list[float], labels: list[str | None]
) -> None:
    predictions = parse_output(body, content_type)
    assert [p.confidence for p in predictions] == pytest.approx(confidences)
    assert [p.predicted_label for p in predictions] == labels


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"0.42", "text/csv"),  # a regression score
        (b"not json at all", "application/json"),
        (b'{"detections": []}', "application/json"),
        (b"\xff\xfe", "application/octet-stream"),
        (b"[0.5]", "application/json"),
        (b"a,b\n", "text/csv"),
    ],
)
def test_outputs_that_are_not_classifications_give_no_prediction(body: bytes, content_type: str) -> None:
    assert parse_output(body, content_type) == []


def test_bayroute_records_give_version_object_key_original_size_and_the_baselines_input_statistics() -> None:
    image = gray_image(60, seed=4)
    [observation] = read_one(bayroute_line([0.1, 0.9], image=image, object_key="yard/a b.png", original=(4000, 3000)))
    assert observation.model_version == "v1"
    assert observation.event_id == observation.inference_id == "inference-1"
    assert observation.time == WHEN
    assert (observation.predicted, observation.confidence) == ("motorcycle", pytest.approx(0.9))
    assert observation.classes == tuple(LABELS)
    assert observation.object_key == "yard/a b.png"
    assert (observation.original_width, observation.original_height) == (4000, 3000)
    assert observation.original_megapixels == 12.0
    # from the captured PNG, by the baseline's definitions (not the attribute's gray-level brightness)
    assert observation.brightness == pytest.approx(brightness(image))
    assert observation.contrast == pytest.approx(contrast(image))
    assert (observation.endpoint, observation.variant) == ("ep", "AllTraffic")


def test_foreign_records_without_custom_attributes_still_give_confidence_and_input_statistics() -> None:
    [observation] = read_one(foreign_line("[0.2, 0.8]"), source="AllTraffic/2022/02/14/21/f.jsonl")
    assert observation.model_version == UNKNOWN_VERSION
    assert (observation.predicted, observation.confidence) == ("class_1", pytest.approx(0.8))
    assert (observation.original_width, observation.original_height) == (64, 64)
    assert observation.brightness == pytest.approx(90 / 255, abs=0.03)
    assert observation.object_key is None
    assert (observation.endpoint, observation.variant) == (None, None)


def test_a_record_with_a_csv_output_and_a_non_image_input_counts_without_confidence_or_statistics() -> None:
    tally = ReadTally()
    line = foreign_line("0.42", output_type="text/csv", encoding="CSV", input_body=b"1.0,2.0,3.0")
    [observation] = observations_from_line(line, source="f.jsonl", input_size=SIZE, max_pixels=PIXELS, tally=tally)
    assert observation.confidence is None and observation.predicted is None and observation.brightness is None
    assert (tally.records, tally.outputs_unrecognized, tally.inputs_without_stats) == (1, 1, 1)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("this is not json\n", "not_json"),
        ('{"hello": "world"}\n', "not_a_capture_record"),
        ("\n", "blank_line"),
        (foreign_line("[0.5, 0.5]", when="yesterday"), "bad_inference_time"),
        (foreign_line("[0.5, 0.5]").replace('"eventId"', '"eventIdentifier"'), "no_event_id"),
        (foreign_line("[0.5, 0.5]").replace('"BASE64"', '"ROT13"'), "malformed_record"),
    ],
)
def test_lines_that_are_not_capture_records_are_skipped_with_a_reason(line: str, reason: str) -> None:
    tally = ReadTally()
    assert observations_from_line(line, source="f", input_size=SIZE, max_pixels=PIXELS, tally=tally) == []
    assert (tally.lines, tally.records, dict(tally.skipped)) == (1, 0, {reason: 1})


def test_endpoint_and_variant_come_from_sagemakers_hourly_layout() -> None:
    assert endpoint_and_variant("capture/bayroute-endpoint/AllTraffic/2026/11/28/16/x.jsonl") == (
        "bayroute-endpoint",
        "AllTraffic",
    )
    assert endpoint_and_variant("sync/prod-ep/blue/2022/02/14/21/f.jsonl") == ("prod-ep", "blue")
    assert endpoint_and_variant("2022/02/14/21/f.jsonl") == (None, None)
    assert endpoint_and_variant("loose.jsonl") == (None, None)


def test_a_synced_folder_is_read_recursively_with_gzip_and_junk(tmp_path: Path) -> None:
    hour = tmp_path / "other-endpoint" / "AllTraffic" / "2022" / "02" / "14" / "21"
    hour.mkdir(parents=True)
    (hour / "19-08-123-a.jsonl").write_text(foreign_line("[0.1, 0.9]") + "garbage line\n" + foreign_line("[0.7, 0.3]"))
    (hour / "20-00-000-b.jsonl.gz").write_bytes(gzip.compress(foreign_line("[0.4, 0.6]").encode()))
    (hour / "broken.jsonl.gz").write_bytes(b"not gzip")
    (tmp_path / "README.txt").write_text("not a capture file")
    observations, tally = read_local_capture(tmp_path, input_size=SIZE, max_pixels=PIXELS)
    assert sorted(o.confidence or 0.0 for o in observations) == pytest.approx([0.6, 0.7, 0.9])
    assert {o.endpoint for o in observations} == {"other-endpoint"}
    assert (tally.files, tally.lines, tally.records) == (2, 4, 3)
    assert dict(tally.skipped) == {"not_json": 1, "unreadable_file": 1}
    assert tally.to_dict()["skipped_lines"] == 2


def test_a_single_file_reads_too_and_a_missing_path_is_named(tmp_path: Path) -> None:
    path = tmp_path / "one.jsonl"
    path.write_text(bayroute_line([0.5, 0.5]))
    observations, _ = read_local_capture(path, input_size=SIZE, max_pixels=PIXELS)
    assert len(observations) == 1
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_local_capture(tmp_path / "nowhere", input_size=SIZE, max_pixels=PIXELS)


def test_s3_urls_split_into_bucket_and_prefix() -> None:
    assert parse_s3_url("s3://bucket/a/b/") == ("bucket", "a/b/")
    assert parse_s3_url("s3://bucket") == ("bucket", "")
    with pytest.raises(ValueError, match="s3://"):
        parse_s3_url("/local/path")
