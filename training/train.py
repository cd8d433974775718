"""The training recipe: seeded, on CPU or CUDA, with a fixed stratified validation split.

``train(dataset, config)`` returns the trained network (in eval mode, on the CPU), the temperature fitted on
the validation split, validation metrics of the calibrated flip-averaged predictions (exactly what the exported
ONNX graph computes) and the run's timings. ``training.export`` turns the result into the served ONNX file.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training import augment
from training.calibration import fit_temperature, softmax, validation_metrics
from training.folder import FolderDataset
from training.model import ResNet9
from training.split import DEFAULT_SPLIT_SEED, DEFAULT_VAL_FRACTION, stratified_split

TARGET_ACCURACY = 0.90  # time-to-accuracy is reported against this validation accuracy


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    width: int = 8
    batch_size: int = 64
    peak_lr: float = 0.2
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    crop_padding: int = 4
    cutout_size: int = 8
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_probability: float = 0.5  # share of batches mixed (mixup or cutmix, whichever alphas are > 0)
    ema_decay: float = 0.0  # 0 disables the exponential moving average of the weights
    tta_flip: bool = True
    seed: int = 0
    val_fraction: float = DEFAULT_VAL_FRACTION
    split_seed: int = DEFAULT_SPLIT_SEED

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.width < 1 or self.batch_size < 2:
            raise ValueError(f"epochs, width must be >= 1 and batch_size >= 2, got {self}")


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    epochs: int
    train_loss: float
    val_accuracy: float
    elapsed_s: float


@dataclass
class TrainingRun:
    model: nn.Module  # eval mode, on the CPU; takes normalised float NCHW, returns logits
    config: TrainConfig
    classes: list[str]
    mean: list[float]  # per RGB channel, on the 0..255 scale
    std: list[float]
    temperature: float
    train_indices: np.ndarray
    val_indices: np.ndarray
    val_probabilities: np.ndarray  # calibrated, flip-averaged when config.tta_flip
    val_metrics: dict[str, Any]
    wall_time_s: float
    time_to_target_s: float | None  # seconds until validation accuracy first reached TARGET_ACCURACY
    device: str
    history: list[EpochStats] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        """JSON-ready description of the run (goes into the ONNX ``training`` metadata)."""
        return {
            "config": asdict(self.config),
            "device": self.device,
            "wall_time_s": round(self.wall_time_s, 1),
            f"time_to_val_accuracy_{TARGET_ACCURACY:.2f}_s": (
                None if self.time_to_target_s is None else round(self.time_to_target_s, 1)
            ),
            "temperature": self.temperature,
            "n_train": int(self.train_indices.size),
            "n_val": int(self.val_indices.size),
            "validation": self.val_metrics,
        }


def resolve_device(requested: str) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; ``cuda`` without a GPU is an error, not a silent fallback."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but torch sees no CUDA device")
    if requested not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {requested!r}")
    return torch.device(requested)


def train(
    dataset: FolderDataset,
    config: TrainConfig,
    *,
    device: str = "auto",
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> TrainingRun:
    torch_device = resolve_device(device)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    train_idx, val_idx = stratified_split(dataset.labels, config.val_fraction, config.split_seed)
    num_classes = len(dataset.classes)

    train_images = dataset.images[train_idx]
    mean = train_images.reshape(-1, 3).mean(axis=0)
    std = train_images.reshape(-1, 3).std(axis=0)
    x_train = _normalise(train_images, mean, std).to(torch_device)
    y_train = torch.from_numpy(dataset.labels[train_idx]).to(torch_device)
    x_val = _normalise(dataset.images[val_idx], mean, std).to(torch_device)
    y_val = dataset.labels[val_idx]

    model = ResNet9(num_classes, config.width).to(torch_device)
    ema = _make_ema(model, config.ema_decay)
    steps_per_epoch = math.ceil(len(train_idx) / config.batch_size)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=config.peak_lr,
        momentum=config.momentum,
        nesterov=True,
        weight_decay=config.weight_decay,
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.peak_lr, epochs=config.epochs, steps_per_epoch=steps_per_epoch, pct_start=0.25
    )

    history: list[EpochStats] = []
    time_to_target: float | None = None
    start = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        model.train()
        order = torch.randperm(len(train_idx), generator=generator).to(torch_device)
        total_loss = 0.0
        for step in range(steps_per_epoch):
            batch = order[step * config.batch_size : (step + 1) * config.batch_size]
            if batch.numel() < 2:  # BatchNorm needs two samples; the shuffled remainder is seen next epoch
                continue
            images, targets = _augment(x_train[batch], y_train[batch], num_classes, config, generator)
            loss = _soft_cross_entropy(model(images), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            if ema is not None:
                ema.update_parameters(model)
            total_loss += float(loss.detach())
        served = _served_network(model, ema)
        val_accuracy = float((_logits(served, x_val, config.tta_flip).argmax(1) == y_val).mean())
        elapsed = time.perf_counter() - start
        if time_to_target is None and val_accuracy >= TARGET_ACCURACY:
            time_to_target = elapsed
        stats = EpochStats(epoch, config.epochs, total_loss / steps_per_epoch, val_accuracy, elapsed)
        history.append(stats)
        if on_epoch is not None:
            on_epoch(stats)

    served = copy.deepcopy(_served_network(model, ema)).cpu().eval()
    val_logits = _logits(served, x_val.cpu(), config.tta_flip)
    temperature = fit_temperature(val_logits, y_val)
    val_probabilities = softmax(val_logits / temperature)
    wall_time = time.perf_counter() - start
    return TrainingRun(
        model=served,
        config=config,
        classes=list(dataset.classes),
        mean=[float(v) for v in mean],
        std=[float(v) for v in std],
        temperature=temperature,
        train_indices=train_idx,
        val_indices=val_idx,
        val_probabilities=val_probabilities,
        val_metrics=validation_metrics(val_probabilities, y_val, list(dataset.classes)),
        wall_time_s=wall_time,
        time_to_target_s=time_to_target,
        device=str(torch_device),
        history=history,
    )


def _normalise(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> normalised float32 NCHW, the same arithmetic as the exported graph."""
    scaled = (images.astype(np.float32) - mean.astype(np.float32)) / std.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(scaled.transpose(0, 3, 1, 2)))


def _augment(
    images: torch.Tensor, labels: torch.Tensor, num_classes: int, config: TrainConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    images = augment.random_crop(images, config.crop_padding, generator)
    images = augment.random_flip(images, generator)
    images = augment.cutout(images, config.cutout_size, generator)
    targets = F.one_hot(labels, num_classes).float()
    if config.label_smoothing > 0:
        targets = targets * (1 - config.label_smoothing) + config.label_smoothing / num_classes
    mixing = config.mixup_alpha > 0 or config.cutmix_alpha > 0
    if mixing and float(torch.rand(1, generator=generator)) < config.mix_probability:
        # With both enabled, each mixed batch picks one of the two with equal odds.
        coin = float(torch.rand(1, generator=generator)) < 0.5
        use_cutmix = config.cutmix_alpha > 0 and (config.mixup_alpha <= 0 or coin)
        if use_cutmix:
            images, targets = augment.cutmix(images, targets, config.cutmix_alpha, generator)
        else:
            images, targets = augment.mixup(images, targets, config.mixup_alpha, generator)
    return images, targets


def _soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def _make_ema(model: nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel | None:
    if decay <= 0:
        return None
    # use_buffers averages the BatchNorm running statistics too, so the EMA network needs no re-estimation pass.
    return torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(decay), use_buffers=True
    )


def _served_network(model: nn.Module, ema: torch.optim.swa_utils.AveragedModel | None) -> nn.Module:
    return model if ema is None else ema.module


@torch.no_grad()
def _logits(model: nn.Module, images: torch.Tensor, tta_flip: bool) -> np.ndarray:
    model.eval()
    logits = model(images)
    if tta_flip:
        logits = (logits + model(images.flip(3))) / 2
    return logits.float().cpu().numpy()
