"""The batch benchmark measures the command and its limit in a fresh process, on the folder it is given."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bayroute.config import load_settings

pytestmark = pytest.mark.slow

IMAGES = 24


def test_the_command_and_its_limit_are_measured_in_a_process_of_their_own(
    tmp_path: Path, default_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bench import batch_scoring

    settings = load_settings(env={})
    size = settings.model_input_size
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(7)
    for index in range(IMAGES):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels, "RGB").save(folder / f"{index:02d}.png")

    def not_here(*args: object) -> None:
        raise AssertionError("measured in the suite's own process")

    monkeypatch.setattr(batch_scoring, "_measure_here", not_here)
    [figure], extra = batch_scoring.measure(folder, default_model, settings, workers=2, repeats=2)

    assert extra == {}
    assert figure.key == "batch_score_ratio_to_limit" and figure.repeats == 2
    assert 0 < figure.spread["min"] <= figure.value <= figure.spread["max"]
    details = figure.details
    assert details["images"] == IMAGES and details["workers"] == 2
    assert details["command_images_per_s"] > 0 and details["limit_images_per_s"] > 0
    assert details["decode_s"] > 0 and details["inference_s"] > 0
    larger = details["larger_folder"]
    assert larger["images"] == IMAGES * batch_scoring.LARGER_COPIES
    assert larger["ratio"] > 0 and larger["repeats"] == batch_scoring.LARGER_REPEATS
