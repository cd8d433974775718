"""``bayroute predict``: real images and bad files through the command, as a user runs it."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from bayroute.commands.predict import predict_command
from bayroute.model.onnx_model import OnnxClassifier
from tests.fixtures_model import model_fixture, tiny_model_fixture  # noqa: F401  (pytest fixtures)
from tests.hostile import encode, hostile_case

app = typer.Typer()
app.command()(predict_command)


@pytest.fixture(scope="module")
def real_images(shared_dataset: Path) -> list[Path]:
    return [sorted((shared_dataset / "train" / label).glob("*.png"))[0] for label in ("bicycle", "motorcycle")]


def _json_lines(output: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in output.splitlines() if line.strip()]


def test_json_lines_for_real_images(real_images: list[Path], model_path: Path) -> None:
    result = CliRunner().invoke(app, [*map(str, real_images), "--model", str(model_path), "--json"])
    assert result.exit_code == 0, result.output
    classifier = OnnxClassifier(model_path)
    lines = _json_lines(result.stdout)
    assert [line["image"] for line in lines] == [str(path) for path in real_images]
    for line, path in zip(lines, real_images, strict=True):
        expected = classifier.predict(np.asarray(Image.open(path).convert("RGB")))[0]
        assert np.allclose(line["probabilities"], expected, atol=1e-6)  # type: ignore[arg-type]
        assert line["labels"] == classifier.labels
        assert line["class"] == classifier.labels[int(np.argmax(expected))]
        assert line["confidence"] == pytest.approx(float(expected.max()))
        assert line["model_version"] == classifier.model_version


def test_bad_files_get_their_reason_and_exit_code_1(
    tmp_path: Path,
    real_images: list[Path],
    tiny_model_path: Path,
) -> None:
    bad = {
        "empty.png": hostile_case("empty").data,
        "letter.png": hostile_case("text_named_png").data,
        "cut.jpg": hostile_case("truncated_jpeg").data,
    }
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
    paths = [str(real_images[0]), *(str(tmp_path / name) for name in bad), str(tmp_path / "missing.png")]
    result = CliRunner().invoke(app, [*paths, "--model", str(tiny_model_path), "--json"])
    assert result.exit_code == 1
    lines = _json_lines(result.stdout)
    assert [line.get("error") for line in lines] == [
        None,
        "empty_object",
        "not_an_image",
        "truncated_image",
        "object_missing",
    ]
    assert lines[0]["class"] in ("bicycle", "motorcycle")
    assert all(line["detail"] for line in lines[1:])


def test_the_object_size_limit_applies(
    tmp_path: Path,
    tiny_model_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BAYROUTE_MAX_OBJECT_BYTES", "1000")
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(encode(Image.effect_noise((64, 64), 60).convert("RGB"), "JPEG", quality=95))
    assert photo.stat().st_size > 1000
    result = CliRunner().invoke(app, [str(photo), "--model", str(tiny_model_path), "--json"])
    assert result.exit_code == 1
    assert _json_lines(result.stdout)[0]["error"] == "too_large"


def test_the_table_names_classes_and_errors(tmp_path: Path, tiny_model_path: Path) -> None:
    red = tmp_path / "red.png"
    red.write_bytes(encode(Image.new("RGB", (48, 48), (240, 10, 10)), "PNG"))
    text = tmp_path / "notes.png"
    text.write_bytes(b"not a picture")
    result = CliRunner().invoke(app, [str(red), str(text), "--model", str(tiny_model_path)])
    assert result.exit_code == 1
    assert "bicycle" in result.stdout  # the tiny model calls red "bicycle"
    assert "not_an_image" in result.stdout


def test_a_missing_model_is_exit_code_2(tmp_path: Path) -> None:
    image = tmp_path / "x.png"
    image.write_bytes(encode(Image.new("RGB", (32, 32)), "PNG"))
    result = CliRunner().invoke(app, [str(image), "--model", str(tmp_path / "none.onnx")])
    assert result.exit_code == 2
    assert "model file not found" in result.output


def test_exif_orientation_and_format_by_content(tmp_path: Path, tiny_model_path: Path) -> None:
    # A JPEG named .png: decoded by its content, like every upload.
    misnamed = tmp_path / "actually-a-jpeg.png"
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 10, 240)).save(buffer, "JPEG")
    misnamed.write_bytes(buffer.getvalue())
    result = CliRunner().invoke(app, [str(misnamed), "--model", str(tiny_model_path), "--json"])
    assert result.exit_code == 0, result.output
    assert _json_lines(result.stdout)[0]["class"] == "motorcycle"  # the tiny model calls blue "motorcycle"
