"""The committed model's drift baseline against real photos: quiet on undisturbed samples of the drift floor's
size, loud on darkened ones (the numbers behind ``MIN_DRIFT_SAMPLES`` and ``PSI_SIGNIFICANT``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bayroute.model.onnx_model import OnnxClassifier
from bayroute.monitoring.monitor import baselines_from_model
from bayroute.monitoring.records import brightness, contrast
from bayroute.monitoring.stats import MIN_DRIFT_SAMPLES, PSI_SIGNIFICANT, Baseline
from training.folder import FolderDataset, load_folder_dataset
from training.split import stratified_split

SAMPLES = 100


@pytest.fixture(scope="module")
def dataset(shared_dataset: Path) -> FolderDataset:
    return load_folder_dataset(shared_dataset / "train")


@pytest.fixture(scope="module")
def photos(dataset: FolderDataset) -> np.ndarray:
    return dataset.images


@pytest.fixture(scope="module")
def labels(dataset: FolderDataset) -> np.ndarray:
    return dataset.labels


@pytest.fixture(scope="module")
def model(default_model: Path) -> OnnxClassifier:
    return OnnxClassifier(default_model)


def features(model: OnnxClassifier, images: np.ndarray) -> dict[str, np.ndarray]:
    """Each image's drift features, measured as the monitor measures captured inputs."""
    return {
        "confidence": model.predict(images).max(axis=1),
        "brightness": np.array([brightness(i) for i in images]),
        "contrast": np.array([contrast(i) for i in images]),
    }


def drift(baseline: Baseline, values: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, float]:
    return baseline.drift(baseline.counts({name: column[rows].tolist() for name, column in values.items()}))


def test_the_committed_model_ships_a_baseline_of_every_drift_feature(model: OnnxClassifier) -> None:
    [(version, baseline)] = baselines_from_model(model.path).items()
    assert version == model.model_version
    assert set(baseline.bins) == {"confidence", "brightness", "contrast"}
    # Every bin holds at least 5% of the baseline. Input statistics spread over many bins; a confident model puts
    # most validation images in its top confidence bin, so confidence keeps fewer (still enough for a PSI).
    minimum_bins = {"confidence": 3, "brightness": 6, "contrast": 6}
    for name, bins in baseline.bins.items():
        assert min(bins.baseline) >= 0.05 * baseline.n
        assert len(bins.baseline) >= minimum_bins[name], (name, bins)


def test_undisturbed_photos_stay_below_significant_drift_at_the_sample_floor(
    photos: np.ndarray, labels: np.ndarray, model: OnnxClassifier
) -> None:
    # Live traffic is photos the model never trained on, like the validation split its baseline comes from. The
    # 800 training photos are not "undisturbed traffic": the model is surer of them (confidence PSI about 0.28
    # on samples of them), which is memory, not drift. Resampling the 200 validation photos gives the sampling
    # noise of a 200-record window.
    config = model.info.json_field("training")["config"]
    _, validation = stratified_split(labels, config["val_fraction"], config["split_seed"])
    [baseline] = baselines_from_model(model.path).values()
    values = features(model, photos)
    rng = np.random.default_rng(20261128)
    largest = [
        max(drift(baseline, values, rng.choice(validation, MIN_DRIFT_SAMPLES, replace=True)).values())
        for _ in range(SAMPLES)
    ]
    assert max(largest) < PSI_SIGNIFICANT, largest


def test_darkened_photos_are_significant_drift(photos: np.ndarray, model: OnnxClassifier) -> None:
    [baseline] = baselines_from_model(model.path).values()
    sample = photos[np.random.default_rng(1).choice(len(photos), MIN_DRIFT_SAMPLES, replace=False)]
    darker = (sample.astype(np.float32) * 0.8).astype(np.uint8)
    values = drift(baseline, features(model, darker), np.arange(len(darker)))
    assert values["brightness"] > PSI_SIGNIFICANT
