"""Export a training run to the served ONNX file (see ``bayroute.model.onnx_model`` for the contract).

The graph takes uint8 NHWC RGB images and does everything else itself: float conversion, normalisation,
layout change, the network (for a seed ensemble, the mean of its members' logits, computed by one network
with grouped convolutions: ``training.model.fuse_members``), optional left-right flip averaging of the
logits, temperature and softmax.
After writing, ONNX Runtime's output is compared with PyTorch's and a mismatch fails the export.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from training.baseline import drift_baseline
from training.folder import FolderDataset
from training.model import fuse_members
from training.train import TrainingRun

OPSET = 18
PARITY_TOLERANCE = 1e-4


class ExportError(RuntimeError):
    """The exported graph is broken or disagrees with PyTorch."""


class ServingGraph(nn.Module):
    """uint8 [N, H, W, 3] -> calibrated probabilities [N, C]."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self, network: nn.Module, mean: list[float], std: list[float], temperature: float, tta_flip: bool
    ) -> None:
        super().__init__()
        self.network = network
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.inverse_temperature = 1.0 / temperature
        self.tta_flip = tta_flip

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # Layout first, while a pixel is 3 bytes, then normalise whole channel planes. ONNX Runtime broadcasts a
        # per-channel constant over NHWC's 3-wide last axis slowly: normalising there took 12-18% of the model's
        # time, for single images and batches alike. The result is the same to the bit.
        x = (images.permute(0, 3, 1, 2).float() - self.mean) / self.std
        logits = self.network(x)
        if self.tta_flip:
            logits = (logits + self.network(x.flip(3))) * 0.5
        return torch.softmax(logits * self.inverse_temperature, dim=1)


def weights_digest(network: nn.Module) -> str:
    """sha256 over the state dict (names, then float32 bytes), so equal weights give equal versions."""
    digest = hashlib.sha256()
    for name, tensor in network.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def export_run(
    run: TrainingRun, dataset: FolderDataset, out_path: Path, *, command: str, data_name: str
) -> dict[str, str]:
    """Write ``out_path`` (a single .onnx file) and return the metadata it carries."""
    network = run.model.cpu().eval()
    graph = ServingGraph(fuse_members(network), run.mean, run.std, run.temperature, run.config.tta_flip).eval()
    height, width = dataset.images.shape[1:3]
    val_images = dataset.images[run.val_indices]
    training_info = {"data": data_name, "command": command, "seed": run.config.seed, "epochs": run.config.epochs}
    training_info.update(run.summary())
    metadata = {
        "labels": json.dumps(run.classes),
        "input_size": json.dumps([int(height), int(width)]),
        "model_version": f"vehicles-{dt.datetime.now(dt.UTC):%Y%m%d}-{weights_digest(network)[:8]}",
        "temperature": repr(float(run.temperature)),
        "mean": json.dumps(run.mean),
        "std": json.dumps(run.std),
        "tta": "flip" if run.config.tta_flip else "none",
        "training": json.dumps(training_info),
        "baseline": json.dumps(
            drift_baseline(val_images, run.val_probabilities, dataset.labels[run.val_indices], run.classes)
        ),
    }
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    _write_onnx(graph, (int(height), int(width)), metadata, out_path)
    check_parity(graph, out_path, val_images)
    return metadata


def _write_onnx(graph: ServingGraph, size: tuple[int, int], metadata: dict[str, str], out_path: Path) -> None:
    example = torch.zeros((2, *size, 3), dtype=torch.uint8)
    with tempfile.TemporaryDirectory() as scratch, warnings.catch_warnings():
        # torch's exporter trips a pytree deprecation of its own; nothing the caller can act on.
        warnings.simplefilter("ignore", FutureWarning)
        scratch_file = Path(scratch) / "model.onnx"
        program = torch.onnx.export(
            graph,
            (example,),
            dynamo=True,
            verbose=False,
            input_names=["images"],
            output_names=["probabilities"],
            opset_version=OPSET,
            dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1)}},
            external_data=False,
        )
        if program is None:
            raise ExportError("torch.onnx.export returned no program")
        program.save(str(scratch_file), external_data=False)
        model = onnx.load(str(scratch_file))
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model, full_check=True)
    onnx.save_model(model, str(out_path), save_as_external_data=False)


def check_parity(graph: ServingGraph, onnx_path: Path, images: np.ndarray) -> float:
    """Max |ORT - torch| over ``images`` (uint8 NHWC); raises ExportError above PARITY_TOLERANCE."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (ort_probabilities,) = session.run(["probabilities"], {"images": np.ascontiguousarray(images)})
    with torch.no_grad():
        torch_probabilities = graph(torch.from_numpy(np.ascontiguousarray(images))).numpy()
    difference = float(np.abs(ort_probabilities - torch_probabilities).max())
    if not difference < PARITY_TOLERANCE:
        raise ExportError(f"ONNX Runtime and PyTorch disagree on {onnx_path}: max abs diff {difference:.2e}")
    return difference
