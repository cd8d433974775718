"""The script-mode entry point as the PyTorch container runs it: from the extracted source tarball."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bayroute.model.onnx_model import OnnxClassifier
from training.sagemaker import SCRIPT_METRICS, source_tarball


def _data(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for class_index, name in enumerate(["bicycle", "motorcycle"]):
        (root / name).mkdir(parents=True)
        for i in range(12):
            pixels = rng.integers(0, 120, size=(32, 32, 3), dtype=np.uint8)
            pixels[..., 0 if class_index == 0 else 2] += 120  # learnable: red bicycles, blue motorcycles
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


@pytest.mark.slow
def test_entry_trains_from_the_tarball_with_sagemaker_environment(tmp_path: Path) -> None:
    code = tmp_path / "opt-ml-code"
    with tarfile.open(fileobj=io.BytesIO(source_tarball()), mode="r:gz") as archive:
        archive.extractall(code, filter="data")
    env = {
        **os.environ,
        "SM_CHANNEL_TRAIN": str(_data(tmp_path / "train")),
        "SM_MODEL_DIR": str(tmp_path / "model"),
        "TRAINING_JOB_NAME": "bayroute-script-test",
        "PYTHONPATH": "",  # imports must come from the tarball itself, as in the container
        "OMP_NUM_THREADS": "1",
    }
    # The container's toolkit runs the program with the hyperparameters as --name value arguments.
    completed = subprocess.run(
        [sys.executable, "sagemaker_entry.py", "--epochs", "1", "--seed", "3", "--device", "cpu"],
        cwd=code,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    model = OnnxClassifier(tmp_path / "model" / "model.onnx")
    assert model.labels == ["bicycle", "motorcycle"]
    training = model.info.json_field("training")
    assert training["seed"] == 3 and "bayroute-script-test" in training["command"]
    assert (tmp_path / "model" / "MODEL_CARD.md").is_file()
    for metric in SCRIPT_METRICS:  # every metric the job definition scrapes appears in the log
        assert re.search(metric["Regex"], completed.stdout), metric


def test_entry_rejects_unknown_hyperparameters() -> None:
    from training.sagemaker_entry import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--learning-rate", "0.1"])
    args = parse_args(["--epochs", "4"])
    assert (args.epochs, args.seed, args.device) == (4, 0, "auto")
