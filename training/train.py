"""The training recipe: seeded, on CPU or CUDA, with a fixed stratified validation split.

``train(dataset, config)`` returns the trained network (in eval mode, on the CPU), the temperature fitted on
the validation split, validation metrics of the calibrated flip-averaged predictions (exactly what the exported
ONNX graph computes) and the run's timings. With ``ensemble`` > 1 the recipe runs once per seed (seed, seed + 1,
...) and the returned network is their logit mean, calibrated by one temperature. ``training.export`` turns the
result into the served ONNX file.
"""

from __future__ import annotations

import copy
import math
import os
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
from training.model import LogitMean, ResNet9
from training.split import DEFAULT_SPLIT_SEED, DEFAULT_VAL_FRACTION, stratified_split

TARGET_ACCURACY = 0.90  # time-to-accuracy is reported against this validation accuracy


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 200
    width: int = 8
    batch_size: int = 64
    peak_lr: float = 0.2
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    crop_padding: int = 4
    cutout_size: int = 8
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 1.0
    mix_probability: float = 0.5  # share of batches mixed (mixup or cutmix, whichever alphas are > 0)
    ema_decay: float = 0.99  # 0 disables the exponential moving average of the weights
    # Distillation: with teacher_width > 0, `teachers` wider networks are trained first on the labels, and the
    # served network learns distill_weight * (their mean probabilities on each augmented batch) + the rest labels.
    teacher_width: int = 0
    teacher_epochs: int = 0
    teachers: int = 1
    distill_weight: float = 1.0
    tta_flip: bool = False  # a two-member ensemble beat one network with flip TTA at the same inference cost
    ensemble: int = 2  # members trained with seeds seed, seed + 1, ...; served as the mean of their logits
    seed: int = 0
    val_fraction: float = DEFAULT_VAL_FRACTION
    split_seed: int = DEFAULT_SPLIT_SEED

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.width < 1 or self.batch_size < 2:
            raise ValueError(f"epochs, width must be >= 1 and batch_size >= 2, got {self}")
        if self.teacher_width > 0 and (self.teacher_epochs < 1 or self.teachers < 1):
            raise ValueError("a teacher needs teacher_epochs >= 1 and teachers >= 1")
        if not 0.0 <= self.distill_weight <= 1.0:
            raise ValueError(f"distill_weight must lie in [0, 1], got {self.distill_weight}")
        if self.ensemble < 1:
            raise ValueError(f"ensemble must be >= 1 member, got {self.ensemble}")

    @property
    def total_epochs(self) -> int:
        teacher_epochs = self.teachers * self.teacher_epochs if self.teacher_width > 0 else 0
        return self.ensemble * (teacher_epochs + self.epochs)


@dataclass(frozen=True)
class EpochStats:
    phase: str  # "teacher 1", ..., "student"; prefixed "member k " when the ensemble has more than one
    epoch: int  # within the phase
    epochs: int  # of the phase
    completed: int  # epochs done over all phases
    total: int  # epochs over all phases
    train_loss: float
    val_accuracy: float
    elapsed_s: float


@dataclass
class TrainingRun:
    model: nn.Module  # eval mode, on the CPU; takes normalised float NCHW, returns logits (a LogitMean if ensemble)
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
    cpu_time_s: float  # this process, all threads: next to wall time it shows how much CPU the run really got
    load_average: float | None  # 1-minute system load when training ended (other jobs slow a shared machine)
    time_to_target_s: float | None  # seconds until validation accuracy first reached TARGET_ACCURACY
    device: str
    teacher_val_accuracy: list[float] = field(default_factory=list)  # each teacher's, at its last epoch
    member_val_accuracy: list[float] = field(default_factory=list)  # each ensemble member's, at its last epoch
    history: list[EpochStats] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """JSON-ready description of the run (goes into the ONNX ``training`` metadata)."""
        return {
            "config": asdict(self.config),
            "device": self.device,
            "wall_time_s": round(self.wall_time_s, 1),
            "cpu_time_s": round(self.cpu_time_s, 1),
            "load_average_1min": self.load_average,
            "threads": torch.get_num_threads(),
            f"time_to_val_accuracy_{TARGET_ACCURACY:.2f}_s": (
                None if self.time_to_target_s is None else round(self.time_to_target_s, 1)
            ),
            "temperature": self.temperature,
            "teacher_val_accuracy": self.teacher_val_accuracy,
            "ensemble": self.config.ensemble,
            "member_val_accuracy": self.member_val_accuracy,
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
    train_idx, val_idx = stratified_split(dataset.labels, config.val_fraction, config.split_seed)
    num_classes = len(dataset.classes)

    train_images = dataset.images[train_idx]
    mean = train_images.reshape(-1, 3).mean(axis=0)
    std = train_images.reshape(-1, 3).std(axis=0)
    data = _Data(
        x_train=_normalise(train_images, mean, std).to(torch_device),
        y_train=torch.from_numpy(dataset.labels[train_idx]).to(torch_device),
        x_val=_normalise(dataset.images[val_idx], mean, std).to(torch_device),
        y_val=dataset.labels[val_idx],
        num_classes=num_classes,
    )
    progress = _Progress(total=config.total_epochs, start=time.perf_counter(), on_epoch=on_epoch)
    cpu_start = time.process_time()

    teacher_accuracy: list[float] = []
    members: list[nn.Module] = []
    member_accuracy: list[float] = []
    for index in range(config.ensemble):
        # Each member is exactly the single-model run of its seed, so ensemble k extends ensemble k - 1.
        prefix = f"member {index + 1} " if config.ensemble > 1 else ""
        member = _train_member(config, config.seed + index, data, progress, teacher_accuracy, prefix, torch_device)
        members.append(copy.deepcopy(member).cpu().eval())
        member_accuracy.append(progress.history[-1].val_accuracy)

    served = members[0] if len(members) == 1 else LogitMean(members).eval()
    val_logits = _logits(served, data.x_val.cpu(), config.tta_flip)
    temperature = fit_temperature(val_logits, data.y_val)
    val_probabilities = softmax(val_logits / temperature)
    wall_time = time.perf_counter() - progress.start
    cpu_time = time.process_time() - cpu_start
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
        val_metrics=validation_metrics(val_probabilities, data.y_val, list(dataset.classes)),
        wall_time_s=wall_time,
        cpu_time_s=cpu_time,
        load_average=_load_average(),
        time_to_target_s=progress.time_to_target,
        device=str(torch_device),
        teacher_val_accuracy=teacher_accuracy,
        member_val_accuracy=member_accuracy,
        history=progress.history,
    )


def _train_member(
    config: TrainConfig,
    seed: int,
    data: _Data,
    progress: _Progress,
    teacher_accuracy: list[float],
    prefix: str,
    torch_device: torch.device,
) -> nn.Module:
    """The recipe for one seed: its teachers if any, then the served-width student (returned)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    teachers: list[nn.Module] = []
    for k in range(config.teachers if config.teacher_width > 0 else 0):
        teacher = ResNet9(data.num_classes, config.teacher_width).to(torch_device)
        phase = f"{prefix}teacher {k + 1}"
        teachers.append(_fit(teacher, config.teacher_epochs, None, data, config, generator, progress, phase=phase))
        teacher_accuracy.append(progress.history[-1].val_accuracy)
    return _fit(
        ResNet9(data.num_classes, config.width).to(torch_device),
        config.epochs,
        _Ensemble(teachers) if teachers else None,
        data,
        config,
        generator,
        progress,
        phase=f"{prefix}student",
    )


@dataclass(frozen=True)
class _Data:
    x_train: torch.Tensor  # normalised float NCHW, on the training device
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: np.ndarray
    num_classes: int


@dataclass
class _Progress:
    total: int
    start: float
    on_epoch: Callable[[EpochStats], None] | None
    history: list[EpochStats] = field(default_factory=list)
    time_to_target: float | None = None  # of the first student to get there (the first member's, in an ensemble)


class _Ensemble(nn.Module):
    """Mean of the teachers' flip-averaged probabilities: the student's soft targets."""

    def __init__(self, teachers: list[nn.Module]) -> None:
        super().__init__()
        self.teachers = nn.ModuleList(teachers).eval()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        both = torch.cat([images, images.flip(3)])
        return torch.stack([F.softmax(t(both), dim=1) for t in self.teachers]).mean(0).view(2, len(images), -1).mean(0)


def _fit(
    model: nn.Module,
    epochs: int,
    teacher: _Ensemble | None,
    data: _Data,
    config: TrainConfig,
    generator: torch.Generator,
    progress: _Progress,
    *,
    phase: str,
) -> nn.Module:
    """One-cycle SGD on augmented batches; targets are labels, or the teacher's view of the same augmented batch."""
    n_train = len(data.y_train)
    ema = _make_ema(model, config.ema_decay)
    steps_per_epoch = math.ceil(n_train / config.batch_size)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=config.peak_lr,
        momentum=config.momentum,
        nesterov=True,
        weight_decay=config.weight_decay,
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _one_cycle(epochs * steps_per_epoch))
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(n_train, generator=generator).to(data.x_train.device)
        total_loss = 0.0
        for step in range(steps_per_epoch):
            batch = order[step * config.batch_size : (step + 1) * config.batch_size]
            if batch.numel() < 2:  # BatchNorm needs two samples; the shuffled remainder is seen next epoch
                continue
            images, targets = _augment(data.x_train[batch], data.y_train[batch], data.num_classes, config, generator)
            if teacher is not None:
                targets = config.distill_weight * teacher(images) + (1 - config.distill_weight) * targets
            loss = _soft_cross_entropy(model(images), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            if ema is not None:
                ema.update_parameters(model)
            total_loss += float(loss.detach())
        served = _served_network(model, ema)
        val_accuracy = float((_logits(served, data.x_val, config.tta_flip).argmax(1) == data.y_val).mean())
        elapsed = time.perf_counter() - progress.start
        if phase.endswith("student") and progress.time_to_target is None and val_accuracy >= TARGET_ACCURACY:
            progress.time_to_target = elapsed
        stats = EpochStats(
            phase,
            epoch,
            epochs,
            len(progress.history) + 1,
            progress.total,
            total_loss / steps_per_epoch,
            val_accuracy,
            elapsed,
        )
        progress.history.append(stats)
        if progress.on_epoch is not None:
            progress.on_epoch(stats)
    return _served_network(model, ema).eval()


def _one_cycle(total_steps: int, warmup_share: float = 0.25) -> Callable[[int], float]:
    """LR factor: linear up to 1 over the first quarter of the steps, then linear down to 0 at the end."""
    warmup = max(1, round(warmup_share * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):  # not available on Windows
        return None


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
