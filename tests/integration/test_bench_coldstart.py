"""The cold-start benchmark walks one image through every function, each in a fresh process, and each first
answer is the one the workflow would pass on (ingest starts the execution, threshold routes the image)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bayroute.config import load_settings
from bayroute.model.onnx_model import OnnxClassifier
from training.folder import load_folder_dataset

pytestmark = pytest.mark.slow


def test_every_function_cold_starts_to_the_answer_the_workflow_passes_on(
    shared_dataset: Path, default_model: Path
) -> None:
    from bench import coldstart

    settings = load_settings(env={})
    dataset = load_folder_dataset(shared_dataset / "train")
    confidence = OnnxClassifier(default_model).predict(dataset.images[:20]).max(axis=1)
    routable = next(index for index, value in enumerate(confidence) if value >= settings.threshold)
    png = dataset.paths[routable].read_bytes()

    [figure], extra = coldstart.measure(settings, png, repeats=1)

    functions = figure.details["functions_median_ms"]
    assert list(functions) == ["ingest", "serialize", "infer", "threshold", "monitor"]
    for times in functions.values():
        parts = times["interpreter_ms"] + times["import_ms"] + times["first_invoke_ms"]
        assert 0 < times["import_ms"] < times["total_ms"]
        assert parts == pytest.approx(times["total_ms"], abs=0.5)
    assert figure.key == "cold_start_infer_ms"
    assert figure.value == pytest.approx(functions["infer"]["total_ms"], abs=0.1)
    floor = figure.details["floor_median_ms"]
    with_client = figure.details["botocore_client_floor_median_ms"]
    for times in (floor, with_client):
        parts = times["interpreter_ms"] + times["import_ms"] + times["s3_client_ms"] + times["model_load_ms"]
        assert parts == pytest.approx(times["total_ms"], abs=0.5)
    assert floor["s3_client_ms"] == 0 < min(with_client.values())  # the floor creates no client
    assert min(value for name, value in floor.items() if name != "s3_client_ms") > 0
    assert figure.details["infer_over_floor_ms"] == pytest.approx(figure.value - floor["total_ms"], abs=0.2)
    assert extra["warm_infer_lambda_ms"] > 0
