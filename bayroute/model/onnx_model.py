"""The served model: one self-contained ONNX file, run by ONNX Runtime (no torch at serving time).

Contract of the file (written by ``training.export``):
- input ``images``: uint8, shape [N, H, W, 3], RGB, already resized to the model's input size;
- output ``probabilities``: float32, shape [N, C], calibrated (temperature applied inside the graph);
- normalisation, layout change and temperature are part of the graph, so callers only resize;
- metadata properties (strings; JSON where structured): ``labels`` (JSON list, index order),
  ``input_size`` (JSON [H, W]), ``temperature``, ``model_version``, ``mean``/``std`` (JSON, informational),
  ``training`` (JSON: data, command, seed, metrics), ``baseline`` (JSON, input/confidence statistics
  for drift monitoring; optional).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
REQUIRED_METADATA = ("labels", "input_size", "model_version")


class ModelFileError(ValueError):
    """The ONNX file is missing, unreadable or breaks the contract above."""


@dataclass(frozen=True)
class ModelInfo:
    labels: list[str]
    input_size: tuple[int, int]
    model_version: str
    temperature: float
    metadata: dict[str, str] = field(repr=False)

    def json_field(self, name: str) -> Any:
        """A structured metadata property (``training``, ``baseline``...), or None when absent."""
        raw = self.metadata.get(name)
        return json.loads(raw) if raw else None


class OnnxClassifier:
    """Loads the model once; ``predict`` is thread-safe (ONNX Runtime sessions are)."""

    def __init__(self, path: Path | str, *, intra_op_threads: int = 0, inter_op_threads: int = 0) -> None:
        path = Path(path)
        if not path.is_file():
            raise ModelFileError(f"model file not found: {path}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = inter_op_threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types; the message names the cause
            raise ModelFileError(f"cannot load {path}: {exc}") from exc
        self.path = path
        self.info = _read_info(self._session, path)

    @property
    def intra_op_threads(self) -> int:
        """The session's intra-op thread count as configured (0: ONNX Runtime's default, one per core)."""
        return int(self._session.get_session_options().intra_op_num_threads)

    @property
    def labels(self) -> list[str]:
        return self.info.labels

    @property
    def input_size(self) -> tuple[int, int]:
        return self.info.input_size

    @property
    def model_version(self) -> str:
        return self.info.model_version

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Probabilities [N, C] for uint8 RGB images [N, H, W, 3] (or one image [H, W, 3])."""
        batch = images[np.newaxis] if images.ndim == 3 else images
        height, width = self.input_size
        if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[1:] != (height, width, 3):
            expected = f"uint8 images of shape [N, {height}, {width}, 3]"
            raise ValueError(f"expected {expected}, got {batch.dtype} {batch.shape}")
        (probabilities,) = self._session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(batch)})
        return np.asarray(probabilities, dtype=np.float32)


def _read_info(session: ort.InferenceSession, path: Path) -> ModelInfo:
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    if INPUT_NAME not in inputs or OUTPUT_NAME not in outputs:
        raise ModelFileError(f"{path}: needs input {INPUT_NAME!r} and output {OUTPUT_NAME!r}")
    if inputs[INPUT_NAME].type != "tensor(uint8)":
        raise ModelFileError(f"{path}: input {INPUT_NAME!r} must be uint8, is {inputs[INPUT_NAME].type}")
    metadata = dict(session.get_modelmeta().custom_metadata_map)
    missing = [name for name in REQUIRED_METADATA if name not in metadata]
    if missing:
        raise ModelFileError(f"{path}: metadata lacks {', '.join(missing)}")
    try:
        labels = [str(label) for label in json.loads(metadata["labels"])]
        height, width = (int(v) for v in json.loads(metadata["input_size"]))
        temperature = float(metadata.get("temperature", "1.0"))
    except (ValueError, TypeError) as exc:
        raise ModelFileError(f"{path}: malformed metadata: {exc}") from exc
    return ModelInfo(
        labels=labels,
        input_size=(height, width),
        model_version=metadata["model_version"],
        temperature=temperature,
        metadata=metadata,
    )
