"""The served network: a small ResNet-9-style convnet for 32x32 RGB images (torch only; training side)."""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn(in_channels: int, out_channels: int, *, pool: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_bn(channels, channels), _conv_bn(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResNet9(nn.Module):
    """Takes normalised float NCHW images, returns logits [N, num_classes].

    Channels ``width, 2w, 4w, 8w`` with the stride-2 pools early: at width 16 this is about 24 MMAC per 32x32
    image, small enough for sub-millisecond CPU inference while still reaching >90% on this task.
    """

    def __init__(self, num_classes: int, width: int = 16) -> None:
        super().__init__()
        self.width = width
        self.features = nn.Sequential(
            _conv_bn(3, width),
            _conv_bn(width, 2 * width, pool=True),
            _Residual(2 * width),
            _conv_bn(2 * width, 4 * width, pool=True),
            _conv_bn(4 * width, 8 * width, pool=True),
            _Residual(8 * width),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(8 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class LogitMean(nn.Module):
    """A seed ensemble as one network: the mean of its members' logits.

    Averaging logits and averaging log-probabilities give the same softmax (they differ by a per-image constant
    shared by all classes), so a temperature fitted on these mean logits calibrates either view of the ensemble.
    """

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(x) for member in self.members]).mean(0)
