"""Train a tiny model on a slice of the real data, export it, and check the ONNX file against PyTorch.

Also checks the committed default model: contract metadata and accuracy on the validation split.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import typer
from typer.testing import CliRunner

from bayroute.commands.train import train_command
from bayroute.model.onnx_model import OnnxClassifier
from training.folder import FolderDataset, load_folder_dataset, write_folder_dataset
from training.split import stratified_split

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def small_data(shared_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 images per class of the real data, written to a temporary folder-per-class tree."""
    dataset = load_folder_dataset(shared_dataset / "train")
    keep = np.concatenate([np.flatnonzero(dataset.labels == c)[:60] for c in range(len(dataset.classes))])
    out = tmp_path_factory.mktemp("small") / "train"
    write_folder_dataset(dataset.images[keep], dataset.labels[keep], dataset.classes, out)
    return out


def test_one_epoch_model_exports_and_onnx_runtime_matches_torch(small_data: Path, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from training.export import ServingGraph
    from training.pipeline import train_and_export
    from training.train import TrainConfig

    config = TrainConfig(epochs=1, width=4, batch_size=32, seed=3, ensemble=1, tta_flip=True)
    result = train_and_export(small_data, tmp_path / "tiny", config, command="pytest", device="cpu")

    classifier = OnnxClassifier(result.model_path)
    assert classifier.labels == ["bicycle", "motorcycle"]
    assert classifier.input_size == (32, 32)
    assert classifier.model_version.startswith("vehicles-")
    assert classifier.info.temperature == pytest.approx(result.run.temperature)
    training = classifier.info.json_field("training")
    assert training["seed"] == 3 and training["epochs"] == 1 and training["command"] == "pytest"
    assert set(training["validation"]) >= {"accuracy", "nll", "ece", "thresholds", "precision_0.99"}
    baseline = classifier.info.json_field("baseline")
    assert baseline["n"] == result.run.val_indices.size
    assert not list(result.model_path.parent.glob("*.data")), "weights must stay inside the .onnx file"
    assert "pytest" in result.card_path.read_text(encoding="utf-8")

    images = load_folder_dataset(small_data).images[result.run.val_indices]
    graph = ServingGraph(result.run.model, result.run.mean, result.run.std, result.run.temperature, True).eval()
    with torch.no_grad():
        expected = graph(torch.from_numpy(images)).numpy()
    probabilities = classifier.predict(images)
    assert np.abs(probabilities - expected).max() < 1e-4
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    # The validation probabilities stored for the report are what the served file computes.
    assert np.abs(probabilities - result.run.val_probabilities).max() < 1e-4
    assert_normalises_channel_planes(result.model_path)


def test_seed_ensemble_exports_to_one_onnx_file_that_matches_torch(small_data: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from training.model import LogitMean
    from training.pipeline import train_and_export
    from training.train import TrainConfig

    config = TrainConfig(epochs=1, width=4, batch_size=32, seed=3, ensemble=2)
    result = train_and_export(small_data, tmp_path / "pair", config, command="pytest", device="cpu")

    assert isinstance(result.run.model, LogitMean)
    assert sorted(p.name for p in result.model_path.parent.iterdir()) == ["MODEL_CARD.md", "model.onnx"]
    # The members run as one network: every convolution after the first is grouped by member.
    groups = [
        attribute.i
        for node in onnx.load(str(result.model_path)).graph.node
        if node.op_type == "Conv"
        for attribute in node.attribute
        if attribute.name == "group"
    ]
    assert groups.count(2) == 7 and not any(name.startswith("network.members") for name in _initializers(result))
    classifier = OnnxClassifier(result.model_path)
    training = classifier.info.json_field("training")
    assert training["ensemble"] == training["config"]["ensemble"] == 2
    assert len(training["member_val_accuracy"]) == 2
    assert classifier.info.temperature == pytest.approx(result.run.temperature)
    assert "2 members (seeds 3 to 4)" in result.card_path.read_text(encoding="utf-8")
    # One temperature over the averaged logits, flip TTA kept: the file reproduces the reported probabilities.
    images = load_folder_dataset(small_data).images[result.run.val_indices]
    assert np.abs(classifier.predict(images) - result.run.val_probabilities).max() < 1e-4


def assert_normalises_channel_planes(model_path: Path) -> None:
    """The graph transposes the uint8 input first and normalises [1, 3, 1, 1] planes (see ServingGraph: speed)."""
    graph = onnx.load(str(model_path)).graph
    head = graph.node[:4]
    assert [node.op_type for node in head] == ["Transpose", "Cast", "Sub", "Div"]
    assert list(head[0].input) == ["images"]
    shapes = {initializer.name: list(initializer.dims) for initializer in graph.initializer}
    assert shapes[head[2].input[1]] == shapes[head[3].input[1]] == [1, 3, 1, 1]


def _initializers(result: Any) -> list[str]:
    return [initializer.name for initializer in onnx.load(str(result.model_path)).graph.initializer]


def test_train_command_rejects_an_unknown_device(small_data: Path, tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(train_command)
    outcome = CliRunner().invoke(app, ["--data", str(small_data), "--out", str(tmp_path), "--device", "tpu"])
    assert outcome.exit_code != 0
    assert "--device" in outcome.output
    assert not (tmp_path / "model.onnx").exists()


def test_train_command_rejects_an_empty_ensemble(small_data: Path, tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(train_command)
    outcome = CliRunner().invoke(app, ["--data", str(small_data), "--out", str(tmp_path), "--ensemble", "0"])
    assert outcome.exit_code != 0
    assert "--ensemble" in outcome.output
    assert not (tmp_path / "model.onnx").exists()


def test_committed_default_model_classifies_the_validation_split(default_model: Path, shared_dataset: Path) -> None:
    classifier = OnnxClassifier(default_model)
    assert classifier.labels == ["bicycle", "motorcycle"]
    assert classifier.input_size == (32, 32)
    assert default_model.stat().st_size < 5_000_000
    training = classifier.info.json_field("training")
    dataset = load_folder_dataset(shared_dataset / "train")
    assert dataset.classes == classifier.labels
    _, val_idx = stratified_split(dataset.labels, training["config"]["val_fraction"], training["config"]["split_seed"])
    probabilities = classifier.predict(dataset.images[val_idx])
    accuracy = float((probabilities.argmax(axis=1) == dataset.labels[val_idx]).mean())
    assert accuracy >= 0.85
    # The card's numbers are the file's numbers on the same split.
    assert accuracy == pytest.approx(training["validation"]["accuracy"])
    assert json.loads(classifier.info.metadata["mean"]) == pytest.approx(training_mean(dataset, val_idx), rel=1e-6)
    assert_normalises_channel_planes(default_model)


def training_mean(dataset: FolderDataset, val_idx: np.ndarray) -> list[float]:
    """Per-channel mean of the training part, which the graph's normalisation must use."""
    train_mask = np.ones(len(dataset), dtype=bool)
    train_mask[val_idx] = False
    return [float(v) for v in dataset.images[train_mask].reshape(-1, 3).mean(axis=0)]
