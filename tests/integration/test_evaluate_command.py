"""``bayroute evaluate`` end to end on small folders, with the tiny contract model whose answers are known."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image
from typer.main import Typer
from typer.testing import CliRunner

from bayroute.commands.evaluate import evaluate_command
from bayroute.imaging import decode_png_payload
from bayroute.model.metrics import classification_report, threshold_for_precision
from bayroute.model.onnx_model import OnnxClassifier
from tests.fixtures_model import DEFAULT_MODEL, build_tiny_model, tiny_expected
from training.split import DEFAULT_SPLIT_SEED, DEFAULT_VAL_FRACTION, stratified_split

SHARED_TRAIN = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "cifar100-vehicles" / "train"
LABELS = ["bicycle", "motorcycle"]

app = Typer()
app.command()(evaluate_command)
runner = CliRunner()


def _image(red: int, blue: int, size: tuple[int, int] = (32, 32)) -> np.ndarray:
    image = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = red, 90, blue
    image[0, 0] = (red // 2, 0, blue // 2)  # not perfectly flat, so resizing has something to do
    return image


def _dataset(root: Path) -> dict[Path, int]:
    """Reddish images are bicycles to the tiny model, bluish ones motorcycles; two are filed in the other class."""
    files: dict[Path, int] = {}
    rows = [("bicycle", 200, 20), ("bicycle", 150, 100), ("bicycle", 60, 190), ("bicycle", 130, 120)]
    rows += [("motorcycle", 10, 250), ("motorcycle", 80, 160), ("motorcycle", 240, 30)]
    for i, (name, red, blue) in enumerate(rows):
        path = root / name / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_image(red, blue)).save(path)
        files[path] = LABELS.index(name)
    return files


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    return build_tiny_model(tmp_path / "model.onnx")


def _run(*args: str) -> dict[str, object]:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1  # one JSON object, nothing else on stdout
    report: dict[str, object] = json.loads(lines[0])
    return report


def test_report_matches_the_model_answers(tmp_path: Path, tiny_model: Path) -> None:
    files = _dataset(tmp_path / "data")
    report = _run("--model", str(tiny_model), "--data", str(tmp_path / "data"), "--threshold-for-precision", "0.99")
    ordered = sorted(files, key=lambda p: (p.parent.name, p.name))
    probabilities = np.stack([tiny_expected(np.asarray(Image.open(p))) for p in ordered])
    labels = np.array([files[p] for p in ordered])
    expected = classification_report(probabilities, labels, LABELS)
    assert report["n"] == 7 and report["split"] == "all" and report["model_version"] == "tiny-test-1"
    assert report["accuracy"] == pytest.approx(5 / 7)
    assert report["confusion_matrix"] == [[3, 1], [1, 2]]
    assert report["per_class_recall"] == expected["per_class_recall"]
    assert report["thresholds"] == expected["thresholds"]
    assert report["nll"] == pytest.approx(expected["nll"], rel=1e-5)
    assert report["ece"] == pytest.approx(expected["ece"], rel=1e-5)
    found = threshold_for_precision(probabilities, labels, 0.99)
    assert found is not None
    assert report["threshold_for_precision"] == {
        "precision": 0.99,
        "threshold": pytest.approx(found[0], rel=1e-6),
        "automation_rate": pytest.approx(found[1]),
    }


def test_data_with_fewer_classes_maps_by_name(tmp_path: Path, tiny_model: Path) -> None:
    path = tmp_path / "data" / "motorcycle" / "a.png"
    path.parent.mkdir(parents=True)
    Image.fromarray(_image(10, 250)).save(path)
    report = _run("--model", str(tiny_model), "--data", str(tmp_path / "data"))
    assert report["per_class_recall"] == {"bicycle": None, "motorcycle": 1.0}
    assert report["confusion_matrix"] == [[0, 0], [0, 1]]


def test_unknown_class_and_missing_model_are_clear_errors(tmp_path: Path, tiny_model: Path) -> None:
    path = tmp_path / "data" / "truck" / "a.png"
    path.parent.mkdir(parents=True)
    Image.fromarray(_image(10, 250)).save(path)
    result = runner.invoke(app, ["--model", str(tiny_model), "--data", str(tmp_path / "data")])
    assert result.exit_code == 1 and "['truck'] of the data are not among the model's labels" in result.output
    result = runner.invoke(app, ["--model", str(tmp_path / "none.onnx"), "--data", str(tmp_path / "data")])
    assert result.exit_code == 1 and "model file not found" in result.output


def test_images_are_decoded_like_the_service(tmp_path: Path, tiny_model: Path) -> None:
    big = tmp_path / "data" / "bicycle" / "photo.jpg"
    big.parent.mkdir(parents=True)
    Image.fromarray(_image(200, 40, size=(64, 48))).save(big, quality=90)
    (tmp_path / "data" / "bicycle" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    result = runner.invoke(app, ["--model", str(tiny_model), "--data", str(tmp_path / "data")])
    assert result.exit_code == 1 and "broken.png" in result.output  # the service would reject it too
    (tmp_path / "data" / "bicycle" / "broken.png").unlink()
    report = _run("--model", str(tiny_model), "--data", str(tmp_path / "data"))
    served = tiny_expected(decode_png_payload(big.read_bytes(), 32))
    assert report["nll"] == pytest.approx(-np.log(served[0]), rel=1e-5)


def _with_training_metadata(model: Path, val_fraction: float, split_seed: int) -> Path:
    proto = onnx.load(str(model))
    entry = proto.metadata_props.add()
    entry.key, entry.value = (
        "training",
        json.dumps({"config": {"val_fraction": val_fraction, "split_seed": split_seed}}),
    )
    onnx.save(proto, str(model))
    return model


def test_val_split_uses_the_models_recorded_split(tmp_path: Path, tiny_model: Path) -> None:
    files = _dataset(tmp_path / "data")
    labels = np.array([files[p] for p in sorted(files, key=lambda p: (p.parent.name, p.name))])
    report = _run("--model", str(tiny_model), "--data", str(tmp_path / "data"), "--split", "val")
    assert report["n"] == stratified_split(labels, DEFAULT_VAL_FRACTION, DEFAULT_SPLIT_SEED)[1].size
    _with_training_metadata(tiny_model, 0.5, 3)
    report = _run("--model", str(tiny_model), "--data", str(tmp_path / "data"), "--split", "val")
    _, val = stratified_split(labels, 0.5, 3)
    assert report["n"] == val.size == 4
    assert sum(map(sum, report["confusion_matrix"])) == 4  # type: ignore[call-overload]


def test_human_output(tmp_path: Path, tiny_model: Path) -> None:
    _dataset(tmp_path / "data")
    result = runner.invoke(app, ["--model", str(tiny_model), "--data", str(tmp_path / "data")])
    assert result.exit_code == 0
    assert "accuracy 0.7143" in result.output and "threshold 0.95: automation" in result.output


@pytest.mark.skipif(
    not (DEFAULT_MODEL.is_file() and SHARED_TRAIN.is_dir()),
    reason="needs models/default/model.onnx and the shared data",
)
def test_default_model_reproduces_its_recorded_validation_metrics() -> None:
    """Serving decoder + ONNX Runtime + the recorded split give the numbers training measured in PyTorch."""
    report = _run("--data", str(SHARED_TRAIN), "--split", "val")
    assert report["model"] == str(DEFAULT_MODEL)
    recorded = OnnxClassifier(DEFAULT_MODEL).info.json_field("training")["validation"]
    assert report["n"] == recorded["n"]
    assert report["confusion_matrix"] == recorded["confusion_matrix"]
    for threshold, row in recorded["thresholds"].items():
        assert report["thresholds"][threshold] == pytest.approx(row)  # type: ignore[index]
    assert report["nll"] == pytest.approx(recorded["nll"], abs=1e-4)
    assert report["ece"] == pytest.approx(recorded["ece"], abs=1e-4)
