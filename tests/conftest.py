"""Shared fixtures: where the real data and the committed model are."""

from __future__ import annotations

from pathlib import Path

import pytest

from bayroute.config import REPO_ROOT

SHARED_DATASET = REPO_ROOT.parent / "shared" / "datasets" / "cifar100-vehicles"
DEFAULT_MODEL = REPO_ROOT / "models" / "default" / "model.onnx"


@pytest.fixture(scope="session")
def shared_dataset() -> Path:
    """The real CIFAR-100 bicycle/motorcycle training images, read where they are (never copied)."""
    if not (SHARED_DATASET / "train").is_dir():
        pytest.skip(f"the shared dataset is not beside this checkout: {SHARED_DATASET}")
    return SHARED_DATASET


@pytest.fixture(scope="session")
def default_model() -> Path:
    assert DEFAULT_MODEL.is_file(), f"the committed default model is missing: {DEFAULT_MODEL}"
    return DEFAULT_MODEL
