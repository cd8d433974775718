"""One call from a data folder to a served model directory: ``model.onnx`` plus ``MODEL_CARD.md``."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from training.export import export_run
from training.folder import load_folder_dataset
from training.model_card import render_model_card
from training.train import EpochStats, TrainConfig, TrainingRun, train

MODEL_FILE = "model.onnx"
CARD_FILE = "MODEL_CARD.md"


@dataclass(frozen=True)
class TrainedModel:
    run: TrainingRun
    model_path: Path
    card_path: Path
    metadata: dict[str, str]
    total_time_s: float


def train_and_export(
    data: Path,
    out_dir: Path,
    config: TrainConfig,
    *,
    command: str,
    device: str = "auto",
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> TrainedModel:
    start = time.perf_counter()
    dataset = load_folder_dataset(Path(data))
    run = train(dataset, config, device=device, on_epoch=on_epoch)
    out_dir = Path(out_dir)
    model_path = out_dir / MODEL_FILE
    metadata = export_run(run, dataset, model_path, command=command, data_name=_data_name(Path(data)))
    total_time = time.perf_counter() - start
    card_path = out_dir / CARD_FILE
    card_path.write_text(
        render_model_card(metadata, model_bytes=model_path.stat().st_size, total_time_s=total_time), encoding="utf-8"
    )
    return TrainedModel(run=run, model_path=model_path, card_path=card_path, metadata=metadata, total_time_s=total_time)


def _data_name(data: Path) -> str:
    """The data folder and its parent (``cifar100-vehicles/train``): names the data set without machine paths."""
    resolved = data.resolve()
    return f"{resolved.parent.name}/{resolved.name}"
