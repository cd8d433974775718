"""``bayroute batch score`` end to end: real images in a folder, or objects under an S3 prefix (moto's server),
decoded in worker processes, scored by the committed model, captured in SageMaker's format."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from bayroute.adapters.aws import reset_clients
from bayroute.capture import parse_capture_line
from bayroute.commands.batch import batch_app
from bayroute.config import load_settings
from bayroute.imaging import prepare_image
from bayroute.model.onnx_model import OnnxClassifier
from bayroute.monitoring.records import read_local_capture
from tests import hostile

SETTINGS = load_settings(env={})
SIZE = SETTINGS.model_input_size


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(batch_app, name="batch")
    return app


def _png(color: tuple[int, int, int], size: int = SIZE) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="PNG")
    return buffer.getvalue()


def _expected(model: OnnxClassifier, data: bytes) -> list[float]:
    pixels = prepare_image(data, size=SIZE, max_pixels=SETTINGS.limits.max_image_pixels).array
    return [float(p) for p in model.predict(pixels)[0]]


@pytest.fixture(scope="module")
def model() -> OnnxClassifier:
    return OnnxClassifier(SETTINGS.model_path)


def test_a_folder_of_real_images_is_scored_in_order_with_captures_the_monitor_reads(
    tmp_path: Path, shared_dataset: Path, model: OnnxClassifier
) -> None:
    photos = tmp_path / "photos"
    for label in ("bicycle", "motorcycle"):
        (photos / label).mkdir(parents=True)
        for path in sorted((shared_dataset / "train" / label).glob("*.png"))[:12]:
            (photos / label / path.name).symlink_to(path)  # read where they are, never copied
    (photos / "notes.png").write_bytes(b"driver notes\n")
    (photos / "cut.jpg").write_bytes(hostile.truncated_jpeg())
    out = tmp_path / "scores.jsonl"

    result = CliRunner().invoke(
        _cli(), ["batch", "score", str(photos), "--out", str(out), "--workers", "2", "--batch-size", "5"]
    )

    assert result.exit_code == 1, result.output  # two files are not images
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [Path(line["image"]).relative_to(photos).parts for line in lines] == sorted(
        p.relative_to(photos).parts for p in photos.rglob("*") if p.is_file()
    )
    errors = {Path(line["image"]).name: line["error"] for line in lines if "error" in line}
    assert errors == {"notes.png": "not_an_image", "cut.jpg": "truncated_image"}
    scored = [line for line in lines if "error" not in line]
    assert len(scored) == 24
    for line in scored:
        assert line["labels"] == model.labels and line["model_version"] == model.model_version
        assert np.allclose(line["probabilities"], _expected(model, Path(line["image"]).read_bytes()), atol=1e-6)
        assert line["class"] == model.labels[int(np.argmax(line["probabilities"]))]
    correct = sum(line["class"] == Path(line["image"]).parent.name for line in scored)
    assert correct >= 0.75 * len(scored)
    assert "24 scored, 2 failed" in result.output

    observations, _ = read_local_capture(
        tmp_path / "capture", input_size=SIZE, max_pixels=SETTINGS.limits.max_image_pixels
    )
    assert len(observations) == 24
    assert {o.model_version for o in observations} == {model.model_version}
    assert sorted(o.confidence or 0.0 for o in observations) == pytest.approx(sorted(s["confidence"] for s in scored))


@pytest.fixture
def moto_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    for name, value in {
        "AWS_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    reset_clients()
    try:
        yield url
    finally:
        reset_clients()
        server.stop()


def test_an_s3_prefix_is_scored_and_captured_to_a_bucket(
    tmp_path: Path, moto_server: str, model: OnnxClassifier
) -> None:
    s3: Any = boto3.client("s3", endpoint_url=moto_server)
    for bucket in ("inbox-b", "capture-b"):
        s3.create_bucket(Bucket=bucket)
    objects = {
        "day1/red.png": _png((250, 10, 10)),
        "day1/blue.png": _png((10, 10, 250)),
        "day1/sub/big.png": _png((90, 200, 90), size=SIZE * 3),
        "day1/empty.png": b"",
        "day1/folder/": b"",
        "day2/other.png": _png((0, 0, 0)),
    }
    for key, body in objects.items():
        s3.put_object(Bucket="inbox-b", Key=key, Body=body)
    out = tmp_path / "scores.jsonl"

    result = CliRunner().invoke(
        _cli(),
        [
            "batch",
            "score",
            "s3://inbox-b/day1/",
            "--out",
            str(out),
            "--workers",
            "2",
            "--capture",
            "s3://capture-b/cap",
        ],
    )

    assert result.exit_code == 1, result.output
    lines = {line["image"]: line for line in map(json.loads, out.read_text().splitlines())}
    assert set(lines) == {
        f"s3://inbox-b/{k}" for k in ("day1/blue.png", "day1/empty.png", "day1/red.png", "day1/sub/big.png")
    }
    assert lines["s3://inbox-b/day1/empty.png"]["error"] == "empty_object"
    for key in ("day1/red.png", "day1/blue.png", "day1/sub/big.png"):
        assert np.allclose(lines[f"s3://inbox-b/{key}"]["probabilities"], _expected(model, objects[key]), atol=1e-6)
    keys = [entry["Key"] for entry in s3.list_objects_v2(Bucket="capture-b")["Contents"]]
    assert keys and all(key.startswith("cap/bayroute-endpoint/AllTraffic/") for key in keys)
    records = [
        parse_capture_line(line)
        for key in keys
        for line in s3.get_object(Bucket="capture-b", Key=key)["Body"].read().decode().splitlines()
    ]
    assert sorted(r.inference_id for r in records) == sorted(
        line["inference_id"] for line in lines.values() if "error" not in line
    )


def test_the_progress_bar_is_redrawn_at_most_once_per_interval_and_ends_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rich.progress import Progress

    photos = tmp_path / "photos"
    photos.mkdir()
    for index in range(12):
        (photos / f"{index:02d}.png").write_bytes(_png((index * 20, 90, 160)))
    drawn: list[float] = []
    real_refresh = Progress.refresh

    def refresh(self: Progress) -> None:
        drawn.append(self.tasks[0].completed)
        real_refresh(self)

    monkeypatch.setattr(Progress, "refresh", refresh)
    clock = iter([0.0, 0.0, 0.05, 0.2, 0.2, 0.25, 0.26, 0.27])  # first draw, skip, draw, skips...
    monkeypatch.setattr("bayroute.commands.batch.monotonic", lambda: next(clock, 0.3))
    out = tmp_path / "scores.jsonl"

    result = CliRunner().invoke(
        _cli(), ["batch", "score", str(photos), "--out", str(out), "--workers", "0", "--batch-size", "2"]
    )

    assert result.exit_code == 0, result.output
    # Drawn when it starts; of the six chunks, after the first and the third (0.2 s after the first draw);
    # and once more when it stops, which shows the whole count.
    assert drawn == [0, 2, 6]
    assert "12/12" in result.output
