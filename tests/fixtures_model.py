"""A tiny ONNX model that follows the serving contract (bayroute.model.onnx_model), built in milliseconds.

It lets endpoint tests run without the trained model: input ``images`` uint8 [N, 32, 32, 3], output
``probabilities`` float32 [N, 2], metadata ``labels``/``input_size``/``model_version``/``temperature``.
Its rule is visible: reddish images lean "bicycle", bluish ones "motorcycle" (softmax of the mean
red-minus-blue difference), so tests can predict its answer.

Import the fixtures into a test module: ``from tests.fixtures_model import model_fixture, tiny_model_fixture``;
tests then ask for ``model_path`` (the committed model when present) or ``tiny_model_path``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "models" / "default" / "model.onnx"
TINY_LABELS = ("bicycle", "motorcycle")
TINY_VERSION = "tiny-test-1"
TINY_SIZE = 32
# Mean channel values in 0..1 -> logits: bicycle = 4 * (r - b), motorcycle = 4 * (b - r).
_WEIGHTS = np.array([[4.0, -4.0], [0.0, 0.0], [-4.0, 4.0]], dtype=np.float32)


def build_tiny_model(path: Path, *, model_version: str = TINY_VERSION) -> Path:
    graph = helper.make_graph(
        nodes=[
            helper.make_node("Cast", ["images"], ["pixels"], to=TensorProto.FLOAT),
            helper.make_node("Div", ["pixels", "scale"], ["unit"]),
            helper.make_node("ReduceMean", ["unit"], ["channel_means"], axes=[1, 2], keepdims=0),
            helper.make_node("MatMul", ["channel_means", "weights"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        name="tiny_red_blue",
        inputs=[helper.make_tensor_value_info("images", TensorProto.UINT8, ["N", TINY_SIZE, TINY_SIZE, 3])],
        outputs=[helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", len(TINY_LABELS)])],
        initializer=[
            numpy_helper.from_array(np.array(255.0, dtype=np.float32), "scale"),
            numpy_helper.from_array(_WEIGHTS, "weights"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    helper.set_model_props(
        model,
        {
            "labels": json.dumps(list(TINY_LABELS)),
            "input_size": json.dumps([TINY_SIZE, TINY_SIZE]),
            "model_version": model_version,
            "temperature": "1.0",
        },
    )
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def tiny_expected(image: np.ndarray) -> np.ndarray:
    """What the tiny model answers for one uint8 [32, 32, 3] image."""
    logits = (image.astype(np.float32) / 255.0).mean(axis=(0, 1)) @ _WEIGHTS
    exp = np.exp(logits - logits.max())
    return exp / exp.sum()


@pytest.fixture(scope="session", name="tiny_model_path")
def tiny_model_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model") / "model.onnx")


@pytest.fixture(scope="session", name="model_path")
def model_fixture(tiny_model_path: Path) -> Path:
    """The committed default model when present, otherwise the tiny contract model."""
    return DEFAULT_MODEL if DEFAULT_MODEL.is_file() else tiny_model_path
