"""The benchmark's PyTorch side computes what the served ONNX file computes: same weights, so the speed ratio
compares like with like (the exporter fuses BatchNorm into convolutions, which the bench must undo)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bayroute.model.onnx_model import OnnxClassifier


def test_the_torch_graph_of_the_committed_model_matches_onnx_runtime(default_model: Path) -> None:
    torch = pytest.importorskip("torch")
    from bench.model import torch_graph

    images = np.random.default_rng(7).integers(0, 256, size=(16, 32, 32, 3), dtype=np.uint8)
    with torch.no_grad():
        eager = torch_graph(default_model)(torch.from_numpy(images)).numpy()
    assert np.abs(eager - OnnxClassifier(default_model).predict(images)).max() < 1e-5
