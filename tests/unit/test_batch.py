"""Batch scoring logic: listing, the decode fast path, result lines in order, capture records (no model, no network)."""

from __future__ import annotations

import io
import json
import os
import pickle
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from bayroute.batch import (
    MODEL_RUN_IMAGES,
    BatchInputError,
    CaptureFiles,
    DecodeConfig,
    Target,
    _read_file,
    decode_chunk,
    decode_image,
    is_model_size_png,
    list_images,
    load_results,
    score_images,
)
from bayroute.capture import parse_capture_line
from bayroute.config import load_settings
from bayroute.errors import ObjectMissing, TooLarge
from bayroute.imaging import prepare_image
from bayroute.model.onnx_model import ModelFileError
from bayroute.steps.infer import capture_context

SETTINGS = load_settings(env={})
SIZE = SETTINGS.model_input_size
CONFIG = DecodeConfig(size=SIZE, max_pixels=SETTINGS.limits.max_image_pixels, max_object_bytes=1_000_000)
WHEN = datetime(2026, 5, 1, 12, 34, 56, tzinfo=UTC)


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _picture(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


class RedModel:
    """Probability of "bicycle" = the image's mean red level: predictable from the pixels."""

    def __init__(self) -> None:
        self.labels = ["bicycle", "motorcycle"]
        self.model_version = "red-1"
        self.batches: list[int] = []

    def predict(self, images: np.ndarray) -> np.ndarray:
        self.batches.append(len(images))
        red = images[..., 0].reshape(len(images), -1).mean(axis=1) / 255.0
        return np.stack([red, 1.0 - red], axis=1).astype(np.float32)


def test_targets_parse_folders_and_bucket_prefixes() -> None:
    assert Target.parse("photos/today") == Target(folder=Path("photos/today"))
    assert Target.parse("s3://inbox/2026/05") == Target(bucket="inbox", prefix="2026/05")
    assert Target.parse("s3://inbox") == Target(bucket="inbox", prefix="")
    assert str(Target.parse("s3://inbox/a")) == "s3://inbox/a"
    with pytest.raises(BatchInputError, match="no bucket"):
        Target.parse("s3:///prefix")


def test_folders_are_listed_recursively_in_order_without_hidden_files_or_the_outputs(tmp_path: Path) -> None:
    names = ("b.png", "a.jpg", "sub/c.png", ".partial.png", ".hidden/d.png", "capture/x.jsonl", "out.jsonl")
    for name in (*names, "sub/out.jsonl", "sub/capture/y.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    expected = ["a.jpg", "b.png", "sub/c.png", "sub/capture/y.png", "sub/out.jsonl"]  # same names, other folder
    items = list_images(Target(folder=tmp_path), exclude=[tmp_path / "out.jsonl", tmp_path / "capture"])
    assert [Path(item.name).relative_to(tmp_path).as_posix() for item in items] == expected
    assert [item.index for item in items] == list(range(len(expected)))
    assert all(Path(item.location).is_file() for item in items)
    # The outputs are recognised by where they are, however they are named.
    (tmp_path / "link").symlink_to(tmp_path / "sub")
    items = list_images(Target(folder=tmp_path / "link"), exclude=[tmp_path / "sub" / "out.jsonl"])
    assert [Path(item.name).name for item in items] == ["c.png", "y.png"]
    with pytest.raises(BatchInputError, match="not a folder"):
        list_images(Target(folder=tmp_path / "missing"))


def test_only_a_png_at_the_model_size_takes_the_fast_path() -> None:
    assert is_model_size_png(_encode(_picture(SIZE, SIZE), "PNG"), SIZE)
    assert not is_model_size_png(_encode(_picture(SIZE * 2, SIZE), "PNG"), SIZE)
    assert not is_model_size_png(_encode(_picture(SIZE, SIZE), "JPEG"), SIZE)
    assert not is_model_size_png(b"\x89PNG", SIZE)


@pytest.mark.parametrize(
    ("image", "fmt"),
    [
        (_picture(SIZE, SIZE), "PNG"),
        (Image.new("RGBA", (SIZE, SIZE), (200, 10, 10, 128)), "PNG"),  # transparency: composited on white
        (Image.new("L", (SIZE, SIZE), 90), "PNG"),
        (_picture(SIZE * 3, SIZE * 2), "PNG"),
        (_picture(SIZE * 4, SIZE * 4), "JPEG"),
    ],
    ids=["rgb-model-size", "rgba-model-size", "gray-model-size", "bigger-png", "jpeg"],
)
def test_decoding_matches_the_workflow_and_the_captured_png_decodes_to_the_scored_pixels(
    image: Image.Image, fmt: str
) -> None:
    data = _encode(image, fmt)
    array, png, stats = decode_image(data, CONFIG)
    expected = prepare_image(data, size=SIZE, max_pixels=CONFIG.max_pixels)
    assert np.array_equal(array, expected.array)
    assert stats == expected.stats
    assert np.array_equal(prepare_image(png, size=SIZE, max_pixels=CONFIG.max_pixels).array, array)
    if is_model_size_png(data, SIZE):
        assert png is data  # not re-encoded


def test_unreadable_and_bad_images_become_their_reasons(tmp_path: Path) -> None:
    files = {
        "empty.png": b"",
        "notes.png": b"arrived at 9:14\n",
        "big.png": bytes(CONFIG.max_object_bytes + 1),
        "fine.png": _encode(_picture(SIZE, SIZE), "PNG"),
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    chunk = [(i, str(tmp_path / name)) for i, name in enumerate([*files, "gone.png"])]
    decoded = decode_chunk(chunk, CONFIG)
    assert [d.error for d in decoded] == ["empty_object", "not_an_image", "too_large", None, "object_missing"]
    assert all(d.detail for d in decoded if d.error)
    fine = decoded[3]
    assert fine.pixels is not None and len(fine.pixels) == SIZE * SIZE * 3
    assert fine.digest and fine.stats is not None and fine.png == files["fine.png"]


@pytest.mark.parametrize("size", [1, 4095, 4096, 70_000])
def test_a_file_is_read_whole_up_to_the_limit(tmp_path: Path, size: int) -> None:
    path = tmp_path / "image.bin"
    content = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    path.write_bytes(content)
    assert _read_file(str(path), max_bytes=size) == content
    with pytest.raises(TooLarge, match=f"{size} bytes, over the limit of {size - 1}"):
        _read_file(str(path), max_bytes=size - 1)


@pytest.mark.parametrize(("written", "limit", "outcome"), [(10, 100, "whole"), (10, 5, "too_large")])
def test_a_file_that_grows_while_read_is_read_on_and_held_to_the_limit(
    tmp_path: Path, written: int, limit: int, outcome: str
) -> None:
    # A named pipe states a size of 0 and then delivers more: as a file that grows after it was measured.
    pipe = tmp_path / "growing"
    os.mkfifo(pipe)

    def write() -> None:
        with open(pipe, "wb") as file:
            file.write(bytes(range(written)))

    writer = threading.Thread(target=write)
    writer.start()
    try:
        if outcome == "whole":
            assert _read_file(str(pipe), max_bytes=limit) == bytes(range(written))
        else:
            with pytest.raises(TooLarge) as error:
                _read_file(str(pipe), max_bytes=limit)
            assert error.value.reason == "too_large" and error.value.facts["bytes"] == limit + 1
    finally:
        writer.join(timeout=5)


def test_a_device_that_never_ends_is_too_large_not_read_forever() -> None:
    if not Path("/dev/zero").exists():
        pytest.skip("this platform has no /dev/zero")
    with pytest.raises(TooLarge) as error:
        _read_file("/dev/zero", max_bytes=200_000)
    assert error.value.facts["bytes"] > 200_000


def test_a_folder_or_a_missing_file_is_object_missing_by_name(tmp_path: Path) -> None:
    for path in (tmp_path, tmp_path / "gone.png"):
        with pytest.raises(ObjectMissing, match=f"cannot read {path}"):
            _read_file(str(path), max_bytes=100)


def _folder(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    for index, color in enumerate([(250, 0, 0), (0, 0, 250), (128, 0, 0), (10, 0, 0), (200, 0, 0)]):
        (images / f"{index}.png").write_bytes(_encode(Image.new("RGB", (SIZE, SIZE), color), "PNG"))
    (images / "2b-broken.png").write_bytes(b"not an image")
    (images / "big.jpg").write_bytes(_encode(Image.new("RGB", (SIZE * 4, SIZE * 3), (255, 0, 0)), "JPEG"))
    return images


def test_scores_come_out_one_line_per_image_in_input_order_with_errors_in_place(tmp_path: Path) -> None:
    items = list_images(Target(folder=_folder(tmp_path)))
    out = io.StringIO()
    model = RedModel()
    summary = score_images(items, lambda: model, SETTINGS, out, workers=0, batch_size=3, clock=lambda: WHEN)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [Path(line["image"]).name for line in lines] == [Path(item.name).name for item in items]
    broken = next(line for line in lines if line["image"].endswith("2b-broken.png"))
    assert broken == {"image": broken["image"], "error": "not_an_image", "detail": broken["detail"]}
    scored = [line for line in lines if "error" not in line]
    assert len(scored) == summary.scored == 6 and summary.failed == 1 and summary.total == 7
    assert summary.failures_by_reason == {"not_an_image": 1}
    # Chunks of 3 images, each one model batch less its failures: [0, 1, 2], [2b-broken, 3, 4], [big].
    assert model.batches == [3, 2, 1]
    red = next(line for line in lines if line["image"].endswith("/0.png"))
    assert red["class"] == "bicycle" and red["confidence"] == pytest.approx(250 / 255, abs=1e-6)
    assert red["labels"] == model.labels and red["model_version"] == "red-1"
    blue = next(line for line in lines if line["image"].endswith("/1.png"))
    assert blue["class"] == "motorcycle" and blue["probabilities"] == pytest.approx([0.0, 1.0])
    # The same bytes under the same name always get the same inference id.
    again = io.StringIO()
    score_images(items, RedModel, SETTINGS, again, workers=0, batch_size=7)
    assert [json.loads(x).get("inference_id") for x in again.getvalue().splitlines()] == [
        line.get("inference_id") for line in lines
    ]


def test_a_batch_bigger_than_a_model_run_is_run_in_pieces_with_each_image_keeping_its_scores(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    count = 2 * MODEL_RUN_IMAGES + 5
    for index in range(count):  # each image its own red level, so a score in the wrong line shows
        (images / f"{index:03d}.png").write_bytes(_encode(Image.new("RGB", (SIZE, SIZE), (5 * index, 0, 0)), "PNG"))
    items = list_images(Target(folder=images))
    model = RedModel()
    whole, one_by_one = io.StringIO(), io.StringIO()
    capture = CaptureFiles(Target(folder=tmp_path / "capture"), "e", "v")
    summary = score_images(
        items, lambda: model, SETTINGS, whole, workers=0, batch_size=count, capture=capture, clock=lambda: WHEN
    )
    assert model.batches == [MODEL_RUN_IMAGES, MODEL_RUN_IMAGES, 5]
    assert len(summary.capture_files) == 1  # still one batch: one capture file
    score_images(items, RedModel, SETTINGS, one_by_one, workers=0, batch_size=1, clock=lambda: WHEN)
    assert whole.getvalue() == one_by_one.getvalue()
    lines = [json.loads(line) for line in whole.getvalue().splitlines()]
    assert [line["probabilities"][0] for line in lines] == pytest.approx([5 * i / 255 for i in range(count)])


def test_capture_files_hold_one_sagemaker_record_per_scored_image(tmp_path: Path) -> None:
    items = list_images(Target(folder=_folder(tmp_path)))
    capture = CaptureFiles(Target(folder=tmp_path / "capture"), "bayroute-endpoint", "AllTraffic")
    out = io.StringIO()
    summary = score_images(items, RedModel, SETTINGS, out, workers=0, batch_size=4, capture=capture, clock=lambda: WHEN)
    files = sorted((tmp_path / "capture").rglob("*.jsonl"))
    assert [str(f) for f in files] == sorted(summary.capture_files)
    assert len(files) == 2  # 6 scored images in batches of 4
    assert all(f.parent == tmp_path / "capture/bayroute-endpoint/AllTraffic/2026/05/01/12" for f in files)
    assert not list((tmp_path / "capture").rglob(".*"))  # no partial files left behind
    records = [parse_capture_line(line) for f in files for line in f.read_text().splitlines()]
    results = {json.loads(line)["image"]: json.loads(line) for line in out.getvalue().splitlines()}
    assert len(records) == 6
    for record in records:
        key, stats = capture_context(record.custom_attributes)
        assert key is not None and stats is not None
        result = results[key]
        assert record.event_id == record.inference_id == result["inference_id"]
        assert record.probabilities == pytest.approx(result["probabilities"])
        assert record.model_version == "red-1" and record.labels == ["bicycle", "motorcycle"]
        assert record.input_content_type == "image/png" and record.inference_time == WHEN.replace(microsecond=0)
        # The statistics describe the scored pixels, which the captured PNG decodes to.
        captured = prepare_image(record.input_body, size=SIZE, max_pixels=CONFIG.max_pixels).stats
        assert (stats["brightness"], stats["contrast"]) == (captured.brightness, captured.contrast)
    big = next(stats for r in records if (stats := capture_context(r.custom_attributes)[1])["format"] == "jpeg")
    assert (big["original_width"], big["original_height"]) == (SIZE * 4, SIZE * 3)


def test_a_failing_capture_write_stops_the_run_with_its_error(tmp_path: Path) -> None:
    class Broken(CaptureFiles):
        def write(self, records: Any, when: datetime) -> str:
            raise OSError("disk full")

    items = list_images(Target(folder=_folder(tmp_path)))
    capture = Broken(Target(folder=tmp_path / "capture"), "e", "v")
    with pytest.raises(OSError, match="disk full"):
        score_images(items, RedModel, SETTINGS, io.StringIO(), workers=0, batch_size=1, capture=capture)


def test_a_batch_size_below_one_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        score_images([], RedModel, SETTINGS, io.StringIO(), workers=0, batch_size=0)


def test_results_read_back_from_the_out_file(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    with path.open("w", encoding="utf-8") as out:
        score_images(list_images(Target(folder=_folder(tmp_path))), RedModel, SETTINGS, out, workers=0, batch_size=8)
    results = load_results(path)
    assert len(results) == 7 and sum("error" in r for r in results) == 1


def test_an_s3_capture_target_needs_a_client() -> None:
    with pytest.raises(ValueError, match="S3 client"):
        CaptureFiles(Target(bucket="capture"), "e", "v")


def test_worker_processes_give_the_same_lines_and_captures_as_this_process(tmp_path: Path) -> None:
    items = list_images(Target(folder=_folder(tmp_path)))
    results = {}
    for workers in (0, 2):
        capture = CaptureFiles(Target(folder=tmp_path / f"capture-{workers}"), "e", "v")
        out = io.StringIO()
        summary = score_images(
            items, RedModel, SETTINGS, out, workers=workers, batch_size=2, capture=capture, clock=lambda: WHEN
        )
        records = sorted(
            line for f in (tmp_path / f"capture-{workers}").rglob("*.jsonl") for line in f.read_text().splitlines()
        )
        results[workers] = (out.getvalue(), records, summary.scored, summary.failures_by_reason)
        assert len(summary.capture_files) == 4  # chunks [0, 1] [2, 2b-broken] [3, 4] [big]
    assert results[2] == results[0]
    assert results[0][2] == 6 and results[0][3] == {"not_an_image": 1}


def _missing_model() -> RedModel:
    raise ModelFileError("model file not found: /nowhere/model.onnx")


@pytest.mark.parametrize("workers", [0, 2])
def test_a_model_that_cannot_load_stops_the_run_with_its_error(tmp_path: Path, workers: int) -> None:
    items = list_images(Target(folder=_folder(tmp_path)))
    # In worker processes, too: a pool whose initializer raises would restart its workers forever.
    with pytest.raises(ModelFileError, match=r"/nowhere/model\.onnx"):
        score_images(items, _missing_model, SETTINGS, io.StringIO(), workers=workers, batch_size=2)


def test_capture_files_travel_to_worker_processes_without_the_parents_client(tmp_path: Path) -> None:
    parents_client = object()
    to_bucket = CaptureFiles(Target(bucket="capture"), "e", "v", s3_client=parents_client)
    assert pickle.loads(pickle.dumps(to_bucket))._s3 is None
    to_folder = CaptureFiles(Target(folder=tmp_path), "e", "v")
    assert to_folder.in_new_process() is to_folder  # nothing to reconnect


def test_workers_are_spawned_when_this_process_runs_threads(tmp_path: Path) -> None:
    # fork is unsafe beside other threads, so the pool spawns fresh interpreters: everything they are given
    # (the model loader, the capture files, the default clock) must pickle.
    items = list_images(Target(folder=_folder(tmp_path)))
    capture = CaptureFiles(Target(folder=tmp_path / "capture"), "e", "v")
    stop = threading.Event()
    neighbour = threading.Thread(target=stop.wait, daemon=True)
    neighbour.start()
    try:
        out = io.StringIO()
        summary = score_images(items, RedModel, SETTINGS, out, workers=2, batch_size=4, capture=capture)
    finally:
        stop.set()
    assert (summary.scored, summary.failed) == (6, 1)
    assert len(out.getvalue().splitlines()) == 7 and len(summary.capture_files) == 2
